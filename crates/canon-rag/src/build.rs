//! Building and updating an index with a real embedding model: read and chunk the files, embed
//! the new chunks (reusing the vectors of unchanged files), and write the index.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use canon_models::LoadedEncoder;
use serde::Serialize;

use crate::answer::{AnswerError, Result};
use crate::chunk::{Chunk, ChunkConfig, chunk_document};
use crate::index::{FORMAT, FileEntry, Index, Meta, VERSION, file_stamp, write_index_staged};
use crate::reader::{self, ReadStats};

/// Files read, chunked and embedded, ready to write as an index.
pub struct Built {
    pub files: Vec<FileEntry>,
    pub chunks: Vec<Chunk>,
    pub vectors: Vec<f32>,
    pub stats: ReadStats,
    /// Chunks embedded now (the rest were reused).
    pub embedded: usize,
    /// Distinct texts among them: the model's forward passes (identical texts share one).
    pub unique_embedded: usize,
    pub read_s: f64,
    pub embed_s: f64,
}

/// The stages of a build (and of a graph built over an index), for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Read,
    Embed,
    /// A graph's text units through the LLM extractor.
    Extract,
    /// A graph's entity descriptions embedded.
    EmbedEntities,
    /// A graph's entity descriptions summarised by a model.
    Summaries,
    /// A graph's community reports written by a model.
    Reports,
}

impl Stage {
    /// The label of the stage's progress bar.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Read => "read files/s",
            Stage::Embed => "embed chunks/s",
            Stage::Extract => "extract units/s",
            Stage::EmbedEntities => "embed entities/s",
            Stage::Summaries => "summaries",
            Stage::Reports => "reports",
        }
    }
}

/// Unchanged files' entries, chunks and vectors (by path) in an index, for `update`.
pub type Reuse = HashMap<String, (FileEntry, Vec<Chunk>, Vec<f32>)>;

/// Reads, chunks and embeds `files`; `reuse` maps an unchanged path to its old chunks and vectors.
///
/// `progress(stage, done, total)` is called with `done = 0` when a stage starts, after each step,
/// and with `done = total` when it ends.
pub fn build_files(
    files: &[(PathBuf, reader::Kind)],
    render_man: bool,
    cfg: ChunkConfig,
    enc: &LoadedEncoder,
    batch_size: usize,
    reuse: &Reuse,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<Built> {
    let t0 = Instant::now();
    let mut stats = ReadStats::default();
    let mut entries = Vec::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut old_vecs: Vec<Option<Vec<f32>>> = Vec::new();
    let count = |s: &str| {
        enc.embedder
            .token_ids(s)
            .map(|t| t.len())
            .unwrap_or_else(|_| s.split_whitespace().count())
    };
    progress(Stage::Read, 0, files.len());
    for (n, (p, k)) in files.iter().enumerate() {
        progress(Stage::Read, n + 1, files.len());
        let key = p.display().to_string();
        let (size, mtime) = file_stamp(p)?;
        let start = chunks.len();
        if let Some((e, cs, vs)) = reuse
            .get(&key)
            .filter(|(e, _, _)| e.size == size && e.mtime == mtime)
        {
            stats.read += 1;
            let dim = enc.embedder.dim();
            for (i, c) in cs.iter().enumerate() {
                chunks.push(c.clone());
                old_vecs.push(Some(vs[i * dim..(i + 1) * dim].to_vec()));
            }
            entries.push(FileEntry {
                chunk_start: start,
                chunk_end: chunks.len(),
                ..e.clone()
            });
            continue;
        }
        match reader::read(p, *k, render_man) {
            Ok(doc) => {
                stats.read += 1;
                for c in chunk_document(&doc, cfg, &count) {
                    chunks.push(c);
                    old_vecs.push(None);
                }
                entries.push(FileEntry {
                    path: key,
                    size,
                    mtime,
                    chunk_start: start,
                    chunk_end: chunks.len(),
                });
            }
            Err(s) => stats.count(s),
        }
    }
    progress(Stage::Read, files.len(), files.len());
    let read_s = t0.elapsed().as_secs_f64();
    let todo: Vec<usize> = (0..chunks.len())
        .filter(|&i| old_vecs[i].is_none())
        .collect();
    let dim = enc.embedder.dim();
    let mut vectors = vec![0f32; chunks.len() * dim];
    for (i, v) in old_vecs.iter().enumerate() {
        if let Some(v) = v {
            vectors[i * dim..(i + 1) * dim].copy_from_slice(v);
        }
    }
    let t1 = Instant::now();
    progress(Stage::Embed, 0, todo.len());
    // Identical chunk texts (boilerplate shared by many pages) are embedded once; the unique
    // texts go to the model longest first over the whole build, so each batch pads to a length
    // close to its rows' own.
    let plan = embed_plan(&todo, &chunks);
    let mut done = 0;
    for group in plan.unique.chunks(batch_size.max(1) * 8) {
        let texts: Vec<String> = group.iter().map(|u| chunks[u.0].indexed_text()).collect();
        let vs = enc.embedder.embed(&texts, batch_size)?;
        for (u, mut v) in group.iter().zip(vs) {
            crate::dense::normalize(&mut v);
            for &i in &plan.copies[u.1] {
                vectors[i * dim..(i + 1) * dim].copy_from_slice(&v);
            }
            done += plan.copies[u.1].len();
        }
        progress(Stage::Embed, done, todo.len());
    }
    progress(Stage::Embed, todo.len(), todo.len());
    let embed_s = t1.elapsed().as_secs_f64();
    Ok(Built {
        files: entries,
        chunks,
        vectors,
        stats,
        embedded: todo.len(),
        unique_embedded: plan.unique.len(),
        read_s,
        embed_s,
    })
}

/// The embedding work of a build: each distinct text once (`unique`: a representative chunk id
/// and its slot in `copies`), longest first by token count, and the chunk ids sharing each text.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedPlan {
    pub unique: Vec<(usize, usize)>,
    pub copies: Vec<Vec<usize>>,
}

/// Groups the chunks `todo` by identical indexed text (the text the model embeds) and orders the
/// groups longest first in bytes (a proxy for tokens; ties by first chunk id), for
/// [`build_files`].
pub fn embed_plan(todo: &[usize], chunks: &[Chunk]) -> EmbedPlan {
    let mut slot: HashMap<String, usize> = HashMap::new();
    let mut copies: Vec<Vec<usize>> = Vec::new();
    let mut firsts: Vec<(usize, usize, usize)> = Vec::new();
    for &i in todo {
        let t = chunks[i].indexed_text();
        match slot.get(&t) {
            Some(&s) => copies[s].push(i),
            None => {
                let n = t.len();
                slot.insert(t, copies.len());
                firsts.push((n, i, copies.len()));
                copies.push(vec![i]);
            }
        }
    }
    firsts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    EmbedPlan {
        unique: firsts.into_iter().map(|(_, i, s)| (i, s)).collect(),
        copies,
    }
}

/// What a build would index, without embedding anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    pub stats: ReadStats,
    pub chunks: usize,
    pub tokens: usize,
    /// Distinct chunk texts (what a build embeds) and their tokens.
    pub unique_chunks: usize,
    pub unique_tokens: usize,
    /// Distinct chunk bodies (section and text, without the page name): what sharing vectors
    /// between pages' identical passages would embed.
    pub unique_bodies: usize,
}

/// What a build would index: files read (with skip counts), chunks and their tokens, and the
/// distinct texts among them. `progress(done, total)` follows the files.
pub fn dry_run(
    files: &[(PathBuf, reader::Kind)],
    render_man: bool,
    cfg: ChunkConfig,
    enc: &LoadedEncoder,
    progress: &mut dyn FnMut(usize, usize),
) -> DryRun {
    let mut stats = ReadStats::default();
    let (mut chunks, mut tokens) = (0usize, 0usize);
    let (mut unique_chunks, mut unique_tokens) = (0usize, 0usize);
    let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut bodies: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let count = |s: &str| {
        enc.embedder
            .token_ids(s)
            .map(|t| t.len())
            .unwrap_or_else(|_| s.split_whitespace().count())
    };
    progress(0, files.len());
    for (n, (p, k)) in files.iter().enumerate() {
        progress(n + 1, files.len());
        match reader::read(p, *k, render_man) {
            Ok(doc) => {
                stats.read += 1;
                for c in chunk_document(&doc, cfg, &count) {
                    let t = c.indexed_text();
                    let n = count(&t);
                    chunks += 1;
                    tokens += n;
                    bodies.insert(crate::graph::fnv64(
                        format!("{}\n{}", c.section, c.text).as_bytes(),
                    ));
                    if seen.insert(crate::graph::fnv64(t.as_bytes())) {
                        unique_chunks += 1;
                        unique_tokens += n;
                    }
                }
            }
            Err(s) => stats.count(s),
        }
    }
    DryRun {
        stats,
        chunks,
        tokens,
        unique_chunks,
        unique_tokens,
        unique_bodies: bodies.len(),
    }
}

/// Writes `built` as the index `out` (with an HNSW graph from `hnsw_min` chunks on); returns its
/// metadata and whether it has the graph.
pub fn write_built(
    out: &std::path::Path,
    model: &str,
    man: bool,
    roots: Vec<String>,
    built: Built,
    hnsw_min: usize,
) -> Result<(Meta, bool)> {
    write_built_with(out, model, man, roots, built, hnsw_min, &mut |_, _| Ok(()))
}

/// Writes more files into an index's staged folder before it replaces the old one:
/// `extra(folder, chunks)`.
pub type Extra<'a> = dyn FnMut(&std::path::Path, &[Chunk]) -> Result<()> + 'a;

/// [`write_built`] with [`Extra`] files.
pub fn write_built_with(
    out: &std::path::Path,
    model: &str,
    man: bool,
    roots: Vec<String>,
    built: Built,
    hnsw_min: usize,
    extra: &mut Extra<'_>,
) -> Result<(Meta, bool)> {
    if built.chunks.is_empty() {
        return Err(AnswerError::Invalid(format!(
            "expected text to index, found none ({} files skipped)",
            built.stats.skipped()
        )));
    }
    let dim = built.vectors.len() / built.chunks.len();
    let meta = Meta {
        format: FORMAT.into(),
        version: VERSION,
        model: model.into(),
        dim,
        chunks: built.chunks.len(),
        man_rendered: man,
        roots,
        files: built.files,
        stats: built.stats,
    };
    let hnsw = built.chunks.len() >= hnsw_min;
    let chunks = &built.chunks;
    let mut err: Option<AnswerError> = None;
    let res = write_index_staged(out, &meta, chunks, &built.vectors, hnsw, &mut |dir| {
        extra(dir, chunks).map_err(|e| {
            let m = e.to_string();
            err = Some(e);
            crate::RagError::Invalid(m)
        })
    });
    if let Some(e) = err {
        return Err(e);
    }
    res?;
    Ok((meta, hnsw))
}

/// The reusable part of an existing index: each file's entry, chunks and vectors by path.
pub fn reuse_of(old: &Index) -> Reuse {
    let meta = &old.meta;
    let mut reuse = HashMap::new();
    for e in &meta.files {
        let cs = old.chunks[e.chunk_start..e.chunk_end].to_vec();
        let vs = old.vectors()[e.chunk_start * meta.dim..e.chunk_end * meta.dim].to_vec();
        reuse.insert(e.path.clone(), (e.clone(), cs, vs));
    }
    reuse
}

/// The files an index build over `roots` reads: the roots checked and walked, the first `limit`
/// kept; more than `max_files` (or none) is an error.
pub fn select_files(
    roots: &[PathBuf],
    limit: Option<usize>,
    max_files: usize,
) -> Result<Vec<(PathBuf, reader::Kind)>> {
    reader::check_roots(roots)?;
    let mut files = reader::walk(roots)?;
    if let Some(l) = limit {
        files.truncate(l);
    }
    if files.len() > max_files {
        return Err(AnswerError::Invalid(format!(
            "--docs hold {} files, more than the limit of {} (--max-files raises it; --limit N \
             indexes the first N)",
            files.len(),
            max_files
        )));
    }
    if files.is_empty() {
        return Err(AnswerError::Invalid(
            "expected readable files under --docs, found none".into(),
        ));
    }
    Ok(files)
}

/// What an update starts from: the old index's metadata, the files now under its roots, and the
/// old chunks and vectors of each file (reused where the file is unchanged).
pub struct UpdatePlan {
    pub meta: Meta,
    pub files: Vec<(PathBuf, reader::Kind)>,
    pub reuse: Reuse,
}

/// Opens the index at `dir` and walks its roots again.
pub fn plan_update(dir: &std::path::Path) -> Result<UpdatePlan> {
    let meta = crate::index::read_meta(dir, None)?;
    let old = Index::open(dir, Some(&meta.model))?;
    let roots: Vec<PathBuf> = meta.roots.iter().map(PathBuf::from).collect();
    reader::check_roots(&roots)?;
    let files = reader::walk(&roots)?;
    let reuse = reuse_of(&old);
    Ok(UpdatePlan { meta, files, reuse })
}

/// An index written: its metadata, whether it has the HNSW graph, and the build's figures.
pub struct Written {
    pub meta: Meta,
    pub hnsw: bool,
    pub files_read: usize,
    pub skipped: usize,
    pub chunks: usize,
    pub embedded: usize,
    /// Distinct texts embedded (the model's rows).
    pub unique_embedded: usize,
    pub read_s: f64,
    pub embed_s: f64,
}

/// How an index is built: the source it names and how its files are chunked and embedded.
pub struct BuildSpec<'a> {
    /// The embedding model's name, stored in the index.
    pub model: &'a str,
    /// Man pages are rendered before chunking.
    pub man: bool,
    /// The roots, as stored in the index (an update walks them again).
    pub roots: Vec<String>,
    pub chunk: ChunkConfig,
    pub batch_size: usize,
    /// Chunks from which the index gets an HNSW graph.
    pub hnsw_min: usize,
}

/// Reads, chunks and embeds `files` (reusing `reuse`'s unchanged files) and writes the index at
/// `out`. The embedding model must be as wide as `expect_dim` when given (an update).
pub fn build_and_write(
    out: &std::path::Path,
    files: &[(PathBuf, reader::Kind)],
    spec: BuildSpec<'_>,
    enc: &LoadedEncoder,
    reuse: &Reuse,
    expect_dim: Option<usize>,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<Written> {
    build_and_write_with(
        out,
        files,
        spec,
        enc,
        reuse,
        expect_dim,
        progress,
        &mut |_, _| Ok(()),
    )
}

/// [`build_and_write`] with [`Extra`] files written into the staged index.
#[allow(clippy::too_many_arguments)]
pub fn build_and_write_with(
    out: &std::path::Path,
    files: &[(PathBuf, reader::Kind)],
    spec: BuildSpec<'_>,
    enc: &LoadedEncoder,
    reuse: &Reuse,
    expect_dim: Option<usize>,
    progress: &mut dyn FnMut(Stage, usize, usize),
    extra: &mut Extra<'_>,
) -> Result<Written> {
    if let Some(dim) = expect_dim
        && enc.embedder.dim() != dim
    {
        return Err(AnswerError::Invalid(format!(
            "expected a {dim}-wide embedding model for this index, found {}",
            enc.embedder.dim()
        )));
    }
    let built = build_files(
        files,
        spec.man,
        spec.chunk,
        enc,
        spec.batch_size,
        reuse,
        progress,
    )?;
    let (files_read, skipped, chunks) =
        (built.stats.read, built.stats.skipped(), built.chunks.len());
    let (embedded, unique_embedded, read_s, embed_s) = (
        built.embedded,
        built.unique_embedded,
        built.read_s,
        built.embed_s,
    );
    let (meta, hnsw) = write_built_with(
        out,
        spec.model,
        spec.man,
        spec.roots,
        built,
        spec.hnsw_min,
        extra,
    )?;
    Ok(Written {
        meta,
        hnsw,
        files_read,
        skipped,
        chunks,
        embedded,
        unique_embedded,
        read_s,
        embed_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_plan_embeds_each_text_once_longest_first() {
        let c = |page: &str, text: &str| Chunk {
            path: format!("/m/{page}"),
            page: page.into(),
            section: "NAME".into(),
            line_start: 1,
            line_end: 1,
            text: text.into(),
        };
        let chunks = vec![
            c("a(1)", "short"),
            c("b(1)", "a longer shared text"),
            c("a(1)", "short"),
            c("b(1)", "a longer shared text"),
            c("b(1)", "a longer shared text"),
            c("c(1)", "mid text"),
        ];
        // Chunk 0 was reused from an earlier build: not embedded.
        let p = embed_plan(&[1, 2, 3, 4, 5], &chunks);
        let firsts: Vec<usize> = p.unique.iter().map(|u| u.0).collect();
        assert_eq!(firsts, [1, 5, 2]);
        let copies: Vec<&Vec<usize>> = p.unique.iter().map(|u| &p.copies[u.1]).collect();
        assert_eq!(copies, [&vec![1, 3, 4], &vec![5], &vec![2]]);
        assert_eq!(p.copies.iter().map(Vec::len).sum::<usize>(), 5);
    }
}
