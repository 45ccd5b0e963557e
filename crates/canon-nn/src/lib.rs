//! Layers shared by every model family: linear (owning weight format and adapters), embeddings,
//! norms, positions (RoPE), attention, feed-forward blocks and the KV cache. Each primitive exists
//! once; model families compose them. Layers never name a model.
//!
//! Every layer here is written with composed candle ops that record a backward pass (candle's fused
//! `softmax_last_dim`, `rms_norm`, `layer_norm` and `rope*` do not), so the same code serves training.

pub mod activation;
pub mod attention;
pub mod checkpoint;
pub mod dropout;
pub mod embedding;
pub mod ffn;
pub mod fused;
pub mod gradcheck;
pub mod kv_cache;
pub mod linear;
pub mod loss;
pub mod moe;
pub mod norm;
pub mod ops;
pub mod pos;
pub mod profile;
pub mod rng;
pub mod rope;
mod simd;
pub mod train_ops;

pub use activation::Activation;
pub use attention::{AttnMask, AttnOpts, attend, attention};
pub use dropout::{Noise, dropout};
pub use embedding::Embedding;
pub use ffn::{Mlp, SwiGlu};
pub use kv_cache::KvCache;
pub use linear::{Linear, Lora, Weight};
pub use loss::{IGNORE_INDEX, LmLoss, lm_loss, masked_cross_entropy};
pub use moe::{DenseFfn, Moe, MoeConfig, MoeOutput, SecondExpert};
pub use norm::{LayerNorm, Norm, RmsNorm};
pub use rng::SplitMix64;
pub use rope::{Rope, RopeLayout};

pub type Result<T> = candle_core::Result<T>;
