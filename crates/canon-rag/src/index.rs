//! The on-disk index: a folder holding
//!
//! * `meta.json`: format name, format version, embedding model id, vector width, chunk count,
//!   the indexed files (path, size, modification time, chunk range) and the read statistics;
//! * `chunks.jsonl`: one [`Chunk`] per line, in id order;
//! * `vectors.f32`: chunk embeddings, L2-normalised, row-major little-endian f32 (memory-mapped);
//! * `bm25.bin`: the BM25 inverted index ([`Bm25::to_bytes`]).
//!
//! An index is written into a temporary sibling folder and renamed into place, so a failed build
//! leaves the previous index untouched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bm25::Bm25;
use crate::chunk::Chunk;
use crate::reader::ReadStats;
use crate::{RagError, Result, dense, fuse, io_err};

pub const FORMAT: &str = "canon-rag-index";
/// Indexes with at least this many chunks get an HNSW graph (`hnsw.bin`) for dense search.
pub const HNSW_MIN_CHUNKS: usize = 20_000;
pub const VERSION: u32 = 1;

/// One indexed file and its chunks `[chunk_start, chunk_end)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub mtime: u64,
    pub chunk_start: usize,
    pub chunk_end: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub model: String,
    pub dim: usize,
    pub chunks: usize,
    pub man_rendered: bool,
    /// The `--docs` paths the index was built from (`index update` walks them again).
    #[serde(default)]
    pub roots: Vec<String>,
    pub files: Vec<FileEntry>,
    pub stats: ReadStats,
}

/// Search mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Hybrid,
    Dense,
    Bm25,
}

impl std::str::FromStr for Mode {
    type Err = RagError;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "hybrid" => Ok(Mode::Hybrid),
            "dense" => Ok(Mode::Dense),
            "bm25" => Ok(Mode::Bm25),
            o => Err(RagError::Invalid(format!(
                "expected a search mode hybrid, dense or bm25, found '{o}'"
            ))),
        }
    }
}

/// File size and modification time (seconds).
pub fn file_stamp(p: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(p).map_err(|e| io_err(p, e))?;
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok((m.len(), t))
}

/// Writes a complete index to `out` atomically. `vectors` holds `chunks.len()` rows of `dim`.
/// An HNSW graph is added from [`HNSW_MIN_CHUNKS`] chunks on.
pub fn write_index(out: &Path, meta: &Meta, chunks: &[Chunk], vectors: &[f32]) -> Result<()> {
    write_index_with(out, meta, chunks, vectors, chunks.len() >= HNSW_MIN_CHUNKS)
}

/// [`write_index`] with the HNSW graph chosen by the caller.
pub fn write_index_with(
    out: &Path,
    meta: &Meta,
    chunks: &[Chunk],
    vectors: &[f32],
    hnsw: bool,
) -> Result<()> {
    write_index_staged(out, meta, chunks, vectors, hnsw, &mut |_| Ok(()))
}

/// [`write_index_with`], `extra(folder)` writing more files into the staged folder before it
/// replaces `out` (a graph, a cache carried over), so they swap in with the index or not at all.
pub fn write_index_staged(
    out: &Path,
    meta: &Meta,
    chunks: &[Chunk],
    vectors: &[f32],
    hnsw: bool,
    extra: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<()> {
    if meta.chunks != chunks.len() || vectors.len() != chunks.len() * meta.dim {
        return Err(RagError::Invalid(format!(
            "index rows disagree: {} chunks, {} vector values for width {}",
            chunks.len(),
            vectors.len(),
            meta.dim
        )));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let staged = canon_fs::StagedDir::new(out).map_err(|e| io_err(out, e))?;
    let tmp = staged.path().to_path_buf();
    let res = (|| -> Result<()> {
        let mut jl = String::new();
        for c in chunks {
            jl.push_str(&serde_json::to_string(c).map_err(|e| RagError::Invalid(e.to_string()))?);
            jl.push('\n');
        }
        let w = |f: &str, b: &[u8]| -> Result<()> {
            let p = tmp.join(f);
            std::fs::write(&p, b).map_err(|e| io_err(&p, e))
        };
        w("chunks.jsonl", jl.as_bytes())?;
        let mut vb = Vec::with_capacity(vectors.len() * 4);
        for v in vectors {
            vb.extend_from_slice(&v.to_le_bytes());
        }
        w("vectors.f32", &vb)?;
        if hnsw {
            w(
                "hnsw.bin",
                &crate::hnsw::Hnsw::build(vectors, meta.dim, &crate::hnsw::HnswConfig::default())
                    .to_bytes(),
            )?;
        }
        w(
            "bm25.bin",
            &Bm25::build(
                chunks
                    .iter()
                    .map(|c| c.indexed_text())
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str),
            )
            .to_bytes(),
        )?;
        w(
            "meta.json",
            serde_json::to_string_pretty(meta)
                .map_err(|e| RagError::Invalid(e.to_string()))?
                .as_bytes(),
        )?;
        extra(&tmp)
    })();
    res?;
    staged.commit().map_err(|e| io_err(out, e))?;
    Ok(())
}

/// A loaded index.
pub struct Index {
    pub path: PathBuf,
    pub meta: Meta,
    pub chunks: Vec<Chunk>,
    vectors: memmap2::Mmap,
    pub bm25: Bm25,
    /// The HNSW graph when the index has one (dense search then is approximate).
    pub hnsw: Option<crate::hnsw::Hnsw>,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub id: usize,
    pub score: f64,
    pub chunk: Chunk,
}

/// Reads `meta.json` and checks format, version and (when given) the embedding model.
pub fn read_meta(dir: &Path, model: Option<&str>) -> Result<Meta> {
    let mp = dir.join("meta.json");
    if !dir.is_dir() {
        return Err(RagError::Invalid(format!(
            "expected an index folder, found no folder at {}",
            dir.display()
        )));
    }
    if !mp.is_file() {
        return Err(RagError::Invalid(format!(
            "expected an index folder (meta.json, chunks.jsonl, vectors.f32, bm25.bin, as `canon index \
             build --out` writes it), found no meta.json in {}",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&mp).map_err(|e| io_err(&mp, e))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| {
        RagError::Invalid(format!(
            "expected {FORMAT} metadata in {}, found unreadable JSON ({e})",
            mp.display()
        ))
    })?;
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(RagError::Invalid(format!(
            "expected index format {FORMAT} version {VERSION}, found {} version {} in {}",
            meta.format,
            meta.version,
            dir.display()
        )));
    }
    if let Some(m) = model
        && m != meta.model
    {
        return Err(RagError::Invalid(format!(
            "expected an index embedded with '{m}', found one embedded with '{}' in {}",
            meta.model,
            dir.display()
        )));
    }
    Ok(meta)
}

impl Index {
    pub fn open(dir: &Path, model: Option<&str>) -> Result<Index> {
        let meta = read_meta(dir, model)?;
        let cp = dir.join("chunks.jsonl");
        let text = std::fs::read_to_string(&cp).map_err(|e| io_err(&cp, e))?;
        let chunks = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str::<Chunk>(l).map_err(|e| {
                    RagError::Invalid(format!(
                        "expected a chunk on line {} of {}, found {e}",
                        i + 1,
                        cp.display()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let vp = dir.join("vectors.f32");
        let f = std::fs::File::open(&vp).map_err(|e| io_err(&vp, e))?;
        // SAFETY: the file is opened read-only; the index is replaced by rename, never rewritten in place.
        let vectors = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io_err(&vp, e))?;
        let want = meta.chunks * meta.dim * 4;
        if chunks.len() != meta.chunks || vectors.len() != want {
            return Err(RagError::Invalid(format!(
                "expected {} chunks and {want} vector bytes in {}, found {} chunks and {} bytes",
                meta.chunks,
                dir.display(),
                chunks.len(),
                vectors.len()
            )));
        }
        let bp = dir.join("bm25.bin");
        let bm25 = Bm25::from_bytes(&std::fs::read(&bp).map_err(|e| io_err(&bp, e))?)?;
        if bm25.len() != meta.chunks {
            return Err(RagError::Invalid(format!(
                "expected BM25 rows for {} chunks, found {}",
                meta.chunks,
                bm25.len()
            )));
        }
        let hp = dir.join("hnsw.bin");
        let hnsw = if hp.exists() {
            let h =
                crate::hnsw::Hnsw::from_bytes(&std::fs::read(&hp).map_err(|e| io_err(&hp, e))?)?;
            if h.links.len() != meta.chunks || h.dim != meta.dim {
                return Err(RagError::Invalid(format!(
                    "expected an HNSW graph over {} vectors of width {} in {}, found {} of width {}",
                    meta.chunks,
                    meta.dim,
                    hp.display(),
                    h.links.len(),
                    h.dim
                )));
            }
            Some(h)
        } else {
            None
        };
        Ok(Index {
            path: dir.to_path_buf(),
            meta,
            chunks,
            vectors,
            bm25,
            hnsw,
        })
    }

    /// The stored vectors (the map is page-aligned, so the f32 view is aligned).
    pub fn vectors(&self) -> &[f32] {
        let b: &[u8] = &self.vectors;
        if b.is_empty() {
            return &[];
        }
        // SAFETY: mmap memory is page-aligned, the length is a multiple of 4 (checked at open), and
        // every bit pattern is a valid f32; the file is little-endian as on the targets we build for.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) }
    }

    /// Vector row `i`.
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors()[i * self.meta.dim..(i + 1) * self.meta.dim]
    }

    /// Dense top-`k`: through the HNSW graph when there is one (unless `exact`), else a scan.
    pub fn dense(&self, q: &[f32], k: usize, exact: bool) -> Vec<(usize, f32)> {
        match &self.hnsw {
            Some(h) if !exact => h.search(self.vectors(), q, k, crate::hnsw::ef_search().max(k)),
            _ => dense::search(self.vectors(), self.meta.dim, q, k),
        }
    }

    /// Searches with an already embedded, normalised query (`qvec`, needed for dense and hybrid).
    pub fn search(
        &self,
        query: &str,
        qvec: Option<&[f32]>,
        mode: Mode,
        k: usize,
    ) -> Result<Vec<Hit>> {
        if query.trim().is_empty() {
            return Err(RagError::Invalid(
                "expected a non-empty query, found an empty one".into(),
            ));
        }
        let dense_hits = |n: usize| -> Result<Vec<(usize, f32)>> {
            let q = qvec.ok_or_else(|| {
                RagError::Invalid("dense search needs the query embedding".into())
            })?;
            Ok(self.dense(q, n, false))
        };
        let ranked: Vec<(usize, f64)> = match mode {
            Mode::Dense => dense_hits(k)?
                .into_iter()
                .map(|(i, s)| (i, s as f64))
                .collect(),
            Mode::Bm25 => self
                .bm25
                .search(query, k)
                .into_iter()
                .map(|(i, s)| (i, s as f64))
                .collect(),
            Mode::Hybrid => {
                let depth = (k * 4).max(50);
                let d: Vec<usize> = dense_hits(depth)?.into_iter().map(|h| h.0).collect();
                let b: Vec<usize> = self
                    .bm25
                    .search(query, depth)
                    .into_iter()
                    .map(|h| h.0)
                    .collect();
                let mut f = fuse::rrf(&[d, b], fuse::RRF_K);
                f.truncate(k);
                f
            }
        };
        Ok(ranked
            .into_iter()
            .map(|(id, score)| Hit {
                id,
                score,
                chunk: self.chunks[id].clone(),
            })
            .collect())
    }
}
