//! T5: the text-to-text encoder-decoder (Raffel et al., 2020, "Exploring the Limits of Transfer
//! Learning with a Unified Text-to-Text Transformer", paper 8, §2.1 and §3.1).
//!
//! Idea: one encoder-decoder Transformer, every task written as text in, text out; positions enter
//! only through a learned, bucketed relative bias on the self-attention logits.
//!
//! The model (v1.0, as HF's `T5ForConditionalGeneration`), `x: [b, t, d]`:
//!   encoder block:  x = x + SelfAttn(LN(x), B_enc, padding);  x = x + FFN(LN(x))
//!   decoder block:  y = y + SelfAttn(LN(y), B_dec, causal);   y = y + CrossAttn(LN(y), enc)
//!                   y = y + FFN(LN(y))
//!   each stack ends with a final LN; logits = (y · d_model^-0.5) Eᵀ with the shared embedding E
//!   (the rescaling only when the head is tied).
//! - LN is the scale-only RMS norm (no mean subtraction, no bias), eps 1e-6.
//! - Attention logits are `q·k + B` with no `1/√d_kv` (folded into W_q's init std
//!   `(d_model·d_kv)^-0.5`); `B` (`canon_nn::pos::t5_bias`) is owned by the first layer of each stack
//!   and shared by all its layers; cross-attention has none.
//! - FFN: `W_o ReLU(W_i x)` (v1.0) or gated-GELU `W_o (gelu_tanh(W_i0 x) ⊙ W_i1 x)` (v1.1); no
//!   biases anywhere.
//! - Parameter names are HF's (`encoder.block.0.layer.0.SelfAttention.q.weight`, `shared.weight`…),
//!   so HF checkpoints and the goldens of `goldens/t5/gen.py` load as they are.
//!
//! Decoding keeps one self-attention KV cache per decoder layer; the relative bias of a cached step
//! is computed for its absolute query position. Cross-attention keys/values are computed from the
//! encoder states at the first step and read back from their own cache slots after that.
//! Deviation: no dropout (the small runs here see each example few times).
//!
//! Shapes: src ids `[b, s]` → encoder states `[b, s, d]`; target ids `[b, t]` → logits `[b, t, V]`.

use candle_core::{DType, Tensor};
use canon_nn::attention::{AttnOpts, attend};
use canon_nn::pos::t5_bias::RelativeBias;
use canon_nn::{Activation, AttnMask, Embedding, KvCache, Linear, RmsNorm, Weight};
use serde::{Deserialize, Serialize};

use crate::source::WeightSource;
use crate::varstore::{Init, InitPolicy, ParamInfo};
use crate::{Cache, ModelError, Result, Seq2SeqLm, cross_kv};

/// The feed-forward variant (`feed_forward_proj` in HF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum T5Ffn {
    /// T5 v1.0: `W_o ReLU(W_i x)`.
    Relu,
    /// T5 v1.1: `W_o (gelu_tanh(W_i0 x) ⊙ W_i1 x)`.
    GatedGelu,
}

/// T5's attention options: no `1/√d` (folded into the initialisation of `W_q`), the relative
/// bias (self-attention) added to the scores.
fn t5_opts(bias: Option<&Tensor>) -> AttnOpts<'_> {
    AttnOpts {
        bias,
        scale: Some(1.0),
        dropout: None,
    }
}

fn d_buckets() -> usize {
    32
}
fn d_max_distance() -> usize {
    128
}
fn d_ffn() -> T5Ffn {
    T5Ffn::Relu
}
fn d_true() -> bool {
    true
}
fn d_eps() -> f64 {
    1e-6
}
fn d_eos() -> u32 {
    1
}
fn d_factor() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T5Config {
    /// Filled from the tokenizer when 0.
    #[serde(default)]
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one head's keys/values.
    pub d_kv: usize,
    pub n_heads: usize,
    pub d_ff: usize,
    /// Encoder layers.
    pub n_layers: usize,
    /// Decoder layers (default `n_layers`).
    #[serde(default)]
    pub n_decoder_layers: Option<usize>,
    #[serde(default = "d_buckets")]
    pub num_buckets: usize,
    #[serde(default = "d_max_distance")]
    pub max_distance: usize,
    #[serde(default = "d_ffn")]
    pub ffn: T5Ffn,
    /// Output head tied to the shared embedding (and decoder output scaled by `d_model^-0.5`).
    #[serde(default = "d_true")]
    pub tie_embeddings: bool,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// Longest target (decoder positions) accepted.
    pub max_seq_len: usize,
    #[serde(default)]
    pub pad_id: u32,
    #[serde(default = "d_eos")]
    pub eos_id: u32,
    /// Default: `pad_id` (as T5).
    #[serde(default)]
    pub decoder_start_id: Option<u32>,
    /// HF's `initializer_factor`: multiplies every init std.
    #[serde(default = "d_factor")]
    pub init_factor: f64,
}

impl T5Config {
    pub fn n_dec(&self) -> usize {
        self.n_decoder_layers.unwrap_or(self.n_layers)
    }

    pub fn start_id(&self) -> u32 {
        self.decoder_start_id.unwrap_or(self.pad_id)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
            ("n_layers", self.n_layers),
            ("n_decoder_layers", self.n_dec()),
            ("max_seq_len", self.max_seq_len),
            ("max_distance", self.max_distance),
        ] {
            if v == 0 {
                return Err(format!("model.{k} must be positive, found 0"));
            }
        }
        if self.num_buckets < 4 || !self.num_buckets.is_multiple_of(2) {
            return Err(format!(
                "model.num_buckets must be an even number ≥ 4, found {}",
                self.num_buckets
            ));
        }
        for (k, id) in [
            ("pad_id", self.pad_id),
            ("eos_id", self.eos_id),
            ("decoder_start_id", self.start_id()),
        ] {
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "model.{k} ({id}) must be below model.vocab_size ({})",
                    self.vocab_size
                ));
            }
        }
        if !(self.norm_eps > 0.0 && self.init_factor > 0.0) {
            return Err("model.norm_eps and model.init_factor must be positive".into());
        }
        Ok(())
    }

    /// HF's `T5PreTrainedModel._init_weights`, by parameter name; weight decay on the projection
    /// matrices only.
    pub fn init_policy(&self) -> InitPolicy {
        let f = self.init_factor;
        let (d, dkv, h, dff) = (
            self.d_model as f64,
            self.d_kv as f64,
            self.n_heads as f64,
            self.d_ff as f64,
        );
        Box::new(move |name: &str, _shape: &[usize]| {
            let normal = |std: f64| Init::Normal { std: f * std };
            let (init, decay) = if name.ends_with("layer_norm.weight") {
                (Init::Ones, false)
            } else if name == "shared.weight" || name == "lm_head.weight" {
                (normal(1.0), false)
            } else if name.ends_with("relative_attention_bias.weight") {
                (normal(d.powf(-0.5)), false)
            } else if name.ends_with(".q.weight") {
                (normal((d * dkv).powf(-0.5)), true)
            } else if name.ends_with(".k.weight") || name.ends_with(".v.weight") {
                (normal(d.powf(-0.5)), true)
            } else if name.ends_with(".o.weight") {
                (normal((h * dkv).powf(-0.5)), true)
            } else if name.ends_with(".wo.weight") {
                (normal(dff.powf(-0.5)), true)
            } else {
                // wi, wi_0, wi_1
                (normal(d.powf(-0.5)), true)
            };
            ParamInfo { init, decay }
        })
    }
}

#[derive(Debug, Clone)]
struct Attn {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

#[derive(Debug, Clone)]
enum Ffn {
    Relu {
        wi: Linear,
        wo: Linear,
    },
    GatedGelu {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl Ffn {
    fn forward(&self, x: &Tensor) -> canon_nn::Result<Tensor> {
        match self {
            Ffn::Relu { wi, wo } => wo.forward(&wi.forward(x)?.relu()?),
            Ffn::GatedGelu { wi_0, wi_1, wo } => {
                let g = Activation::GeluTanh.forward(&wi_0.forward(x)?)?;
                wo.forward(&(g * wi_1.forward(x)?)?)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct EncBlock {
    ln_attn: RmsNorm,
    attn: Attn,
    ln_ffn: RmsNorm,
    ffn: Ffn,
}

#[derive(Debug, Clone)]
struct DecBlock {
    ln_self: RmsNorm,
    self_attn: Attn,
    ln_cross: RmsNorm,
    cross: Attn,
    ln_ffn: RmsNorm,
    ffn: Ffn,
}

#[derive(Debug, Clone)]
pub struct T5 {
    pub config: T5Config,
    shared: Embedding,
    enc: Vec<EncBlock>,
    enc_bias: RelativeBias,
    enc_norm: RmsNorm,
    dec: Vec<DecBlock>,
    dec_bias: RelativeBias,
    dec_norm: RmsNorm,
    lm_head: Linear,
}

impl T5 {
    /// Builds the model over `src` (HF parameter names; a `VarStore` creates them for training).
    pub fn load(config: T5Config, src: &dyn WeightSource) -> Result<Self> {
        config.validate().map_err(|message| ModelError::Config {
            file: src.describe(),
            message,
        })?;
        let c = &config;
        let (d, inner) = (c.d_model, c.n_heads * c.d_kv);
        let lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear::new(
                Weight::Dense(src.tensor(&format!("{name}.weight"), &[out, inp])?),
                None,
            ))
        };
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm::new(
                src.tensor(&format!("{name}.weight"), &[d])?,
                c.norm_eps,
            ))
        };
        let attn = |p: &str| -> Result<Attn> {
            Ok(Attn {
                q: lin(&format!("{p}.q"), inner, d)?,
                k: lin(&format!("{p}.k"), inner, d)?,
                v: lin(&format!("{p}.v"), inner, d)?,
                o: lin(&format!("{p}.o"), d, inner)?,
            })
        };
        let ffn = |p: &str| -> Result<Ffn> {
            Ok(match c.ffn {
                T5Ffn::Relu => Ffn::Relu {
                    wi: lin(&format!("{p}.wi"), c.d_ff, d)?,
                    wo: lin(&format!("{p}.wo"), d, c.d_ff)?,
                },
                T5Ffn::GatedGelu => Ffn::GatedGelu {
                    wi_0: lin(&format!("{p}.wi_0"), c.d_ff, d)?,
                    wi_1: lin(&format!("{p}.wi_1"), c.d_ff, d)?,
                    wo: lin(&format!("{p}.wo"), d, c.d_ff)?,
                },
            })
        };
        let shared = src.tensor("shared.weight", &[c.vocab_size, d])?;
        let bias = |stack: &str, bidirectional: bool| -> Result<RelativeBias> {
            let t = src.tensor(
                &format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                &[c.num_buckets, c.n_heads],
            )?;
            Ok(RelativeBias::new(t, bidirectional, c.max_distance))
        };
        let enc_bias = bias("encoder", true)?;
        let mut enc = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("encoder.block.{i}.layer");
            enc.push(EncBlock {
                attn: attn(&format!("{p}.0.SelfAttention"))?,
                ln_attn: norm(&format!("{p}.0.layer_norm"))?,
                ffn: ffn(&format!("{p}.1.DenseReluDense"))?,
                ln_ffn: norm(&format!("{p}.1.layer_norm"))?,
            });
        }
        let enc_norm = norm("encoder.final_layer_norm")?;
        let dec_bias = bias("decoder", false)?;
        let mut dec = Vec::with_capacity(c.n_dec());
        for i in 0..c.n_dec() {
            let p = format!("decoder.block.{i}.layer");
            dec.push(DecBlock {
                self_attn: attn(&format!("{p}.0.SelfAttention"))?,
                ln_self: norm(&format!("{p}.0.layer_norm"))?,
                cross: attn(&format!("{p}.1.EncDecAttention"))?,
                ln_cross: norm(&format!("{p}.1.layer_norm"))?,
                ffn: ffn(&format!("{p}.2.DenseReluDense"))?,
                ln_ffn: norm(&format!("{p}.2.layer_norm"))?,
            });
        }
        let dec_norm = norm("decoder.final_layer_norm")?;
        let lm_head = if c.tie_embeddings {
            Linear::new(Weight::Dense(shared.clone()), None)
        } else {
            lin("lm_head", c.vocab_size, d)?
        };
        Ok(Self {
            config,
            shared: Embedding::new(shared),
            enc,
            enc_bias,
            enc_norm,
            dec,
            dec_bias,
            dec_norm,
            lm_head,
        })
    }

    /// `[b, t, h·d_kv]` → `[b, h, t, d_kv]`
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, dk) = (self.config.n_heads, self.config.d_kv);
        Ok(x.reshape((b, t, h, dk))?.transpose(1, 2)?.contiguous()?)
    }

    /// `[b, h, t, d_kv]` → `[b, t, h·d_kv]`
    fn merge(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, t, dk) = x.dims4()?;
        Ok(x.transpose(1, 2)?.reshape((b, t, h * dk))?)
    }

    /// Multi-head attention of queries from `x` over keys/values from `kv_in` (`x` itself for
    /// self-attention), with an optional cache for the self-attention keys/values.
    fn attend(
        &self,
        a: &Attn,
        x: &Tensor,
        kv_in: &Tensor,
        bias: Option<&Tensor>,
        mask: AttnMask<'_>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let q = self.heads(&a.q.forward(x)?)?;
        let mut k = self.heads(&a.k.forward(kv_in)?)?;
        let mut v = self.heads(&a.v.forward(kv_in)?)?;
        if let Some(c) = cache {
            (k, v) = c.append(&k, &v)?;
        }
        let y = attend(&q, &k, &v, mask, t5_opts(bias))?;
        Ok(a.o.forward(&self.merge(&y)?)?)
    }

    fn check_ids(&self, ids: &Tensor, what: &str) -> Result<()> {
        let (_, t) = ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Input(format!(
                "{what}: expected at least one token, found 0"
            )));
        }
        let max = ids.to_dtype(DType::U32)?.flatten_all()?.max(0)?;
        let max = max.to_scalar::<u32>()? as usize;
        if max >= self.config.vocab_size {
            return Err(ModelError::Input(format!(
                "{what}: token id {max} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        Ok(())
    }

    /// Encoder states `[b, s, d]` (after the final norm).
    pub fn encode_states(&self, src: &Tensor, src_mask: &Tensor) -> Result<Tensor> {
        self.check_ids(src, "encode")?;
        let (b, s) = src.dims2()?;
        if src_mask.dims() != [b, s] {
            return Err(ModelError::Input(format!(
                "encode: the source mask has shape {:?}, expected [{b}, {s}]",
                src_mask.dims()
            )));
        }
        let bias = self.enc_bias.bias(s, s, 0)?;
        let mut x = self.shared.forward(src)?; // [b, s, d]
        for blk in &self.enc {
            let h = blk.ln_attn.forward(&x)?;
            let a = self.attend(
                &blk.attn,
                &h,
                &h,
                Some(&bias),
                AttnMask::Padding(src_mask),
                None,
            )?;
            x = (x + a)?;
            x = (&x + blk.ffn.forward(&blk.ln_ffn.forward(&x)?)?)?;
        }
        Ok(self.enc_norm.forward(&x)?)
    }

    /// Decoder logits `[b, t, V]` for `tgt` continuing `cache` (or, without a cache, starting at
    /// position 0; training).
    fn decode_inner(
        &self,
        enc: &Tensor,
        src_mask: &Tensor,
        tgt: &Tensor,
        mut cache: Option<&mut Cache>,
    ) -> Result<Tensor> {
        self.check_ids(tgt, "decode")?;
        let t = tgt.dim(1)?;
        let offset = cache.as_deref().map_or(0, Cache::len);
        if offset + t > self.config.max_seq_len {
            return Err(ModelError::Input(format!(
                "the target would reach {} tokens, beyond the model's limit of {}",
                offset + t,
                self.config.max_seq_len
            )));
        }
        // Queries at offset .. offset + t against keys 0 .. offset + t.
        let bias = self.dec_bias.bias(t, offset + t, offset)?;
        let mut y = self.shared.forward(tgt)?; // [b, t, d]
        let n = self.dec.len();
        for (i, blk) in self.dec.iter().enumerate() {
            let kv = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            let h = blk.ln_self.forward(&y)?;
            let a = self.attend(
                &blk.self_attn,
                &h,
                &h,
                Some(&bias),
                AttnMask::Causal { offset },
                kv,
            )?;
            y = (y + a)?;
            let h = blk.ln_cross.forward(&y)?;
            let a = match cache.as_deref_mut() {
                // Cross-attention keys/values depend only on the encoder states: computed at the
                // first step, then read back from the cache's second half.
                Some(c) => {
                    let slot = &mut c.layers[n + i];
                    let (k, v) = cross_kv(slot, enc, || {
                        Ok((
                            self.heads(&blk.cross.k.forward(enc)?)?,
                            self.heads(&blk.cross.v.forward(enc)?)?,
                        ))
                    })?;
                    let q = self.heads(&blk.cross.q.forward(&h)?)?;
                    let y = attend(&q, &k, &v, AttnMask::Padding(src_mask), t5_opts(None))?;
                    blk.cross.o.forward(&self.merge(&y)?)?
                }
                None => {
                    self.attend(&blk.cross, &h, enc, None, AttnMask::Padding(src_mask), None)?
                }
            };
            y = (y + a)?;
            y = (&y + blk.ffn.forward(&blk.ln_ffn.forward(&y)?)?)?;
        }
        let mut y = self.dec_norm.forward(&y)?;
        if self.config.tie_embeddings {
            y = (y * (self.config.d_model as f64).powf(-0.5))?;
        }
        Ok(self.lm_head.forward(&y)?)
    }

    /// Teacher-forced logits `[b, t, V]` of decoder inputs `tgt_in` (training; keeps the graph).
    pub fn forward_train(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
    ) -> Result<Tensor> {
        let enc = self.encode_states(src, src_mask)?;
        self.decode_inner(&enc, src_mask, tgt_in, None)
    }
}

impl Seq2SeqLm for T5 {
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
        if cache.layers.len() != 2 * self.dec.len() {
            *cache = self.new_cache();
        }
        self.decode_inner(enc, src_mask, tgt, Some(cache))
    }

    /// One slot per decoder layer for self-attention, then one per layer for cross-attention.
    fn new_cache(&self) -> Cache {
        Cache::new(2 * self.dec.len())
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn decoder_start_id(&self) -> u32 {
        self.config.start_id()
    }
    fn eos_id(&self) -> u32 {
        self.config.eos_id
    }
    fn max_target_len(&self) -> usize {
        self.config.max_seq_len
    }
}

#[cfg(test)]
#[path = "t5_tests.rs"]
mod tests;
