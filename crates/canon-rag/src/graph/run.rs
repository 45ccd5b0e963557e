//! An index's graph: extraction over its text units (a chat LLM for the first units when one is
//! given, the fast extractor for the rest) and the graph built over them (`canon graph build`).

use super::*;
use crate::index::Index;

/// Settings of a graph build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildOpts {
    /// Extra "what was missed" passes per text unit (LLM extraction).
    pub gleanings: usize,
    /// Most tokens per extraction answer.
    pub max_tokens: usize,
    /// Only the first N units go through the LLM (the rest through the fast extractor).
    pub limit: Option<usize>,
    /// Communities larger than this are clustered again one level deeper.
    pub max_cluster_size: usize,
    /// Report budget in tokens.
    pub report_tokens: usize,
    /// Noun phrases found in fewer text units than this are dropped (fast extractor).
    pub min_phrase_units: usize,
}

/// The extracting chat model of a graph build: a local model by name, or an OpenAI-compatible
/// server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmSpec {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub remote_model: String,
}

/// How a graph was built (stored in `graph.json`): `canon index update` builds it again the same
/// way over the updated chunks, the LLM's answers for unchanged units coming from its cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphRecipe {
    pub opts: BuildOpts,
    /// The LLM extractor; `None` for the fast extractor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmSpec>,
    /// Whether entity descriptions were embedded.
    pub entity_embeddings: bool,
}

/// What the LLM extraction did.
#[derive(Debug, Clone)]
pub struct LlmExtraction {
    /// The model's id.
    pub id: String,
    pub cache_hits: usize,
    pub calls_made: usize,
    pub stats: ExtractStats,
}

/// A built graph and how it was extracted.
pub struct IndexGraph {
    pub graph: KnowledgeGraph,
    /// Present when an LLM extracted the first units.
    pub llm: Option<LlmExtraction>,
    /// Seconds spent extracting.
    pub extract_s: f64,
}

/// Extracts every text unit of `ix` (the first `limit` through `llm` when given, its answers
/// cached under `INDEX/llm-cache`; the rest with the fast extractor) and builds the graph.
/// `progress(done, total)` follows the LLM's units.
pub fn build_index_graph(
    ix: &Index,
    llm: Option<&mut dyn Llm>,
    o: &BuildOpts,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<IndexGraph> {
    build_chunks_graph(&ix.chunks, &ix.path.join("llm-cache"), llm, o, progress)
}

/// [`build_index_graph`] over text units `chunks`, the LLM's answers cached in `cache_dir`; the
/// graph records the chunks' fingerprint.
pub fn build_chunks_graph(
    chunks: &[Chunk],
    cache_dir: &Path,
    llm: Option<&mut dyn Llm>,
    o: &BuildOpts,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<IndexGraph> {
    let t0 = std::time::Instant::now();
    let mut units: Vec<(usize, Extraction)> = Vec::with_capacity(chunks.len());
    let mut stats = ExtractStats::default();
    let mut run = None;
    if let Some(llm) = llm {
        let id = llm.id();
        let n = o.limit.unwrap_or(chunks.len()).min(chunks.len());
        let mut cache = CachedLlm::new(llm, cache_dir)?;
        for (i, c) in chunks.iter().enumerate().take(n) {
            let ex = extract_with_gleanings(
                &mut cache,
                &c.indexed_text(),
                o.gleanings,
                o.max_tokens,
                &mut stats,
            );
            units.push((i, ex));
            progress(i + 1, n);
        }
        run = Some(LlmExtraction {
            id,
            cache_hits: cache.hits,
            calls_made: cache.misses,
            stats: stats.clone(),
        });
    }
    let done = units.len();
    for (i, c) in chunks.iter().enumerate().skip(done) {
        units.push((i, fast_extract(c)));
    }
    let extract_s = t0.elapsed().as_secs_f64();
    let extractor = run.as_ref().map_or("fast", |r| r.id.as_str());
    let name = if done > 0 && done < chunks.len() {
        format!("{extractor} (first {done} units), fast (rest)")
    } else {
        extractor.to_string()
    };
    let mut graph = build_graph(
        &name,
        chunks.len(),
        &units,
        stats,
        o.max_cluster_size,
        o.report_tokens,
        o.min_phrase_units,
    );
    graph.chunks_hash = Some(chunks_fingerprint(chunks));
    Ok(IndexGraph {
        graph,
        llm: run,
        extract_s,
    })
}

/// What `canon index update` did with the index's graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphCarry {
    /// The index had no graph.
    None,
    /// The chunks did not change: the graph (model summaries and reports included) was kept.
    Kept,
    /// The chunks changed: the graph was built again over them.
    Rebuilt,
}

/// For an index update writing into the staged folder `dir`: copies the old index's LLM call
/// cache (`old_dir/llm-cache`, hard links where possible), then keeps the old graph `old` when it
/// was built over exactly `chunks`, or writes `rebuild(chunks, cache_dir)`'s graph. Everything
/// lands in the staged folder, so the new index and its graph replace the old ones together.
pub fn carry_graph(
    old_dir: &Path,
    old: Option<&KnowledgeGraph>,
    dir: &Path,
    chunks: &[Chunk],
    rebuild: &mut dyn FnMut(&[Chunk], &Path) -> Result<KnowledgeGraph>,
) -> Result<GraphCarry> {
    let cache = dir.join("llm-cache");
    copy_tree(&old_dir.join("llm-cache"), &cache)?;
    let Some(old) = old else {
        return Ok(GraphCarry::None);
    };
    if old.matches_chunks(chunks) && old.chunks_hash.is_some() {
        old.save(dir)?;
        return Ok(GraphCarry::Kept);
    }
    let g = rebuild(chunks, &cache)?;
    g.save(dir)?;
    Ok(GraphCarry::Rebuilt)
}

/// Copies the files under `from` into `to` (hard links where the file system allows); a missing
/// `from` copies nothing.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(to).map_err(|e| io_err(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| io_err(from, e))? {
        let e = e.map_err(|e| io_err(from, e))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| io_err(&src, e))?;
        }
    }
    Ok(())
}
