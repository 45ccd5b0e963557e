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

/// One sequence's cache, its rows of the attention output and the outcome, filled by a worker
/// of the kernels' pool.
type SeqSlot<'a> = std::sync::Mutex<(&'a mut Cache, &'a mut [f32], Option<Result<()>>)>;

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
        // `attention()` scales by 1/√hd; a query scale `s` multiplies the queries by s·√hd.
        let q_mul = self
            .config
            .variant
            .query_scale
            .map(|s| f64::from(s) * (self.config.head_dim as f64).sqrt());
        // Inference: norm, RoPE and scale in one parallel pass per tensor, read straight from the
        // projection's head view.
        let (qn, kn) = match (&blk.q_norm, &blk.k_norm) {
            (Some(qn), Some(kn)) => (Some((&qn.weight, qn.eps)), Some((&kn.weight, kn.eps))),
            _ => (None, None),
        };
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
        let q = blk
            .q
            .forward(&h)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?;
        let k = blk
            .k
            .forward(&h)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let v = blk
            .v
            .forward(&h)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let (q, k) = self.prepare_qk(blk, l, &q, &k, offset)?;
        // [b, heads, t, hd] contiguous for the cache (one parallel copy for a prompt).
        let v = match canon_nn::rope::heads_prepared(&v, None, None, None)? {
            Some(v) => v,
            None => v.contiguous()?,
        };
        let (k, v) = cache.append(&k, &v)?;
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

    fn forward_batch(&self, ids: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Tensor> {
        let c = &self.config;
        if ids.len() != caches.len() {
            return Err(ModelError::Input(format!(
                "forward_batch: {} sequences but {} caches",
                ids.len(),
                caches.len()
            )));
        }
        if ids.is_empty() {
            return Ok(Tensor::zeros(
                (0, c.vocab_size),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?);
        }
        // Row ranges of each sequence in the stacked activations, and its cache offset.
        let mut spans = Vec::with_capacity(ids.len());
        let mut all = Vec::new();
        for (i, (seq, cache)) in ids.iter().zip(caches.iter_mut()).enumerate() {
            if seq.is_empty() {
                return Err(ModelError::Input(format!(
                    "forward_batch: sequence {i} has no new token"
                )));
            }
            if cache.layers.len() != self.blocks.len() {
                **cache = self.new_cache();
            }
            let offset = cache.len();
            if offset + seq.len() > c.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "sequence {i} would reach {} tokens, beyond the model's context of {}",
                    offset + seq.len(),
                    c.max_position_embeddings
                )));
            }
            spans.push((all.len(), seq.len(), offset));
            all.extend_from_slice(seq);
        }
        let n = all.len();
        let (d, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        // `attention`'s default scale, for the decode rows' own loop.
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let ids_t = Tensor::new(all.as_slice(), &candle_core::Device::Cpu)?;
        // [n, d]: every sequence's new rows, stacked; every linear layer multiplies them at once.
        let mut x = self.embed_rows(&ids_t)?.reshape((n, d))?;
        for (l, blk) in self.blocks.iter().enumerate() {
            let h = blk.attn_norm.forward(&x)?;
            let q = blk.q.forward(&h)?;
            let k = blk.k.forward(&h)?;
            let v = blk.v.forward(&h)?;
            // [t, heads·hd] -> [1, heads, t, hd], as `forward` shapes one sequence.
            let heads = |m: &Tensor, start: usize, t: usize, h: usize| -> Result<Tensor> {
                Ok(m.narrow(0, start, t)?
                    .reshape((1, t, h, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            // One sequence's attention, written to its rows `out` of the step's `[n, nh·hd]`
            // output. A decode row (t = 1) reads the cache in place (`decode_attn`, the same
            // arithmetic as `attention`'s loop); a prompt chunk takes `attention`.
            let one = |&(start, t, offset): &(usize, usize, usize),
                       cache: &mut Cache,
                       out: &mut [f32]|
             -> Result<()> {
                let (qi, ki) = self.prepare_qk(
                    blk,
                    l,
                    &heads(&q, start, t, nh)?,
                    &heads(&k, start, t, nkv)?,
                    offset,
                )?;
                let vi = heads(&v, start, t, nkv)?;
                // In the cache's dtype: an f16 cache's decode rows are read in place.
                let (ka, va) = cache.layers[l].append_stored(&ki, &vi)?;
                let mask = self.mask_of(l, offset, t);
                if t == 1 {
                    let lo = match mask {
                        AttnMask::SlidingCausal { offset, window } => {
                            (offset + 1).saturating_sub(window)
                        }
                        _ => 0,
                    };
                    if crate::decode_attn::one_row(&qi, &ka, &va, lo, scale, out) {
                        return Ok(());
                    }
                }
                let (ka, va) = (ka.to_dtype(ki.dtype())?, va.to_dtype(vi.dtype())?);
                let a = attention(&qi, &ka, &va, mask)?
                    .transpose(1, 2)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                if a.len() != out.len() {
                    return Err(ModelError::Input(format!(
                        "forward_batch: attention gave {} values for {} rows of width {}",
                        a.len(),
                        t,
                        nh * hd
                    )));
                }
                out.copy_from_slice(&a);
                Ok(())
            };
            let width = nh * hd;
            let mut att = vec![0.0f32; n * width];
            {
                // Each sequence's rows of `att`, in span order (the spans are consecutive).
                let mut rows: Vec<&mut [f32]> = Vec::with_capacity(spans.len());
                let mut rest: &mut [f32] = &mut att;
                for &(_, t, _) in &spans {
                    let (mine, tail) = rest.split_at_mut(t * width);
                    rows.push(mine);
                    rest = tail;
                }
                if spans.len() > 1 {
                    // Several sequences: their attention (single-threaded each while decoding)
                    // runs side by side on the kernels' pool, the threads that run the matrix
                    // products (not on rayon's, whose workers would wake per layer and compete
                    // with the pool's for the cores); each touches only its own cache and rows,
                    // so the results do not depend on how they are spread.
                    let work: Vec<SeqSlot> = caches
                        .iter_mut()
                        .zip(rows)
                        .map(|(c, r)| std::sync::Mutex::new((&mut **c, r, None)))
                        .collect();
                    canon_quant::pool::parallel_for(spans.len(), &|i| {
                        let mut w = work[i].lock().unwrap_or_else(|p| p.into_inner());
                        let (cache, out, res) = &mut *w;
                        *res = Some(one(&spans[i], cache, out));
                    });
                    for m in work {
                        let (_, _, r) = m.into_inner().unwrap_or_else(|p| p.into_inner());
                        r.unwrap_or_else(|| {
                            Err(ModelError::Input(
                                "forward_batch: a sequence's attention did not run".into(),
                            ))
                        })?;
                    }
                } else {
                    for ((span, cache), out) in spans.iter().zip(caches.iter_mut()).zip(rows) {
                        one(span, cache, out)?;
                    }
                }
            }
            let a = Tensor::from_vec(att, (n, width), &candle_core::Device::Cpu)?;
            x = self.residual_ffn(blk, &x, blk.o.forward(&a)?)?;
        }
        // Each sequence's last row.
        let last: Vec<u32> = spans
            .iter()
            .map(|&(start, t, _)| (start + t - 1) as u32)
            .collect();
        let last = Tensor::new(last.as_slice(), &candle_core::Device::Cpu)?;
        self.logits(&x.index_select(&last, 0)?)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::WeightSource;
    use candle_core::{DType, Device};
    use canon_nn::RopeLayout;
    use canon_testkit::{Tol, assert_close, randn};
    use std::collections::HashMap;

    /// A source of random weights with HF names, for tiny models.
    pub(crate) struct RandomSource(pub std::cell::RefCell<HashMap<String, Tensor>>);

    /// The same weights wrapped as variables: every op records a backward pass, so the model runs
    /// its composed (training) path instead of the inference loops.
    struct TrackedSource(RandomSource);
    impl WeightSource for TrackedSource {
        fn describe(&self) -> String {
            "tracked".into()
        }
        fn has(&self, name: &str) -> bool {
            self.0.has(name)
        }
        fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
            let t = self.0.tensor(name, shape)?;
            Ok(candle_core::Var::from_tensor(&t)?.as_tensor().clone())
        }
    }
    impl WeightSource for RandomSource {
        fn describe(&self) -> String {
            "random".into()
        }
        fn has(&self, name: &str) -> bool {
            name != "lm_head.weight"
        }
        fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
            let mut m = self.0.borrow_mut();
            let seed = m.len() as u64 + 1;
            Ok(m.entry(name.to_string())
                .or_insert_with(|| (randn(shape, seed) * 0.2).unwrap())
                .clone())
        }
    }

    pub(crate) fn tiny(n_kv: usize) -> Llama {
        Llama::load(
            tiny_config(n_kv),
            &RandomSource(Default::default()),
            WeightMode::DequantizeF32,
        )
        .unwrap()
    }

    fn tiny_config(n_kv: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 50,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: n_kv,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_layout: RopeLayout::Interleaved,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            variant: Default::default(),
        }
    }

    #[test]
    fn inference_loops_equal_the_composed_training_path() {
        let cfg = tiny_config(2);
        let fast = Llama::load(
            cfg.clone(),
            &RandomSource(Default::default()),
            WeightMode::DequantizeF32,
        )
        .unwrap();
        let slow = Llama::load(
            cfg,
            &TrackedSource(RandomSource(Default::default())),
            WeightMode::DequantizeF32,
        )
        .unwrap();
        let seq = [3u32, 7, 1, 9, 4];
        let (mut cf, mut cs) = (fast.new_cache(), slow.new_cache());
        for (i, part) in [&seq[..3], &seq[3..4], &seq[4..]].into_iter().enumerate() {
            let a = fast.forward(&ids(part), &mut cf, Positions::All).unwrap();
            let b = slow.forward(&ids(part), &mut cs, Positions::All).unwrap();
            assert!(
                b.track_op() && !a.track_op(),
                "step {i}: paths not distinct"
            );
            assert_close(&a, &b.detach(), Tol::new(1e-5, 1e-5));
        }
    }

    fn ids(v: &[u32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
    }

    /// The trainer's entry (`TrainableLm::forward_train`, tracked weights: fused RMS norm,
    /// SwiGLU, RoPE and the tiled attention op with grouped K/V heads) equals the inference path.
    #[test]
    fn forward_train_equals_the_inference_path() {
        let cfg = tiny_config(2);
        let fast = Llama::load(
            cfg.clone(),
            &RandomSource(Default::default()),
            WeightMode::DequantizeF32,
        )
        .unwrap();
        let slow = Llama::load(
            cfg,
            &TrackedSource(RandomSource(Default::default())),
            WeightMode::DequantizeF32,
        )
        .unwrap();
        let x = ids(&[3, 7, 1, 9, 4, 4, 12, 30]);
        let train = crate::TrainableLm::forward_train(&slow, &x).unwrap().logits;
        assert!(train.track_op());
        let y = fast
            .forward(&x, &mut fast.new_cache(), Positions::All)
            .unwrap();
        assert!(!y.track_op());
        assert_close(&train.detach(), &y, Tol::new(1e-5, 1e-5));
    }

    #[test]
    fn cached_decoding_equals_the_full_forward_pass() {
        let m = tiny(2);
        let seq = [3u32, 7, 1, 9, 4, 4, 12, 30];
        let full = m
            .forward(&ids(&seq), &mut m.new_cache(), Positions::All)
            .unwrap();
        let mut cache = m.new_cache();
        let mut steps = vec![
            m.forward(&ids(&seq[..3]), &mut cache, Positions::All)
                .unwrap(),
        ];
        for &t in &seq[3..] {
            steps.push(m.forward(&ids(&[t]), &mut cache, Positions::All).unwrap());
        }
        let inc = Tensor::cat(&steps, 1).unwrap();
        assert_close(&inc, &full, Tol::new(1e-5, 1e-4));
    }

    /// The tiny model with Gemma 3's block: window 3, every 2nd layer global, its own local RoPE.
    fn tiny_gemma() -> Llama {
        let mut cfg = tiny_config(1);
        cfg.num_hidden_layers = 4;
        cfg.rope_layout = RopeLayout::HalfSplit;
        cfg.variant = crate::LlamaVariant {
            scale_embeddings: true,
            qk_norm: true,
            post_norms: true,
            gelu_tanh_ffn: true,
            sliding_window: Some(3),
            sliding_window_pattern: 2,
            rope_theta_local: Some(100.0),
            query_scale: Some(0.2),
            final_logit_softcap: Some(5.0),
            ..Default::default()
        };
        Llama::load(
            cfg,
            &RandomSource(Default::default()),
            WeightMode::DequantizeF32,
        )
        .unwrap()
    }

    #[test]
    fn gemma_variant_decodes_like_its_full_pass_and_batches_like_one_sequence() {
        let m = tiny_gemma();
        assert!(m.config.is_local_layer(0) && !m.config.is_local_layer(1));
        assert!(m.config.is_local_layer(2) && !m.config.is_local_layer(3));
        let seq = [3u32, 7, 1, 9, 4, 4, 12, 30, 2, 8];
        let full = m
            .forward(&ids(&seq), &mut m.new_cache(), Positions::All)
            .unwrap();
        // Soft-capped logits stay inside (-5, 5).
        let max = full
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max < 5.0, "{max}");
        let mut cache = m.new_cache();
        let mut steps = vec![
            m.forward(&ids(&seq[..4]), &mut cache, Positions::All)
                .unwrap(),
        ];
        for &t in &seq[4..] {
            steps.push(m.forward(&ids(&[t]), &mut cache, Positions::All).unwrap());
        }
        let inc = Tensor::cat(&steps, 1).unwrap();
        assert_close(&inc, &full, Tol::new(1e-5, 1e-4));
        // Two sequences in one batch step equal each run alone.
        let (a, b) = (&seq[..6], &seq[2..9]);
        let (mut ca, mut cb) = (m.new_cache(), m.new_cache());
        let both = m.forward_batch(&[a, b], &mut [&mut ca, &mut cb]).unwrap();
        for (i, s) in [a, b].into_iter().enumerate() {
            let alone = m
                .forward(&ids(s), &mut m.new_cache(), Positions::Last)
                .unwrap();
            assert_close(
                &both.narrow(0, i, 1).unwrap(),
                &alone.squeeze(0).unwrap(),
                Tol::new(1e-5, 1e-4),
            );
        }
    }

    #[test]
    fn the_sliding_window_forgets_old_tokens_on_local_layers_only() {
        // With every layer local and a window of 3, the last position's logits depend only on the
        // last 3 + (layers - 1)·2 tokens; a change further back leaves them equal.
        let mut m = tiny_gemma();
        m.config.variant.sliding_window_pattern = 0;
        let a = [5u32, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        let mut b = a;
        b[0] = 40;
        let la = m
            .forward(&ids(&a), &mut m.new_cache(), Positions::Last)
            .unwrap();
        let lb = m
            .forward(&ids(&b), &mut m.new_cache(), Positions::Last)
            .unwrap();
        assert_close(&la, &lb, Tol::F32);
        // With global layers the change reaches the end.
        m.config.variant.sliding_window_pattern = 2;
        let la = m
            .forward(&ids(&a), &mut m.new_cache(), Positions::Last)
            .unwrap();
        let lb = m
            .forward(&ids(&b), &mut m.new_cache(), Positions::Last)
            .unwrap();
        let d = (la - lb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d > 1e-4, "{d}");
    }

    #[test]
    fn an_f16_cache_halves_the_memory_and_stays_close_to_f32() {
        let mut m = tiny_gemma();
        let seq = [3u32, 7, 1, 9, 4, 4, 12, 30, 2, 8];
        let run = |m: &Llama| {
            let mut c = m.new_cache();
            let mut out = vec![m.forward(&ids(&seq[..5]), &mut c, Positions::All).unwrap()];
            for &t in &seq[5..] {
                out.push(m.forward(&ids(&[t]), &mut c, Positions::All).unwrap());
            }
            (Tensor::cat(&out, 1).unwrap(), c.bytes())
        };
        let (a, bytes32) = run(&m);
        m.set_kv_f16(true).unwrap();
        let (b, bytes16) = run(&m);
        assert_eq!(2 * bytes16, bytes32);
        let d = (a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // f16 keeps 11 significant bits: differences of the order of 1e-3 of the activations.
        assert!(d > 0.0 && d < 1e-2, "{d}");
    }

    #[test]
    fn later_tokens_do_not_change_earlier_logits() {
        let m = tiny(4);
        let a = m
            .forward(&ids(&[5, 6, 7, 8]), &mut m.new_cache(), Positions::All)
            .unwrap();
        let b = m
            .forward(
                &ids(&[5, 6, 7, 8, 40, 2]),
                &mut m.new_cache(),
                Positions::All,
            )
            .unwrap();
        assert_close(&b.narrow(1, 0, 4).unwrap(), &a, Tol::F32);
    }

    #[test]
    fn last_position_equals_the_last_row_of_all() {
        let m = tiny(1);
        let all = m
            .forward(&ids(&[1, 2, 3]), &mut m.new_cache(), Positions::All)
            .unwrap();
        let last = m
            .forward(&ids(&[1, 2, 3]), &mut m.new_cache(), Positions::Last)
            .unwrap();
        assert_close(&last, &all.narrow(1, 2, 1).unwrap(), Tol::F32);
        assert_eq!(last.dtype(), DType::F32);
    }

    #[test]
    fn context_overflow_and_empty_input_are_errors() {
        let m = tiny(2);
        let long: Vec<u32> = (0..65).map(|i| i % 50).collect();
        let e = m
            .forward(&ids(&long), &mut m.new_cache(), Positions::Last)
            .unwrap_err();
        assert!(e.to_string().contains("context of 64"), "{e}");
        let empty = Tensor::zeros((1, 0), DType::U32, &Device::Cpu).unwrap();
        assert!(
            m.forward(&empty, &mut m.new_cache(), Positions::Last)
                .is_err()
        );
    }

    #[test]
    fn a_wrong_shape_names_the_tensor() {
        struct Bad;
        impl WeightSource for Bad {
            fn describe(&self) -> String {
                "bad.gguf".into()
            }
            fn has(&self, _: &str) -> bool {
                true
            }
            fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
                let mut s = shape.to_vec();
                if name.contains("k_proj") {
                    s[0] += 1;
                    return Err(ModelError::Shape {
                        file: "bad.gguf".into(),
                        name: name.into(),
                        expected: shape.to_vec(),
                        found: s,
                    });
                }
                Ok(Tensor::zeros(s, DType::F32, &Device::Cpu)?)
            }
        }
        let mut cfg = tiny(2).config;
        cfg.num_hidden_layers = 1;
        let e = Llama::load(cfg, &Bad, WeightMode::DequantizeF32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k_proj") && e.contains("bad.gguf"), "{e}");
    }
}
