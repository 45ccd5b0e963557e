//! The GPT family's configuration: block style, norm, positions, FFN and their defaults, with
//! validation and the initialisation policy.

use canon_nn::{Activation, MoeConfig};
use serde::{Deserialize, Serialize};

use crate::varstore::{Init, InitPolicy, ParamInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockStyle {
    PostLn,
    PreLn,
    Parallel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosKind {
    Learned,
    Rope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    Mlp,
    SwiGlu,
}

fn d_true() -> bool {
    true
}
fn d_act() -> Activation {
    Activation::GeluTanh
}
fn d_std() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-5
}
fn d_theta() -> f32 {
    10000.0
}
fn d_every() -> usize {
    2
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Filled from the trained tokenizer when 0.
    #[serde(default)]
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads (default `n_head`; 1 = multi-query attention).
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    pub d_model: usize,
    pub d_ff: usize,
    pub max_seq_len: usize,
    pub block: BlockStyle,
    pub norm: NormKind,
    /// LayerNorm has a bias β (GPT); PaLM's norms have none.
    #[serde(default = "d_true")]
    pub norm_bias: bool,
    pub positions: PosKind,
    pub ffn: FfnKind,
    #[serde(default = "d_act")]
    pub activation: Activation,
    /// Biases in dense layers.
    pub bias: bool,
    pub tie_embeddings: bool,
    #[serde(default)]
    pub final_norm: bool,
    #[serde(default)]
    pub scaled_residual_init: bool,
    #[serde(default = "d_std")]
    pub init_std: f64,
    /// Token-embedding init std (PaLM: 1.0); default `init_std`.
    #[serde(default)]
    pub embed_init_std: Option<f64>,
    /// Multiply logits by `1/√d_model` (PaLM with shared embeddings).
    #[serde(default)]
    pub scale_logits: bool,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    /// GLaM: a mixture of experts replaces the FFN of every `moe_every`-th block (1-based: blocks
    /// `moe_every − 1, 2·moe_every − 1, …` counting from 0).
    #[serde(default)]
    pub moe: Option<MoeConfig>,
    #[serde(default = "d_every")]
    pub moe_every: usize,
    /// Dropout probability (GPT-1: 0.1) on the embeddings, the attention probabilities and each
    /// residual branch, during training only.
    #[serde(default)]
    pub dropout: f64,
}

impl GptConfig {
    pub fn n_kv(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head.max(1)
    }
    pub fn is_moe_block(&self, i: usize) -> bool {
        self.moe.is_some() && self.moe_every > 0 && (i + 1).is_multiple_of(self.moe_every)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("d_model", self.d_model),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
            ("n_kv_head", self.n_kv()),
        ] {
            if v == 0 {
                return Err(format!("model.{k} must be positive, found 0"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "model.dropout must be in [0, 1), found {}",
                self.dropout
            ));
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return Err(format!(
                "model.d_model ({}) must be a multiple of model.n_head ({})",
                self.d_model, self.n_head
            ));
        }
        if !self.n_head.is_multiple_of(self.n_kv()) {
            return Err(format!(
                "model.n_head ({}) must be a multiple of model.n_kv_head ({})",
                self.n_head,
                self.n_kv()
            ));
        }
        if self.positions == PosKind::Rope && !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "rotary positions need an even head dimension, found {}",
                self.head_dim()
            ));
        }
        if let Some(m) = &self.moe {
            m.validate()?;
            if self.moe_every == 0 {
                return Err("model.moe_every must be positive".into());
            }
        }
        if !(self.norm_eps > 0.0 && self.init_std > 0.0) {
            return Err("model.norm_eps and model.init_std must be positive".into());
        }
        Ok(())
    }

    /// Initialisation and weight-decay policy by parameter name (see the module header).
    pub fn init_policy(&self) -> InitPolicy {
        let std = self.init_std;
        let resid = if self.scaled_residual_init {
            std / ((2 * self.n_layer) as f64).sqrt()
        } else {
            std
        };
        let emb = self.embed_init_std.unwrap_or(std);
        Box::new(move |name: &str, _shape: &[usize]| {
            let (init, decay) = if name.ends_with(".bias") {
                (Init::Zeros, false)
            } else if name.starts_with("ln_") || name.contains(".ln_") {
                (Init::Ones, false)
            } else if name.starts_with("wte.") {
                (Init::Normal { std: emb }, false)
            } else if name.starts_with("wpe.") {
                (Init::Normal { std }, false)
            } else if name.ends_with("c_proj.weight") || name.ends_with("down.weight") {
                (Init::Normal { std: resid }, true)
            } else {
                (Init::Normal { std }, true)
            };
            ParamInfo { init, decay }
        })
    }
}
