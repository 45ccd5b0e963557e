//! GraphRAG (paper 31) queries answered with a real model: the local model as the graph builder's
//! chat LLM, a loaded graph with its search indexes, and local and global search.

use std::time::Instant;

use canon_infer::{GenerateRequest, LmGenerator};
use canon_text::Message;
use serde_json::json;

use crate::answer::{Answer, AnswerError, Answerer, Result};
use crate::ask::{Passage, cited};
use crate::graph::{self, KeyPoint, KnowledgeGraph, Llm, NO_ANSWER};
use crate::index::{Hit, Index};

/// The local model as a chat LLM (its own chat template, greedy).
pub struct LocalLlm {
    pub lm: LmGenerator,
    pub name: String,
}

impl Llm for LocalLlm {
    fn chat(
        &mut self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> std::result::Result<String, String> {
        let msgs: Vec<Message> = messages.iter().map(|(r, c)| Message::new(r, c)).collect();
        let prompt = match &self.lm.lm.chat_template {
            Some(t) => t.render(&msgs, true).map_err(|e| e.to_string())?,
            None => messages
                .iter()
                .map(|m| m.1.as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
        };
        let n = self
            .lm
            .lm
            .tokenizer
            .encode(&prompt, true)
            .map_err(|e| e.to_string())?
            .len();
        let max_seq = self.lm.lm.model.max_seq_len();
        if n + max_tokens > max_seq {
            return Err(format!(
                "prompt of {n} tokens and {max_tokens} answer tokens exceed the context of {max_seq}"
            ));
        }
        let req = GenerateRequest::new(prompt, max_tokens);
        self.lm
            .generate_streaming(&req, &mut |_| true)
            .map(|g| g.text)
            .map_err(|e| e.to_string())
    }
    fn id(&self) -> String {
        format!("local:{}", self.name)
    }
}

/// A loaded graph with its search indexes (entities; level-0 reports).
pub struct LoadedGraph {
    pub g: KnowledgeGraph,
    entities: crate::bm25::Bm25,
    reports: (Vec<usize>, crate::bm25::Bm25),
}

pub fn load_graph(index: &Index) -> Result<LoadedGraph> {
    let g = KnowledgeGraph::load(&index.path, index.meta.chunks)?;
    Ok(LoadedGraph {
        entities: graph::entity_index(&g),
        reports: graph::report_index(&g, 0),
        g,
    })
}

fn hit(index: &Index, id: usize, score: f64) -> Hit {
    Hit {
        id,
        score,
        chunk: index.chunks[id].clone(),
    }
}

/// The text units a graph query rests on, best first: local search's ranked text units, or
/// global search's top reports' text units (extractive map).
pub fn graph_hits(
    lg: &LoadedGraph,
    index: &Index,
    question: &str,
    global: bool,
    k: usize,
) -> Vec<Hit> {
    let g = &lg.g;
    let mut ids: Vec<usize> = Vec::new();
    if global {
        let pts = graph::extractive_map_with(g, &lg.reports, question, k);
        for p in pts.iter().filter(|p| p.score > 0) {
            for &u in &g.reports[p.report].text_units {
                if !ids.contains(&u) {
                    ids.push(u);
                }
                if ids.len() >= k {
                    break;
                }
            }
            if ids.len() >= k {
                break;
            }
        }
    } else {
        let m = graph::match_entities_with(g, &lg.entities, question, 10);
        ids = graph::local_context(g, &m, k, 10).text_units;
    }
    ids.into_iter()
        .enumerate()
        .filter(|(_, u)| *u < index.chunks.len())
        .map(|(r, u)| hit(index, u, 1.0 / (r as f64 + 1.0)))
        .collect()
}

/// GraphRAG's local search: the entities matched in the question, their relationships and
/// communities (at most half of the prompt budget) before the ranked text units; returns the
/// answer and the matched entities' names.
pub fn local_answer(
    ans: &mut Answerer,
    index: &Index,
    lg: &LoadedGraph,
    question: &str,
    k: usize,
) -> Result<(Answer, Vec<String>)> {
    let g = &lg.g;
    let m = graph::match_entities_with(g, &lg.entities, question, 10);
    let lc = graph::local_context(g, &m, k, 10);
    // Entities, relationships and community titles: at most half of the budget (the
    // text units get the rest, as GraphRAG's 0.5 text-unit proportion).
    let mut pre = String::from("Entities and relationships:\n");
    for &e in &lc.entities {
        pre.push_str(&format!(
            "- {} ({}): {}\n",
            g.entities[e].name,
            g.entities[e].kind.to_lowercase(),
            g.entities[e].summary(200)
        ));
    }
    for &r in &lc.relations {
        let rel = &g.relations[r];
        pre.push_str(&format!(
            "- {} — {}: {}\n",
            g.entities[rel.source].name,
            g.entities[rel.target].name,
            rel.descriptions.first().map_or("", |s| s.as_str())
        ));
    }
    for &r in lc.reports.iter().take(3) {
        pre.push_str(&format!("- community: {}\n", g.reports[r].title));
    }
    let half = ans.budget / 2;
    let mut kept = String::new();
    for l in pre.lines() {
        if ans.count(&kept) + ans.count(l) + 1 > half {
            break;
        }
        kept.push_str(l);
        kept.push('\n');
    }
    let hits: Vec<Hit> = lc
        .text_units
        .iter()
        .enumerate()
        .map(|(r, &u)| hit(index, u, 1.0 / (r as f64 + 1.0)))
        .collect();
    let out = ans.answer_with(&kept, question, &hits)?;
    let names = lc
        .entities
        .iter()
        .map(|&e| g.entities[e].name.clone())
        .collect();
    Ok((out, names))
}

/// The answer of a global search with its cited key points (JSON records naming report, level
/// and sources), the map stage's raw outputs and timing.
#[derive(Debug, Clone)]
pub struct GlobalAnswer {
    pub answer: String,
    pub citations: Vec<usize>,
    pub points: Vec<serde_json::Value>,
    pub map_batches: usize,
    pub map_outputs: Vec<String>,
    pub map_ms: f64,
}

/// GraphRAG's global search: level-0 community reports pre-ranked by BM25 against the question
/// (the top `2k`), mapped to scored key points by the model in batches that fill the context, then
/// reduced into one answer citing them. `on_batch(done, total)` reports the map's progress.
pub fn global_answer(
    ans: &mut Answerer,
    g: &KnowledgeGraph,
    index: &Index,
    question: &str,
    k: usize,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<GlobalAnswer> {
    // Reports of level 0 (leaves above it included), pre-ranked by BM25 against the question;
    // the top --k * 2 go through the LLM map in batches that fill the context.
    let pre = graph::extractive_map(g, 0, question, k * 2);
    if pre.is_empty() {
        return Err(AnswerError::Invalid(
            "expected community reports in the graph, found none".into(),
        ));
    }
    let reports: Vec<(usize, String)> = pre
        .iter()
        .map(|p| (p.report, g.reports[p.report].text.clone()))
        .collect();
    let map_budget = ans
        .budget
        .saturating_sub(ans.count(&graph::map_prompt(question, "")));
    let batches = {
        let count = |s: &str| ans.count(s);
        graph::pack(&reports, map_budget, &count)
    };
    let mut points: Vec<KeyPoint> = Vec::new();
    let mut raw: Vec<String> = Vec::new();
    on_batch(0, batches.len());
    let t0 = Instant::now();
    for b in &batches {
        let mut text = String::new();
        for &i in b {
            // A single report longer than the budget is cut to it.
            let mut r = reports[i].1.clone();
            while ans.count(&r) > map_budget && r.len() > 16 {
                let cut = r.floor_char_boundary(r.len() * 3 / 4);
                r.truncate(cut);
            }
            text.push_str(&r);
            text.push('\n');
        }
        let (out, ..) = ans.complete(&graph::map_prompt(question, &text), 120)?;
        points.extend(graph::parse_map(&out, reports[b[0]].0));
        raw.push(out);
        on_batch(raw.len(), batches.len());
    }
    let map_ms = t0.elapsed().as_secs_f64() * 1e3;
    let reduced = {
        let count = |s: &str| ans.count(s);
        graph::reduce_context(&points, ans.budget.saturating_sub(200), &count)
    };
    let (answer, kept) = match reduced {
        None => (NO_ANSWER.to_string(), Vec::new()),
        Some((ctx_text, kept)) => {
            let prompt = format!(
                "Key points from community reports, most important first:\n{ctx_text}\nQuestion: {}\n\
Answer using the key points and cite them by number, like [1].",
                question.trim()
            );
            (ans.complete(&prompt, ans.max_tokens)?.0, kept)
        }
    };
    let cites = cited(&answer, kept.len());
    let point_json: Vec<serde_json::Value> = kept
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let r = &g.reports[p.report];
            let pages: Vec<String> = r
                .text_units
                .iter()
                .take(3)
                .filter_map(|&u| index.chunks.get(u))
                .map(|c| Passage {
                    n: 0,
                    id: 0,
                    score: 0.0,
                    page: c.page.clone(),
                    section: c.section.clone(),
                    path: String::new(),
                    lines: [0, 0],
                    text: String::new(),
                }
                .source())
                .collect();
            json!({"n": i + 1, "score": p.score, "point": p.text, "report": r.title, "level": r.level, "sources": pages})
        })
        .collect();
    Ok(GlobalAnswer {
        answer,
        citations: cites,
        points: point_json,
        map_batches: batches.len(),
        map_outputs: raw,
        map_ms,
    })
}
