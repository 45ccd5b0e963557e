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

/// The chat model a graph build extracts with.
pub fn make_llm(spec: &graph::LlmSpec, ctx: &Ctx) -> anyhow::Result<Box<dyn Llm>> {
    Ok(match &spec.url {
        Some(u) => Box::new(RemoteLlm::new(u, &spec.remote_model)?),
        None => Box::new(LocalLlm {
            lm: LmGenerator::new(model_gen::load_lm(&spec.model, ctx)?),
            name: spec.model.clone(),
        }),
    })
}

/// Builds the graph over `chunks` as `recipe` says (the LLM's calls cached in `cache_dir`), with
/// the entity descriptions embedded by `enc` (the index's model `model`) when the recipe asks.
pub fn build_graph_with(
    chunks: &[canon_rag::chunk::Chunk],
    cache_dir: &std::path::Path,
    recipe: &graph::GraphRecipe,
    llm: Option<&mut dyn Llm>,
    enc: Option<(&str, &canon_models::LoadedEncoder)>,
    batch_size: usize,
    ctx: &Ctx,
) -> anyhow::Result<graph::IndexGraph> {
    let mut pb: Option<indicatif::ProgressBar> = None;
    let mut built =
        graph::build_chunks_graph(chunks, cache_dir, llm, &recipe.opts, &mut |done, n| {
            let p =
                pb.get_or_insert_with(|| crate::progress::rate(ctx.quiet, n, "extract units/s"));
            p.set_position(done as u64);
        })?;
    if let Some(p) = pb {
        p.finish_and_clear();
    }
    built.graph.recipe = Some(recipe.clone());
    if recipe.entity_embeddings
        && let Some((model, enc)) = enc
    {
        let pb = crate::progress::rate(ctx.quiet, built.graph.entities.len(), "embed entities/s");
        canon_rag::graph_answer::embed_entities(
            &mut built.graph,
            model,
            enc,
            batch_size,
            &mut |done, _| pb.set_position(done as u64),
        )?;
        pb.finish_and_clear();
    }
    Ok(built)
}

fn build(b: GraphBuildArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let ix = Index::open(&b.index, None)?;
    let t0 = Instant::now();
    if !matches!(b.extractor.as_str(), "fast" | "llm") {
        bail!("expected --extractor fast or llm, found '{}'", b.extractor);
    }
    let recipe = b.recipe();
    let mut llm: Option<Box<dyn Llm>> = match &recipe.llm {
        Some(spec) => Some(make_llm(spec, ctx)?),
        None => None,
    };
    let enc = if recipe.entity_embeddings {
        Some(model_gen::load_encoder(&ix.meta.model, ctx)?)
    } else {
        None
    };
    let built = build_graph_with(
        &ix.chunks,
        &ix.path.join("llm-cache"),
        &recipe,
        llm.as_mut().map(|l| &mut **l as &mut dyn Llm),
        enc.as_ref().map(|e| (ix.meta.model.as_str(), e)),
        b.batch_size,
        ctx,
    )?;
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
                "entity_embeddings": g.entity_embedding.as_ref().map(|e| &e.file),
                "extract_s": built.extract_s, "total_s": t0.elapsed().as_secs_f64()})
        );
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
