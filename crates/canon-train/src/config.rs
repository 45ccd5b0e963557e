//! The run configuration read from a TOML file: `[model]` (a `canon_models::ModelConfig`), `[data]`
//! and `[train]`. Unknown keys are errors, so a misspelt field is reported, not ignored.

use serde::{Deserialize, Serialize};

use canon_models::ModelConfig;

use crate::data::TokenizerKind;
use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
}

fn d_max_bytes() -> usize {
    4_000_000
}
fn d_val() -> f64 {
    0.05
}
fn d_vocab() -> usize {
    4096
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `python-stdlib`, `python-docs`, or a path to a text file or folder.
    pub corpus: String,
    pub tokenizer: TokenizerKind,
    /// Target vocabulary for `byte_bpe`.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_max_bytes")]
    pub max_bytes: usize,
    #[serde(default = "d_val")]
    pub val_fraction: f64,
}

fn one() -> usize {
    1
}
fn d_eval_every() -> u64 {
    100
}
fn d_eval_batches() -> usize {
    8
}
fn d_log() -> u64 {
    10
}
fn d_ckpt() -> u64 {
    500
}
fn d_seed() -> u64 {
    1337
}
fn d_aux() -> f64 {
    0.01
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub block_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub max_steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub grad_clip: Option<f64>,
    #[serde(default = "d_eval_every")]
    pub eval_every: u64,
    #[serde(default = "d_eval_batches")]
    pub eval_batches: usize,
    #[serde(default = "d_log")]
    pub log_every: u64,
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: u64,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// PaLM's z-loss coefficient (1e-4 in the paper; 0 = off).
    #[serde(default)]
    pub z_loss: f64,
    /// Weight of GLaM's load-balancing loss.
    #[serde(default = "d_aux")]
    pub moe_aux_weight: f64,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("batch_size", self.batch_size),
            ("block_size", self.block_size),
            ("grad_accum", self.grad_accum),
            ("eval_batches", self.eval_batches),
        ] {
            if v == 0 {
                return Err(format!("train.{k} must be positive, found 0"));
            }
        }
        for (k, v) in [
            ("eval_every", self.eval_every),
            ("log_every", self.log_every),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                return Err(format!("train.{k} must be positive, found 0"));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("train.lr must be positive, found {}", self.lr));
        }
        if let Some(c) = self.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            return Err(format!("train.grad_clip must be positive, found {c}"));
        }
        if self.z_loss < 0.0 || self.moe_aux_weight < 0.0 {
            return Err("train.z_loss and train.moe_aux_weight must be ≥ 0".into());
        }
        self.schedule.validate()?;
        self.optimizer.validate()
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.corpus.trim().is_empty() {
            return Err("data.corpus is empty".into());
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 0.5) {
            return Err(format!(
                "data.val_fraction must be in (0, 0.5), found {}",
                self.val_fraction
            ));
        }
        if self.max_bytes == 0 {
            return Err("data.max_bytes must be positive".into());
        }
        Ok(())
    }
}
