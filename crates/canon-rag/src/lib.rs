//! Retrieval-augmented generation building blocks (Lewis et al., 2020).
//!
//! * [`reader`]: text, Markdown, HTML (text only), man pages and info files, with skip counts.
//! * [`chunk`]: section-aware chunks with overlap that keep their source (file, page, section, lines).
//! * [`bm25`]: an Okapi BM25 inverted index.
//! * [`dense`]: exact cosine search over memory-mapped vectors.
//! * [`fuse`]: reciprocal rank fusion of several rankings.
//! * [`index`]: the on-disk index (format version and embedding model id checked at load).
//! * [`e2e`]: the prior and both marginals as tensors, for end-to-end training.
//! * [`marginal`]: RAG-Sequence and RAG-Token likelihoods and the RAG-Token next-token marginal.
//! * [`answer`]: answering with a real model: retriever, answerer with citations, RAG scoring and
//!   decoding.

pub mod answer;
pub mod ask;
pub mod bm25;
pub mod build;
pub mod chunk;
pub mod dense;
pub mod e2e;
pub mod eval;
pub mod eval_answer;
pub mod fuse;
pub mod graph;
pub mod graph_answer;
pub mod graph_llm;
pub mod hnsw;
pub mod index;
pub mod index_graph;
pub mod leiden;
pub mod marginal;
pub mod opts;
pub mod reader;
pub mod render;

/// Errors of the retrieval crate.
#[derive(Debug, thiserror::Error)]
pub enum RagError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, RagError>;

pub(crate) fn io_err(path: &std::path::Path, source: std::io::Error) -> RagError {
    RagError::Io {
        path: path.display().to_string(),
        source,
    }
}
