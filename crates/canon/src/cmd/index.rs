//! `canon index build|update` and `canon search`: retrieval over local documents and man pages.
//! The settings are `canon_rag::opts`, the printed hits `canon_rag::render::hits`.

use std::time::Instant;

use canon_rag::build::{self, BuildSpec, Reuse, Stage};
use canon_rag::graph::GraphCarry;
use canon_rag::index::Mode;
use canon_rag::opts::{BuildArgs, IndexArgs, IndexCmd, SearchArgs, UpdateArgs};
use canon_rag::{index_graph, render};
use serde_json::json;

use crate::progress::Stages;
use crate::{Ctx, model_gen};

/// Chunks to embed from which `index build` suggests the 8-bit embedding model.
const LARGE_BUILD: usize = 20_000;

pub fn run(a: IndexArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.cmd {
        IndexCmd::Build(b) => build(b, ctx),
        IndexCmd::Update(u) => update(u, ctx),
    }
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
        let secs = t0.elapsed().as_secs_f64();
        print!("{}", render::dry_run(files.len(), &d, secs, ctx.threads));
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
    let (reuse, mut bars) = (Reuse::new(), Stages::new(ctx.quiet));
    let hint = !ctx.quiet && !b.model.to_ascii_lowercase().ends_with(":q8_0");
    let mut on = |s: Stage, d, n| {
        if hint && s == Stage::Embed && d == 0 && n >= LARGE_BUILD {
            eprintln!(
                "hint: {n} chunks to embed; --model {}:q8_0 runs the embedding model on 8-bit weights, about twice as fast (cosine to the f32 vectors about 0.998 or more)",
                b.model
            );
        }
        bars.on(s.label(), d, n)
    };
    let w = build::build_and_write(&b.out, &files, spec, &enc, &reuse, None, &mut on)?;
    if !ctx.quiet {
        let secs = t0.elapsed().as_secs_f64();
        eprint!("{}", render::written(&b.out, &w, ctx.threads, secs));
    }
    Ok(())
}

fn update(u: UpdateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let plan = build::plan_update(&u.index)?;
    let enc = model_gen::load_encoder(&plan.meta.model, ctx)?;
    let t0 = Instant::now();
    let mut load = |m: &str| model_gen::load_lm(m, ctx).map_err(Into::into);
    let (mut bars, mut graph_bars) = (Stages::new(ctx.quiet), Stages::new(ctx.quiet));
    let (w, carried) = index_graph::update_index(
        &u.index,
        &plan,
        &enc,
        u.batch_size,
        u.hnsw_min,
        &mut load,
        &mut |s, d, n| bars.on(s.label(), d, n),
        &mut |s, d, n| graph_bars.on(s.label(), d, n),
    )?;
    if !ctx.quiet {
        let secs = t0.elapsed().as_secs_f64();
        eprint!("{}", render::written(&u.index, &w, ctx.threads, secs));
        if carried != GraphCarry::None {
            eprintln!("{}", json!({"graph": carried}));
        }
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
