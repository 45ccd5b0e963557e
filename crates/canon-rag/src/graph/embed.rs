//! Entity description embeddings, as graphrag's local search uses them: each entity's merged
//! description (`NAME: description`) is embedded with the index's embedding model when the graph
//! is built, and a query is matched to entities by the cosine of its embedding with theirs.
//!
//! The vectors live beside `graph.json` in `graph-entities.HASH.f32` (row-major little-endian f32,
//! L2-normalised), named by a hash of their bytes: the file is written before `graph.json` names
//! it, so a crash between the two leaves the previous graph and its own file intact.

use super::*;

/// File name prefix and suffix of the entity vectors.
pub const ENTITY_VECTORS_PREFIX: &str = "graph-entities.";
pub const ENTITY_VECTORS_SUFFIX: &str = ".f32";

/// How local search matches the question to entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityMatch {
    /// Cosine of the question's embedding with the entity description embeddings (graphrag's).
    #[default]
    Embedding,
    /// BM25 over entity names and descriptions.
    Bm25,
}

impl std::str::FromStr for EntityMatch {
    type Err = RagError;
    fn from_str(s: &str) -> Result<EntityMatch> {
        match s {
            "embedding" => Ok(EntityMatch::Embedding),
            "bm25" => Ok(EntityMatch::Bm25),
            o => Err(RagError::Invalid(format!(
                "expected an entity match embedding or bm25, found '{o}'"
            ))),
        }
    }
}

impl EntityMatch {
    pub fn name(&self) -> &'static str {
        match self {
            EntityMatch::Embedding => "embedding",
            EntityMatch::Bm25 => "bm25",
        }
    }
}

/// What `graph.json` records about its entity vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityEmbedding {
    /// The embedding model (the index's).
    pub model: String,
    pub dim: usize,
    pub rows: usize,
    /// The vector file in the index folder.
    pub file: String,
    /// Hash of the embedded texts ([`entity_texts_hash`]): descriptions changed since (a model
    /// summary written later) make the vectors stale.
    pub texts_hash: String,
}

/// 64-bit FNV-1a.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a continued over `bytes` from state `h`.
fn fnv_more(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The text embedded for an entity: its name and merged description (at most 1,000 bytes).
pub fn entity_text(e: &Entity) -> String {
    let d = e.summary(1000);
    if d.is_empty() {
        e.name.clone()
    } else {
        format!("{}: {d}", e.name)
    }
}

/// Hash of every entity's embedded text, in order.
pub fn entity_texts_hash(entities: &[Entity]) -> String {
    let mut h = fnv64(b"canon-entity-texts");
    for e in entities {
        h = fnv_more(h, entity_text(e).as_bytes());
        h = fnv_more(h, &[0]);
    }
    format!("{h:016x}")
}

/// A fingerprint of an index's text units (their pages, sections and texts, in order): a graph
/// built over other chunks, even as many, is refused at load and rebuilt by `index update`.
pub fn chunks_fingerprint(chunks: &[Chunk]) -> String {
    let mut h = fnv64(b"canon-chunks");
    for c in chunks {
        for part in [
            c.path.as_bytes(),
            c.page.as_bytes(),
            c.section.as_bytes(),
            c.text.as_bytes(),
        ] {
            h = fnv_more(h, part);
            h = fnv_more(h, &[0]);
        }
    }
    format!("{h:016x}")
}

impl KnowledgeGraph {
    /// Stores the entity vectors (`rows × dim`, one row per entity, normalised here) embedded by
    /// `model` from [`entity_text`].
    pub fn set_entity_vectors(
        &mut self,
        model: &str,
        dim: usize,
        mut vectors: Vec<f32>,
    ) -> Result<()> {
        if dim == 0 || vectors.len() != self.entities.len() * dim {
            return Err(RagError::Invalid(format!(
                "expected {} entity vectors of width {dim}, found {} values",
                self.entities.len(),
                vectors.len()
            )));
        }
        for row in vectors.chunks_mut(dim) {
            crate::dense::normalize(row);
        }
        let bytes = vectors_bytes(&vectors);
        self.entity_embedding = Some(EntityEmbedding {
            model: model.to_string(),
            dim,
            rows: self.entities.len(),
            file: format!(
                "{ENTITY_VECTORS_PREFIX}{:016x}{ENTITY_VECTORS_SUFFIX}",
                fnv64(&bytes)
            ),
            texts_hash: entity_texts_hash(&self.entities),
        });
        self.entity_vectors = vectors;
        Ok(())
    }

    /// The entity vectors and their width, when the graph has them and they embed the current
    /// descriptions.
    pub fn entity_vectors(&self) -> Option<(&[f32], usize)> {
        let m = self.entity_embedding.as_ref()?;
        (!self.entity_vectors.is_empty()
            && m.rows == self.entities.len()
            && m.texts_hash == entity_texts_hash(&self.entities))
        .then_some((self.entity_vectors.as_slice(), m.dim))
    }

    /// Why [`KnowledgeGraph::entity_vectors`] is `None`, as an error naming the fix.
    pub fn no_vectors_error(&self) -> RagError {
        let why = if self.entity_embedding.is_some() {
            "entity embeddings that match the current descriptions, found stale ones (the \
             descriptions changed since they were embedded)"
        } else {
            "entity description embeddings in the graph, found none"
        };
        RagError::Invalid(format!(
            "expected {why}: rebuild the graph with `canon graph build`, or match entities with \
             --entity-match bm25"
        ))
    }

    /// Writes the entity vector file (when the graph has vectors and the file is not there yet)
    /// into `dir`; returns its name.
    pub(super) fn write_entity_vectors(&self, dir: &Path) -> Result<Option<String>> {
        let Some(m) = &self.entity_embedding else {
            return Ok(None);
        };
        if self.entity_vectors.is_empty() {
            return Ok(None);
        }
        let p = dir.join(&m.file);
        let want = (self.entity_vectors.len() * 4) as u64;
        if std::fs::metadata(&p).map(|md| md.len()).ok() != Some(want) {
            canon_fs::write_atomic(&p, &vectors_bytes(&self.entity_vectors))
                .map_err(|e| io_err(&p, e))?;
        }
        Ok(Some(m.file.clone()))
    }

    /// Reads the vector file `graph.json` names (checked against its record).
    pub(super) fn read_entity_vectors(&mut self, dir: &Path) -> Result<()> {
        let Some(m) = &self.entity_embedding else {
            return Ok(());
        };
        if m.file.contains(['/', '\\']) || !m.file.starts_with(ENTITY_VECTORS_PREFIX) {
            return Err(RagError::Invalid(format!(
                "expected an entity vector file named {ENTITY_VECTORS_PREFIX}HASH{ENTITY_VECTORS_SUFFIX} in graph.json, found '{}'",
                m.file
            )));
        }
        let p = dir.join(&m.file);
        let b = std::fs::read(&p).map_err(|e| io_err(&p, e))?;
        if b.len() != m.rows * m.dim * 4 || m.rows != self.entities.len() {
            return Err(RagError::Invalid(format!(
                "expected {} entity vectors of width {} ({} bytes) in {}, found {} bytes for {} entities",
                m.rows,
                m.dim,
                m.rows * m.dim * 4,
                p.display(),
                b.len(),
                self.entities.len()
            )));
        }
        self.entity_vectors = b
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect();
        Ok(())
    }
}

fn vectors_bytes(v: &[f32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(v.len() * 4);
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

/// Removes entity vector files in `dir` other than `keep`.
pub(super) fn remove_other_vector_files(dir: &Path, keep: Option<&str>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with(ENTITY_VECTORS_PREFIX)
            && n.ends_with(ENTITY_VECTORS_SUFFIX)
            && Some(n.as_str()) != keep
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The `k` entities whose description embeddings (`v`, rows of `dim`) are closest (cosine) to
/// the normalised query vector `q`, best first.
pub fn match_by_embedding(v: &[f32], dim: usize, q: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
    if q.len() != dim {
        return Err(RagError::Invalid(format!(
            "expected a {dim}-wide query embedding for the entity vectors, found {}",
            q.len()
        )));
    }
    Ok(crate::dense::search(v, dim, q, k))
}
