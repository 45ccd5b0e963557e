//! Queries: global search's map-reduce over reports and local search's context.

use super::*;

/// One key point of a map answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyPoint {
    pub score: u32,
    pub text: String,
    /// The report it came from.
    pub report: usize,
}

/// The map instruction for one batch of reports.
pub fn map_prompt(question: &str, reports: &str) -> String {
    format!(
        "Community reports:\n{reports}\n\nQuestion: {question}\n\n\
List the points from these reports that help answer the question, one per line, each as \
`score: point` where score is how helpful the point is, from 0 (useless) to 100 (answers it). \
Write `0: none` if nothing helps."
    )
}

/// Parses map output lines `score: point` (also `Score 80 - point`, `(80) point`; score clamped
/// to 0..=100); lines without a leading score are skipped.
pub fn parse_map(out: &str, report: usize) -> Vec<KeyPoint> {
    out.lines()
        .filter_map(|l| {
            let mut t = l.trim().trim_start_matches(['-', '*', ' ', '(', '[']);
            if t.len() >= 5 && t[..5].eq_ignore_ascii_case("score") {
                t = t[5..].trim_start_matches([' ', ':', '=']);
            }
            let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            if digits == 0 || digits > 3 {
                return None;
            }
            let score: u32 = t[..digits].parse().ok()?;
            // The score is followed by `:`, `/100`, `)`, `]` or ` -`; `1.` is list numbering.
            let after = &t[digits..];
            let after = after.strip_prefix("/100").unwrap_or(after);
            let rest = match after.strip_prefix([':', ')', ']']) {
                Some(r) => r,
                None => after.strip_prefix(" -")?,
            };
            let rest = rest.trim_start_matches([':', ' ', '-']).trim();
            (!rest.is_empty()).then(|| KeyPoint {
                score: score.min(100),
                text: rest.to_string(),
                report,
            })
        })
        .collect()
}

/// Packs report texts into batches of at most `budget` tokens (a report longer than the budget
/// is its own batch), in the given order.
pub fn pack(
    reports: &[(usize, String)],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for (i, (_, t)) in reports.iter().enumerate() {
        let c = count(t);
        if out.is_empty() || used + c > budget {
            out.push(Vec::new());
            used = 0;
        }
        used += c;
        if let Some(last) = out.last_mut() {
            last.push(i);
        }
    }
    out
}

/// The canned answer when no key point survives.
pub const NO_ANSWER: &str =
    "I do not know: none of the community reports has information that answers this question.";

/// Reduce: drops points scored 0, sorts the rest by score (descending, stable), and adds them to
/// the context while they fit `budget`. `None` when nothing survives (answer [`NO_ANSWER`]).
pub fn reduce_context(
    points: &[KeyPoint],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Option<(String, Vec<KeyPoint>)> {
    let mut kept: Vec<KeyPoint> = points.iter().filter(|p| p.score > 0).cloned().collect();
    if kept.is_empty() {
        return None;
    }
    kept.sort_by_key(|p| std::cmp::Reverse(p.score));
    let mut ctx = String::new();
    let mut used = 0;
    let mut out = Vec::new();
    for p in kept {
        let line = format!("[{}] (importance {}) {}\n", out.len() + 1, p.score, p.text);
        let c = count(&line);
        if used + c > budget {
            break;
        }
        used += c;
        ctx.push_str(&line);
        out.push(p);
    }
    Some((ctx, out))
}

/// Extractive map for use without an LLM: a report's helpfulness is its BM25 score against the
/// question, scaled so the best report of the level scores 100; its key point is the report's
/// best-matching lines.
pub fn extractive_map(
    g: &KnowledgeGraph,
    level: usize,
    question: &str,
    top: usize,
) -> Vec<KeyPoint> {
    extractive_map_with(g, &report_index(g, level), question, top)
}

/// The reports of a level (and the leaves above it) with their BM25 index.
pub fn report_index(g: &KnowledgeGraph, level: usize) -> (Vec<usize>, Bm25) {
    let leaves = leaf_ids(g);
    let ids: Vec<usize> = (0..g.reports.len())
        .filter(|&i| {
            g.reports[i].level == level
                || (g.reports[i].level < level && leaves.contains(&g.reports[i].cluster))
        })
        .collect();
    let bm = Bm25::build(ids.iter().map(|&i| g.reports[i].text.as_str()));
    (ids, bm)
}

/// [`extractive_map`] over a prebuilt [`report_index`].
pub fn extractive_map_with(
    g: &KnowledgeGraph,
    ix: &(Vec<usize>, Bm25),
    question: &str,
    top: usize,
) -> Vec<KeyPoint> {
    let (ids, bm) = ix;
    let hits = bm.search(question, top);
    let best = hits.first().map_or(0.0, |h| h.1 as f64);
    let qterms: BTreeSet<String> = crate::bm25::terms(question).into_iter().collect();
    hits.iter()
        .map(|&(j, s)| {
            let r = &g.reports[ids[j]];
            let mut lines: Vec<(usize, &str)> = r
                .text
                .lines()
                .skip(1)
                .map(|l| {
                    (
                        crate::bm25::terms(l)
                            .iter()
                            .filter(|t| qterms.contains(*t))
                            .count(),
                        l,
                    )
                })
                .collect();
            lines.sort_by_key(|l| std::cmp::Reverse(l.0));
            let text = lines
                .iter()
                .take(2)
                .map(|l| l.1.trim_start_matches("- "))
                .collect::<Vec<_>>()
                .join(" ");
            KeyPoint {
                score: if best > 0.0 {
                    ((s as f64 / best) * 100.0).round() as u32
                } else {
                    0
                },
                text,
                report: ids[j],
            }
        })
        .collect()
}

/// The ids of the leaf clusters (one pass, so that callers test each report in constant time).
pub(super) fn leaf_ids(g: &KnowledgeGraph) -> std::collections::HashSet<usize> {
    g.clusters.iter().filter(|c| c.leaf).map(|c| c.id).collect()
}

/// Local search: the entities matching the question (BM25 over name and description, plus
/// entities named in the question), ranked.
pub fn match_entities(g: &KnowledgeGraph, question: &str, k: usize) -> Vec<usize> {
    match_entities_with(g, &entity_index(g), question, k)
}

/// BM25 over entity names and descriptions.
pub fn entity_index(g: &KnowledgeGraph) -> Bm25 {
    Bm25::build(
        g.entities
            .iter()
            .map(|e| format!("{} {}", e.name, e.summary(400)))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    )
}

/// [`match_entities`] over a prebuilt [`entity_index`].
pub fn match_entities_with(g: &KnowledgeGraph, bm: &Bm25, question: &str, k: usize) -> Vec<usize> {
    let ranked: Vec<usize> = bm
        .search(question, k * 2)
        .into_iter()
        .map(|h| h.0)
        .collect();
    merge_matches(named_entities(g, question), ranked, k)
}

/// The command entities named in the question (a word of it, case-insensitive), highest degree
/// first.
pub fn named_entities(g: &KnowledgeGraph, question: &str) -> Vec<usize> {
    let q_up = question.to_uppercase();
    let words: std::collections::HashSet<&str> = q_up
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .collect();
    let mut named: Vec<usize> = g
        .entities
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.kind == "COMMAND" && e.name.len() >= 2 && words.contains(e.name.as_str())
        })
        .map(|(i, _)| i)
        .collect();
    named.sort_by(|&a, &b| g.entities[b].degree.cmp(&g.entities[a].degree));
    named
}

/// The named entities, then the ranked ones, without repeats, at most `k`.
pub fn merge_matches(named: Vec<usize>, ranked: Vec<usize>, k: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for i in named.into_iter().chain(ranked) {
        if !out.contains(&i) {
            out.push(i);
        }
        if out.len() >= k {
            break;
        }
    }
    out
}

/// Local search context: for the matched entities, their text units ranked by how many matched
/// entities and relationships point at them, the relationships among and around them (by
/// weight), and the reports of their leaf communities.
pub struct LocalContext {
    pub entities: Vec<usize>,
    pub relations: Vec<usize>,
    pub text_units: Vec<usize>,
    pub reports: Vec<usize>,
}

pub fn local_context(
    g: &KnowledgeGraph,
    matched: &[usize],
    max_units: usize,
    max_rels: usize,
) -> LocalContext {
    let set: BTreeSet<usize> = matched.iter().copied().collect();
    let mut rels: Vec<usize> = (0..g.relations.len())
        .filter(|&i| set.contains(&g.relations[i].source) || set.contains(&g.relations[i].target))
        .collect();
    rels.sort_by(|&a, &b| {
        let ra = &g.relations[a];
        let rb = &g.relations[b];
        let both = |r: &Relation| (set.contains(&r.source) && set.contains(&r.target)) as u8;
        both(rb)
            .cmp(&both(ra))
            .then(rb.weight.total_cmp(&ra.weight))
            .then(a.cmp(&b))
    });
    rels.truncate(max_rels);
    let mut score: HashMap<usize, (usize, usize)> = HashMap::new();
    for (rank, &e) in matched.iter().enumerate() {
        for &u in &g.entities[e].text_units {
            let s = score.entry(u).or_insert((0, usize::MAX));
            s.0 += 1;
            s.1 = s.1.min(rank);
        }
    }
    for &r in &rels {
        for &u in &g.relations[r].text_units {
            if let Some(s) = score.get_mut(&u) {
                s.0 += 1;
            }
        }
    }
    let mut units: Vec<(usize, (usize, usize))> = score.into_iter().collect();
    // First the best-ranked entity's units, then by links.
    units.sort_by(|a, b| {
        a.1.1
            .cmp(&b.1.1)
            .then(b.1.0.cmp(&a.1.0))
            .then(a.0.cmp(&b.0))
    });
    let text_units: Vec<usize> = units.into_iter().take(max_units).map(|u| u.0).collect();
    // Each report's cluster looked up once per report (a scan of the clusters per report and
    // entity took seconds on a graph of 25,000 communities).
    let by_id: HashMap<usize, &crate::graph::Cluster> =
        g.clusters.iter().rev().map(|c| (c.id, c)).collect();
    let mut reports = Vec::new();
    for &e in matched {
        for (i, r) in g.reports.iter().enumerate() {
            if by_id
                .get(&r.cluster)
                .is_some_and(|c| c.leaf && c.nodes.binary_search(&e).is_ok())
                && !reports.contains(&i)
            {
                reports.push(i);
            }
        }
    }
    LocalContext {
        entities: matched.to_vec(),
        relations: rels,
        text_units,
        reports,
    }
}
