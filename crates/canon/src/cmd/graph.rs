//! `canon graph build` and `canon ask --graph global|local`: GraphRAG (paper 31) over an index.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use canon_infer::{GenerateRequest, LmGenerator};
use canon_rag::ask::{Passage, cited};
use canon_rag::graph::{
    self, CachedLlm, ExtractStats, Extraction, KeyPoint, KnowledgeGraph, Llm, NO_ANSWER,
};
use canon_rag::index::{Hit, Index};
use canon_text::Message;
use clap::{Args, Subcommand};
use serde_json::json;

use super::ask::{Answerer, AskArgs};
use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
pub struct GraphArgs {
    #[command(subcommand)]
    pub cmd: GraphCmd,
}

#[derive(Subcommand, Debug)]
pub enum GraphCmd {
    /// Extract entities and relationships from an index's chunks, cluster them with hierarchical
    /// Leiden and write community reports (graph.json inside the index folder).
    #[command(after_help = "Examples:
  canon graph build --index man.idx                                   # fast extractor, no LLM
  canon graph build --index man.idx --extractor llm --model smollm2 --limit 20
  canon graph build --index man.idx --extractor llm --url http://127.0.0.1:8080 --remote-model gpt-4o-mini

LLM calls are cached under INDEX/llm-cache, so an interrupted build resumes where it stopped.")]
    Build(GraphBuildArgs),
}

#[derive(Args, Debug)]
pub struct GraphBuildArgs {
    /// The index folder.
    #[arg(long)]
    pub index: PathBuf,
    /// fast (structure and noun phrases, no LLM) or llm.
    #[arg(long, default_value = "fast")]
    pub extractor: String,
    /// Local generating model for --extractor llm.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// An OpenAI-compatible server (base URL) to extract with instead of a local model.
    #[arg(long)]
    pub url: Option<String>,
    /// Model name sent to --url.
    #[arg(long, default_value = "default")]
    pub remote_model: String,
    /// Extra "what was missed" passes per text unit.
    #[arg(long, default_value_t = 1)]
    pub gleanings: usize,
    /// Most tokens per extraction answer.
    #[arg(long, default_value_t = 400)]
    pub max_tokens: usize,
    /// Communities larger than this are clustered again one level deeper.
    #[arg(long, default_value_t = 10)]
    pub max_cluster_size: usize,
    /// Report budget in tokens.
    #[arg(long, default_value_t = 600)]
    pub report_tokens: usize,
    /// Noun phrases found in fewer text units than this are dropped (fast extractor).
    #[arg(long, default_value_t = 3)]
    pub min_phrase_units: usize,
    /// Only the first N chunks go through the LLM (the rest through the fast extractor).
    #[arg(long)]
    pub limit: Option<usize>,
}

pub fn run(a: GraphArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.cmd {
        GraphCmd::Build(b) => build(b, ctx),
    }
}

fn bar(ctx: &Ctx, len: usize, what: &str) -> indicatif::ProgressBar {
    if ctx.quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

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

/// An OpenAI-compatible chat-completions endpoint.
pub struct RemoteLlm {
    pub url: String,
    pub model: String,
    client: reqwest::blocking::Client,
}

impl RemoteLlm {
    pub fn new(url: &str, model: &str) -> anyhow::Result<Self> {
        let client = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .context("cannot create an HTTP client")?;
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

fn build(b: GraphBuildArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let ix = Index::open(&b.index, None)?;
    let t0 = Instant::now();
    let mut units: Vec<(usize, Extraction)> = Vec::with_capacity(ix.chunks.len());
    let mut stats = ExtractStats::default();
    let extractor = match b.extractor.as_str() {
        "fast" => "fast".to_string(),
        "llm" => {
            let mut llm: Box<dyn Llm> = match &b.url {
                Some(u) => Box::new(RemoteLlm::new(u, &b.remote_model)?),
                None => Box::new(LocalLlm {
                    lm: LmGenerator::new(model_gen::load_lm(&b.model, ctx)?),
                    name: b.model.clone(),
                }),
            };
            let id = llm.id();
            let n = b.limit.unwrap_or(ix.chunks.len()).min(ix.chunks.len());
            let mut cache = CachedLlm::new(llm.as_mut(), &b.index.join("llm-cache"))?;
            let pb = bar(ctx, n, "extract units/s");
            for (i, c) in ix.chunks.iter().enumerate().take(n) {
                let ex = graph::extract_with_gleanings(
                    &mut cache,
                    &c.indexed_text(),
                    b.gleanings,
                    b.max_tokens,
                    &mut stats,
                );
                units.push((i, ex));
                pb.inc(1);
            }
            pb.finish_and_clear();
            if !ctx.quiet {
                eprintln!(
                    "{}",
                    json!({"llm": id, "cache_hits": cache.hits, "calls_made": cache.misses, "stats": stats})
                );
            }
            id
        }
        o => bail!("expected --extractor fast or llm, found '{o}'"),
    };
    let done = units.len();
    for (i, c) in ix.chunks.iter().enumerate().skip(done) {
        units.push((i, graph::fast_extract(c)));
    }
    let t_ex = t0.elapsed().as_secs_f64();
    let name = if done > 0 && done < ix.chunks.len() {
        format!("{extractor} (first {done} units), fast (rest)")
    } else {
        extractor
    };
    let g = graph::build_graph(
        &name,
        ix.chunks.len(),
        &units,
        stats,
        b.max_cluster_size,
        b.report_tokens,
        b.min_phrase_units,
    );
    g.save(&b.index)?;
    if !ctx.quiet {
        eprintln!(
            "{}",
            json!({"graph": b.index.join(graph::GRAPH_FILE).display().to_string(), "extractor": g.extractor,
                "entities": g.entities.len(), "relationships": g.relations.len(), "communities": g.clusters.len(),
                "levels": g.levels(), "leaf_communities": g.clusters.iter().filter(|c| c.leaf).count(),
                "extract_s": t_ex, "total_s": t0.elapsed().as_secs_f64()})
        );
    }
    Ok(())
}

/// A loaded graph with its search indexes (entities; level-0 reports).
pub struct LoadedGraph {
    pub g: KnowledgeGraph,
    entities: canon_rag::bm25::Bm25,
    reports: (Vec<usize>, canon_rag::bm25::Bm25),
}

pub fn load_graph(index: &Index) -> anyhow::Result<LoadedGraph> {
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

/// `canon ask --graph global|local`.
pub fn ask(a: &AskArgs, mode: &str, ctx: &Ctx) -> anyhow::Result<()> {
    let index = Index::open(&a.index, None)?;
    let lg = load_graph(&index)?;
    let g = &lg.g;
    let mut ans = super::ask::load_answerer(&a.model, a.context, a.max_tokens, ctx)?;
    match mode {
        "local" => {
            let m = graph::match_entities_with(g, &lg.entities, &a.question, 10);
            let lc = graph::local_context(g, &m, a.k, 10);
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
                .map(|(r, &u)| hit(&index, u, 1.0 / (r as f64 + 1.0)))
                .collect();
            let out = ans.answer_with(&kept, &a.question, &hits)?;
            super::ask::print_answer(
                &out,
                a.json,
                json!({"graph": "local", "entities": lc.entities.iter().map(|&e| &g.entities[e].name).collect::<Vec<_>>()}),
            );
            Ok(())
        }
        "global" => global(a, g, &index, &mut ans, ctx),
        o => bail!("expected --graph global or local, found '{o}'"),
    }
}

fn global(
    a: &AskArgs,
    g: &KnowledgeGraph,
    index: &Index,
    ans: &mut Answerer,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    // Reports of level 0 (leaves above it included), pre-ranked by BM25 against the question;
    // the top --k * 2 go through the LLM map in batches that fill the context.
    let pre = graph::extractive_map(g, 0, &a.question, a.k * 2);
    if pre.is_empty() {
        bail!("expected community reports in the graph, found none");
    }
    let reports: Vec<(usize, String)> = pre
        .iter()
        .map(|p| (p.report, g.reports[p.report].text.clone()))
        .collect();
    let map_budget = ans
        .budget
        .saturating_sub(ans.count(&graph::map_prompt(&a.question, "")));
    let batches = {
        let count = |s: &str| ans.count(s);
        graph::pack(&reports, map_budget, &count)
    };
    let mut points: Vec<KeyPoint> = Vec::new();
    let mut raw: Vec<String> = Vec::new();
    let pb = bar(ctx, batches.len(), "map batches");
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
        let (out, ..) = ans.complete(&graph::map_prompt(&a.question, &text), 120)?;
        points.extend(graph::parse_map(&out, reports[b[0]].0));
        raw.push(out);
        pb.inc(1);
    }
    pb.finish_and_clear();
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
                a.question.trim()
            );
            (ans.complete(&prompt, a.max_tokens)?.0, kept)
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
    if a.json {
        println!(
            "{}",
            json!({"question": a.question.trim(), "answer": answer, "graph": "global", "citations": cites,
                "points": point_json, "map_batches": batches.len(), "map_outputs": raw, "timings": {"map_ms": map_ms}})
        );
    } else {
        println!("{answer}\n");
        println!("Key points:");
        for p in &point_json {
            println!(
                "[{}] ({}) {} — {} {}",
                p["n"], p["score"], p["point"], p["report"], p["sources"]
            );
        }
    }
    Ok(())
}
