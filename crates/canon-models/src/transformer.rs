//! The Transformer encoder-decoder (Vaswani et al., 2017, "Attention Is All You Need", paper 1).
//!
//! The idea: translation without recurrence — stacks of self-attention and position-wise FFNs read
//! the source; the decoder attends causally to its own prefix and to the encoder's states.
//!
//! Equations (numbered as in the paper):
//!   (1) `Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V` (`M = −∞` at padding / future keys),
//!       multi-head: `h` heads of width `d_k = d_model / h`, concatenated, projected by `W^O`;
//!   (2) `FFN(x) = max(0, x W₁ + b₁) W₂ + b₂`;
//!   (3) learning rate `d^−0.5 · min(s^−0.5, s · warmup^−1.5)` (`canon_train::schedule`);
//!   §3.5 `PE(pos, 2i) = sin(pos / 10000^(2i/d))`, `PE(pos, 2i+1) = cos(…)` (interleaved);
//!   §3.4 token embeddings × `√d_model`; one matrix `E` for source and target embeddings and the
//!   pre-softmax projection `logits = h Eᵀ` (shared vocabulary).
//! Each sub-layer is post-LN: `x = LayerNorm(x + Dropout(Sublayer(x)))`. Residual dropout (p = 0.1)
//! also follows `embedding + PE`.
//!
//! Deviations: no dropout on the attention probabilities (the paper has none; the annotated
//! reference adds it). Dropout masks come from `canon_nn::Noise`, seeded per batch by the
//! objective from the engine's checkpointed RNG, and are off in evaluation and decoding. The position table is computed in f64 and rounded once, so the relative-shift
//! property holds to 1e-5 up to position 4096 (an f32 angle would be off by ~2e-4 there).
//!
//! Decoding: `Cache` holds `2·N` KV caches: `0..N` the decoder self-attention keys/values (growing by
//! one position per step), `N..2N` the cross-attention projections of the encoder states, computed
//! on the first decode call and reused. Beam search reorders all of them by parent beam.
//!
//! Shapes: `src, src_mask: [b, s]`, encoder states `[b, s, d]`, `tgt: [b, t]`, logits `[b, t, V]`.

use candle_core::{DType, Device, Tensor};
use canon_nn::{
    Activation, AttnMask, Embedding, LayerNorm, Linear, Mlp, Noise, Weight, attention, dropout,
};
use serde::{Deserialize, Serialize};

use crate::source::{WeightMode, WeightSource};
use crate::varstore::{Init, InitPolicy, ParamInfo};
use crate::{Cache, ModelError, Result, Seq2SeqLm, cross_kv};

fn d_dropout() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-6
}

/// The `family` tag of a Transformer `[model]` table (serde's internally tagged structs do not
/// combine with `deny_unknown_fields`, so the tag is an ordinary one-value field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformerFamily {
    #[default]
    Transformer,
}

/// The `[model]` table of `configs/transformer-mt.toml` (`family = "transformer"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    #[serde(default)]
    pub family: TransformerFamily,
    /// Shared source/target vocabulary; filled from the trained tokenizer when 0.
    #[serde(default)]
    pub vocab_size: usize,
    pub n_encoder_layers: usize,
    pub n_decoder_layers: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub d_ff: usize,
    /// Longest source or target (positions of the sinusoid table).
    pub max_seq_len: usize,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// Special ids, filled from the tokenizer.
    #[serde(default)]
    pub pad_id: u32,
    #[serde(default)]
    pub bos_id: u32,
    #[serde(default)]
    pub eos_id: u32,
}

impl TransformerConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head.max(1)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("n_encoder_layers", self.n_encoder_layers),
            ("n_decoder_layers", self.n_decoder_layers),
            ("d_model", self.d_model),
            ("n_head", self.n_head),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return Err(format!("model.{k} must be positive, found 0"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return Err(format!(
                "model.d_model ({}) must be a multiple of model.n_head ({})",
                self.d_model, self.n_head
            ));
        }
        if !self.d_model.is_multiple_of(2) {
            return Err(format!(
                "model.d_model must be even for the sinusoid table, found {}",
                self.d_model
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "model.dropout must be in [0, 1), found {}",
                self.dropout
            ));
        }
        if self.norm_eps <= 0.0 {
            return Err(format!(
                "model.norm_eps must be positive, found {}",
                self.norm_eps
            ));
        }
        for (k, v) in [
            ("pad_id", self.pad_id),
            ("bos_id", self.bos_id),
            ("eos_id", self.eos_id),
        ] {
            if v as usize >= self.vocab_size {
                return Err(format!(
                    "model.{k} ({v}) is outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Xavier-normal matrices (the reference's Xavier-uniform, same variance), `E ~ N(0, d^−1/2)`
    /// so that `√d·E` has unit scale, LayerNorm γ = 1, biases 0. Weight decay on matrices only.
    pub fn init_policy(&self) -> InitPolicy {
        let d = self.d_model as f64;
        Box::new(move |name: &str, shape: &[usize]| {
            let (init, decay) = if name.ends_with(".bias") {
                (Init::Zeros, false)
            } else if name.contains(".ln_") {
                (Init::Ones, false)
            } else if name == "shared.weight" {
                (Init::Normal { std: d.powf(-0.5) }, false)
            } else {
                let fan: usize = shape.iter().sum();
                (
                    Init::Normal {
                        std: (2.0 / fan.max(1) as f64).sqrt(),
                    },
                    true,
                )
            };
            ParamInfo { init, decay }
        })
    }
}

/// The paper's interleaved table `[n, d]`: `PE[p, 2i] = sin(p·ω_i)`, `PE[p, 2i+1] = cos(p·ω_i)`,
/// `ω_i = 10000^(−2i/d)`, angles in f64.
pub fn sinusoid_table(n: usize, d: usize, device: &Device) -> Result<Tensor> {
    if d == 0 || !d.is_multiple_of(2) {
        return Err(ModelError::Input(format!(
            "sinusoid table: the width must be even and positive, found {d}"
        )));
    }
    let mut v = Vec::with_capacity(n * d);
    for p in 0..n {
        for i in 0..d / 2 {
            let w = 10000f64.powf(-((2 * i) as f64) / d as f64);
            let a = p as f64 * w;
            v.push(a.sin() as f32);
            v.push(a.cos() as f32);
        }
    }
    Ok(Tensor::from_vec(v, (n, d), device)?)
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    /// Fused `[W_q; W_k; W_v]`, `[3d, d]`.
    qkv: Linear,
    o: Linear,
    ln_1: LayerNorm,
    ffn: Mlp,
    ln_2: LayerNorm,
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    qkv: Linear,
    o: Linear,
    ln_1: LayerNorm,
    /// Cross-attention: queries from the decoder, fused `[W_k; W_v]` over the encoder states.
    cross_q: Linear,
    cross_kv: Linear,
    cross_o: Linear,
    ln_2: LayerNorm,
    ffn: Mlp,
    ln_3: LayerNorm,
}

#[derive(Debug, Clone)]
pub struct Transformer {
    pub config: TransformerConfig,
    shared: Embedding,
    /// `logits = h Eᵀ` through the same matrix.
    head: Linear,
    pe: Tensor,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    /// Training randomness (dropout masks); inactive unless seeded by `set_noise`.
    noise: Noise,
    /// The teacher-forced decoder attends to every target position (no causal mask): only the
    /// negative control of the copy-task test sets this (see `without_causal_mask`).
    unmasked: bool,
}

impl Transformer {
    /// Builds the model from `src` (a `VarStore`: random for training, or a checkpoint).
    pub fn load(config: TransformerConfig, src: &dyn WeightSource) -> Result<Self> {
        config.validate().map_err(|message| ModelError::Config {
            file: src.describe(),
            message,
        })?;
        let c = &config;
        let d = c.d_model;
        let lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            let w = src.weight(
                &format!("{name}.weight"),
                &[out, inp],
                WeightMode::DequantizeF32,
            )?;
            let b = src.tensor(&format!("{name}.bias"), &[out])?;
            Ok(Linear::new(w, Some(b)))
        };
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm::new(
                src.tensor(&format!("{name}.weight"), &[d])?,
                Some(src.tensor(&format!("{name}.bias"), &[d])?),
                c.norm_eps,
            ))
        };
        let ffn = |p: &str| -> Result<Mlp> {
            Ok(Mlp {
                fc1: lin(&format!("{p}.ffn.fc1"), c.d_ff, d)?,
                fc2: lin(&format!("{p}.ffn.fc2"), d, c.d_ff)?,
                act: Activation::Relu,
            })
        };
        let emb = src.tensor("shared.weight", &[c.vocab_size, d])?;
        let encoder = (0..c.n_encoder_layers)
            .map(|i| {
                let p = format!("encoder.{i}");
                Ok(EncoderLayer {
                    qkv: lin(&format!("{p}.self_attn.qkv"), 3 * d, d)?,
                    o: lin(&format!("{p}.self_attn.o"), d, d)?,
                    ln_1: norm(&format!("{p}.ln_1"))?,
                    ffn: ffn(&p)?,
                    ln_2: norm(&format!("{p}.ln_2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..c.n_decoder_layers)
            .map(|i| {
                let p = format!("decoder.{i}");
                Ok(DecoderLayer {
                    qkv: lin(&format!("{p}.self_attn.qkv"), 3 * d, d)?,
                    o: lin(&format!("{p}.self_attn.o"), d, d)?,
                    ln_1: norm(&format!("{p}.ln_1"))?,
                    cross_q: lin(&format!("{p}.cross_attn.q"), d, d)?,
                    cross_kv: lin(&format!("{p}.cross_attn.kv"), 2 * d, d)?,
                    cross_o: lin(&format!("{p}.cross_attn.o"), d, d)?,
                    ln_2: norm(&format!("{p}.ln_2"))?,
                    ffn: ffn(&p)?,
                    ln_3: norm(&format!("{p}.ln_3"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let pe = sinusoid_table(c.max_seq_len, d, emb.device())?;
        Ok(Self {
            head: Linear::new(Weight::Dense(emb.clone()), None),
            shared: Embedding::new(emb),
            pe,
            encoder,
            decoder,
            config,
            noise: Noise::default(),
            unmasked: false,
        })
    }

    /// A deliberately broken copy whose teacher-forced decoder sees future target tokens: the
    /// negative control of paper 1's copy-task check (training loss falls to ~0 while greedy
    /// decoding, which has no future tokens, fails). Cached decoding is unaffected.
    #[doc(hidden)]
    pub fn without_causal_mask(mut self) -> Self {
        self.unmasked = true;
        self
    }

    /// Seeds the dropout masks of the next training forward (`None`: off, as in evaluation).
    pub fn set_noise(&self, seed: Option<u64>) {
        self.noise.set(seed);
    }

    /// Residual dropout (identity unless the noise is seeded).
    fn dropped(&self, x: Tensor) -> Result<Tensor> {
        Ok(dropout(&x, self.config.dropout, &self.noise)?)
    }

    /// `√d · E[ids] + PE[offset .. offset + t]`, then dropout.
    fn embed(&self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Input(
                "transformer: expected at least one token, found 0".into(),
            ));
        }
        if offset + t > self.config.max_seq_len {
            return Err(ModelError::Input(format!(
                "transformer: the sequence would reach {} positions, beyond max_seq_len {}",
                offset + t,
                self.config.max_seq_len
            )));
        }
        let x = (self.shared.forward(ids)? * (self.config.d_model as f64).sqrt())?; // [b, t, d]
        self.dropped(x.broadcast_add(&self.pe.narrow(0, offset, t)?)?)
    }

    /// `[b, t, n·hd] → n tensors [b, h, t, hd]`.
    fn heads(&self, x: &Tensor, n: usize) -> Result<Vec<Tensor>> {
        let (b, t, _) = x.dims3()?;
        let (h, hd) = (self.config.n_head, self.config.head_dim());
        (0..n)
            .map(|i| {
                Ok(x.narrow(2, i * h * hd, h * hd)?
                    .reshape((b, t, h, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            })
            .collect()
    }

    /// `[b, h, t, hd] → [b, t, d]`.
    fn merge(&self, a: &Tensor) -> Result<Tensor> {
        let (b, _, t, _) = a.dims4()?;
        Ok(a.transpose(1, 2)?.reshape((b, t, self.config.d_model))?)
    }

    fn check_mask(src: &Tensor, src_mask: &Tensor) -> Result<()> {
        if src.dims() != src_mask.dims() || src.rank() != 2 {
            return Err(ModelError::Input(format!(
                "transformer: source {:?} and mask {:?} must both be [b, s]",
                src.dims(),
                src_mask.dims()
            )));
        }
        Ok(())
    }

    /// Encoder states `[b, s, d]` (eq. 1–2 in `N` post-LN layers).
    fn encode_states(&self, src: &Tensor, src_mask: &Tensor) -> Result<Tensor> {
        Self::check_mask(src, src_mask)?;
        let keep = src_mask.to_dtype(DType::F32)?;
        let mut x = self.embed(src, 0)?;
        for l in &self.encoder {
            let qkv = self.heads(&l.qkv.forward(&x)?, 3)?;
            let a = attention(&qkv[0], &qkv[1], &qkv[2], AttnMask::Padding(&keep))?;
            let a = self.dropped(l.o.forward(&self.merge(&a)?)?)?;
            x = l.ln_1.forward(&(x + a)?)?;
            let f = self.dropped(l.ffn.forward(&x)?)?;
            x = l.ln_2.forward(&(x + f)?)?;
        }
        Ok(x)
    }

    /// Decoder hidden states `[b, t, d]` for `tgt` continuing `cache` (or, without a cache, the
    /// whole prefix from position 0, keeping the graph for training).
    fn decode_hidden(
        &self,
        enc: &Tensor,
        src_mask: &Tensor,
        tgt: &Tensor,
        mut cache: Option<&mut Cache>,
    ) -> Result<Tensor> {
        let n = self.decoder.len();
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != 2 * n
        {
            *c = Cache::new(2 * n);
        }
        let offset = cache.as_deref().map_or(0, Cache::len);
        let keep = src_mask.to_dtype(DType::F32)?;
        let mut y = self.embed(tgt, offset)?;
        for (i, l) in self.decoder.iter().enumerate() {
            // Masked self-attention over the prefix.
            let qkv = self.heads(&l.qkv.forward(&y)?, 3)?;
            let a = match cache.as_deref_mut() {
                Some(c) => {
                    let (k, v) = c.layers[i].append(&qkv[1], &qkv[2])?;
                    attention(&qkv[0], &k, &v, AttnMask::Causal { offset })?
                }
                None if self.unmasked => attention(&qkv[0], &qkv[1], &qkv[2], AttnMask::None)?,
                None => attention(&qkv[0], &qkv[1], &qkv[2], AttnMask::Causal { offset: 0 })?,
            };
            let a = self.dropped(l.o.forward(&self.merge(&a)?)?)?;
            y = l.ln_1.forward(&(y + a)?)?;
            // Encoder-decoder attention; its keys/values depend only on the encoder states.
            let q = self.heads(&l.cross_q.forward(&y)?, 1)?.remove(0);
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => cross_kv(&mut c.layers[n + i], enc, || {
                    let kv = self.heads(&l.cross_kv.forward(enc)?, 2)?;
                    Ok((kv[0].clone(), kv[1].clone()))
                })?,
                None => {
                    let mut kv = self.heads(&l.cross_kv.forward(enc)?, 2)?;
                    let v = kv.remove(1);
                    (kv.remove(0), v)
                }
            };
            let a = attention(&q, &k, &v, AttnMask::Padding(&keep))?;
            let a = self.dropped(l.cross_o.forward(&self.merge(&a)?)?)?;
            y = l.ln_2.forward(&(y + a)?)?;
            let f = self.dropped(l.ffn.forward(&y)?)?;
            y = l.ln_3.forward(&(y + f)?)?;
        }
        Ok(y)
    }

    /// Logits `[b, t, V]` for teacher-forced `tgt_in` (training; the whole prefix at once, graph
    /// kept), with dropout when the noise is seeded.
    pub fn forward_train(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
    ) -> Result<Tensor> {
        let enc = self.encode_states(src, src_mask)?;
        let y = self.decode_hidden(&enc, src_mask, tgt_in, None)?;
        Ok(self.head.forward(&y)?)
    }
}

impl Seq2SeqLm for Transformer {
    fn encode(&self, src: &Tensor, src_mask: &Tensor) -> Result<Tensor> {
        self.encode_states(src, src_mask)
    }

    fn decode(
        &self,
        enc: &Tensor,
        src_mask: &Tensor,
        tgt: &Tensor,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let y = self.decode_hidden(enc, src_mask, tgt, Some(cache))?;
        Ok(self.head.forward(&y)?)
    }

    fn new_cache(&self) -> Cache {
        Cache::new(2 * self.decoder.len())
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn decoder_start_id(&self) -> u32 {
        self.config.bos_id
    }
    fn eos_id(&self) -> u32 {
        self.config.eos_id
    }
    fn max_target_len(&self) -> usize {
        self.config.max_seq_len
    }
}

#[cfg(test)]
#[path = "transformer_tests.rs"]
mod tests;
