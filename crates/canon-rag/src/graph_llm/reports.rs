//! Community reports: context, prompt and schema, parsing, and the bottom-up writer.

use super::*;

/// A finding of a community report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub summary: String,
    pub explanation: String,
}

/// A community report as the model writes it (GraphRAG's fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmReport {
    pub title: String,
    pub summary: String,
    /// Impact severity, 0–10.
    pub rating: f64,
    pub rating_explanation: String,
    pub findings: Vec<Finding>,
}

/// The JSON schema a report answer is decoded under (bounded lengths keep a small model from
/// running past its answer budget).
pub fn report_schema() -> Value {
    let text = |max: u32| json!({"type": "string", "minLength": 1, "maxLength": max});
    json!({
        "type": "object",
        "properties": {
            "title": text(80),
            "summary": text(300),
            "rating": {"type": "number", "minimum": 0, "maximum": 10},
            "rating_explanation": text(150),
            "findings": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"summary": text(100), "explanation": text(200)},
                    "required": ["summary", "explanation"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["title", "summary", "rating", "rating_explanation", "findings"],
        "additionalProperties": false
    })
}

/// The report instruction around a community's context (written for this project; the output
/// fields are GraphRAG's).
pub fn report_prompt(context: &str) -> String {
    format!(
        "Below are facts from documentation: named things (commands, options, files, concepts) \
with what the text says about them, how they relate, and summaries of related groups if any.\n\n\
{context}\n\
Write a JSON report about these facts:\n\
- \"title\": the two or three main things named above\n\
- \"summary\": two sentences on what they are for and how they relate\n\
- \"rating\": from 0 to 10, how useful these facts are to someone using the software\n\
- \"rating_explanation\": one sentence on why\n\
- \"findings\": up to 3 key facts from the data, each {{\"summary\": ..., \"explanation\": ...}}\n\
Use only the facts above.\nReport:"
    )
}

/// Parses a report answer: JSON with non-empty title and summary, a rating in 0..=10 and at
/// least one finding.
pub fn parse_report(out: &str) -> std::result::Result<LlmReport, String> {
    let t = out.trim();
    let (s, e) = (t.find('{'), t.rfind('}'));
    let body = match (s, e) {
        (Some(s), Some(e)) if e > s => &t[s..=e],
        _ => return Err(format!("expected a JSON object, found {:?}", cut80(t))),
    };
    let r: LlmReport = serde_json::from_str(body)
        .map_err(|e| format!("expected a report object ({e}), found {:?}", cut80(body)))?;
    if r.title.trim().is_empty() || r.summary.trim().is_empty() {
        return Err("expected a non-empty title and summary".into());
    }
    if !(0.0..=10.0).contains(&r.rating) {
        return Err(format!(
            "expected a rating from 0 to 10, found {}",
            r.rating
        ));
    }
    if r.findings.is_empty() {
        return Err("expected at least one finding".into());
    }
    Ok(r)
}

pub(super) fn cut80(s: &str) -> &str {
    &s[..s.floor_char_boundary(80.min(s.len()))]
}

/// The report as text for search and prompts.
pub fn render(r: &LlmReport) -> String {
    let mut s = format!(
        "{}\n{}\nImpact {:.1}/10: {}\n",
        r.title.trim(),
        r.summary.trim(),
        r.rating,
        r.rating_explanation.trim()
    );
    for f in &r.findings {
        s.push_str(&format!(
            "- {}: {}\n",
            f.summary.trim(),
            f.explanation.trim()
        ));
    }
    s
}

/// A community's report context in GraphRAG's table form: sub-community reports (when the
/// community's own elements do not fit and its children have model-written reports), then
/// entities and relationships, most prominent first (combined degree), while they fit `budget`
/// tokens by `count`.
pub fn report_context(
    g: &KnowledgeGraph,
    report: usize,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> String {
    let cid = g.reports[report].cluster;
    let Some(cluster) = g.clusters.iter().find(|c| c.id == cid) else {
        return String::new();
    };
    let members: BTreeSet<usize> = cluster.nodes.iter().copied().collect();
    let mut rels: Vec<usize> = (0..g.relations.len())
        .filter(|&r| {
            members.contains(&g.relations[r].source) && members.contains(&g.relations[r].target)
        })
        .collect();
    let deg = |r: usize| {
        g.entities[g.relations[r].source].degree + g.entities[g.relations[r].target].degree
    };
    rels.sort_by(|&a, &b| deg(b).cmp(&deg(a)).then(a.cmp(&b)));
    let mut ents: Vec<usize> = cluster.nodes.clone();
    ents.sort_by(|&a, &b| {
        g.entities[b]
            .degree
            .cmp(&g.entities[a].degree)
            .then(a.cmp(&b))
    });
    let ent_line = |e: usize| {
        format!(
            "{},{},{}\n",
            e,
            g.entities[e].name,
            g.entities[e].summary(300)
        )
    };
    let rel_line = |r: usize| {
        let rel = &g.relations[r];
        format!(
            "{},{},{},{}\n",
            r,
            g.entities[rel.source].name,
            g.entities[rel.target].name,
            rel.description()
        )
    };
    let full: usize = ents.iter().map(|&e| count(&ent_line(e))).sum::<usize>()
        + rels.iter().map(|&r| count(&rel_line(r))).sum::<usize>();

    let mut out = String::new();
    let mut used = 0;
    let mut covered: BTreeSet<usize> = BTreeSet::new();
    if full > budget {
        // Sub-communities' reports, largest first, stand in for their members.
        let by_cluster: HashMap<usize, usize> = g
            .reports
            .iter()
            .enumerate()
            .map(|(i, r)| (r.cluster, i))
            .collect();
        let mut kids: Vec<&crate::leiden::Cluster> = g
            .clusters
            .iter()
            .filter(|c| c.parent == Some(cid))
            .collect();
        kids.sort_by(|a, b| b.nodes.len().cmp(&a.nodes.len()).then(a.id.cmp(&b.id)));
        let mut section = String::from("-----Reports-----\nid,title,summary\n");
        let mut any = false;
        for k in kids {
            let Some(llm) = by_cluster
                .get(&k.id)
                .and_then(|&i| g.reports[i].llm.as_ref())
            else {
                continue;
            };
            let line = format!("{},{},{}\n", k.id, llm.title.trim(), llm.summary.trim());
            let c = count(&line);
            if used + count(&section) + c > budget / 2 {
                break;
            }
            used += c;
            section.push_str(&line);
            covered.extend(k.nodes.iter().copied());
            any = true;
        }
        if any {
            used += count("-----Reports-----\nid,title,summary\n");
            out.push_str(&section);
        }
    }
    // A table's lines while `used` stays within `cap`.
    let push = |head: &str, lines: Vec<String>, out: &mut String, used: &mut usize, cap: usize| {
        let h = count(head);
        if lines.is_empty() || *used + h > cap {
            return;
        }
        let mut section = head.to_string();
        let mut u = h;
        let mut n = 0;
        for l in lines {
            let c = count(&l);
            if *used + u + c > cap {
                break;
            }
            u += c;
            section.push_str(&l);
            n += 1;
        }
        if n > 0 {
            out.push_str(&section);
            *used += u;
        }
    };
    let ent_lines: Vec<String> = ents
        .iter()
        .filter(|e| !covered.contains(e))
        .map(|&e| ent_line(e))
        .collect();
    let rel_lines: Vec<String> = rels
        .iter()
        .filter(|&&r| {
            !(covered.contains(&g.relations[r].source) && covered.contains(&g.relations[r].target))
        })
        .map(|&r| rel_line(r))
        .collect();
    // Entities take at most half of what is left, relationships the rest.
    let half = used + budget.saturating_sub(used) / 2;
    push(
        "-----Entities-----\nid,entity,description\n",
        ent_lines,
        &mut out,
        &mut used,
        half,
    );
    push(
        "-----Relationships-----\nid,source,target,description\n",
        rel_lines,
        &mut out,
        &mut used,
        budget,
    );
    out
}

/// Answer tokens of one report.
pub const REPORT_TOKENS: usize = 600;

/// Writes model reports for the communities without one, deepest level first (so a parent can
/// use its children's), `batch` calls at a time, at most `limit` reports (most prominent first
/// within a level). Contexts hold `budget` tokens by `count`. A report that fails keeps its
/// extractive text. Extractive reports are rebuilt first so they use any description summaries.
#[allow(clippy::too_many_arguments)]
pub fn write_reports(
    g: &mut KnowledgeGraph,
    llm: &mut CachedBatch<'_>,
    batch: usize,
    limit: Option<usize>,
    budget: usize,
    report_budget: usize,
    count: &dyn Fn(&str) -> usize,
    progress: &mut dyn FnMut(usize, usize),
) -> LlmStats {
    // Extractive texts again, now with the summaries (reports the model wrote stay).
    let inc = crate::graph::incident(g.entities.len(), &g.relations);
    let by_id: std::collections::HashMap<usize, usize> = g
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id, i))
        .collect();
    for i in 0..g.reports.len() {
        if g.reports[i].llm.is_some() {
            continue;
        }
        let cid = g.reports[i].cluster;
        if let Some(c) = by_id.get(&cid).map(|&j| &g.clusters[j]) {
            let r = build_report_in(
                c,
                &g.entities,
                &g.relations,
                &inc,
                report_budget,
                &crate::graph::approx_tokens,
            );
            g.reports[i].text = r.text;
        }
    }
    let mut todo: Vec<usize> = (0..g.reports.len())
        .filter(|&i| g.reports[i].llm.is_none())
        .collect();
    todo.sort_by(|&a, &b| {
        let (ra, rb) = (&g.reports[a], &g.reports[b]);
        rb.level
            .cmp(&ra.level)
            .then(rb.rank.total_cmp(&ra.rank))
            .then(a.cmp(&b))
    });
    if let Some(l) = limit {
        todo.truncate(l);
    }
    let total = todo.len();
    let mut stats = LlmStats::default();
    progress(0, total);
    let schema = report_schema();
    let mut done = 0;
    // One level at a time (a parent's context reads its children's reports).
    let mut start = 0;
    while start < todo.len() {
        let level = g.reports[todo[start]].level;
        let end = todo[start..]
            .iter()
            .position(|&i| g.reports[i].level != level)
            .map_or(todo.len(), |p| start + p);
        for chunk in todo[start..end].chunks(batch.max(1)) {
            let calls: Vec<Call> = chunk
                .iter()
                .map(|&i| Call {
                    messages: vec![(
                        "user".into(),
                        report_prompt(&report_context(g, i, budget, count)),
                    )],
                    max_tokens: REPORT_TOKENS,
                    schema: Some(schema.clone()),
                })
                .collect();
            stats.calls += calls.len();
            for (&i, a) in chunk.iter().zip(llm.chat_batch(&calls)) {
                match a.and_then(|s| parse_report(&s)) {
                    Ok(r) => {
                        stats.written += 1;
                        g.reports[i].title = r.title.trim().to_string();
                        g.reports[i].text = render(&r);
                        g.reports[i].llm = Some(r);
                    }
                    Err(e) => stats.fail(e),
                }
            }
            done += chunk.len();
            progress(done, total);
        }
        start = end;
    }
    stats
}
