//! The settings of `canon graph` (GraphRAG's `build` and `summarize`) with their checks.

use super::*;

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct GraphArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub cmd: GraphCmd,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
pub enum GraphCmd {
    /// Extract entities and relationships from an index's chunks, cluster them with hierarchical
    /// Leiden and write community reports (graph.json inside the index folder).
    #[cfg_attr(
        feature = "cli",
        command(after_help = "Examples:
  canon graph build --index man.idx                                   # fast extractor, no LLM
  canon graph build --index man.idx --extractor llm --model smollm2 --limit 20
  canon graph build --index man.idx --extractor llm --url http://127.0.0.1:8080 --remote-model gpt-4o-mini

LLM calls are cached under INDEX/llm-cache, so an interrupted build resumes where it stopped.")
    )]
    Build(GraphBuildArgs),
    /// Summarise merged descriptions and write community reports with a model (title, summary,
    /// impact rating 0–10, findings; JSON under a schema), bottom-up, calls batched.
    #[cfg_attr(
        feature = "cli",
        command(after_help = "Examples:
  canon graph summarize --index man.idx --model smollm2 --limit 40
  canon graph summarize --index man.idx --what reports --parallel 16
  canon graph summarize --index man.idx --url http://127.0.0.1:8080 --remote-model gpt-4o-mini

Calls are cached under INDEX/llm-cache (a rerun resumes); graph.json is rewritten after each
stage. Reports the model garbles keep their extractive text and are counted as failed.")
    )]
    Summarize(GraphSummarizeArgs),
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct GraphBuildArgs {
    /// The index folder.
    #[cfg_attr(feature = "cli", arg(long))]
    pub index: PathBuf,
    /// fast (structure and noun phrases, no LLM) or llm.
    #[cfg_attr(feature = "cli", arg(long, default_value = "fast"))]
    pub extractor: String,
    /// Local generating model for --extractor llm.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// An OpenAI-compatible server (base URL) to extract with instead of a local model.
    #[cfg_attr(feature = "cli", arg(long))]
    pub url: Option<String>,
    /// Model name sent to --url.
    #[cfg_attr(feature = "cli", arg(long, default_value = "default"))]
    pub remote_model: String,
    /// Extra "what was missed" passes per text unit.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub gleanings: usize,
    /// Most tokens per extraction answer.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 400))]
    pub max_tokens: usize,
    /// Communities larger than this are clustered again one level deeper.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub max_cluster_size: usize,
    /// Report budget in tokens.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 600))]
    pub report_tokens: usize,
    /// Noun phrases found in fewer text units than this are dropped (fast extractor).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3))]
    pub min_phrase_units: usize,
    /// Only the first N chunks go through the LLM (the rest through the fast extractor).
    #[cfg_attr(feature = "cli", arg(long))]
    pub limit: Option<usize>,
    /// Do not embed the entity descriptions (local search then matches entities by BM25 only).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_entity_embeddings: bool,
    /// Embedding batch size for the entity descriptions.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub batch_size: usize,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct GraphSummarizeArgs {
    /// The index folder (with graph.json from `canon graph build`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub index: PathBuf,
    /// Local generating model.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// An OpenAI-compatible server (base URL) to write with instead of a local model.
    #[cfg_attr(feature = "cli", arg(long))]
    pub url: Option<String>,
    /// Model name sent to --url.
    #[cfg_attr(feature = "cli", arg(long, default_value = "default"))]
    pub remote_model: String,
    /// What to write: descriptions, reports, or both (comma-separated).
    #[cfg_attr(feature = "cli", arg(long, default_value = "descriptions,reports"))]
    pub what: String,
    /// Calls decoded together (the local engine's slots).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 8))]
    pub parallel: usize,
    /// At most this many summaries and this many reports (most prominent first).
    #[cfg_attr(feature = "cli", arg(long))]
    pub limit: Option<usize>,
    /// Tokens of a report's context (entity, relationship and sub-community tables).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1200))]
    pub context: usize,
    /// Budget of the extractive reports rebuilt with the summaries (as `graph build`).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 600))]
    pub report_tokens: usize,
}

impl GraphBuildArgs {
    /// The graph build's settings.
    /// How this build is recorded in the graph (for `canon index update`).
    pub fn recipe(&self) -> crate::graph::GraphRecipe {
        crate::graph::GraphRecipe {
            opts: self.build_opts(),
            llm: (self.extractor == "llm").then(|| crate::graph::LlmSpec {
                model: self.model.clone(),
                url: self.url.clone(),
                remote_model: self.remote_model.clone(),
            }),
            entity_embeddings: !self.no_entity_embeddings,
        }
    }

    pub fn build_opts(&self) -> crate::graph::BuildOpts {
        crate::graph::BuildOpts {
            gleanings: self.gleanings,
            max_tokens: self.max_tokens,
            limit: self.limit,
            max_cluster_size: self.max_cluster_size,
            report_tokens: self.report_tokens,
            min_phrase_units: self.min_phrase_units,
        }
    }
}

/// Which stages `canon graph summarize` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummarizeStages {
    pub descriptions: bool,
    pub reports: bool,
}

impl GraphSummarizeArgs {
    /// The stages named by `--what`, with `--parallel` and `--context` checked.
    pub fn check(&self) -> Result<SummarizeStages> {
        let what: Vec<&str> = self.what.split(',').map(str::trim).collect();
        if let Some(w) = what
            .iter()
            .find(|w| !matches!(**w, "descriptions" | "reports"))
        {
            return invalid(format!(
                "expected --what descriptions, reports or both, found '{w}'"
            ));
        }
        if self.parallel == 0 || self.context < 100 {
            return invalid(format!(
                "expected --parallel at least 1 and --context at least 100, found {} and {}",
                self.parallel, self.context
            ));
        }
        Ok(SummarizeStages {
            descriptions: what.contains(&"descriptions"),
            reports: what.contains(&"reports"),
        })
    }
}
