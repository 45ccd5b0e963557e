//! Alignment: learning from preferences and feedback.
//!
//! - [`task`]: the miniature task every experiment shares — fixed-width addition prompts, a
//!   character vocabulary, noisy demonstrations, and the programmatic gold judge that stands in for
//!   human labellers and evaluators.
//! - [`lm`]: the tiny GPT policy / reward / value models built on `canon_models::Gpt`, batched
//!   KV-cached sampling, per-token log-probabilities and scalar heads.
//! - [`losses`]: the formulas — InstructGPT's pairwise loss (paper 20), DPO, the per-token KL
//!   reward, GAE, the clipped surrogate and value losses, the PRM product score (paper 21), the
//!   RLAIF order-swap average and soft-label loss (paper 29), PGR and the confidence loss (paper 30).
//! - [`sft`], [`rm`], [`dpo`], [`ppo`]: objectives on `canon_train::Engine` (its optimizer,
//!   schedules, clipping, metrics and checkpoints).
//! - [`prm`]: process vs outcome reward models and best-of-N on multi-step arithmetic;
//!   [`prm_eval`]: the PRM800K best-of-N evaluation protocol, draw for draw.
//! - [`rlaif`], [`rlaif_remote`], [`rlaif_run`]: an LLM (local, or an OpenAI-compatible
//!   endpoint) as preference labeller and rater; reward models on AI vs gold labels, RL with each,
//!   and direct RLAIF (paper 29).
//! - [`w2s`], [`w2s_finetune`]: weak-to-strong generalisation with a linear-probe or a fine-tuned
//!   MiniLM student (paper 30).
//! - [`opts`]: `canon align`'s command line (clap behind the `cli` feature).

pub mod dpo;
pub mod eval;
pub mod lm;
pub mod losses;
pub mod opts;
pub mod pipeline;
pub mod ppo;
pub mod prm;
pub mod prm_eval;

pub mod rlaif;
pub mod rlaif_remote;
pub mod rlaif_run;
pub mod rm;
pub mod sft;
pub mod task;
pub mod w2s;
pub mod w2s_finetune;

pub use canon_train::{Result, TrainError};

/// A data error (bad input, empty sets) as the engine's error type.
pub(crate) fn data_err(msg: impl Into<String>) -> TrainError {
    TrainError::Data(msg.into())
}
