//! GraphRAG's language-model summaries (paper 31): the descriptions an entity or relationship
//! collected from several text units are summarised into one, and each community gets a report
//! written by the model (title, summary, impact rating 0–10 with its explanation, findings), as
//! structured JSON under a schema. Reports are written bottom-up: a community whose own elements
//! do not fit the context is described through its sub-communities' reports, as GraphRAG does.
//!
//! Calls go through [`BatchLlm`], so a batch of prompts can decode together on the serving
//! engine ([`EngineLlm`]); [`CachedBatch`] stores every answer on disk so an interrupted run
//! resumes without asking again.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Result;
use crate::graph::{KnowledgeGraph, build_report, call_key};

/// One chat call: `(role, content)` messages, an answer length, and optionally a JSON schema the
/// answer must satisfy (constrained decoding).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub messages: Vec<(String, String)>,
    pub max_tokens: usize,
    pub schema: Option<Value>,
}

/// A chat model that answers several calls at once (in any order internally; answers come back
/// in the calls' order). A failed call is an `Err` with its reason; the others still answer.
pub trait BatchLlm {
    fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>>;
    /// Identifies the model in cache keys.
    fn id(&self) -> String;
}

/// Answers stored on disk by [`call_key`]: calls already answered are read back, only the others
/// go to the model.
pub struct CachedBatch<'a> {
    pub inner: &'a mut dyn BatchLlm,
    pub dir: PathBuf,
    pub hits: usize,
    pub misses: usize,
}

impl<'a> CachedBatch<'a> {
    pub fn new(inner: &'a mut dyn BatchLlm, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| crate::io_err(dir, e))?;
        Ok(CachedBatch {
            inner,
            dir: dir.to_path_buf(),
            hits: 0,
            misses: 0,
        })
    }

    pub fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>> {
        let id = self.inner.id();
        let mut out: Vec<Option<std::result::Result<String, String>>> = vec![None; calls.len()];
        let mut todo = Vec::new();
        let mut keys = Vec::with_capacity(calls.len());
        for (i, c) in calls.iter().enumerate() {
            let (k, req) = call_key(&id, &c.messages, c.max_tokens, c.schema.as_ref());
            let p = self.dir.join(format!("{k}.json"));
            if let Ok(t) = std::fs::read_to_string(&p)
                && let Ok(v) = serde_json::from_str::<Value>(&t)
                && v["request"].as_str() == Some(req.as_str())
                && let Some(r) = v["response"].as_str()
            {
                self.hits += 1;
                out[i] = Some(Ok(r.to_string()));
            } else {
                todo.push(i);
            }
            keys.push((p, req));
        }
        if !todo.is_empty() {
            let batch: Vec<Call> = todo.iter().map(|&i| calls[i].clone()).collect();
            let answers = self.inner.chat_batch(&batch);
            for (&i, a) in todo.iter().zip(answers) {
                if let Ok(r) = &a {
                    self.misses += 1;
                    let body = json!({"request": keys[i].1, "response": r}).to_string();
                    // A cache entry that cannot be written is only a lost cache hit.
                    let _ = canon_fs::write_atomic(&keys[i].0, body.as_bytes());
                }
                out[i] = Some(a);
            }
        }
        out.into_iter()
            .map(|a| a.unwrap_or_else(|| Err("no answer".into())))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Description summaries.

/// Answer tokens of one description summary.
pub const SUMMARY_TOKENS: usize = 120;

/// The instruction that merges an element's descriptions into one (written for this project).
pub fn summary_prompt(name: &str, descriptions: &[String]) -> String {
    let mut list = String::new();
    for d in descriptions {
        list.push_str("- ");
        list.push_str(d.trim());
        list.push('\n');
    }
    format!(
        "Several passages describe {name}. Merge their descriptions into one short, complete \
description in the third person, keeping every fact and resolving contradictions. Mention \
{name} by name.\n\nDescriptions:\n{list}\nDescription:"
    )
}

/// What a summary or report stage did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LlmStats {
    pub calls: usize,
    pub written: usize,
    pub failed: usize,
    /// Why the first few failures failed.
    pub errors: Vec<String>,
}

impl LlmStats {
    fn fail(&mut self, e: String) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }
}

/// Cleans a model's summary: trimmed, a leading "Description:" dropped, empty → `None`.
fn clean_summary(s: &str) -> Option<String> {
    let t = s.trim();
    let t = t.strip_prefix("Description:").unwrap_or(t).trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Summarises the descriptions of every entity and relationship that collected two or more
/// (and has no summary yet), `batch` calls at a time, at most `limit` elements (most prominent
/// first). Each summary's descriptions are cut to `max_input_chars` in all. `progress(done,
/// total)` follows the work.
pub fn summarize_descriptions(
    g: &mut KnowledgeGraph,
    llm: &mut CachedBatch<'_>,
    batch: usize,
    limit: Option<usize>,
    max_input_chars: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> LlmStats {
    // (is_entity, index, degree)
    let mut jobs: Vec<(bool, usize, usize)> = Vec::new();
    for (i, e) in g.entities.iter().enumerate() {
        if e.descriptions.len() >= 2 && e.llm_summary.is_none() {
            jobs.push((true, i, e.degree));
        }
    }
    for (i, r) in g.relations.iter().enumerate() {
        if r.descriptions.len() >= 2 && r.llm_summary.is_none() {
            let d = g.entities[r.source].degree + g.entities[r.target].degree;
            jobs.push((false, i, d));
        }
    }
    jobs.sort_by(|a, b| b.2.cmp(&a.2).then(b.0.cmp(&a.0)).then(a.1.cmp(&b.1)));
    if let Some(l) = limit {
        jobs.truncate(l);
    }
    let mut stats = LlmStats::default();
    progress(0, jobs.len());
    for chunk in jobs.chunks(batch.max(1)) {
        let calls: Vec<Call> = chunk
            .iter()
            .map(|&(ent, i, _)| {
                let (name, descs) = if ent {
                    (g.entities[i].name.clone(), &g.entities[i].descriptions)
                } else {
                    let r = &g.relations[i];
                    (
                        format!(
                            "the relationship between {} and {}",
                            g.entities[r.source].name, g.entities[r.target].name
                        ),
                        &r.descriptions,
                    )
                };
                let mut kept = Vec::new();
                let mut used = 0;
                for d in descs {
                    if used + d.len() > max_input_chars && !kept.is_empty() {
                        break;
                    }
                    used += d.len();
                    kept.push(d.clone());
                }
                Call {
                    messages: vec![("user".into(), summary_prompt(&name, &kept))],
                    max_tokens: SUMMARY_TOKENS,
                    schema: None,
                }
            })
            .collect();
        stats.calls += calls.len();
        for (&(ent, i, _), a) in chunk.iter().zip(llm.chat_batch(&calls)) {
            match a.map(|s| clean_summary(&s)) {
                Ok(Some(s)) => {
                    stats.written += 1;
                    if ent {
                        g.entities[i].llm_summary = Some(s);
                    } else {
                        g.relations[i].llm_summary = Some(s);
                    }
                }
                Ok(None) => stats.fail("empty summary".into()),
                Err(e) => stats.fail(e),
            }
        }
        progress(stats.calls, jobs.len());
    }
    stats
}

// ---------------------------------------------------------------------------------------------
// Community reports.

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

fn cut80(s: &str) -> &str {
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
    for i in 0..g.reports.len() {
        if g.reports[i].llm.is_some() {
            continue;
        }
        let cid = g.reports[i].cluster;
        if let Some(c) = g.clusters.iter().find(|c| c.id == cid) {
            let r = build_report(
                c,
                &g.entities,
                &g.relations,
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

/// A one-call-at-a-time chat model (a remote endpoint) as a [`BatchLlm`]: calls run in order; a
/// schema is not enforced (the prompt asks for the JSON and [`parse_report`] checks it).
pub struct Serial<'a>(pub &'a mut dyn crate::graph::Llm);

impl BatchLlm for Serial<'_> {
    fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>> {
        calls
            .iter()
            .map(|c| self.0.chat(&c.messages, c.max_tokens))
            .collect()
    }
    fn id(&self) -> String {
        self.0.id()
    }
}

// ---------------------------------------------------------------------------------------------
// The serving engine as a batch model.

/// The local model on the batched engine: each call is rendered with the model's chat template,
/// all calls of a batch are submitted together and decode as one batch; a call with a schema is
/// decoded under it (llguidance).
pub struct EngineLlm {
    pub engine: canon_infer::Engine,
    pub template: Option<canon_text::ChatTemplate>,
    pub name: String,
    grammar: Option<canon_infer::GrammarCompiler>,
}

impl EngineLlm {
    pub fn new(
        engine: canon_infer::Engine,
        template: Option<canon_text::ChatTemplate>,
        name: &str,
    ) -> Self {
        EngineLlm {
            engine,
            template,
            name: name.to_string(),
            grammar: None,
        }
    }

    fn request(&mut self, c: &Call) -> std::result::Result<canon_infer::Request, String> {
        let prompt = canon_text::chat_prompt(self.template.as_ref(), &c.messages)
            .map_err(|e| e.to_string())?;
        let ids = self
            .engine
            .tokenizer()
            .encode(&prompt, true)
            .map_err(|e| e.to_string())?;
        crate::graph::check_fits(ids.len(), c.max_tokens, self.engine.max_len())?;
        let mut req = canon_infer::Request::new(ids, c.max_tokens);
        if let Some(schema) = &c.schema {
            if self.grammar.is_none() {
                self.grammar = Some(
                    canon_infer::GrammarCompiler::new(self.engine.tokenizer())
                        .map_err(|e| e.to_string())?,
                );
            }
            if let Some(gc) = &self.grammar {
                let g = gc
                    .compile(&canon_infer::Grammar::JsonSchema(schema.clone()))
                    .map_err(|e| e.to_string())?;
                req.constraint = Some(Box::new(g));
            }
        }
        Ok(req)
    }
}

impl BatchLlm for EngineLlm {
    fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>> {
        let mut handles = Vec::with_capacity(calls.len());
        for c in calls {
            handles.push(
                self.request(c)
                    .and_then(|r| self.engine.submit(r).map_err(|e| e.to_string())),
            );
        }
        handles
            .into_iter()
            .map(|h| {
                let h = h?;
                while let Some(e) = h.recv() {
                    match e {
                        canon_infer::Event::Done(c) => return Ok(c.text),
                        canon_infer::Event::Error(m) => return Err(m),
                        _ => {}
                    }
                }
                Err("the engine stopped".into())
            })
            .collect()
    }
    fn id(&self) -> String {
        format!("local:{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{ExtractStats, Extraction, build_graph};

    type Answer = dyn Fn(&Call) -> std::result::Result<String, String>;

    /// Answers from a function of the prompt; counts calls and batches.
    struct Scripted {
        f: Box<Answer>,
        calls: usize,
        batches: usize,
    }

    impl BatchLlm for Scripted {
        fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>> {
            self.batches += 1;
            self.calls += calls.len();
            calls.iter().map(|c| (self.f)(c)).collect()
        }
        fn id(&self) -> String {
            "scripted".into()
        }
    }

    fn graph() -> KnowledgeGraph {
        let ent = |n: &str, d: &str| (n.to_string(), "COMMAND".to_string(), d.to_string());
        let rel = |a: &str, b: &str, d: &str| (a.to_string(), b.to_string(), d.to_string(), 1.0);
        let mut units = Vec::new();
        // Two triangles joined by one edge; TAR is described in two units.
        for (u, (a, b, c)) in [("TAR", "GZIP", "XZ"), ("LS", "DIR", "STAT")]
            .iter()
            .enumerate()
        {
            units.push((
                u,
                Extraction {
                    entities: vec![
                        ent(a, &format!("{a} in unit {u}")),
                        ent(b, &format!("{b} here")),
                        ent(c, &format!("{c} here")),
                    ],
                    relations: vec![
                        rel(a, b, &format!("{a} uses {b}")),
                        rel(b, c, &format!("{b} and {c}")),
                        rel(a, c, &format!("{a} with {c}")),
                    ],
                },
            ));
        }
        units.push((
            2,
            Extraction {
                entities: vec![ent("TAR", "tar archives files"), ent("LS", "ls lists")],
                relations: vec![
                    rel("TAR", "LS", "both are commands"),
                    rel("TAR", "GZIP", "tar -z filters through gzip"),
                ],
            },
        ));
        build_graph("test", 3, &units, ExtractStats::default(), 3, 300, 1)
    }

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn summaries_fill_elements_with_two_or_more_descriptions_and_resume_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = graph();
        let multi = g
            .entities
            .iter()
            .filter(|e| e.descriptions.len() >= 2)
            .count()
            + g.relations
                .iter()
                .filter(|r| r.descriptions.len() >= 2)
                .count();
        assert!(multi >= 2, "fixture: {multi}");
        let mut m = Scripted {
            f: Box::new(|c| Ok(format!("Description: merged ({})", c.messages[0].1.len()))),
            calls: 0,
            batches: 0,
        };
        let stats = {
            let mut llm = CachedBatch::new(&mut m, dir.path()).unwrap();
            summarize_descriptions(&mut g, &mut llm, 2, None, 1000, &mut |_, _| {})
        };
        assert_eq!(stats.written, multi);
        assert_eq!(m.calls, multi);
        assert_eq!(m.batches, multi.div_ceil(2));
        let tar = g.entities.iter().find(|e| e.name == "TAR").unwrap();
        let s = tar.llm_summary.as_deref().unwrap();
        assert!(s.starts_with("merged ("), "{s}");
        assert_eq!(tar.summary(1000), s);
        // Elements with one description are left alone.
        assert!(
            g.entities
                .iter()
                .filter(|e| e.descriptions.len() < 2)
                .all(|e| e.llm_summary.is_none())
        );
        // A second graph from scratch: every answer comes from the cache.
        let mut g2 = graph();
        let mut m2 = Scripted {
            f: Box::new(|_| Err("must not be called".into())),
            calls: 0,
            batches: 0,
        };
        let mut llm = CachedBatch::new(&mut m2, dir.path()).unwrap();
        let st = summarize_descriptions(&mut g2, &mut llm, 8, None, 1000, &mut |_, _| {});
        assert_eq!((st.written, st.failed, llm.hits), (multi, 0, multi));
        assert_eq!(g2.entities, g.entities);
    }

    #[test]
    fn reports_parse_validate_and_render() {
        let ok = r#"{"title": "Archivers", "summary": "tar and gzip", "rating": 7.5,
            "rating_explanation": "common", "findings": [{"summary": "tar", "explanation": "uses gzip"}]}"#;
        let r = parse_report(&format!("Report: {ok} trailing")).unwrap();
        assert_eq!(r.title, "Archivers");
        assert_eq!(r.rating, 7.5);
        let text = render(&r);
        assert!(
            text.starts_with("Archivers\ntar and gzip\nImpact 7.5/10: common\n- tar: uses gzip")
        );
        assert!(
            parse_report("no json here")
                .unwrap_err()
                .contains("JSON object")
        );
        let bad = ok.replace("7.5", "12");
        assert!(parse_report(&bad).unwrap_err().contains("0 to 10"));
        let none = ok.replace(r#"[{"summary": "tar", "explanation": "uses gzip"}]"#, "[]");
        assert!(parse_report(&none).unwrap_err().contains("finding"));
        // The schema names every field the parser needs.
        let s = report_schema();
        for f in [
            "title",
            "summary",
            "rating",
            "rating_explanation",
            "findings",
        ] {
            assert!(s["required"].as_array().unwrap().contains(&json!(f)));
        }
    }

    /// The fixture graph with a hand-made hierarchy: community 0 (level 0) holds every entity,
    /// its children 1 and 2 (level 1) the two triangles.
    fn hierarchy() -> KnowledgeGraph {
        use crate::leiden::Cluster;
        let mut g = graph();
        let n = g.entities.len();
        let idx = |name: &str| g.entities.iter().position(|e| e.name == name).unwrap();
        let mut a: Vec<usize> = ["TAR", "GZIP", "XZ"].iter().map(|s| idx(s)).collect();
        let mut b: Vec<usize> = ["LS", "DIR", "STAT"].iter().map(|s| idx(s)).collect();
        a.sort();
        b.sort();
        g.clusters = vec![
            Cluster {
                id: 0,
                level: 0,
                parent: None,
                nodes: (0..n).collect(),
                leaf: false,
            },
            Cluster {
                id: 1,
                level: 1,
                parent: Some(0),
                nodes: a,
                leaf: true,
            },
            Cluster {
                id: 2,
                level: 1,
                parent: Some(0),
                nodes: b,
                leaf: true,
            },
        ];
        g.reports = g
            .clusters
            .iter()
            .map(|c| {
                build_report(
                    c,
                    &g.entities,
                    &g.relations,
                    300,
                    &crate::graph::approx_tokens,
                )
            })
            .collect();
        g
    }

    #[test]
    fn reports_are_written_bottom_up_and_parents_read_their_childrens_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = hierarchy();
        let prompts = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
        let seen = prompts.clone();
        let mut m =
            Scripted {
                f: Box::new(move |c| {
                    assert!(c.schema.is_some());
                    let mut v = seen.borrow_mut();
                    v.push(c.messages[0].1.clone());
                    Ok(json!({"title": format!("T{}", v.len()), "summary": "a summary", "rating": 5,
                    "rating_explanation": "e", "findings": [{"summary": "f", "explanation": "x"}]})
                .to_string())
                }),
                calls: 0,
                batches: 0,
            };
        // 30 words hold a child's tables but not the parent's own.
        let stats = {
            let mut llm = CachedBatch::new(&mut m, dir.path()).unwrap();
            write_reports(&mut g, &mut llm, 4, None, 30, 300, &words, &mut |_, _| {})
        };
        assert_eq!((stats.calls, stats.written, stats.failed), (3, 3, 0));
        // The two children go first, in one batch; then the parent.
        assert_eq!(m.batches, 2);
        let p = prompts.borrow();
        assert!(!p[0].contains("-----Reports-----") && !p[1].contains("-----Reports-----"));
        assert!(
            p[2].contains("-----Reports-----\nid,title,summary\n1,T"),
            "{}",
            p[2]
        );
        for q in p.iter() {
            assert!(words(q) <= words(&report_prompt("")) + 30, "{q}");
        }
        for r in &g.reports {
            let l = r.llm.as_ref().unwrap();
            assert_eq!(r.title, l.title);
            assert!(r.text.contains("Impact 5.0/10: e"), "{}", r.text);
        }
    }

    #[test]
    fn a_report_the_model_garbles_keeps_its_extractive_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = hierarchy();
        let before: Vec<String> = g.reports.iter().map(|r| r.text.clone()).collect();
        let mut m = Scripted {
            f: Box::new(|_| Ok("{\"title\": \"cut off".into())),
            calls: 0,
            batches: 0,
        };
        let mut llm = CachedBatch::new(&mut m, dir.path()).unwrap();
        let stats = write_reports(
            &mut g,
            &mut llm,
            8,
            Some(2),
            200,
            300,
            &words,
            &mut |_, _| {},
        );
        assert_eq!((stats.calls, stats.written, stats.failed), (2, 0, 2));
        assert!(!stats.errors.is_empty());
        assert!(g.reports.iter().all(|r| r.llm.is_none()));
        assert_eq!(
            g.reports.iter().map(|r| r.text.clone()).collect::<Vec<_>>(),
            before
        );
    }
}
