//! The GPT decoder family as configuration of shared layers: GPT-1 (Radford et al., 2018, paper 2),
//! GPT-2 (Radford et al., 2019, paper 5), PaLM's block (Chowdhery et al., 2022, paper 19) and GLaM's
//! mixture-of-experts FFN (Du et al., 2022, paper 16). LLaMA (paper 25) trains through `llama.rs`.
//!
//! A block is one of (`x: [b, t, d]`):
//!   post-LN (GPT-1):   x = LN₁(x + Attn(x));        x = LN₂(x + FFN(x))
//!   pre-LN (GPT-2):    x = x + Attn(LN₁(x));        x = x + FFN(LN₂(x));  final LN after the stack
//!   parallel (PaLM):   x = x + Attn(LN(x)) + FFN(LN(x))                       (one norm per block)
//! Attention has `n_head` query heads and `n_kv_head` key/value heads (`1` = PaLM's multi-query);
//! positions are learned (GPT) or rotary (PaLM, paper 12). FFN is GELU-MLP, SwiGLU, or, every
//! `moe_every`-th block, a top-2 mixture of experts (GLaM). The output head is tied to the token
//! embedding or separate; PaLM scales tied logits by `1/√d`.
//!
//! Initialisation (GPT-2, nanoGPT): N(0, 0.02), residual output projections (`c_proj`, `down`)
//! N(0, 0.02/√(2·n_layer)) when `scaled_residual_init`; PaLM embeddings N(0, 1) via `embed_init_std`.
//! Dropout (`config.dropout`, GPT-1's 0.1) applies to embeddings, attention weights and residual
//! branches during training only; the shipped GPT-2/PaLM/GLaM configs leave it at 0.
//!
//! Shapes: ids `[b, t]` → hidden `[b, t, d]` → logits `[b, t, vocab]`.

use candle_core::{DType, Tensor};
use canon_nn::{
    AttnMask, AttnOpts, DenseFfn, Embedding, KvCache, LayerNorm, Linear, Mlp, Moe, Noise, Norm,
    RmsNorm, Rope, RopeLayout, SecondExpert, SwiGlu, Weight, attend, attention, dropout,
};

use crate::source::{WeightMode, WeightSource};
use crate::{Cache, CausalLm, ModelError, Positions, Result};

mod config;
pub use config::*;

#[derive(Debug, Clone)]
enum Ffn {
    Dense(DenseFfn),
    Moe(Moe),
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: Norm,
    /// Absent in the parallel block (one norm feeds both branches).
    ln_2: Option<Norm>,
    /// Fused `[W_q; W_k; W_v]`, `[(n_head + 2·n_kv)·hd, d]`.
    c_attn: Linear,
    c_proj: Linear,
    ffn: Ffn,
}

#[derive(Debug, Clone)]
pub struct Gpt {
    pub config: GptConfig,
    wte: Embedding,
    wpe: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: Option<Norm>,
    lm_head: Linear,
    rope: Option<Rope>,
    /// Training randomness: dropout masks and GLaM's sampled second expert.
    noise: Noise,
}

/// What a training forward returns besides logits.
#[derive(Debug, Clone, Default)]
pub struct Aux {
    /// Σ over MoE layers of `l_aux`.
    pub moe_aux_loss: Option<Tensor>,
    /// Per MoE layer, `f_e` (fraction of tokens whose top-1 expert is `e`).
    pub expert_load: Vec<Vec<f32>>,
}

impl Gpt {
    pub fn load(config: GptConfig, src: &dyn WeightSource) -> Result<Self> {
        config.validate().map_err(|message| ModelError::Config {
            file: src.describe(),
            message,
        })?;
        let c = &config;
        let (d, hd, nh, nkv) = (c.d_model, c.head_dim(), c.n_head, c.n_kv());
        let lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            let w = src.weight(
                &format!("{name}.weight"),
                &[out, inp],
                WeightMode::DequantizeF32,
            )?;
            let b = if c.bias {
                Some(src.tensor(&format!("{name}.bias"), &[out])?)
            } else {
                None
            };
            Ok(Linear::new(w, b))
        };
        let norm = |name: &str| -> Result<Norm> {
            let w = src.tensor(&format!("{name}.weight"), &[d])?;
            Ok(match c.norm {
                NormKind::RmsNorm => Norm::Rms(RmsNorm::new(w, c.norm_eps)),
                NormKind::LayerNorm => {
                    let b = if c.norm_bias {
                        Some(src.tensor(&format!("{name}.bias"), &[d])?)
                    } else {
                        None
                    };
                    Norm::Layer(LayerNorm::new(w, b, c.norm_eps))
                }
            })
        };
        let dense = |p: &str| -> Result<DenseFfn> {
            Ok(match c.ffn {
                FfnKind::Mlp => DenseFfn::Mlp(Mlp {
                    fc1: lin(&format!("{p}.c_fc"), c.d_ff, d)?,
                    fc2: lin(&format!("{p}.c_proj"), d, c.d_ff)?,
                    act: c.activation,
                }),
                FfnKind::SwiGlu => DenseFfn::SwiGlu(SwiGlu {
                    gate: lin(&format!("{p}.gate"), c.d_ff, d)?,
                    up: lin(&format!("{p}.up"), c.d_ff, d)?,
                    down: lin(&format!("{p}.down"), d, c.d_ff)?,
                }),
            })
        };
        let wte = src.tensor("wte.weight", &[c.vocab_size, d])?;
        let wpe = match c.positions {
            PosKind::Learned => Some(src.tensor("wpe.weight", &[c.max_seq_len, d])?),
            PosKind::Rope => None,
        };
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = format!("h.{i}");
            let ffn = match (&c.moe, c.is_moe_block(i)) {
                (Some(m), true) => Ffn::Moe(Moe {
                    router: Linear::new(
                        src.weight(
                            &format!("{p}.moe.router.weight"),
                            &[m.n_experts, d],
                            WeightMode::DequantizeF32,
                        )?,
                        None,
                    ),
                    experts: (0..m.n_experts)
                        .map(|e| dense(&format!("{p}.moe.experts.{e}")))
                        .collect::<Result<_>>()?,
                    config: m.clone(),
                }),
                _ => Ffn::Dense(dense(&format!("{p}.mlp"))?),
            };
            blocks.push(Block {
                ln_1: norm(&format!("{p}.ln_1"))?,
                ln_2: if c.block == BlockStyle::Parallel {
                    None
                } else {
                    Some(norm(&format!("{p}.ln_2"))?)
                },
                c_attn: lin(&format!("{p}.attn.c_attn"), (nh + 2 * nkv) * hd, d)?,
                c_proj: lin(&format!("{p}.attn.c_proj"), d, nh * hd)?,
                ffn,
            });
        }
        let ln_f = if c.final_norm {
            Some(norm("ln_f")?)
        } else {
            None
        };
        let lm_head = if c.tie_embeddings {
            Linear::new(Weight::Dense(wte.clone()), None)
        } else {
            Linear::new(
                src.weight(
                    "lm_head.weight",
                    &[c.vocab_size, d],
                    WeightMode::DequantizeF32,
                )?,
                None,
            )
        };
        let rope = match c.positions {
            PosKind::Rope => Some(Rope::new(
                hd,
                c.max_seq_len,
                c.rope_theta,
                RopeLayout::Interleaved,
                wte.device(),
            )?),
            PosKind::Learned => None,
        };
        Ok(Self {
            config,
            wte: Embedding::new(wte),
            wpe,
            blocks,
            ln_f,
            lm_head,
            rope,
            noise: Noise::default(),
        })
    }

    /// Seeds the training randomness for one batch (`None`: off, as in evaluation).
    pub fn set_noise(&self, seed: Option<u64>) {
        self.noise.set(seed);
    }

    /// Whether training draws randomness (dropout or a sampled second expert).
    pub fn uses_noise(&self) -> bool {
        self.config.dropout > 0.0
            || self
                .config
                .moe
                .as_ref()
                .is_some_and(|m| m.second_expert == SecondExpert::Sampled)
    }

    fn dropped(&self, x: Tensor) -> Result<Tensor> {
        Ok(dropout(&x, self.config.dropout, &self.noise)?)
    }

    /// `Attn(h)`, or `residual + Attn(h)` when `residual` is given (pre-LN blocks).
    fn attn(
        &self,
        blk: &Block,
        h: &Tensor,
        kv: Option<&mut KvCache>,
        offset: usize,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let add_residual = |y: Tensor| -> Result<Tensor> {
            Ok(match residual {
                Some(r) => (r + y)?,
                None => y,
            })
        };
        let c = &self.config;
        let (b, t, _) = h.dims3()?;
        let (nh, nkv, hd) = (c.n_head, c.n_kv(), c.head_dim());
        let qkv = blk.c_attn.forward(h)?; // [b, t, (nh + 2·nkv)·hd]
        let drop_attn = self.config.dropout > 0.0 && self.noise.is_active();
        if kv.is_none()
            && self.rope.is_none()
            && !drop_attn
            && qkv.track_op()
            && qkv.dtype() == DType::F32
            && qkv.device().is_cpu()
        {
            // Training: split, attention and merge as one op (one node in candle's backprop).
            let scale = 1.0 / (hd as f64).sqrt();
            let a =
                canon_nn::train_ops::packed_causal_attention(&qkv, (nh, nkv, hd), offset, scale)?;
            // The output projection and the residual add as one op (one node fewer in candle's
            // backprop, whose add would zero-fill and add a gradient for the projection's
            // output); dropout is off here, so `dropped` would return its input.
            if let (Some(r), Weight::Dense(w), None, None) = (
                residual,
                &blk.c_proj.weight,
                &blk.c_proj.bias,
                &blk.c_proj.lora,
            ) && w.track_op()
                && w.dtype() == DType::F32
                && w.device().is_cpu()
                && r.dtype() == DType::F32
                && r.device().is_cpu()
            {
                return Ok(canon_nn::train_ops::residual_linear(r, &a, w)?);
            }
            return add_residual(self.dropped(blk.c_proj.forward(&a)?)?);
        }
        // [b, t, heads·hd] -> [b, t, heads, hd] -> [b, heads, t, hd]
        let split = |start: usize, heads: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, start * hd, heads * hd)?
                .reshape((b, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut q = split(0, nh)?;
        let mut k = split(nh, nkv)?;
        let v = split(nh + nkv, nkv)?;
        if let Some(r) = &self.rope {
            q = r.apply(&q, offset)?;
            k = r.apply(&k, offset)?;
        }
        let a = match kv {
            Some(cache) => {
                let (k, v) = cache.append(&k, &v)?;
                attention(&q, &k, &v, AttnMask::Causal { offset })?
            }
            // Training (whole sequences), with dropout on the attention probabilities.
            None => {
                let dropout = if self.config.dropout > 0.0 && self.noise.is_active() {
                    Some((self.config.dropout, &self.noise))
                } else {
                    None
                };
                let opts = AttnOpts {
                    dropout,
                    ..AttnOpts::default()
                };
                attend(&q, &k, &v, AttnMask::Causal { offset }, opts)?
            }
        }; // [b, nh, t, hd]
        let a = a.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        add_residual(self.dropped(blk.c_proj.forward(&a)?)?)
    }

    fn ffn(&self, blk: &Block, h: &Tensor, aux: &mut Aux) -> Result<Tensor> {
        match &blk.ffn {
            Ffn::Dense(f) => self.dropped(f.forward(h)?),
            Ffn::Moe(m) => {
                let out = m.forward_with(h, self.noise.next_rng())?;
                aux.moe_aux_loss = Some(match aux.moe_aux_loss.take() {
                    Some(a) => (a + out.aux_loss)?,
                    None => out.aux_loss,
                });
                aux.expert_load.push(out.routing.top1_fraction);
                self.dropped(out.y)
            }
        }
    }

    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        kv: Option<&mut KvCache>,
        offset: usize,
        aux: &mut Aux,
    ) -> Result<Tensor> {
        Ok(match (self.config.block, &blk.ln_2) {
            (BlockStyle::PostLn, Some(ln_2)) => {
                let x = blk
                    .ln_1
                    .forward(&(x + self.attn(blk, x, kv, offset, None)?)?)?;
                ln_2.forward(&(&x + self.ffn(blk, &x, aux)?)?)?
            }
            (BlockStyle::PreLn, Some(ln_2)) => {
                let x = self.attn(blk, &blk.ln_1.forward(x)?, kv, offset, Some(x))?;
                let f = self.ffn(blk, &ln_2.forward(&x)?, aux)?;
                (x + f)?
            }
            _ => {
                let h = blk.ln_1.forward(x)?;
                let a = self.attn(blk, &h, kv, offset, None)?;
                let f = self.ffn(blk, &h, aux)?;
                ((x + a)? + f)?
            }
        })
    }

    /// Final hidden states `[b, t, d]` (after the final norm, before the output head), with the MoE
    /// auxiliaries (GPT-1's task heads read these).
    pub fn forward_hidden(&self, ids: &Tensor) -> Result<(Tensor, Aux)> {
        let mut aux = Aux::default();
        let x = self.hidden(ids, None, 0, &mut aux)?;
        Ok((x, aux))
    }

    /// Logits `[b, t, vocab]` from final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head(hidden)
    }

    /// Logits `[b, t, vocab]` for every position, and the MoE auxiliaries (training; no cache).
    pub fn forward_train(&self, ids: &Tensor) -> Result<(Tensor, Aux)> {
        let mut aux = Aux::default();
        let x = self.hidden(ids, None, 0, &mut aux)?;
        Ok((self.head(&x)?, aux))
    }

    fn hidden(
        &self,
        ids: &Tensor,
        cache: Option<&mut Cache>,
        offset: usize,
        aux: &mut Aux,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Input(
                "forward: expected at least one token, found 0".into(),
            ));
        }
        let x = self.wte.forward(ids)?; // [b, t, d]
        self.hidden_from(x, cache, offset, aux)
    }

    /// The blocks (and final norm) from input embeddings `x: [b, t, d]`; positions are added here.
    fn hidden_from(
        &self,
        mut x: Tensor,
        mut cache: Option<&mut Cache>,
        offset: usize,
        aux: &mut Aux,
    ) -> Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        if t == 0 {
            return Err(ModelError::Input(
                "forward: expected at least one token, found 0".into(),
            ));
        }
        if offset + t > self.config.max_seq_len {
            return Err(ModelError::Input(format!(
                "the sequence would reach {} tokens, beyond the model's context of {}",
                offset + t,
                self.config.max_seq_len
            )));
        }
        if let Some(wpe) = &self.wpe {
            x = x.broadcast_add(&wpe.narrow(0, offset, t)?)?;
        }
        x = self.dropped(x)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let kv = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            x = self.block(blk, &x, kv, offset, aux)?;
        }
        if let Some(ln) = &self.ln_f {
            x = ln.forward(&x)?;
        }
        Ok(x)
    }

    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.lm_head.forward(x)?;
        Ok(if self.config.scale_logits {
            (logits * (1.0 / (self.config.d_model as f64).sqrt()))?
        } else {
            logits
        })
    }
}

impl CausalLm for Gpt {
    fn forward(&self, ids: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor> {
        if cache.layers.len() != self.blocks.len() {
            *cache = self.new_cache();
        }
        let offset = cache.len();
        let t = ids.dim(1)?;
        let mut aux = Aux::default();
        let x = self.hidden(ids, Some(cache), offset, &mut aux)?;
        let x = match which {
            Positions::All => x,
            Positions::Last => x.narrow(1, t.saturating_sub(1), 1)?,
        };
        Ok(self.head(&x)?.to_dtype(DType::F32)?)
    }
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.wte.forward(ids)?)
    }
    fn forward_embeds(&self, x: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor> {
        if cache.layers.len() != self.blocks.len() {
            *cache = self.new_cache();
        }
        let offset = cache.len();
        let t = x.dim(1)?;
        let mut aux = Aux::default();
        let x = self.hidden_from(x.clone(), Some(cache), offset, &mut aux)?;
        let x = match which {
            Positions::All => x,
            Positions::Last => x.narrow(1, t.saturating_sub(1), 1)?,
        };
        Ok(self.head(&x)?.to_dtype(DType::F32)?)
    }
    fn new_cache(&self) -> Cache {
        Cache::new(self.blocks.len())
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn max_seq_len(&self) -> usize {
        self.config.max_seq_len
    }
    /// The dense blocks' linears, named as their weights are (less `.weight`):
    /// `h.{i}.attn.c_attn`, `h.{i}.attn.c_proj`, and `h.{i}.mlp.c_fc` / `h.{i}.mlp.c_proj` (MLP) or
    /// `h.{i}.mlp.gate` / `.up` / `.down` (SwiGLU). Mixture-of-experts layers' experts and router
    /// are not listed (LoRA targets dense layers only).
    fn linear_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            v.push(format!("h.{i}.attn.c_attn"));
            v.push(format!("h.{i}.attn.c_proj"));
            match &blk.ffn {
                Ffn::Dense(DenseFfn::Mlp(_)) => {
                    v.push(format!("h.{i}.mlp.c_fc"));
                    v.push(format!("h.{i}.mlp.c_proj"));
                }
                Ffn::Dense(DenseFfn::SwiGlu(_)) => {
                    for p in ["gate", "up", "down"] {
                        v.push(format!("h.{i}.mlp.{p}"));
                    }
                }
                Ffn::Moe(_) => {}
            }
        }
        v
    }
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        let rest = name.strip_prefix("h.")?;
        let (i, tail) = rest.split_once('.')?;
        let blk = self.blocks.get_mut(i.parse::<usize>().ok()?)?;
        Some(match (tail, &mut blk.ffn) {
            ("attn.c_attn", _) => &mut blk.c_attn,
            ("attn.c_proj", _) => &mut blk.c_proj,
            ("mlp.c_fc", Ffn::Dense(DenseFfn::Mlp(m))) => &mut m.fc1,
            ("mlp.c_proj", Ffn::Dense(DenseFfn::Mlp(m))) => &mut m.fc2,
            ("mlp.gate", Ffn::Dense(DenseFfn::SwiGlu(f))) => &mut f.gate,
            ("mlp.up", Ffn::Dense(DenseFfn::SwiGlu(f))) => &mut f.up,
            ("mlp.down", Ffn::Dense(DenseFfn::SwiGlu(f))) => &mut f.down,
            _ => return None,
        })
    }
}

#[cfg(test)]
#[path = "gpt_tests.rs"]
mod tests;

/// Tiny configurations shared by this crate's tests.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::tests::tiny;
}
