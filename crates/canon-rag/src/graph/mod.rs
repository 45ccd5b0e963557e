//! GraphRAG (Edge et al., 2024) as microsoft/graphrag lays out the pipeline: text units →
//! entity and relationship extraction (an LLM with gleanings, or a fast extractor without one) →
//! merged element descriptions → hierarchical Leiden communities → one report per community →
//! global search (map-reduce over reports with 0–100 helpfulness scores) and local search
//! (matched entities → relationships, text units and reports).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bm25::Bm25;
use crate::chunk::Chunk;
use crate::leiden::{Cluster, Graph, LeidenConfig, hierarchical_leiden};
use crate::{RagError, Result, io_err};

pub const GRAPH_FILE: &str = "graph.json";
pub const GRAPH_FORMAT: &str = "canon-rag-graph";
pub const GRAPH_VERSION: u32 = 1;

/// Record delimiters of the extraction format.
pub const TUPLE: &str = "<|>";
pub const RECORD: &str = "##";
pub const COMPLETE: &str = "<|COMPLETE|>";

/// What one text unit yielded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    /// (NAME, TYPE, description)
    pub entities: Vec<(String, String, String)>,
    /// (SOURCE, TARGET, description, strength)
    pub relations: Vec<(String, String, String, f64)>,
}

mod build;
mod embed;
mod extract;
mod fast;
mod query;
mod run;
#[cfg(test)]
mod tests;

pub use build::*;
pub use embed::*;
pub use extract::*;
pub use fast::*;
pub use query::*;
pub use run::*;
