//! LLaMA (Touvron et al., 2023, paper 25), with RoPE (paper 12) and grouped-query attention.
//!
//! A block is two residual lines (eqs. of §2.2, pre-normalisation):
//!   h = x + W_o · Attn(RoPE(W_q · RMSNorm(x)), RoPE(W_k · RMSNorm(x)), W_v · RMSNorm(x))
//!   y = h + W_2 (SiLU(W_1 · RMSNorm(h)) ⊙ W_3 · RMSNorm(h))
//! then a final RMSNorm and the output projection (tied to the embedding when the checkpoint has no
//! separate one, as SmolLM2). Configured from GGUF metadata, an HF config.json, or a training config
//! (`configs/llama.toml`, trained from scratch through the same code).
//!
//! Shapes: ids `[b, t]` → hidden `[b, t, d]` → logits `[b, t, vocab]`.

use candle_core::{D, Tensor};
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
        let embed_w = src.weight("model.embed_tokens.weight", &[c.vocab_size, d], mode)?;
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            blocks.push(Block {
                attn_norm: norm(format!("{p}.input_layernorm.weight"))?,
                q: lin(format!("{p}.self_attn.q_proj.weight"), q_out, d)?,
                k: lin(format!("{p}.self_attn.k_proj.weight"), kv_out, d)?,
                v: lin(format!("{p}.self_attn.v_proj.weight"), kv_out, d)?,
                o: lin(format!("{p}.self_attn.o_proj.weight"), d, q_out)?,
                ffn_norm: norm(format!("{p}.post_attention_layernorm.weight"))?,
                ffn: SwiGlu {
                    gate: lin(format!("{p}.mlp.gate_proj.weight"), c.intermediate_size, d)?,
                    up: lin(format!("{p}.mlp.up_proj.weight"), c.intermediate_size, d)?,
                    down: lin(format!("{p}.mlp.down_proj.weight"), d, c.intermediate_size)?,
                },
            });
        }
        let lm_head = if !c.tie_word_embeddings && src.has("lm_head.weight") {
            lin("lm_head.weight".into(), c.vocab_size, d)?
        } else {
            Linear::new(embed_w.clone(), None)
        };
        let rope = Rope::new(
            hd,
            c.max_position_embeddings,
            c.rope_theta,
            c.rope_layout,
            &candle_core::Device::Cpu,
        )?;
        Ok(Self {
            embed: embed_w,
            blocks,
            norm: norm("model.norm.weight".into())?,
            lm_head,
            rope,
            config,
        })
    }

    fn block_forward(
        &self,
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
        let q = self.rope.apply(&q.contiguous()?, offset)?;
        let k = self.rope.apply(&k.contiguous()?, offset)?;
        let (k, v) = cache.append(&k, &v.contiguous()?)?;
        let a = attention(&q, &k, &v, AttnMask::Causal { offset })?; // [b, nh, t, hd]
        let a = a.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        let x = (x + blk.o.forward(&a)?)?;
        let f = blk.ffn.forward(&blk.ffn_norm.forward(&x)?)?;
        Ok((x + f)?)
    }
}

impl CausalLm for Llama {
    fn forward(&self, ids: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Input(
                "forward: expected at least one token, found 0".into(),
            ));
        }
        // [b, t] -> [b·t, d] -> [b, t, d]
        let x = self
            .embed
            .rows(ids)?
            .reshape((b, t, self.config.hidden_size))?;
        self.forward_embeds(&x, cache, which)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self
            .embed
            .rows(ids)?
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
        for (blk, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = self.block_forward(blk, &x, kv, offset)?;
        }
        let x = match which {
            Positions::All => x,
            Positions::Last => x.narrow(1, t - 1, 1)?,
        };
        let x = self.norm.forward(&x)?;
        Ok(self
            .lm_head
            .forward(&x)?
            .to_dtype(candle_core::DType::F32)?)
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
        let ids_t = Tensor::new(all.as_slice(), &candle_core::Device::Cpu)?;
        // [n, d]: every sequence's new rows, stacked; every linear layer multiplies them at once.
        let mut x = self.embed.rows(&ids_t)?.reshape((n, d))?;
        for (l, blk) in self.blocks.iter().enumerate() {
            let h = blk.attn_norm.forward(&x)?;
            let q = blk.q.forward(&h)?;
            let k = blk.k.forward(&h)?;
            let v = blk.v.forward(&h)?;
            let mut outs = Vec::with_capacity(spans.len());
            for (&(start, t, offset), cache) in spans.iter().zip(caches.iter_mut()) {
                // [t, heads·hd] -> [1, heads, t, hd], as `forward` shapes one sequence.
                let heads = |m: &Tensor, h: usize| -> Result<Tensor> {
                    Ok(m.narrow(0, start, t)?
                        .reshape((1, t, h, hd))?
                        .transpose(1, 2)?
                        .contiguous()?)
                };
                let qi = self.rope.apply(&heads(&q, nh)?, offset)?;
                let ki = self.rope.apply(&heads(&k, nkv)?, offset)?;
                let vi = heads(&v, nkv)?;
                let (ka, va) = cache.layers[l].append(&ki, &vi)?;
                let a = attention(&qi, &ka, &va, AttnMask::Causal { offset })?;
                outs.push(a.transpose(1, 2)?.reshape((t, nh * hd))?);
            }
            let a = if outs.len() == 1 {
                outs.remove(0)
            } else {
                Tensor::cat(&outs, 0)?
            };
            let x1 = (&x + blk.o.forward(&a)?)?;
            let f = blk.ffn.forward(&blk.ffn_norm.forward(&x1)?)?;
            x = (x1 + f)?;
        }
        // Each sequence's last row.
        let last: Vec<u32> = spans
            .iter()
            .map(|&(start, t, _)| (start + t - 1) as u32)
            .collect();
        let last = Tensor::new(last.as_slice(), &candle_core::Device::Cpu)?;
        let x = self.norm.forward(&x.index_select(&last, 0)?)?;
        Ok(self
            .lm_head
            .forward(&x)?
            .to_dtype(candle_core::DType::F32)?)
    }

    fn new_cache(&self) -> Cache {
        Cache::new(self.blocks.len())
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
            for m in ATTN_MODULES {
                v.push(format!("model.layers.{i}.self_attn.{m}"));
            }
            for m in MLP_MODULES {
                v.push(format!("model.layers.{i}.mlp.{m}"));
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

const ATTN_MODULES: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
const MLP_MODULES: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Index of the largest logit in the last position, for tests and greedy decoding.
pub fn argmax_last(logits: &Tensor) -> Result<u32> {
    let last = logits.squeeze(0)?;
    let last = if last.rank() == 2 {
        last.get(last.dim(0)? - 1)?
    } else {
        last
    };
    Ok(last.argmax(D::Minus1)?.to_scalar::<u32>()?)
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
