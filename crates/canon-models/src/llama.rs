//! LLaMA (Touvron et al., 2023, paper 25), with RoPE (paper 12) and grouped-query attention.
//!
//! A block is two residual lines (eqs. of §2.2, pre-normalisation):
//!   h = x + W_o · Attn(RoPE(W_q · RMSNorm(x)), RoPE(W_k · RMSNorm(x)), W_v · RMSNorm(x))
//!   y = h + W_2 (SiLU(W_1 · RMSNorm(h)) ⊙ W_3 · RMSNorm(h))
//! then a final RMSNorm and the output projection (tied to the embedding when the checkpoint has no
//! separate one, as SmolLM2). Configured from GGUF metadata, an HF config.json, or a training config
//! (`configs/llama.toml`, trained from scratch through the same code).
//!
//! Gemma 3 runs through the same code, its differences being configuration (`LlamaVariant`):
//! embeddings × √d, RMSNorm on each head's queries and keys, RMSNorm on the attention and FFN
//! outputs before their residual adds, a GELU-tanh gated FFN, a sliding window and a smaller RoPE
//! base on local layers, an optional query scale and final logit soft-capping.
//!
//! Shapes: ids `[b, t]` → hidden `[b, t, d]` → logits `[b, t, vocab]`.

use candle_core::Tensor;
use canon_nn::{AttnMask, Linear, RmsNorm, Rope, SwiGlu, Weight, attention};

use crate::source::{WeightMode, WeightSource};
use crate::{Cache, CausalLm, LlamaConfig, ModelError, Positions, Result};

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: RmsNorm,
    ffn: SwiGlu,
    /// Gemma: per-head query/key norms and the post-attention / post-FFN norms.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    attn_post_norm: Option<RmsNorm>,
    ffn_post_norm: Option<RmsNorm>,
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    /// The token table `[vocab, d]`, in the file's format (looked up row by row).
    embed: Weight,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    /// RoPE of local (sliding-window) layers when their base differs.
    rope_local: Option<Rope>,
    /// `new_cache` stores keys and values as f16.
    kv_f16: bool,
    /// Training forwards recompute each block's activations in the backward.
    checkpointing: bool,
}

impl Llama {
    /// Builds the model from HF-named weights in `src`, checking every shape against `config`.
    pub fn load(config: LlamaConfig, src: &dyn WeightSource, mode: WeightMode) -> Result<Self> {
        config.validate().map_err(|message| ModelError::Config {
            file: src.describe(),
            message,
        })?;
        let c = &config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let q_out = c.num_attention_heads * hd;
        let kv_out = c.num_key_value_heads * hd;
        let lin = |name: String, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear::new(src.weight(&name, &[out, inp], mode)?, None))
        };
        let norm = |name: String| -> Result<RmsNorm> {
            Ok(RmsNorm::new(src.tensor(&name, &[d])?, c.rms_norm_eps))
        };
        let v = &c.variant;
        let opt_norm = |on: bool, name: String, n: usize| -> Result<Option<RmsNorm>> {
            Ok(if on {
                Some(RmsNorm::new(src.tensor(&name, &[n])?, c.rms_norm_eps))
            } else {
                None
            })
        };
        // Qwen2: biases on q, k and v.
        let with_bias = |lin: Linear, name: String, out: usize| -> Result<Linear> {
            Ok(if v.qkv_bias {
                Linear::new(lin.weight, Some(src.tensor(&name, &[out])?))
            } else {
                lin
            })
        };
        let ff = c.intermediate_size;
        let embed_w = src.weight("model.embed_tokens.weight", &[c.vocab_size, d], mode)?;
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attn_norm = norm(format!("{p}.input_layernorm.weight"))?;
            let qkv_name = format!("{p}.self_attn.qkv_proj.weight");
            let (q, k, vv) = if v.fused_projections && src.has(&qkv_name) {
                let [q, k, vv] = split_rows(src, &qkv_name, [q_out, kv_out, kv_out], d, mode);
                (q?, k?, vv?)
            } else {
                (
                    lin(format!("{p}.self_attn.q_proj.weight"), q_out, d)?,
                    lin(format!("{p}.self_attn.k_proj.weight"), kv_out, d)?,
                    lin(format!("{p}.self_attn.v_proj.weight"), kv_out, d)?,
                )
            };
            let q = with_bias(q, format!("{p}.self_attn.q_proj.bias"), q_out)?;
            let k = with_bias(k, format!("{p}.self_attn.k_proj.bias"), kv_out)?;
            let vv = with_bias(vv, format!("{p}.self_attn.v_proj.bias"), kv_out)?;
            let o = lin(format!("{p}.self_attn.o_proj.weight"), d, q_out)?;
            let ffn_norm = norm(format!("{p}.post_attention_layernorm.weight"))?;
            let gate_up_name = format!("{p}.mlp.gate_up_proj.weight");
            let (gate, up) = if v.fused_projections && src.has(&gate_up_name) {
                let [gate, up] = split_rows(src, &gate_up_name, [ff, ff], d, mode);
                (gate?, up?)
            } else {
                (
                    lin(format!("{p}.mlp.gate_proj.weight"), ff, d)?,
                    lin(format!("{p}.mlp.up_proj.weight"), ff, d)?,
                )
            };
            blocks.push(Block {
                attn_norm,
                q,
                k,
                v: vv,
                o,
                ffn_norm,
                ffn: SwiGlu {
                    gate,
                    up,
                    down: lin(format!("{p}.mlp.down_proj.weight"), d, ff)?,
                },
                q_norm: opt_norm(v.qk_norm, format!("{p}.self_attn.q_norm.weight"), hd)?,
                k_norm: opt_norm(v.qk_norm, format!("{p}.self_attn.k_norm.weight"), hd)?,
                attn_post_norm: opt_norm(
                    v.post_norms,
                    format!("{p}.self_attn.post_norm.weight"),
                    d,
                )?,
                ffn_post_norm: opt_norm(v.post_norms, format!("{p}.mlp.post_norm.weight"), d)?,
            });
        }
        let lm_head = if !c.tie_word_embeddings && src.has("lm_head.weight") {
            lin("lm_head.weight".into(), c.vocab_size, d)?
        } else {
            Linear::new(embed_w.clone(), None)
        };
        let mut rope = Rope::new(
            hd,
            c.max_position_embeddings,
            c.rope_theta,
            c.rope_layout,
            &candle_core::Device::Cpu,
        )?;
        if let Some(f) = &v.rope_freq_factors {
            rope = rope.with_freq_factors(f)?;
        }
        // Local layers keep plain RoPE at their own base (Gemma 3 scales only the global ones).
        let rope_local = match v.rope_theta_local {
            Some(theta)
                if v.sliding_window.is_some()
                    && (theta != c.rope_theta || v.rope_freq_factors.is_some()) =>
            {
                Some(Rope::new(
                    hd,
                    c.max_position_embeddings,
                    theta,
                    c.rope_layout,
                    &candle_core::Device::Cpu,
                )?)
            }
            _ => None,
        };
        Ok(Self {
            embed: embed_w,
            blocks,
            norm: norm("model.norm.weight".into())?,
            lm_head,
            rope,
            rope_local,
            kv_f16: false,
            checkpointing: false,
            config,
        })
    }

    /// The RoPE tables of layer `l`.
    fn rope_of(&self, l: usize) -> &Rope {
        match &self.rope_local {
            Some(r) if self.config.is_local_layer(l) => r,
            _ => &self.rope,
        }
    }

    /// The attention mask of layer `l` for queries starting at position `offset`.
    fn mask_of(&self, l: usize, offset: usize, t: usize) -> AttnMask<'static> {
        match self.config.variant.sliding_window {
            // A window longer than the sequence masks nothing more than causality.
            Some(window) if self.config.is_local_layer(l) && offset + t > window => {
                AttnMask::SlidingCausal { offset, window }
            }
            _ => AttnMask::Causal { offset },
        }
    }

    /// The queries' extra multiplier: `attention()` scales by 1/√hd, so a query scale `s`
    /// multiplies the queries by s·√hd.
    fn query_mul(&self) -> Option<f64> {
        self.config
            .variant
            .query_scale
            .map(|s| f64::from(s) * (self.config.head_dim as f64).sqrt())
    }

    /// The per-head query and key norms (weight, ε), when the block has both.
    #[allow(clippy::type_complexity)]
    fn qk_norms(blk: &Block) -> (Option<(&Tensor, f64)>, Option<(&Tensor, f64)>) {
        match (&blk.q_norm, &blk.k_norm) {
            (Some(qn), Some(kn)) => (Some((&qn.weight, qn.eps)), Some((&kn.weight, kn.eps))),
            _ => (None, None),
        }
    }

    /// Per-head norm, RoPE and query scale on `[b, heads, t, hd]` queries and keys.
    fn prepare_qk(
        &self,
        blk: &Block,
        l: usize,
        q: &Tensor,
        k: &Tensor,
        offset: usize,
    ) -> Result<(Tensor, Tensor)> {
        let rope = self.rope_of(l);
        let q_mul = self.query_mul();
        // Inference: norm, RoPE and scale in one parallel pass per tensor, read straight from the
        // projection's head view.
        let (qn, kn) = Self::qk_norms(blk);
        if let Some(qp) = canon_nn::rope::heads_prepared(q, qn, Some((rope, offset)), q_mul)?
            && let Some(kp) = canon_nn::rope::heads_prepared(k, kn, Some((rope, offset)), None)?
        {
            return Ok((qp, kp));
        }
        let (q, k) = match (&blk.q_norm, &blk.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(q)?, kn.forward(k)?),
            _ => (q.clone(), k.clone()),
        };
        let mut q = rope.apply(&q.contiguous()?, offset)?;
        let k = rope.apply(&k.contiguous()?, offset)?;
        if let Some(m) = q_mul {
            q = (q * m)?;
        }
        Ok((q, k))
    }

    /// The token embeddings `[n, d]` of `ids` (× √d for Gemma).
    fn embed_rows(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self.embed.rows(ids)?;
        if self.config.variant.scale_embeddings {
            Ok((x * (self.config.hidden_size as f64).sqrt())?)
        } else {
            Ok(x)
        }
    }

    /// Attention output added to the residual `x` (post-norm first for Gemma), then the FFN.
    fn residual_ffn(&self, blk: &Block, x: &Tensor, attn_out: Tensor) -> Result<Tensor> {
        let a = match &blk.attn_post_norm {
            Some(n) => n.forward(&attn_out)?,
            None => attn_out,
        };
        let x = (x + a)?;
        let h = blk.ffn_norm.forward(&x)?;
        let f = if self.config.variant.gelu_tanh_ffn {
            let (g, u) = (blk.ffn.gate.forward(&h)?, blk.ffn.up.forward(&h)?);
            let gu = match canon_nn::fused::geglu_tanh(&g, &u)? {
                Some(t) => t,
                None => (g.gelu()? * u)?,
            };
            blk.ffn.down.forward(&gu)?
        } else {
            blk.ffn.forward(&h)?
        };
        let f = match &blk.ffn_post_norm {
            Some(n) => n.forward(&f)?,
            None => f,
        };
        Ok((x + f)?)
    }

    /// Final norm and output projection (soft-capped for models that ask for it).
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(x)?;
        let y = self
            .lm_head
            .forward(&x)?
            .to_dtype(candle_core::DType::F32)?;
        Ok(match self.config.variant.final_logit_softcap {
            Some(c) => ((y / f64::from(c))?.tanh()? * f64::from(c))?,
            None => y,
        })
    }

    /// The blocks over whole sequences, each through [`canon_nn::checkpoint::checkpoint`] with
    /// its adapters as the parameters: only block inputs are kept for the backward, which runs
    /// each block again. Nothing is cached (training and evaluation passes start at position 0).
    fn blocks_checkpointed(&self, x: &Tensor) -> Result<Tensor> {
        let me = std::sync::Arc::new(self.clone());
        let mut x = x.clone();
        for (l, blk) in self.blocks.iter().enumerate() {
            let lins = [
                &blk.q,
                &blk.k,
                &blk.v,
                &blk.o,
                &blk.ffn.gate,
                &blk.ffn.up,
                &blk.ffn.down,
            ];
            let adapters = lins.iter().filter_map(|lin| lin.lora.as_ref());
            if adapters.clone().any(|a| {
                a.dropout
                    .as_ref()
                    .is_some_and(|(p, n)| *p > 0.0 && n.is_active())
            }) {
                return Err(ModelError::Input(
                    "gradient checkpointing cannot replay LoRA dropout; use a dropout of 0".into(),
                ));
            }
            let params: Vec<Tensor> = adapters
                .flat_map(|a| [a.a.clone(), a.b.clone()])
                .filter(Tensor::track_op)
                .collect();
            let m = me.clone();
            let seg: canon_nn::checkpoint::Segment = std::sync::Arc::new(move |x: &Tensor| {
                let mut kv = canon_nn::KvCache::new();
                m.block_forward(l, &m.blocks[l], x, &mut kv, 0)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            });
            x = canon_nn::checkpoint::checkpoint(&x, &params, seg)?;
        }
        Ok(x)
    }

    fn block_forward(
        &self,
        l: usize,
        blk: &Block,
        x: &Tensor,
        cache: &mut canon_nn::KvCache,
        offset: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let h = blk.attn_norm.forward(x)?;
        // [b, t, heads·hd] -> [b, t, heads, hd] -> [b, heads, t, hd]
        let [q, k, v] = Linear::forward_shared([&blk.q, &blk.k, &blk.v], &h)?;
        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?;
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let (q, k) = self.prepare_qk(blk, l, &q, &k, offset)?;
        // [b, heads, t, hd] contiguous for the cache (one parallel copy for a prompt).
        let v = match canon_nn::rope::heads_prepared(&v, None, None, None)? {
            Some(v) => v,
            None => v.contiguous()?,
        };
        // In the cache's dtype: an f16 cache's keys and values are read in place by decoding's
        // loops (converted in registers), not converted whole on every step; a prompt's matrix
        // products convert them once.
        let (k, v) = cache.append_stored(&k, &v)?;
        let a = attention(&q, &k, &v, self.mask_of(l, offset, t))?; // [b, nh, t, hd]
        let a = a.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        self.residual_ffn(blk, x, blk.o.forward(&a)?)
    }
}

/// Rows `parts[i]` of the stacked matrix `name` (`[Σ parts, inp]`), in order, as separate linears:
/// Phi-3's fused `qkv_proj` and `gate_up_proj`.
fn split_rows<const N: usize>(
    src: &dyn WeightSource,
    name: &str,
    parts: [usize; N],
    inp: usize,
    mode: WeightMode,
) -> [Result<Linear>; N] {
    let total: usize = parts.iter().sum();
    std::array::from_fn(|i| {
        let start = parts[..i].iter().sum();
        Ok(Linear::new(
            src.weight_rows(name, &[total, inp], start, parts[i], mode)?,
            None,
        ))
    })
}

impl CausalLm for Llama {
    fn forward(&self, ids: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Input(
                "forward: expected at least one token, found 0".into(),
            ));
        }
        // [b, t] -> [b·t, d] -> [b, t, d] (scaled by √width for Gemma)
        let x = self
            .embed_rows(ids)?
            .reshape((b, t, self.config.hidden_size))?;
        self.forward_embeds(&x, cache, which)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self
            .embed_rows(ids)?
            .to_dtype(candle_core::DType::F32)?
            .reshape((b, t, self.config.hidden_size))?)
    }

    fn forward_embeds(&self, x: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor> {
        let (_, t, d) = x.dims3()?;
        if d != self.config.hidden_size {
            return Err(ModelError::Input(format!(
                "forward_embeds: expected vectors of width {}, found {d}",
                self.config.hidden_size
            )));
        }
        let offset = cache.len();
        if t == 0 {
            return Err(ModelError::Input(
                "forward: expected at least one token, found 0".into(),
            ));
        }
        if offset + t > self.config.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "the sequence would reach {} tokens, beyond the model's context of {}",
                offset + t,
                self.config.max_position_embeddings
            )));
        }
        if cache.layers.len() != self.blocks.len() {
            *cache = self.new_cache();
        }
        let mut x = x.clone();
        if self.checkpointing && offset == 0 {
            x = self.blocks_checkpointed(&x)?;
        } else {
            for (l, (blk, kv)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
                x = self.block_forward(l, blk, &x, kv, offset)?;
            }
        }
        let x = match which {
            Positions::All => x,
            Positions::Last => x.narrow(1, t - 1, 1)?,
        };
        self.logits(&x)
    }

    fn rows_independent(&self) -> bool {
        self.lm_head.rows_independent()
            && self.blocks.iter().all(|b| {
                [&b.q, &b.k, &b.v, &b.o, &b.ffn.gate, &b.ffn.up, &b.ffn.down]
                    .iter()
                    .all(|l| l.rows_independent())
            })
    }

    fn forward_batch(&self, ids: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Tensor> {
        self.forward_rows(ids, caches)
    }

    fn new_cache(&self) -> Cache {
        if self.kv_f16 {
            Cache::new_f16(self.blocks.len())
        } else {
            Cache::new(self.blocks.len())
        }
    }

    fn set_kv_f16(&mut self, on: bool) -> Result<()> {
        self.kv_f16 = on;
        Ok(())
    }

    fn set_checkpointing(&mut self, on: bool) -> Result<()> {
        self.checkpointing = on;
        Ok(())
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_seq_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn linear_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        for i in 0..self.blocks.len() {
            for p in PROJECTIONS {
                v.push(format!("model.layers.{i}.{p}"));
            }
        }
        v
    }

    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        let rest = name.strip_prefix("model.layers.")?;
        let (i, tail) = rest.split_once('.')?;
        let blk = self.blocks.get_mut(i.parse::<usize>().ok()?)?;
        Some(match tail {
            "self_attn.q_proj" => &mut blk.q,
            "self_attn.k_proj" => &mut blk.k,
            "self_attn.v_proj" => &mut blk.v,
            "self_attn.o_proj" => &mut blk.o,
            "mlp.gate_proj" => &mut blk.ffn.gate,
            "mlp.up_proj" => &mut blk.ffn.up,
            "mlp.down_proj" => &mut blk.ffn.down,
            _ => return None,
        })
    }
}

/// The linear projections of a LLaMA block, named as under `model.layers.{i}.` in HF checkpoints:
/// the one list the workspace uses (LoRA targets, adapter files, merging).
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The short name of a projection (`q_proj` for `self_attn.q_proj`).
pub fn projection_name(p: &str) -> &str {
    p.rsplit('.').next().unwrap_or(p)
}

mod batch;

#[cfg(test)]
pub(crate) mod tests;
