//! Evaluation: functional correctness of generated code (paper 14, Codex), with the unbiased pass@k
//! estimator, the HumanEval harness and the sandbox it executes untrusted programs in.
//!
//! - [`pass_at_k`]: `1 - C(n-c, k) / C(n, k)` in its numerically stable product form.
//! - [`humaneval`]: problems, program assembly, Codex stop sequences, completions files, scoring,
//!   results and summary files, and generation through any [`canon_infer::TextGenerator`].
//! - [`sandbox`]: one Python process per sample under Linux isolation (namespaces, cgroup, rlimits,
//!   Landlock, seccomp, dropped capabilities), probed at run time and reported when missing.
//! - [`perplexity`]: sliding-window (strided) perplexity of any [`canon_models::CausalLm`].

pub mod bleu;
pub mod humaneval;
pub mod opts;
pub mod pass_at_k;
pub mod perplexity;
pub mod sandbox;
pub mod zero_shot;

pub use pass_at_k::{pass_at_k, pass_at_k_one};
pub use sandbox::{Outcome, Sandbox, SandboxConfig, SandboxError};

use std::path::PathBuf;

/// Errors of the evaluation library. Each says what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(
        "pass@{k}: expected 1 <= k <= n samples and 0 <= c <= n correct, found n = {n}, c = {c}"
    )]
    PassAtK { n: usize, c: usize, k: usize },
    #[error("pass@{k} needs at least {k} samples for every task, but {task_id} has {found}")]
    TooFewSamples {
        k: usize,
        task_id: String,
        found: usize,
    },
    #[error("no samples to score: expected at least one completion")]
    NoSamples,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{path}:{line}: unknown task_id {task_id:?} (expected one of the {known} HumanEval tasks, such as \"HumanEval/0\")"
    )]
    UnknownTask {
        path: PathBuf,
        line: usize,
        task_id: String,
        known: usize,
    },
    #[error("{path}: expected HumanEval problems, found none")]
    NoProblems { path: PathBuf },
    #[error(transparent)]
    Asset(#[from] canon_assets::AssetError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("generation failed on {task_id}: {source}")]
    Generate {
        task_id: String,
        source: canon_infer::InferError,
    },
    #[error("stopped by the caller")]
    Cancelled,
    #[error(transparent)]
    Lines(#[from] canon_fs::lines::LineError),
    #[error("{0}")]
    Invalid(String),
    #[error("perplexity: {0}")]
    Perplexity(String),
    #[error(transparent)]
    Model(#[from] canon_models::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EvalError>;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then a rename, so a
/// reader never sees a half-written file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    canon_fs::write_atomic(path, bytes).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}
