//! Transformer-XL (Dai et al., 2019, paper 4): segment-level recurrence with relative positional
//! attention (`canon_nn::pos::relative`).
//!
//! Per layer n and segment τ+1 (§3.2): `h̃ = [SG(m_τ) ; h_{τ+1}]` (memory = the *input* of layer n
//! over the previous segments, stop-gradient), queries from the current segment, keys and values from
//! `h̃`; memory update keeps the last `mem_len` states of `[m_τ ; h_{τ+1}]`, detached. Blocks are
//! post-LN as in the reference (`x = LN(x + RelAttn(x)); x = LN(x + FF(x))`, ReLU FF); embeddings
//! are scaled by `√d`; `u` and `v` are shared across layers; the output layer is tied to the
//! embedding (the reference ties its adaptive softmax). Evaluation may use a longer memory than
//! training (`set_mem_len`).
//! Deviations: no adaptive softmax, no dropout, no `same_length`/`clamp_len`.
//!
//! Shapes: ids `[b, qlen]`, memory per layer `[b, mlen, d]`, logits `[b, qlen, vocab]`.

use std::sync::Mutex;

use candle_core::{DType, Tensor};
use canon_nn::pos::relative::rel_attention;
use canon_nn::pos::sinusoidal::sin_cos_concat;
use canon_nn::{Activation, Embedding, LayerNorm, Linear, Mlp, Weight};
use serde::{Deserialize, Serialize};

use crate::source::{WeightMode, WeightSource};
use crate::varstore::{Init, InitPolicy, ParamInfo};
use crate::{Cache, CausalLm, ModelError, Positions, Result};

fn d_std() -> f64 {
    0.02
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxlConfig {
    #[serde(default)]
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    pub d_inner: usize,
    /// Memory length during training (the reference's `mem_len`).
    pub mem_len: usize,
    /// Memory length for evaluation (longer than training is allowed).
    pub eval_mem_len: usize,
    /// Longest segment fed at once (train `block_size` must not exceed it).
    pub max_seq_len: usize,
    #[serde(default = "d_std")]
    pub init_std: f64,
}

impl TxlConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("d_model", self.d_model),
            ("d_inner", self.d_inner),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return Err(format!("model.{k} must be positive, found 0"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_head) || !self.d_model.is_multiple_of(2) {
            return Err(format!(
                "model.d_model ({}) must be even and a multiple of model.n_head ({})",
                self.d_model, self.n_head
            ));
        }
        Ok(())
    }

    pub fn init_policy(&self) -> InitPolicy {
        let std = self.init_std;
        Box::new(move |name: &str, _s: &[usize]| {
            let (init, decay) = if name.ends_with(".bias") || name.starts_with("r_") {
                (Init::Zeros, false)
            } else if name.contains("layer_norm") {
                (Init::Ones, false)
            } else if name.starts_with("word_emb") {
                (Init::Normal { std }, false)
            } else {
                (Init::Normal { std }, true)
            };
            ParamInfo { init, decay }
        })
    }
}

#[derive(Debug, Clone)]
struct Layer {
    qkv_net: Linear,
    r_net: Linear,
    o_net: Linear,
    attn_norm: LayerNorm,
    ff: Mlp,
    ff_norm: LayerNorm,
}

#[derive(Debug)]
pub struct TransformerXl {
    pub config: TxlConfig,
    word_emb: Embedding,
    /// `u` (`r_w_bias`) and `v` (`r_r_bias`), `[n_head, d_head]`, shared by all layers.
    r_w_bias: Tensor,
    r_r_bias: Tensor,
    layers: Vec<Layer>,
    lm_head: Linear,
    /// Training/evaluation memory: per layer `[b, mlen, d]`, and the memory length in force.
    state: Mutex<(Vec<Tensor>, usize)>,
}

impl TransformerXl {
    pub fn load(config: TxlConfig, src: &dyn WeightSource) -> Result<Self> {
        config.validate().map_err(|message| ModelError::Config {
            file: src.describe(),
            message,
        })?;
        let c = &config;
        let (d, nh) = (c.d_model, c.n_head);
        let dh = d / nh;
        let lin = |name: String, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let w = src.weight(
                &format!("{name}.weight"),
                &[out, inp],
                WeightMode::DequantizeF32,
            )?;
            let b = if bias {
                Some(src.tensor(&format!("{name}.bias"), &[out])?)
            } else {
                None
            };
            Ok(Linear::new(w, b))
        };
        let ln = |name: String| -> Result<LayerNorm> {
            Ok(LayerNorm::new(
                src.tensor(&format!("{name}.weight"), &[d])?,
                Some(src.tensor(&format!("{name}.bias"), &[d])?),
                1e-5,
            ))
        };
        let emb = src.tensor("word_emb.weight", &[c.vocab_size, d])?;
        let mut layers = Vec::new();
        for i in 0..c.n_layer {
            let p = format!("layers.{i}");
            layers.push(Layer {
                qkv_net: lin(format!("{p}.attn.qkv_net"), 3 * nh * dh, d, false)?,
                r_net: lin(format!("{p}.attn.r_net"), nh * dh, d, false)?,
                o_net: lin(format!("{p}.attn.o_net"), d, nh * dh, false)?,
                attn_norm: ln(format!("{p}.attn.layer_norm"))?,
                ff: Mlp {
                    fc1: lin(format!("{p}.ff.c_fc"), c.d_inner, d, true)?,
                    fc2: lin(format!("{p}.ff.c_proj"), d, c.d_inner, true)?,
                    act: Activation::Relu,
                },
                ff_norm: ln(format!("{p}.ff.layer_norm"))?,
            });
        }
        let mem_len = c.mem_len;
        Ok(Self {
            r_w_bias: src.tensor("r_w_bias", &[nh, dh])?,
            r_r_bias: src.tensor("r_r_bias", &[nh, dh])?,
            lm_head: Linear::new(Weight::Dense(emb.clone()), None),
            word_emb: Embedding::new(emb),
            layers,
            config,
            state: Mutex::new((Vec::new(), mem_len)),
        })
    }

    /// One segment: returns logits `[b, qlen, vocab]` and each layer's input `[b, qlen, d]`.
    /// `mems[i]` is layer i's memory `[b, mlen, d]` (empty vector = no memory).
    pub fn segment(&self, ids: &Tensor, mems: &[Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
        let c = &self.config;
        let (b, ql) = ids.dims2()?;
        if ql == 0 {
            return Err(ModelError::Input(
                "forward: expected at least one token".into(),
            ));
        }
        let (d, nh) = (c.d_model, c.n_head);
        let dh = d / nh;
        let mlen = mems.first().map_or(Ok(0), |m| m.dim(1))?;
        let kl = mlen + ql;
        let mut x = (self.word_emb.forward(ids)? * (d as f64).sqrt())?; // [b, q, d]
        // R for positions klen−1 … 0: [klen, d]
        let pos: Vec<f32> = (0..kl).rev().map(|p| p as f32).collect();
        let r_table = sin_cos_concat(&pos, d, ids.device())?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            inputs.push(x.clone());
            // h̃ = [SG(m) ; h]: [b, klen, d]
            let cat = match mems.get(i) {
                Some(m) if mlen > 0 => Tensor::cat(&[&m.detach(), &x], 1)?,
                _ => x.clone(),
            };
            let heads = l.qkv_net.forward(&cat)?; // [b, klen, 3·nh·dh]
            // [b, klen, nh·dh] -> [b, nh, klen, dh]
            let split = |j: usize| -> Result<Tensor> {
                Ok(heads
                    .narrow(2, j * nh * dh, nh * dh)?
                    .reshape((b, kl, nh, dh))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = split(0)?.narrow(2, mlen, ql)?; // queries: the current segment only
            let k = split(1)?;
            let v = split(2)?;
            // W_{k,R} R: [klen, nh·dh] -> [nh, klen, dh]
            let rk = l
                .r_net
                .forward(&r_table)?
                .reshape((kl, nh, dh))?
                .transpose(0, 1)?
                .contiguous()?;
            let a = rel_attention(&q, &k, &v, &rk, &self.r_w_bias, &self.r_r_bias)?;
            let a = a.transpose(1, 2)?.reshape((b, ql, nh * dh))?;
            x = l.attn_norm.forward(&(x + l.o_net.forward(&a)?)?)?;
            x = l.ff_norm.forward(&(&x + l.ff.forward(&x)?)?)?;
        }
        Ok((self.lm_head.forward(&x)?, inputs))
    }

    /// The new memory: the last `mem_len` states of `[old ; inputs]` per layer, detached.
    pub fn update_mems(old: &[Tensor], inputs: &[Tensor], mem_len: usize) -> Result<Vec<Tensor>> {
        if mem_len == 0 {
            return Ok(Vec::new());
        }
        inputs
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let cat = match old.get(i) {
                    Some(m) if m.dim(1)? > 0 => Tensor::cat(&[m, h], 1)?,
                    _ => h.clone(),
                };
                let t = cat.dim(1)?;
                let keep = mem_len.min(t);
                Ok(cat.narrow(1, t - keep, keep)?.detach())
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Tensor>, usize)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a segment continuing the stored memory, then updates it.
    pub fn forward_with_memory(&self, ids: &Tensor) -> Result<Tensor> {
        let (mems, mem_len) = {
            let g = self.lock();
            (g.0.clone(), g.1)
        };
        // A batch of another size cannot continue the memory.
        let mems = if mems
            .first()
            .is_some_and(|m| m.dim(0).ok() != Some(ids.dim(0).unwrap_or(0)))
        {
            Vec::new()
        } else {
            mems
        };
        let (logits, inputs) = self.segment(ids, &mems)?;
        let new = Self::update_mems(&mems, &inputs, mem_len)?;
        self.lock().0 = new;
        Ok(logits)
    }
}

/// Segment-level recurrence, as the trainer drives it.
pub trait SegmentMemory {
    fn mem_len(&self) -> usize;
    fn set_mem_len(&self, n: usize);
    /// Takes the memory out (leaving none).
    fn take_memory(&self) -> Vec<Tensor>;
    fn put_memory(&self, m: Vec<Tensor>);
    fn eval_mem_len(&self) -> usize;
}

impl SegmentMemory for TransformerXl {
    fn mem_len(&self) -> usize {
        self.lock().1
    }
    fn set_mem_len(&self, n: usize) {
        self.lock().1 = n;
    }
    fn take_memory(&self) -> Vec<Tensor> {
        std::mem::take(&mut self.lock().0)
    }
    fn put_memory(&self, m: Vec<Tensor>) {
        self.lock().0 = m;
    }
    fn eval_mem_len(&self) -> usize {
        self.config.eval_mem_len
    }
}

impl CausalLm for TransformerXl {
    /// Generation keeps every earlier layer input in `cache` (as the "key" of a KV cache, shaped
    /// `[b, 1, t, d]`) and attends over all of it: by the recurrence property this equals a full
    /// causal pass.
    fn forward(&self, ids: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor> {
        if cache.layers.len() != self.layers.len() {
            *cache = self.new_cache();
        }
        let before = cache.len();
        let mems: Vec<Tensor> = if before == 0 {
            Vec::new()
        } else {
            cache
                .layers
                .iter_mut()
                .map(|kv| {
                    let (k, _) = kv.append(
                        &Tensor::zeros(
                            (ids.dim(0)?, 1, 0, self.config.d_model),
                            DType::F32,
                            ids.device(),
                        )?,
                        &Tensor::zeros(
                            (ids.dim(0)?, 1, 0, self.config.d_model),
                            DType::F32,
                            ids.device(),
                        )?,
                    )?;
                    Ok(k.squeeze(1)?)
                })
                .collect::<Result<_>>()?
        };
        let (logits, inputs) = self.segment(ids, &mems)?;
        for (kv, h) in cache.layers.iter_mut().zip(&inputs) {
            let h = h.unsqueeze(1)?.contiguous()?;
            kv.append(&h, &h)?;
        }
        let t = ids.dim(1)?;
        Ok(match which {
            Positions::All => logits,
            Positions::Last => logits.narrow(1, t - 1, 1)?,
        })
    }
    fn new_cache(&self) -> Cache {
        Cache::new(self.layers.len())
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn max_seq_len(&self) -> usize {
        // Relative positions have no table limit; generation is bounded only by memory.
        1 << 20
    }
}

#[cfg(test)]
#[path = "transformer_xl_tests.rs"]
mod tests;
