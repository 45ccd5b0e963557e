//! The `[transe]` table of an ERNIE run: its fields, defaults and checks.

use serde::{Deserialize, Serialize};

use crate::optim::OptimizerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    L1,
    L2,
}

fn d_dim() -> usize {
    32
}
fn d_margin() -> f64 {
    1.0
}
fn d_steps() -> u64 {
    1500
}
fn d_batch() -> usize {
    512
}
fn d_lr() -> f64 {
    0.01
}
fn d_norm() -> Norm {
    Norm::L1
}

/// The `[transe]` table of an ERNIE run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransEConfig {
    /// Embedding size k (the paper's ERNIE uses 100).
    #[serde(default = "d_dim")]
    pub dim: usize,
    /// γ.
    #[serde(default = "d_margin")]
    pub margin: f64,
    #[serde(default = "d_norm")]
    pub norm: Norm,
    #[serde(default = "d_steps")]
    pub steps: u64,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// `sgd` (the paper; momentum 0) or `adamw`.
    #[serde(default = "d_opt")]
    pub optimizer: OptimizerConfig,
}

fn d_opt() -> OptimizerConfig {
    OptimizerConfig::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}

impl Default for TransEConfig {
    fn default() -> Self {
        Self {
            dim: d_dim(),
            margin: d_margin(),
            norm: d_norm(),
            steps: d_steps(),
            batch_size: d_batch(),
            lr: d_lr(),
            optimizer: d_opt(),
        }
    }
}

impl TransEConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.dim == 0 || self.batch_size == 0 {
            return Err("transe.dim and transe.batch_size must be positive".into());
        }
        if !(self.margin > 0.0 && self.margin.is_finite()) {
            return Err(format!(
                "transe.margin must be positive, found {}",
                self.margin
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("transe.lr must be positive, found {}", self.lr));
        }
        self.optimizer.validate()
    }
}
