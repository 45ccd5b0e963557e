//! Training from scratch: the loop, optimizers, schedules, data, checkpoints and metrics.
//!
//! - `optim`: AdamW (decoupled weight decay; no decay on norms, biases and embeddings) and SGD with
//!   momentum, each a fused in-place update over the f32 storage of candle variables; global-norm
//!   clipping.
//! - `schedule`: warmup + cosine, linear, the Transformer's inverse square root.
//! - `finetune`: GPT-1 supervised fine-tuning of a pretrained run (task tokens, `W_y`, λ·LM loss)
//!   and the standard-library module-group classification task.
//! - `data`: corpora present on the machine, tokenizers trained with the `tokenizers` crate, seeded
//!   batch sampling.
//! - `checkpoint`: weights + optimizer state + step + RNG state in one safetensors file, written
//!   atomically (temporary file, then rename).
//! - `metrics`: `metrics.jsonl` and the loss-curve PNG.
//! - `engine`: the loop every family shares (an `Objective` builds losses; the `Engine` does
//!   accumulation, clipping, updates, evaluation, metrics, checkpoints, Ctrl-C and exact resume).
//! - `trainer`: the causal-LM objective over any `TrainableLm` and `Trainer` (engine + objective).
//! - `objectives`: BERT's masked-LM corruption.

pub mod alloc;
pub mod bert_data;
pub mod bert_finetune;
pub mod bert_pretrain;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distill;
pub mod engine;
pub mod ernie_data;
pub mod ernie_train;
pub mod finetune;
pub mod instruct;
pub mod metrics;
pub mod objectives;
pub mod optim;
pub mod schedule;
pub mod sft;
pub mod span_corruption;
pub mod t5_train;
pub mod trainer;
pub mod transe;
pub mod translation;

pub use config::{DataConfig, RunConfig, TrainConfig};
pub use data::TokenData;
pub use engine::{BatchLoss, Engine, Objective};
pub use optim::{Optimizer, OptimizerConfig, Param};
pub use schedule::Schedule;
pub use trainer::{LmObjective, Outcome, StepReport, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] canon_models::ModelError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    #[error("data: {0}")]
    Data(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: u64, loss: f64 },
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &std::path::Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
