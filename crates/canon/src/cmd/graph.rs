//! `canon graph build` and `canon ask --graph global|local`: GraphRAG (paper 31) over an index.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use canon_infer::LmGenerator;
use canon_rag::graph::{self, BuildOpts, KnowledgeGraph, Llm};
pub use canon_rag::graph_answer::{GlobalAnswer, LocalLlm, RemoteLlm, load_graph};
use canon_rag::index::Index;
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
    /// Summarise merged descriptions and write community reports with a model (title, summary,
    /// impact rating 0–10, findings; JSON under a schema), bottom-up, calls batched.
    #[command(after_help = "Examples:
  canon graph summarize --index man.idx --model smollm2 --limit 40
  canon graph summarize --index man.idx --what reports --parallel 16
  canon graph summarize --index man.idx --url http://127.0.0.1:8080 --remote-model gpt-4o-mini

Calls are cached under INDEX/llm-cache (a rerun resumes); graph.json is rewritten after each
stage. Reports the model garbles keep their extractive text and are counted as failed.")]
    Summarize(super::graph_summarize::GraphSummarizeArgs),
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
        GraphCmd::Summarize(s) => super::graph_summarize::run(s, ctx),
    }
}

fn build(b: GraphBuildArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let ix = Index::open(&b.index, None)?;
    let t0 = Instant::now();
    let mut llm: Option<Box<dyn Llm>> = match b.extractor.as_str() {
        "fast" => None,
        "llm" => Some(match &b.url {
            Some(u) => Box::new(RemoteLlm::new(u, &b.remote_model)?),
            None => Box::new(LocalLlm {
                lm: LmGenerator::new(model_gen::load_lm(&b.model, ctx)?),
                name: b.model.clone(),
            }),
        }),
        o => bail!("expected --extractor fast or llm, found '{o}'"),
    };
    let o = BuildOpts {
        gleanings: b.gleanings,
        max_tokens: b.max_tokens,
        limit: b.limit,
        max_cluster_size: b.max_cluster_size,
        report_tokens: b.report_tokens,
        min_phrase_units: b.min_phrase_units,
    };
    let mut pb: Option<indicatif::ProgressBar> = None;
    let built = graph::build_index_graph(
        &ix,
        llm.as_mut().map(|l| &mut **l as &mut dyn Llm),
        &o,
        &mut |done, n| {
            let p =
                pb.get_or_insert_with(|| crate::progress::rate(ctx.quiet, n, "extract units/s"));
            p.set_position(done as u64);
        },
    )?;
    if let Some(p) = pb {
        p.finish_and_clear();
    }
    let g = built.graph;
    g.save(&b.index)?;
    if !ctx.quiet {
        if let Some(r) = &built.llm {
            eprintln!(
                "{}",
                json!({"llm": r.id, "cache_hits": r.cache_hits, "calls_made": r.calls_made, "stats": r.stats})
            );
        }
        eprintln!(
            "{}",
            json!({"graph": b.index.join(graph::GRAPH_FILE).display().to_string(), "extractor": g.extractor,
                "entities": g.entities.len(), "relationships": g.relations.len(), "communities": g.clusters.len(),
                "levels": g.levels(), "leaf_communities": g.clusters.iter().filter(|c| c.leaf).count(),
                "extract_s": built.extract_s, "total_s": t0.elapsed().as_secs_f64()})
        );
    }
    Ok(())
}

/// `canon ask --graph global|local`.
pub fn ask(a: &AskArgs, mode: &str, ctx: &Ctx) -> anyhow::Result<()> {
    let index = Index::open(&a.index, None)?;
    let lg = load_graph(&index)?;
    let g = &lg.g;
    let mut ans = super::ask::load_answerer(&a.model, a.context, a.max_tokens, ctx)?;
    match mode {
        "local" => {
            let (out, entities) =
                canon_rag::graph_answer::local_answer(&mut ans, &index, &lg, &a.question, a.k)?;
            super::ask::print_answer(
                &out,
                a.json,
                json!({"graph": "local", "entities": entities}),
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
    let mut pb: Option<indicatif::ProgressBar> = None;
    let out = canon_rag::graph_answer::global_answer(
        ans,
        g,
        index,
        &a.question,
        a.k,
        a.all_reports,
        &mut |done, total| {
            let b =
                pb.get_or_insert_with(|| crate::progress::rate(ctx.quiet, total, "map batches"));
            b.set_position(done as u64);
        },
    )?;
    if let Some(b) = pb {
        b.finish_and_clear();
    }
    let GlobalAnswer {
        answer,
        citations: cites,
        points: point_json,
        map_batches,
        map_outputs: raw,
        map_ms,
    } = out;
    if a.json {
        println!(
            "{}",
            json!({"question": a.question.trim(), "answer": answer, "graph": "global", "citations": cites,
                "points": point_json, "map_batches": map_batches, "map_outputs": raw, "timings": {"map_ms": map_ms}})
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
