//! Prompting and agent papers: in-context few-shot evaluation (paper 10, GPT-3), tools, ReAct
//! (paper 23), Toolformer (paper 24) and WebGPT's text browser (paper 17, [`browser`]; a model drives it in
//! [`browse_run`]).
//!
//! - [`tools`]: the `Tool` seam (JSON-schema arguments, time and output limits) and built-ins.
//! - [`react`], [`react_data`]: the ReAct loop, its baselines and a multi-hop question set.
//! - [`autoprompt`]: AutoPrompt's gradient-guided trigger search (paper 11) on causal and masked
//!   LMs, with fact sets read from the machine.
//! - [`fewshot`]: tasks (JSONL or generated from data on the machine), K-shot prompts with
//!   demonstrations drawn from the train split, multiple choice scored by log-likelihood with three
//!   normalisations, free-form answers by greedy decoding and exact match.

pub mod autoprompt;
pub mod autoprompt_run;
pub mod browse_opts;
pub mod browse_run;
pub mod browser;
pub mod cot;
pub mod cot_run;
pub mod fewshot;
pub mod opts;
pub mod react;
pub mod react_data;
pub mod react_run;
pub mod tasks;
pub mod toolformer;
pub mod toolformer_work;
pub mod tools;
pub mod webgpt;
pub mod webgpt_rm;

/// Errors of the prompting library; each says what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}:{line}: {message}")]
    Jsonl {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Task(String),
    #[error("{0}")]
    Model(#[from] canon_models::ModelError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Text(String),
    // The I/O error is part of the message, not a `source`: error lines print the whole chain,
    // which would repeat it.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{0}")]
    Lines(canon_fs::lines::LineError),
}

impl From<canon_fs::lines::LineError> for AgentError {
    fn from(e: canon_fs::lines::LineError) -> Self {
        AgentError::Lines(e)
    }
}

pub type Result<T> = std::result::Result<T, AgentError>;
