//! `canon graph build` and `canon ask --graph global|local`: GraphRAG (paper 31) over an index.

use std::time::Instant;

use anyhow::bail;
use canon_infer::LmGenerator;
use canon_rag::answer::Answerer;
use canon_rag::graph::{self, KnowledgeGraph, Llm};
pub use canon_rag::graph_answer::{LocalLlm, RemoteLlm, load_graph};
use canon_rag::index::Index;
use canon_rag::opts::{AskArgs, GraphArgs, GraphBuildArgs, GraphCmd};
use serde_json::json;

use crate::{Ctx, model_gen};

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
    let o = b.build_opts();
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
            let extra = json!({"graph": "local", "entities": entities});
            print!("{}", canon_rag::render::answer(&out, a.json, extra));
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
    print!(
        "{}",
        canon_rag::render::global_answer(&a.question, &out, a.json)
    );
    Ok(())
}
