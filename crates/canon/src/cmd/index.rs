//! `canon index build|update` and `canon search`: retrieval over local documents and man pages.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use canon_rag::build::{self, BuildSpec, Reuse, Stage, Written};
use canon_rag::chunk::ChunkConfig;
use canon_rag::index::Mode;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub cmd: IndexCmd,
}

#[derive(Subcommand, Debug)]
pub enum IndexCmd {
    /// Read, chunk, embed and index documents into a new index folder.
    #[command(after_help = "Examples:
  canon index build --docs notes/ README.md --out docs.idx
  canon index build --man --docs /usr/share/man/man1 --out man1.idx")]
    Build(BuildArgs),
    /// Re-index the files of an index that changed, appeared or disappeared since it was built.
    #[command(after_help = "Example:
  canon index update --index docs.idx")]
    Update(UpdateArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Files or folders to index (folders are walked; .gz files are read decompressed).
    #[arg(long, num_args = 1.., required = true)]
    pub docs: Vec<PathBuf>,
    /// Render man pages with the system `man` (no hyphenation or justification) instead of the
    /// built-in reader.
    #[arg(long)]
    pub man: bool,
    /// The index folder to write (replaced atomically when it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Embedding model.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// Most tokens (embedding tokenizer) per chunk.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Tokens repeated from the previous chunk of the same section.
    #[arg(long, default_value_t = 32)]
    pub overlap: usize,
    /// Texts per embedding forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Build an HNSW graph for dense search when the index has at least this many chunks.
    #[arg(long, default_value_t = canon_rag::index::HNSW_MIN_CHUNKS)]
    pub hnsw_min: usize,
    /// Index at most this many files (the first in path order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Refuse a build whose --docs hold more files than this (a guard against indexing a whole
    /// disk by mistake; --limit takes the first files instead).
    #[arg(long, default_value_t = 100_000)]
    pub max_files: usize,
    /// Read and chunk only: print the counts and the reading time, embed and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The index folder to update.
    #[arg(long)]
    pub index: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Build an HNSW graph for dense search when the index has at least this many chunks.
    #[arg(long, default_value_t = canon_rag::index::HNSW_MIN_CHUNKS)]
    pub hnsw_min: usize,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon search --index man1.idx \"list directory contents sorted by time\"
  canon search --index man1.idx --mode bm25 --k 10 --json \"--block-size\"")]
pub struct SearchArgs {
    /// The index folder.
    #[arg(long)]
    pub index: PathBuf,
    /// The query.
    pub query: String,
    /// Number of passages.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// hybrid (reciprocal rank fusion of dense and BM25), dense or bm25.
    #[arg(long, default_value = "hybrid")]
    pub mode: String,
    /// One JSON object per hit.
    #[arg(long)]
    pub json: bool,
}

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
            "read_chunk_s": w.read_s, "embed_s": w.embed_s, "chunks_per_s": w.embedded as f64 / w.embed_s.max(1e-9),
            "threads": ctx.threads})
    );
    eprintln!(
        "{}",
        json!({"index": out.display().to_string(), "files": w.meta.files.len(), "chunks": w.meta.chunks, "hnsw": w.hnsw, "stats": w.meta.stats, "total_s": t0.elapsed().as_secs_f64()})
    );
}

fn build(b: BuildArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if b.max_tokens == 0 || b.overlap >= b.max_tokens {
        bail!(
            "expected 0 <= --overlap < --max-tokens, found overlap {} and max tokens {}",
            b.overlap,
            b.max_tokens
        );
    }
    let files = build::select_files(&b.docs, b.limit, b.max_files)?;
    let enc = model_gen::load_encoder(&b.model, ctx)?;
    let chunk = ChunkConfig {
        max_tokens: b.max_tokens,
        overlap: b.overlap,
    };
    let t0 = Instant::now();
    if b.dry_run {
        let pb = crate::progress::rate(ctx.quiet, files.len(), "read files/s");
        let (stats, chunks, tokens) = build::dry_run(&files, b.man, chunk, &enc, &mut |done, _| {
            pb.set_position(done as u64)
        });
        pb.finish_and_clear();
        println!(
            "{}",
            json!({"dry_run": true, "files": files.len(), "stats": stats, "chunks": chunks, "tokens": tokens,
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
    let t0 = Instant::now();
    let (files, reuse) = (&plan.files, &plan.reuse);
    let w = build::build_and_write(
        &u.index,
        files,
        spec,
        &enc,
        reuse,
        Some(meta.dim),
        &mut stage_bars(ctx),
    )?;
    report(&u.index, &w, t0, ctx);
    Ok(())
}

pub fn search(a: SearchArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mode: Mode = a.mode.parse()?;
    if a.query.trim().is_empty() {
        bail!("expected a non-empty query, found an empty one");
    }
    if a.k == 0 {
        bail!("expected --k of at least 1, found 0");
    }
    let r = super::ask::open_retriever(&a.index, mode != Mode::Bm25, None, ctx)?;
    let qvec = r.embed(&a.query)?;
    let ix = &r.index;
    let t0 = Instant::now();
    let hits = ix.search(&a.query, qvec.as_deref(), mode, a.k)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    for (n, h) in hits.iter().enumerate() {
        if a.json {
            println!(
                "{}",
                json!({"rank": n + 1, "id": h.id, "score": h.score, "page": h.chunk.page, "section": h.chunk.section,
                    "path": h.chunk.path, "lines": [h.chunk.line_start, h.chunk.line_end], "text": h.chunk.text})
            );
        } else {
            println!(
                "[{}] {} — {} ({}:{}-{}) score {:.4}",
                n + 1,
                h.chunk.page,
                h.chunk.section,
                h.chunk.path,
                h.chunk.line_start,
                h.chunk.line_end,
                h.score
            );
            for l in h.chunk.text.lines().take(6) {
                println!("    {l}");
            }
        }
    }
    if !ctx.quiet && !a.json {
        eprintln!(
            "{}",
            json!({"search_ms": ms, "mode": a.mode, "chunks": ix.meta.chunks})
        );
    }
    Ok(())
}
