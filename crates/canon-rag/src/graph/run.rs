//! An index's graph: extraction over its text units (a chat LLM for the first units when one is
//! given, the fast extractor for the rest) and the graph built over them (`canon graph build`).

use super::*;
use crate::index::Index;

/// Settings of a graph build.
#[derive(Debug, Clone)]
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
    let t0 = std::time::Instant::now();
    let mut units: Vec<(usize, Extraction)> = Vec::with_capacity(ix.chunks.len());
    let mut stats = ExtractStats::default();
    let mut run = None;
    if let Some(llm) = llm {
        let id = llm.id();
        let n = o.limit.unwrap_or(ix.chunks.len()).min(ix.chunks.len());
        let mut cache = CachedLlm::new(llm, &ix.path.join("llm-cache"))?;
        for (i, c) in ix.chunks.iter().enumerate().take(n) {
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
    for (i, c) in ix.chunks.iter().enumerate().skip(done) {
        units.push((i, fast_extract(c)));
    }
    let extract_s = t0.elapsed().as_secs_f64();
    let extractor = run.as_ref().map_or("fast", |r| r.id.as_str());
    let name = if done > 0 && done < ix.chunks.len() {
        format!("{extractor} (first {done} units), fast (rest)")
    } else {
        extractor.to_string()
    };
    let graph = build_graph(
        &name,
        ix.chunks.len(),
        &units,
        stats,
        o.max_cluster_size,
        o.report_tokens,
        o.min_phrase_units,
    );
    Ok(IndexGraph {
        graph,
        llm: run,
        extract_s,
    })
}
