//! `canon index build|update` and `canon search`: retrieval over local documents and man pages.
//! The settings are `canon_rag::opts`, the printed hits `canon_rag::render::hits`.

use std::time::Instant;

use canon_rag::build::{self, BuildSpec, Reuse, Stage, Written};
use canon_rag::chunk::ChunkConfig;
use canon_rag::graph;
use canon_rag::index::Mode;
use canon_rag::opts::{BuildArgs, IndexArgs, IndexCmd, SearchArgs, UpdateArgs};
use serde_json::json;

use crate::{Ctx, model_gen};

pub fn run(a: IndexArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.cmd {
        IndexCmd::Build(b) => build(b, ctx),
        IndexCmd::Update(u) => update(u, ctx),
    }
}

/// A progress bar per build stage, replaced when the stage changes.
fn stage_bars(ctx: &Ctx) -> impl FnMut(Stage, usize, usize) + '_ {
    let mut cur: Option<(Stage, indicatif::ProgressBar)> = None;
    move |stage, done, total| {
        if cur.as_ref().is_none_or(|(s, _)| *s != stage) {
            if let Some((_, b)) = cur.take() {
                b.finish_and_clear();
            }
            let what = match stage {
                Stage::Read => "read files/s",
                Stage::Embed => "embed chunks/s",
            };
            cur = Some((stage, crate::progress::rate(ctx.quiet, total, what)));
        }
        if let Some((_, b)) = &cur {
            b.set_position(done as u64);
            if done == total {
                b.finish_and_clear();
            }
        }
    }
}

/// Reads, chunks and embeds `files` with progress bars, and reports the figures on stderr.
/// Prints a written index's figures (unless quiet).
fn report(out: &std::path::Path, w: &Written, t0: Instant, ctx: &Ctx) {
    if ctx.quiet {
        return;
    }
    eprintln!(
        "{}",
        json!({"files_read": w.files_read, "skipped": w.skipped, "chunks": w.chunks, "embedded": w.embedded,
            "unique_embedded": w.unique_embedded,
            "read_chunk_s": w.read_s, "embed_s": w.embed_s, "chunks_per_s": w.embedded as f64 / w.embed_s.max(1e-9),
            "threads": ctx.threads})
    );
    eprintln!(
        "{}",
        json!({"index": out.display().to_string(), "files": w.meta.files.len(), "chunks": w.meta.chunks, "hnsw": w.hnsw, "stats": w.meta.stats, "total_s": t0.elapsed().as_secs_f64()})
    );
}

fn build(b: BuildArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let chunk = b.chunk_config()?;
    let files = build::select_files(&b.docs, b.limit, b.max_files)?;
    let enc = model_gen::load_encoder(&b.model, ctx)?;
    let t0 = Instant::now();
    if b.dry_run {
        let pb = crate::progress::rate(ctx.quiet, files.len(), "read files/s");
        let d = build::dry_run(&files, b.man, chunk, &enc, &mut |done, _| {
            pb.set_position(done as u64)
        });
        pb.finish_and_clear();
        println!(
            "{}",
            json!({"dry_run": true, "files": files.len(), "stats": d.stats, "chunks": d.chunks, "tokens": d.tokens,
                "unique_chunks": d.unique_chunks, "unique_tokens": d.unique_tokens, "unique_bodies": d.unique_bodies,
                "read_chunk_s": t0.elapsed().as_secs_f64(), "threads": ctx.threads})
        );
        return Ok(());
    }
    let spec = BuildSpec {
        model: &b.model,
        man: b.man,
        roots: b.docs.iter().map(|p| p.display().to_string()).collect(),
        chunk,
        batch_size: b.batch_size,
        hnsw_min: b.hnsw_min,
    };
    let reuse = Reuse::new();
    let w = build::build_and_write(
        &b.out,
        &files,
        spec,
        &enc,
        &reuse,
        None,
        &mut stage_bars(ctx),
    )?;
    report(&b.out, &w, t0, ctx);
    Ok(())
}

fn update(u: UpdateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let plan = build::plan_update(&u.index)?;
    let meta = &plan.meta;
    let enc = model_gen::load_encoder(&meta.model, ctx)?;
    // The chunking limits are not stored; updates use the defaults of `index build`.
    let spec = BuildSpec {
        model: &meta.model,
        man: meta.man_rendered,
        roots: meta.roots.clone(),
        chunk: ChunkConfig::default(),
        batch_size: u.batch_size,
        hnsw_min: u.hnsw_min,
    };
    // The index's graph, kept when the chunks are unchanged and otherwise built again the way
    // it was built (a graph from before recipes were recorded: the fast extractor's defaults).
    let old_graph = if u.index.join(graph::GRAPH_FILE).exists() {
        Some(graph::KnowledgeGraph::load_unchecked(&u.index)?)
    } else {
        None
    };
    let recipe = old_graph.as_ref().map(|g| {
        g.recipe.clone().unwrap_or(graph::GraphRecipe {
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
        })
    });
    let mut llm: Option<Box<dyn graph::Llm>> = None;
    let mut carried = graph::GraphCarry::None;
    let t0 = Instant::now();
    let (files, reuse) = (&plan.files, &plan.reuse);
    let w = build::build_and_write_with(
        &u.index,
        files,
        spec,
        &enc,
        reuse,
        Some(meta.dim),
        &mut stage_bars(ctx),
        &mut |dir, chunks| {
            let mut rebuild = |chunks: &[canon_rag::chunk::Chunk], cache: &std::path::Path| {
                let r = recipe.as_ref().ok_or_else(|| {
                    canon_rag::RagError::Invalid("no graph recipe to rebuild with".into())
                })?;
                if llm.is_none()
                    && let Some(spec) = &r.llm
                {
                    llm = Some(
                        super::graph::make_llm(spec, ctx)
                            .map_err(|e| canon_rag::RagError::Invalid(format!("{e:#}")))?,
                    );
                }
                super::graph::build_graph_with(
                    chunks,
                    cache,
                    r,
                    llm.as_mut().map(|l| &mut **l as &mut dyn graph::Llm),
                    Some((meta.model.as_str(), &enc)),
                    u.batch_size,
                    ctx,
                )
                .map(|b| b.graph)
                .map_err(|e| canon_rag::RagError::Invalid(format!("{e:#}")))
            };
            carried = graph::carry_graph(&u.index, old_graph.as_ref(), dir, chunks, &mut rebuild)?;
            Ok(())
        },
    )?;
    report(&u.index, &w, t0, ctx);
    if !ctx.quiet && carried != graph::GraphCarry::None {
        eprintln!("{}", json!({"graph": carried}));
    }
    Ok(())
}

pub fn search(a: SearchArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mode = a.check()?;
    let r = super::ask::open_retriever(&a.index, mode != Mode::Bm25, None, ctx)?;
    let qvec = r.embed(&a.query)?;
    let ix = &r.index;
    let t0 = Instant::now();
    let hits = ix.search(&a.query, qvec.as_deref(), mode, a.k)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    print!("{}", canon_rag::render::hits(&hits, a.json));
    if !ctx.quiet && !a.json {
        eprintln!(
            "{}",
            json!({"search_ms": ms, "mode": a.mode, "chunks": ix.meta.chunks})
        );
    }
    Ok(())
}
