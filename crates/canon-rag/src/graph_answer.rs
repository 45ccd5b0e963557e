//! GraphRAG (paper 31) with real models: the local model or an OpenAI-compatible endpoint as the
//! graph builder's chat LLM, a loaded graph with its search indexes, and local and global search.

use std::time::Instant;

use canon_infer::{GenerateRequest, LmGenerator};
use serde_json::json;

use crate::answer::{Answer, AnswerError, Answerer, Result};
use crate::ask::{Passage, cited};
use crate::graph::{self, EntityMatch, KeyPoint, KnowledgeGraph, Llm, NO_ANSWER};
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
        let prompt = canon_text::chat_prompt(self.lm.lm.chat_template.as_ref(), messages)
            .map_err(|e| e.to_string())?;
        let n = self
            .lm
            .lm
            .tokenizer
            .encode(&prompt, true)
            .map_err(|e| e.to_string())?
            .len();
        graph::check_fits(n, max_tokens, self.lm.lm.model.max_seq_len())?;
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

/// An OpenAI-compatible chat-completions endpoint.
pub struct RemoteLlm {
    pub url: String,
    pub model: String,
    client: reqwest::blocking::Client,
}

impl RemoteLlm {
    pub fn new(url: &str, model: &str) -> Result<Self> {
        let client = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .map_err(|e| AnswerError::Invalid(format!("cannot create an HTTP client: {e}")))?;
        Ok(RemoteLlm {
            url: url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            client,
        })
    }
}

impl Llm for RemoteLlm {
    fn chat(
        &mut self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> std::result::Result<String, String> {
        let url = if self.url.ends_with("/v1") {
            format!("{}/chat/completions", self.url)
        } else {
            format!("{}/v1/chat/completions", self.url)
        };
        let body = json!({
            "model": self.model, "temperature": 0, "max_tokens": max_tokens,
            "messages": messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>(),
        });
        let mut req = self.client.post(&url).json(&body);
        if let Ok(k) = std::env::var("OPENAI_API_KEY") {
            req = req.bearer_auth(k);
        }
        let resp = req.send().map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url}: HTTP {status}: {v}"));
        }
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{url}: expected choices[0].message.content, found {v}"))
    }
    fn id(&self) -> String {
        format!("remote:{}:{}", self.url, self.model)
    }
}

/// A loaded graph with its search indexes (entities; level-0 reports).
pub struct LoadedGraph {
    pub g: KnowledgeGraph,
    entities: crate::bm25::Bm25,
    reports: (Vec<usize>, crate::bm25::Bm25),
    /// The entity vectors embed the current descriptions.
    vectors_fresh: bool,
}

pub fn load_graph(index: &Index) -> Result<LoadedGraph> {
    let g = KnowledgeGraph::load(&index.path, &index.chunks)?;
    Ok(loaded(g))
}

/// A graph with its search indexes built.
pub fn loaded(g: KnowledgeGraph) -> LoadedGraph {
    LoadedGraph {
        entities: graph::entity_index(&g),
        reports: graph::report_index(&g, 0),
        vectors_fresh: g.entity_vectors().is_some(),
        g,
    }
}

impl LoadedGraph {
    /// Embedding matching when the graph has fresh entity vectors, else BM25.
    pub fn default_match(&self) -> EntityMatch {
        if self.vectors_fresh {
            EntityMatch::Embedding
        } else {
            EntityMatch::Bm25
        }
    }

    /// Local search's entry points: the command entities named in the question, then the best
    /// `2k` matches by `how` (the question's embedding `qvec` against the entity description
    /// embeddings, or BM25 over names and descriptions); at most `k`.
    pub fn match_entities(
        &self,
        question: &str,
        qvec: Option<&[f32]>,
        how: EntityMatch,
        k: usize,
    ) -> Result<Vec<usize>> {
        let g = &self.g;
        match how {
            EntityMatch::Bm25 => Ok(graph::match_entities_with(g, &self.entities, question, k)),
            EntityMatch::Embedding => {
                let (v, dim) = g
                    .entity_vectors()
                    .filter(|_| self.vectors_fresh)
                    .ok_or_else(|| g.no_vectors_error())?;
                let q = qvec.ok_or_else(|| {
                    AnswerError::Invalid(
                        "expected the question's embedding for --entity-match embedding, found none"
                            .into(),
                    )
                })?;
                let ranked = graph::match_by_embedding(v, dim, q, k * 2)?
                    .into_iter()
                    .map(|h| h.0)
                    .collect();
                Ok(graph::merge_matches(
                    graph::named_entities(g, question),
                    ranked,
                    k,
                ))
            }
        }
    }
}

/// Embeds every entity's name and merged description ([`graph::entity_text`]) with `enc` (the
/// index's model `model`), shortest batches padded least (the embedder sorts by length), and
/// stores the vectors in the graph. `progress(done, total)` after each group.
pub fn embed_entities(
    g: &mut KnowledgeGraph,
    model: &str,
    enc: &canon_models::LoadedEncoder,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let texts: Vec<String> = g.entities.iter().map(graph::entity_text).collect();
    let dim = enc.embedder.dim();
    let mut vectors = Vec::with_capacity(texts.len() * dim);
    let bs = batch_size.max(1);
    progress(0, texts.len());
    for group in texts.chunks(bs * 8) {
        for v in enc.embedder.embed(group, bs)? {
            vectors.extend_from_slice(&v);
        }
        progress(vectors.len() / dim.max(1), texts.len());
    }
    g.set_entity_vectors(model, dim, vectors)?;
    Ok(())
}

fn hit(index: &Index, id: usize, score: f64) -> Hit {
    Hit {
        id,
        score,
        chunk: index.chunks[id].clone(),
    }
}

/// The text units a graph query rests on, best first: local search's ranked text units (entities
/// matched by `local`'s way, `qvec` being the question's embedding), or with `local` `None`,
/// global search's top reports' text units (extractive map).
pub fn graph_hits(
    lg: &LoadedGraph,
    index: &Index,
    question: &str,
    local: Option<EntityMatch>,
    qvec: Option<&[f32]>,
    k: usize,
) -> Result<Vec<Hit>> {
    let g = &lg.g;
    let mut ids: Vec<usize> = Vec::new();
    match local {
        None => {
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
        }
        Some(how) => {
            let m = lg.match_entities(question, qvec, how, 10)?;
            ids = graph::local_context(g, &m, k, 10).text_units;
        }
    }
    Ok(ids
        .into_iter()
        .enumerate()
        .filter(|(_, u)| *u < index.chunks.len())
        .map(|(r, u)| hit(index, u, 1.0 / (r as f64 + 1.0)))
        .collect())
}

/// What local search puts before the passages: the matched entities, their relationships and
/// communities (at most half of the prompt tokens left after the instruction and the question,
/// as GraphRAG's 0.5 text-unit proportion), the ranked text units, and the matched entities'
/// names.
#[derive(Debug, Clone)]
pub struct LocalContext {
    pub preamble: String,
    pub hits: Vec<Hit>,
    pub entities: Vec<String>,
    /// How the entities were matched.
    pub entity_match: EntityMatch,
}

/// How local search matches entities: the way, and the question's embedding for
/// [`EntityMatch::Embedding`].
#[derive(Debug, Clone, Copy)]
pub struct Matching<'a> {
    pub how: EntityMatch,
    pub qvec: Option<&'a [f32]>,
}

/// Builds GraphRAG's local-search context for `question`.
pub fn local_context(
    index: &Index,
    lg: &LoadedGraph,
    question: &str,
    matching: Matching<'_>,
    k: usize,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Result<LocalContext> {
    let half_budget = budget.saturating_sub(crate::ask::fixed_tokens(true, question, count)) / 2;
    let g = &lg.g;
    let m = lg.match_entities(question, matching.qvec, matching.how, 10)?;
    let lc = graph::local_context(g, &m, k, 10);
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
            rel.description()
        ));
    }
    for &r in lc.reports.iter().take(3) {
        pre.push_str(&format!("- community: {}\n", g.reports[r].title));
    }
    let mut kept = String::new();
    for l in pre.lines() {
        if count(&kept) + count(l) + 1 > half_budget {
            break;
        }
        kept.push_str(l);
        kept.push('\n');
    }
    let hits = lc
        .text_units
        .iter()
        .enumerate()
        .map(|(r, &u)| hit(index, u, 1.0 / (r as f64 + 1.0)))
        .collect();
    let entities = lc
        .entities
        .iter()
        .map(|&e| g.entities[e].name.clone())
        .collect();
    Ok(LocalContext {
        preamble: kept,
        hits,
        entities,
        entity_match: matching.how,
    })
}

/// GraphRAG's local search: the entities matched in the question, their relationships and
/// communities (at most half of the prompt budget) before the ranked text units; returns the
/// answer and the matched entities' names.
pub fn local_answer(
    ans: &mut Answerer,
    index: &Index,
    lg: &LoadedGraph,
    question: &str,
    matching: Matching<'_>,
    k: usize,
) -> Result<(Answer, Vec<String>)> {
    // The chat template's own tokens come out of the budget (as `answer_with` counts them).
    let budget = ans.budget.saturating_sub(ans.count(&ans.render("")?));
    let lc = {
        let count = |s: &str| ans.count(s);
        local_context(index, lg, question, matching, k, budget, &count)?
    };
    let out = ans.answer_with(&lc.preamble, question, &lc.hits)?;
    Ok((out, lc.entities))
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

/// Global search's map stage, ready to run: one user message per batch of reports, with the
/// report each batch's key points are attributed to.
#[derive(Debug, Clone)]
pub struct GlobalMap {
    pub prompts: Vec<String>,
    pub first_report: Vec<usize>,
}

/// Answer tokens each map call may write.
pub const MAP_TOKENS: usize = 120;

/// Global search's map prompts: level-0 community reports (leaves above it included), either all
/// of them by rank (`all`, GraphRAG's way) or the top `2k` pre-ranked by BM25 against the
/// question, packed into batches whose user messages fill `budget` tokens (leave room for
/// [`MAP_TOKENS`] and the chat template).
pub fn global_map(
    g: &KnowledgeGraph,
    question: &str,
    k: usize,
    all: bool,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Result<GlobalMap> {
    let ids: Vec<usize> = if all {
        let mut ids = graph::report_index(g, 0).0;
        ids.sort_by(|&a, &b| {
            g.reports[b]
                .rank
                .total_cmp(&g.reports[a].rank)
                .then(a.cmp(&b))
        });
        ids
    } else {
        graph::extractive_map(g, 0, question, k * 2)
            .iter()
            .map(|p| p.report)
            .collect()
    };
    if ids.is_empty() {
        let what = if all {
            "community reports in the graph"
        } else {
            "community reports sharing a word with the question"
        };
        return Err(AnswerError::Invalid(format!("expected {what}, found none")));
    }
    let reports: Vec<(usize, String)> = ids
        .iter()
        .map(|&r| (r, g.reports[r].text.clone()))
        .collect();
    let map_budget = budget.saturating_sub(count(&graph::map_prompt(question, "")));
    let batches = graph::pack(&reports, map_budget, count);
    let mut prompts = Vec::with_capacity(batches.len());
    let mut first_report = Vec::with_capacity(batches.len());
    for b in &batches {
        let mut text = String::new();
        for &i in b {
            // A single report longer than the budget is cut to it.
            let mut r = reports[i].1.clone();
            while count(&r) > map_budget && r.len() > 16 {
                let cut = r.floor_char_boundary(r.len() * 3 / 4);
                r.truncate(cut);
            }
            text.push_str(&r);
            text.push('\n');
        }
        prompts.push(graph::map_prompt(question, &text));
        first_report.push(reports[b[0]].0);
    }
    Ok(GlobalMap {
        prompts,
        first_report,
    })
}

/// Global search's reduce stage: the key points parsed from the map outputs, the best of them
/// (within `budget` tokens) and the user message asking for the answer; `None` for the message
/// when no point survives (the answer is then [`NO_ANSWER`]).
pub fn global_reduce(
    map: &GlobalMap,
    outputs: &[String],
    question: &str,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> (Option<String>, Vec<KeyPoint>) {
    let points: Vec<KeyPoint> = outputs
        .iter()
        .zip(&map.first_report)
        .flat_map(|(o, &r)| graph::parse_map(o, r))
        .collect();
    match graph::reduce_context(&points, budget.saturating_sub(200), count) {
        None => (None, Vec::new()),
        Some((ctx_text, kept)) => (
            Some(format!(
                "Key points from community reports, most important first:\n{ctx_text}\nQuestion: {}\n\
Answer using the key points and cite them by number, like [1].",
                question.trim()
            )),
            kept,
        ),
    }
}

/// The cited key points as JSON records (number, score, point, report title and level, and up to
/// three source pages of the report).
pub fn points_json(g: &KnowledgeGraph, index: &Index, kept: &[KeyPoint]) -> Vec<serde_json::Value> {
    kept.iter()
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
        .collect()
}

/// GraphRAG's global search: level-0 community reports (all, or the top `2k` pre-ranked by BM25
/// against the question), mapped to scored key points by the model in batches that fill the context, then
/// reduced into one answer citing them. `on_batch(done, total)` reports the map's progress.
pub fn global_answer(
    ans: &mut Answerer,
    g: &KnowledgeGraph,
    index: &Index,
    question: &str,
    k: usize,
    all: bool,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<GlobalAnswer> {
    // Map prompts leave room for the map's answer and the chat template's own tokens.
    let max_seq = ans.lm.lm.model.max_seq_len();
    let map_budget = ans
        .budget
        .min(max_seq.saturating_sub(MAP_TOKENS))
        .saturating_sub(ans.count(&ans.render("")?));
    let map = {
        let count = |s: &str| ans.count(s);
        global_map(g, question, k, all, map_budget, &count)?
    };
    let mut raw: Vec<String> = Vec::new();
    on_batch(0, map.prompts.len());
    let t0 = Instant::now();
    for p in &map.prompts {
        let (out, ..) = ans.complete(p, MAP_TOKENS)?;
        raw.push(out);
        on_batch(raw.len(), map.prompts.len());
    }
    let map_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (prompt, kept) = {
        let count = |s: &str| ans.count(s);
        global_reduce(&map, &raw, question, ans.budget, &count)
    };
    let answer = match prompt {
        None => NO_ANSWER.to_string(),
        Some(p) => ans.complete(&p, ans.max_tokens)?.0,
    };
    let cites = cited(&answer, kept.len());
    Ok(GlobalAnswer {
        answer,
        citations: cites,
        points: points_json(g, index, &kept),
        map_batches: map.prompts.len(),
        map_outputs: raw,
        map_ms,
    })
}
