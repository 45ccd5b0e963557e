//! Typed model configurations, validated once where they are read (GGUF metadata or config.json).

use serde::{Deserialize, Serialize};

use canon_nn::{Activation, RopeLayout};

/// LLaMA family (paper 25): RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_layout: RopeLayout,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Block differences of LLaMA-like families (Gemma 3); all off for LLaMA itself.
    #[serde(default)]
    pub variant: LlamaVariant,
}

/// What a LLaMA-like family changes in the block, as configuration (Gemma 3, read from `gemma3.*`
/// GGUF metadata; llama.cpp's `gemma3` graph is the reference; Qwen2, Phi-3 and Mistral from GGUF
/// metadata or an HF config.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaVariant {
    /// Biases on the query, key and value projections (Qwen2).
    pub qkv_bias: bool,
    /// Query/key/value stored as one `qkv_proj` matrix and gate/up as one `gate_up_proj` (Phi-3:
    /// rows of q, then k, then v; of gate, then up); they are split into the separate projections
    /// at load. Files with separate tensors load too.
    pub fused_projections: bool,
    /// Token embeddings multiplied by √hidden_size.
    pub scale_embeddings: bool,
    /// RMSNorm over each head's queries and keys before RoPE.
    pub qk_norm: bool,
    /// RMSNorm on the attention output and on the FFN output before each residual add.
    pub post_norms: bool,
    /// Gated FFN with the tanh GELU instead of SiLU (GeGLU).
    pub gelu_tanh_ffn: bool,
    /// Sliding-window attention on local layers: a query sees this many positions (itself
    /// included).
    pub sliding_window: Option<usize>,
    /// With a window, every `n`-th layer (n-1, 2n-1, ...) is global and the others local; 0 makes
    /// every layer local.
    pub sliding_window_pattern: usize,
    /// RoPE base of local layers (global layers use `rope_theta`).
    pub rope_theta_local: Option<f32>,
    /// Queries multiplied by this instead of 1/√head_dim.
    pub query_scale: Option<f32>,
    /// Logits squashed as `c·tanh(logits / c)`.
    pub final_logit_softcap: Option<f32>,
    /// Scaled RoPE: each rotary pair's frequency divided by its factor (`head_dim / 2` values;
    /// linear scaling repeats its factor, Llama 3's differ by frequency). Global layers only
    /// where local layers have a base of their own (Gemma 3); `None` for plain RoPE.
    pub rope_freq_factors: Option<Vec<f32>>,
}

impl LlamaConfig {
    /// Whether layer `i` attends through the sliding window.
    pub fn is_local_layer(&self, i: usize) -> bool {
        let n = self.variant.sliding_window_pattern;
        self.variant.sliding_window.is_some() && (n == 0 || i % n < n - 1)
    }

    /// Checks the relations a forward pass relies on.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("{k} must be positive, found 0"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim must be even for RoPE, found {}",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(format!(
                "rms_norm_eps must be in (0, 1), found {}",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(format!(
                "rope_theta must be positive, found {}",
                self.rope_theta
            ));
        }
        if self.variant.sliding_window == Some(0) {
            return Err("sliding_window must be positive, found 0".into());
        }
        if let Some(t) = self.variant.rope_theta_local
            && !(t > 0.0 && t.is_finite())
        {
            return Err(format!("local rope_theta must be positive, found {t}"));
        }
        for (k, v) in [
            ("query_scale", self.variant.query_scale),
            ("final_logit_softcap", self.variant.final_logit_softcap),
        ] {
            if let Some(x) = v
                && !(x > 0.0 && x.is_finite())
            {
                return Err(format!("{k} must be positive, found {x}"));
            }
        }
        if let Some(f) = &self.variant.rope_freq_factors {
            if f.len() != self.head_dim / 2 {
                return Err(format!(
                    "RoPE frequency factors: expected {} (head_dim / 2), found {}",
                    self.head_dim / 2,
                    f.len()
                ));
            }
            if let Some(x) = f.iter().find(|x| !(**x > 0.0 && x.is_finite())) {
                return Err(format!(
                    "RoPE frequency factors must be positive, found {x}"
                ));
            }
        }
        if self.max_position_embeddings > 1 << 22 {
            return Err(format!(
                "max_position_embeddings {} is beyond what Canon supports (4M)",
                self.max_position_embeddings
            ));
        }
        Ok(())
    }
}

/// BERT family (paper 3): post-LN encoder with learned absolute positions and token types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
}

impl BertConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(format!("{k} must be positive, found 0"));
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err(format!(
                "layer_norm_eps must be in (0, 1), found {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// The HF `hidden_act` spelling → our activation.
    pub fn activation_from_hf(name: &str) -> Option<Activation> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }
}
