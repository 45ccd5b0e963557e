//! `canon graph build` and `canon ask --graph global|local`: GraphRAG (paper 31) over an index.

use std::time::Instant;

use anyhow::bail;
use canon_rag::answer::Answerer;
use canon_rag::graph::{self, KnowledgeGraph, Llm};
pub use canon_rag::graph_answer::load_graph;
use canon_rag::index::Index;
use canon_rag::opts::{AskArgs, GraphArgs, GraphBuildArgs, GraphCmd};
use canon_rag::{index_graph, render};
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
    if !matches!(b.extractor.as_str(), "fast" | "llm") {
        bail!("expected --extractor fast or llm, found '{}'", b.extractor);
    }
    let recipe = b.recipe();
    let mut load = |m: &str| model_gen::load_lm(m, ctx).map_err(Into::into);
    let mut llm = match &recipe.llm {
        Some(spec) => Some(index_graph::make_llm(spec, &mut load)?),
        None => None,
    };
    let enc = if recipe.entity_embeddings {
        Some(model_gen::load_encoder(&ix.meta.model, ctx)?)
    } else {
        None
    };
    let mut bars = crate::progress::Stages::new(ctx.quiet);
    let built = index_graph::build_graph(
        &ix.chunks,
        &ix.path.join("llm-cache"),
        &recipe,
        llm.as_mut().map(|l| &mut **l as &mut dyn Llm),
        enc.as_ref().map(|e| (ix.meta.model.as_str(), e)),
        b.batch_size,
        &mut |s, d, n| bars.on(s.label(), d, n),
    )?;
    drop(bars);
    built.graph.save(&b.index)?;
    if !ctx.quiet {
        let secs = t0.elapsed().as_secs_f64();
        eprint!("{}", render::graph_built(&b.index, &built, secs));
    }
    Ok(())
}

/// `canon ask --graph global|local`.
pub fn ask(a: &AskArgs, mode: &str, ctx: &Ctx) -> anyhow::Result<()> {
    let how: graph::EntityMatch = a.entity_match.parse()?;
    let index = Index::open(&a.index, None)?;
    let index = &index;
    let lg = load_graph(index)?;
    let g = &lg.g;
    // The question is embedded with the index's model, as the entity descriptions were.
    let qvec = if mode == "local" && how == graph::EntityMatch::Embedding {
        if g.entity_vectors().is_none() {
            return Err(g.no_vectors_error().into());
        }
        let enc = model_gen::load_encoder(&index.meta.model, ctx)?;
        let mut v = enc
            .embedder
            .embed(std::slice::from_ref(&a.question), 1)?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("expected the question's embedding, found none"))?;
        canon_rag::dense::normalize(&mut v);
        Some(v)
    } else {
        None
    };
    let mut ans = super::ask::load_answerer(&a.model, a.context, a.max_tokens, ctx)?;
    match mode {
        "local" => {
            let matching = canon_rag::graph_answer::Matching {
                how,
                qvec: qvec.as_deref(),
            };
            let (out, entities) = canon_rag::graph_answer::local_answer(
                &mut ans,
                index,
                &lg,
                &a.question,
                matching,
                a.k,
            )?;
            let extra = json!({"graph": "local", "entities": entities, "entity_match": how.name()});
            print!("{}", canon_rag::render::answer(&out, a.json, extra));
            Ok(())
        }
        "global" => global(a, g, index, &mut ans, ctx),
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
