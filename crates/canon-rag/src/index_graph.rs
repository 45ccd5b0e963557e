//! An index's graph as `canon graph build|summarize` and `canon index update` make it: the LLM a
//! recipe names, a graph built over an index's chunks from a recipe (entity descriptions embedded
//! when it asks), an index update that keeps its graph or builds it again the way it was built,
//! and the model-written summaries and reports.

use std::path::Path;

use canon_infer::{Engine, EngineConfig, LmGenerator};
use canon_models::{LoadedEncoder, LoadedLm};
use serde_json::json;

use crate::RagError;
use crate::answer::{AnswerError, Result};
use crate::build::{self, BuildSpec, Stage, UpdatePlan, Written};
use crate::chunk::{Chunk, ChunkConfig};
use crate::graph::{self, GraphCarry, GraphRecipe, IndexGraph, KnowledgeGraph, Llm, LlmSpec};
use crate::graph_answer::{LocalLlm, RemoteLlm};
use crate::graph_llm::{self, BatchLlm, CachedBatch, EngineLlm, Serial};
use crate::index::Index;
use crate::opts::GraphSummarizeArgs;

/// Loads a language model by name (the caller's loader and its settings).
pub type LoadLm<'a> =
    dyn FnMut(&str) -> std::result::Result<LoadedLm, Box<dyn std::error::Error + Send + Sync>> + 'a;

/// The chat model `spec` names: the server at its URL, or the local model `load` loads.
pub fn make_llm(spec: &LlmSpec, load: &mut LoadLm<'_>) -> Result<Box<dyn Llm>> {
    Ok(match &spec.url {
        Some(u) => Box::new(RemoteLlm::new(u, &spec.remote_model)?),
        None => Box::new(LocalLlm {
            lm: LmGenerator::new(load(&spec.model).map_err(AnswerError::Load)?),
            name: spec.model.clone(),
        }),
    })
}

impl GraphRecipe {
    /// The recipe of a graph saved before recipes were recorded: the fast extractor with
    /// `canon graph build`'s defaults and entity embeddings.
    pub fn fast_defaults() -> GraphRecipe {
        GraphRecipe {
            opts: graph::BuildOpts {
                gleanings: 1,
                max_tokens: 400,
                limit: None,
                max_cluster_size: 10,
                report_tokens: 600,
                min_phrase_units: 3,
            },
            llm: None,
            entity_embeddings: true,
        }
    }
}

/// Builds the graph over `chunks` as `recipe` says (the LLM's calls cached in `cache_dir`), with
/// the entity descriptions embedded by `enc` (the index's model, by name) when the recipe asks.
/// `progress(stage, done, total)` follows [`Stage::Extract`] (when an LLM extracts) and
/// [`Stage::EmbedEntities`].
pub fn build_graph(
    chunks: &[Chunk],
    cache_dir: &Path,
    recipe: &GraphRecipe,
    llm: Option<&mut dyn Llm>,
    enc: Option<(&str, &LoadedEncoder)>,
    batch_size: usize,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<IndexGraph> {
    let mut built =
        graph::build_chunks_graph(chunks, cache_dir, llm, &recipe.opts, &mut |d, n| {
            progress(Stage::Extract, d, n)
        })?;
    built.graph.recipe = Some(recipe.clone());
    if recipe.entity_embeddings
        && let Some((model, enc)) = enc
    {
        crate::graph_answer::embed_entities(
            &mut built.graph,
            model,
            enc,
            batch_size,
            &mut |d, n| progress(Stage::EmbedEntities, d, n),
        )?;
    }
    Ok(built)
}

/// An error and its causes on one line, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// `canon index update`: reads `plan`'s changed files again (embedding with `enc`, the index's
/// model), writes the index at `dir`, and carries its graph: kept when the chunks are unchanged,
/// otherwise built again with its recipe (a graph from before recipes were recorded:
/// [`GraphRecipe::fast_defaults`]), the LLM it names made by `load` on first use. The chunking
/// limits are not stored; an update uses the defaults of `index build`. `progress` follows the
/// index's stages, `graph_progress` the graph's.
#[allow(clippy::too_many_arguments)]
pub fn update_index(
    dir: &Path,
    plan: &UpdatePlan,
    enc: &LoadedEncoder,
    batch_size: usize,
    hnsw_min: usize,
    load: &mut LoadLm<'_>,
    progress: &mut dyn FnMut(Stage, usize, usize),
    graph_progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<(Written, GraphCarry)> {
    let meta = &plan.meta;
    let spec = BuildSpec {
        model: &meta.model,
        man: meta.man_rendered,
        roots: meta.roots.clone(),
        chunk: ChunkConfig::default(),
        batch_size,
        hnsw_min,
    };
    let old_graph = if dir.join(graph::GRAPH_FILE).exists() {
        Some(KnowledgeGraph::load_unchecked(dir)?)
    } else {
        None
    };
    let recipe = old_graph
        .as_ref()
        .map(|g| g.recipe.clone().unwrap_or_else(GraphRecipe::fast_defaults));
    let mut llm: Option<Box<dyn Llm>> = None;
    let mut carried = GraphCarry::None;
    let invalid = |e: AnswerError| RagError::Invalid(chain(&e));
    let w = build::build_and_write_with(
        dir,
        &plan.files,
        spec,
        enc,
        &plan.reuse,
        Some(meta.dim),
        progress,
        &mut |staged, chunks| {
            let mut rebuild = |chunks: &[Chunk], cache: &Path| {
                let r = recipe
                    .as_ref()
                    .ok_or_else(|| RagError::Invalid("no graph recipe to rebuild with".into()))?;
                if llm.is_none()
                    && let Some(spec) = &r.llm
                {
                    llm = Some(make_llm(spec, load).map_err(invalid)?);
                }
                let lm = llm.as_mut().map(|l| &mut **l as &mut dyn Llm);
                let enc = Some((meta.model.as_str(), enc));
                build_graph(chunks, cache, r, lm, enc, batch_size, graph_progress)
                    .map(|b| b.graph)
                    .map_err(invalid)
            };
            carried = graph::carry_graph(dir, old_graph.as_ref(), staged, chunks, &mut rebuild)?;
            Ok(())
        },
    )?;
    Ok((w, carried))
}

/// Loads an embedding model by name (the caller's loader and its settings).
pub type LoadEncoder<'a> = dyn FnMut(&str) -> std::result::Result<LoadedEncoder, Box<dyn std::error::Error + Send + Sync>>
    + 'a;

/// Counts a text's tokens the way the summarizing model does.
type TokenCount = Box<dyn Fn(&str) -> usize>;

/// `canon graph summarize`: model-written description summaries and community reports for the
/// graph of the index `a.index` names, through the server at `--url` or the local model `load`
/// loads (on the batched engine, `--parallel` slots); the LLM's answers are cached in the index.
/// Summarised descriptions are embedded again (by `load_encoder`) when the graph has entity
/// vectors. `progress` follows [`Stage::Summaries`], [`Stage::EmbedEntities`] and
/// [`Stage::Reports`]. Returns the figures `canon graph summarize` prints.
pub fn summarize(
    a: &GraphSummarizeArgs,
    load: &mut LoadLm<'_>,
    load_encoder: &mut LoadEncoder<'_>,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<serde_json::Value> {
    let stages = a.check()?;
    let ix = Index::open(&a.index, None)?;
    let mut g = KnowledgeGraph::load(&a.index, &ix.chunks)?;
    let t0 = std::time::Instant::now();
    let (mut remote, mut serial, mut local);
    let (llm, count): (&mut dyn BatchLlm, TokenCount) = match &a.url {
        Some(u) => {
            remote = RemoteLlm::new(u, &a.remote_model)?;
            serial = Serial(&mut remote as &mut dyn Llm);
            (&mut serial, Box::new(graph::approx_tokens))
        }
        None => {
            let lm = load(&a.model).map_err(AnswerError::Load)?;
            let template = lm.chat_template.clone();
            let cfg = EngineConfig {
                slots: a.parallel,
                queue_limit: a.parallel.max(64),
                ..EngineConfig::default()
            };
            local = EngineLlm::new(Engine::start(lm, cfg)?, template, &a.model);
            let tok = local.engine.tokenizer().clone();
            let count = move |s: &str| tok.encode(s, false).map_or(s.len(), |t| t.len());
            (&mut local, Box::new(count))
        }
    };
    let mut cache = CachedBatch::new(llm, &a.index.join("llm-cache"))?;
    let mut out = json!({"graph": a.index.join(graph::GRAPH_FILE).display().to_string()});
    if stages.descriptions {
        let st = graph_llm::summarize_descriptions(
            &mut g,
            &mut cache,
            a.parallel,
            a.limit,
            4000,
            &mut |d, n| progress(Stage::Summaries, d, n),
        );
        out["descriptions"] = json!(st);
        // Entity vectors embed the descriptions: embed the summarised ones again.
        if g.entity_embedding.is_some() && g.entity_vectors().is_none() {
            let enc = load_encoder(&ix.meta.model).map_err(AnswerError::Load)?;
            crate::graph_answer::embed_entities(&mut g, &ix.meta.model, &enc, 32, &mut |d, n| {
                progress(Stage::EmbedEntities, d, n)
            })?;
        }
        g.save(&a.index)?;
    }
    if stages.reports {
        let st = graph_llm::write_reports(
            &mut g,
            &mut cache,
            a.parallel,
            a.limit,
            a.context,
            a.report_tokens,
            &*count,
            &mut |d, n| progress(Stage::Reports, d, n),
        );
        out["reports"] = json!(st);
        g.save(&a.index)?;
    }
    let llm_reports = g.reports.iter().filter(|r| r.llm.is_some()).count();
    out["model_reports"] = json!(format!("{llm_reports} of {}", g.reports.len()));
    out["cache_hits"] = json!(cache.hits);
    out["calls_made"] = json!(cache.misses);
    out["seconds"] = json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_without_a_recipe_is_rebuilt_with_graph_builds_defaults() {
        let r = GraphRecipe::fast_defaults();
        assert!(r.llm.is_none() && r.entity_embeddings);
        assert_eq!((r.opts.gleanings, r.opts.max_tokens), (1, 400));
        assert_eq!((r.opts.max_cluster_size, r.opts.report_tokens), (10, 600));
        assert_eq!((r.opts.min_phrase_units, r.opts.limit), (3, None));
    }
}
