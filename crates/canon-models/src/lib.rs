//! Model families as computation graphs over `canon-nn` layers, the traits everything above is
//! written against, and the one weight loader.
//!
//! - `CausalLm`: ids + cache → next-token logits (LLaMA, the GPT family, Transformer-XL, and
//!   `family::TrainedLm` over whichever a run folder holds).
//! - `Encoder`: ids + mask → hidden states (BERT).
//! - `load`: safetensors (HF names) and GGUF (llama.cpp names) through one name table, every tensor's
//!   shape checked against the config.

pub mod bert;
pub mod bert_heads;
pub mod config;
pub mod ernie;
pub mod family;
pub mod gguf_out;
pub mod gpt;
pub mod gpt_tasks;
pub mod inspect;
pub mod llama;
pub mod load;
pub mod peft;
pub mod sentence;
pub mod source;
pub mod t5;
pub mod transformer;
pub mod transformer_xl;
pub mod varstore;

use candle_core::Tensor;
use canon_nn::KvCache;

pub use bert::Bert;
pub use config::{BertConfig, LlamaConfig, LlamaVariant};
pub use family::{ModelConfig, TrainOutput, TrainableLm};
pub use gpt::{Gpt, GptConfig};
pub use llama::Llama;
pub use load::{
    LoadedEncoder, LoadedLm, ModelSpec, load_causal_lm, load_encoder, load_encoder_named,
};
pub use sentence::{Pooling, SentenceEmbedder};
pub use source::WeightMode;
pub use varstore::VarStore;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Gguf(#[from] canon_quant::gguf::GgufError),
    #[error(transparent)]
    Quant(#[from] canon_quant::QuantError),
    #[error(transparent)]
    Text(#[from] canon_text::TextError),
    #[error(transparent)]
    Asset(#[from] canon_assets::AssetError),
    #[error("unsupported architecture '{found}': expected one of {expected}")]
    Architecture { found: String, expected: String },
    #[error("{file}: missing tensor '{name}'")]
    MissingTensor { file: String, name: String },
    #[error("{file}: tensor '{name}' has shape {found:?}, but the config implies {expected:?}")]
    Shape {
        file: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Input(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// Which positions a causal LM returns logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    All,
    /// Only the last position (generation): skips the output projection elsewhere.
    Last,
}

/// Per-sequence decoding state: one KV cache per layer.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    pub layers: Vec<KvCache>,
}

impl Cache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![KvCache::new(); n_layers],
        }
    }
    /// A cache whose layers store keys and values as f16 (half the memory of `new`).
    pub fn new_f16(n_layers: usize) -> Self {
        Self {
            layers: vec![KvCache::new_f16(); n_layers],
        }
    }
    /// Bytes held by the key/value buffers of every layer.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(KvCache::bytes).sum()
    }
    /// Number of positions already processed.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(KvCache::clear);
    }
}

/// Cross-attention keys/values of an encoder-decoder layer through its cache slot: the first
/// decoding step computes them from the encoder states `enc` `[b, s, d]` (`compute`) and stores
/// them; later steps read them back. Errors when the cached states cover another source length.
pub(crate) fn cross_kv(
    slot: &mut canon_nn::KvCache,
    enc: &candle_core::Tensor,
    compute: impl FnOnce() -> Result<(candle_core::Tensor, candle_core::Tensor)>,
) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
    let s = enc.dim(1)?;
    if let Some((k, v)) = slot.view()? {
        if k.dim(2)? != s {
            return Err(ModelError::Input(format!(
                "the cache holds cross-attention states for {} source positions, but the encoder \
                 states have {s}",
                k.dim(2)?
            )));
        }
        return Ok((k, v));
    }
    let (k, v) = compute()?;
    Ok(slot.append(&k, &v)?)
}

/// A decoder-only language model.
pub trait CausalLm: Send + Sync {
    /// `ids: [b, t]` (u32) continuing the sequence in `cache`; returns logits `[b, t', vocab]` with
    /// `t' = t` for `Positions::All` and 1 for `Positions::Last`.
    fn forward(&self, ids: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor>;
    fn new_cache(&self) -> Cache;
    fn vocab_size(&self) -> usize;
    /// Longest sequence (prompt + generated) the model accepts.
    fn max_seq_len(&self) -> usize;
    /// Makes `new_cache` store keys and values as f16 (`true`) or f32. Models without the option
    /// refuse `true`.
    fn set_kv_f16(&mut self, on: bool) -> Result<()> {
        if on {
            return Err(ModelError::Input(
                "this model has no f16 KV cache option (LLaMA-family models have)".into(),
            ));
        }
        Ok(())
    }
    /// Gradient checkpointing per block: while training, each block keeps only its input and
    /// runs again in the backward. Models without the option refuse `true`.
    fn set_checkpointing(&mut self, on: bool) -> Result<()> {
        if on {
            return Err(ModelError::Input(
                "this model has no gradient checkpointing option (LLaMA-family models have)".into(),
            ));
        }
        Ok(())
    }
    /// The adaptable linear layers by their HF module names (`model.layers.0.self_attn.q_proj`),
    /// for LoRA adapters (paper 13). Models without named layers return none.
    fn linear_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn linear_mut(&mut self, _name: &str) -> Option<&mut canon_nn::Linear> {
        None
    }
    /// The input embeddings of `ids: [b, t]`, `[b, t, d]` f32: the rows of the token table that
    /// `forward` starts from. Gradient-guided prompt search (AutoPrompt, paper 11) differentiates
    /// with respect to them through [`CausalLm::forward_embeds`]. Models without it say so.
    fn embed(&self, _ids: &Tensor) -> Result<Tensor> {
        Err(ModelError::Input(
            "this model does not expose its input embeddings".into(),
        ))
    }
    /// `forward` from input embeddings `x: [b, t, d]` (as [`CausalLm::embed`] returns them, or
    /// any other vectors) instead of token ids; records a backward pass when `x` tracks one.
    fn forward_embeds(&self, _x: &Tensor, _cache: &mut Cache, _which: Positions) -> Result<Tensor> {
        Err(ModelError::Input(
            "this model does not run from input embeddings".into(),
        ))
    }
    /// Whether [`CausalLm::forward_batch`] gives each sequence the same bits whatever else
    /// shares the pass and however many rows it has: every product on row-independent kernels
    /// (quantized weights repacked once, no adapter). Batched generation then prefills several
    /// prompts in one pass. The default, `false`, keeps one prompt per pass.
    fn rows_independent(&self) -> bool {
        false
    }
    /// One step for several independent sequences: `ids[i]` (at least one token) continues
    /// `caches[i]`. Returns the logits of each sequence's last new position, `[n, vocab]` f32.
    ///
    /// The default runs the sequences one after another. A model that overrides it runs them in
    /// one pass, so that each weight matrix is read once per step for all of them (decoding is
    /// memory-bound); per-sequence results must equal `forward`'s. For inference: an override
    /// need not record a backward pass (LLaMA's writes the attention rows to a plain buffer).
    fn forward_batch(&self, ids: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Tensor> {
        if ids.len() != caches.len() {
            return Err(ModelError::Input(format!(
                "forward_batch: {} sequences but {} caches",
                ids.len(),
                caches.len()
            )));
        }
        let mut rows = Vec::with_capacity(ids.len());
        for (seq, cache) in ids.iter().zip(caches.iter_mut()) {
            let t = Tensor::new(*seq, &candle_core::Device::Cpu)?.unsqueeze(0)?;
            let logits = self.forward(&t, cache, Positions::Last)?; // [1, 1, vocab]
            rows.push(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?);
        }
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// A bidirectional encoder.
pub trait Encoder: Send + Sync {
    /// `ids, mask: [b, t]` (mask 1 for real tokens, 0 for padding); returns `[b, t, hidden]`.
    fn forward(&self, ids: &Tensor, type_ids: Option<&Tensor>, mask: &Tensor) -> Result<Tensor>;
    fn hidden_size(&self) -> usize;
    fn max_positions(&self) -> usize;
    /// Runs the linear layers on 8-bit weights (ggml's Q8_0 blocks) from now on, where the model
    /// has such a path; an error naming why not otherwise.
    fn use_q8_weights(&mut self) -> Result<()> {
        Err(ModelError::Input(
            "expected an encoder with an 8-bit path (BERT), found one without".into(),
        ))
    }
}

/// An encoder-decoder model (the Transformer of paper 1, T5 of paper 8).
///
/// Decoding keeps one self-attention KV cache per decoder layer in `cache`; the encoder states are
/// passed on every call (a model may cache their cross-attention projections in its own way, but
/// must give the same logits as the full decode).
pub trait Seq2SeqLm: Send + Sync {
    /// `src, src_mask: [b, s]` (u32 ids; mask 1 for tokens, 0 for padding) → encoder states
    /// `[b, s, d]`.
    fn encode(&self, src: &Tensor, src_mask: &Tensor) -> Result<Tensor>;
    /// `tgt: [b, t]` target ids continuing the prefix held in `cache` (the first call starts with
    /// `decoder_start_id`) → logits `[b, t, vocab]`. Decoding one token at a time with the cache
    /// equals decoding the whole prefix at once.
    fn decode(
        &self,
        enc: &Tensor,
        src_mask: &Tensor,
        tgt: &Tensor,
        cache: &mut Cache,
    ) -> Result<Tensor>;
    fn new_cache(&self) -> Cache;
    fn vocab_size(&self) -> usize;
    /// The id the decoder input starts with.
    fn decoder_start_id(&self) -> u32;
    /// The id that ends a target.
    fn eos_id(&self) -> u32;
    /// Longest target the decoder accepts (positions).
    fn max_target_len(&self) -> usize;
}
