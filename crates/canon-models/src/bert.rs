//! BERT encoder (Devlin et al., 2019, paper 3).
//!
//! Input representation (§3): `E = LayerNorm(word[ids] + position[0..t] + token_type[types])`.
//! Each of the L post-LN layers (as in the Transformer, paper 1):
//!   h = LayerNorm(x + W_o · Attn(W_q x, W_k x, W_v x; padding mask))
//!   y = LayerNorm(h + W_2 · GELU(W_1 h))
//! GELU is exact (erf) for HF/MiniLM checkpoints, the tanh form when the config says so.
//!
//! Shapes: ids, mask `[b, t]` → hidden `[b, t, d]`.
//!
//! Two implementations of the same forward pass:
//! - composed `canon-nn` layers ([`Bert::forward_composed`]), which record a backward pass — used
//!   whenever any parameter tracks gradients (training);
//! - an inference pass over plain f32 buffers ([`Bert::forward_inference`]): the embeddings summed
//!   and normalised in one pass, Q, K and V written by three GEMMs into one `[rows, 3d]` buffer
//!   (bias added by the GEMM), attention per (sequence, head) with padded keys skipped, residual
//!   add fused into layer norm, GELU in place. Sequences are split across threads, each running the
//!   whole stack single-threaded on its share, so no kernel waits for another thread.
//!   `Encoder::forward` takes it when nothing tracks gradients and every weight is dense f32.
//!   After [`Bert::use_q8_weights`] its products run on 8-bit weights and activations (`q8`).

use candle_core::{DType, Device, Tensor};
use canon_nn::fused::{self, F32Data, Parallelism};
use canon_nn::{Activation, AttnMask, Embedding, LayerNorm, Linear, Mlp, Weight, attention};
use rayon::prelude::*;
use std::sync::Arc;

use crate::source::{WeightMode, WeightSource};
use crate::{BertConfig, Encoder, ModelError, Result};

#[derive(Debug, Clone)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: LayerNorm,
    mlp: Mlp,
    out_norm: LayerNorm,
}

#[derive(Debug, Clone)]
pub struct Bert {
    pub config: BertConfig,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    /// The linear layers packed as 8-bit blocks ([`Bert::use_q8_weights`]), where the CPU has
    /// the integer kernels.
    q8: Option<Arc<Vec<q8::LayerQ8>>>,
}

mod infer;
mod q8;

use infer::{LayerW, Weights};

impl Bert {
    pub fn load(config: BertConfig, src: &dyn WeightSource) -> Result<Self> {
        config.validate().map_err(|message| ModelError::Config {
            file: src.describe(),
            message,
        })?;
        let c = &config;
        let d = c.hidden_size;
        let lin = |p: String, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear::new(
                src.weight(
                    &format!("{p}.weight"),
                    &[out, inp],
                    WeightMode::DequantizeF32,
                )?,
                Some(src.tensor(&format!("{p}.bias"), &[out])?),
            ))
        };
        let ln = |p: String| -> Result<LayerNorm> {
            Ok(LayerNorm::new(
                src.tensor(&format!("{p}.weight"), &[d])?,
                Some(src.tensor(&format!("{p}.bias"), &[d])?),
                c.layer_norm_eps,
            ))
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                q: lin(format!("{p}.attention.self.query"), d, d)?,
                k: lin(format!("{p}.attention.self.key"), d, d)?,
                v: lin(format!("{p}.attention.self.value"), d, d)?,
                o: lin(format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: ln(format!("{p}.attention.output.LayerNorm"))?,
                mlp: Mlp {
                    fc1: lin(format!("{p}.intermediate.dense"), c.intermediate_size, d)?,
                    fc2: lin(format!("{p}.output.dense"), d, c.intermediate_size)?,
                    act: c.hidden_act,
                },
                out_norm: ln(format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            word: Embedding::new(
                src.tensor("embeddings.word_embeddings.weight", &[c.vocab_size, d])?,
            ),
            position: Embedding::new(src.tensor(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, d],
            )?),
            token_type: Embedding::new(src.tensor(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, d],
            )?),
            emb_norm: ln("embeddings.LayerNorm".into())?,
            layers,
            config,
            q8: None,
        })
    }
}

impl Bert {
    /// Rounds every linear layer's weight to 8-bit blocks (ggml's Q8_0: 32 values, one scale)
    /// and runs the inference pass's products on the integer kernels, each product's input
    /// rounded to 8-bit blocks too (about four times the f32 GEMM's speed). The composed pass,
    /// and the inference pass on a CPU without the kernels, use the rounded weights in f32.
    /// Fails, changing nothing, where a layer is not dense f32, carries an adapter, has a width
    /// that is not a multiple of 32, or where the weights are trainable.
    pub fn use_q8_weights(&mut self) -> Result<()> {
        for l in &self.layers {
            for x in [&l.q, &l.k, &l.v, &l.o, &l.mlp.fc1, &l.mlp.fc2] {
                q8::check(x)?;
            }
        }
        if !fused::no_grad(&self.parameters()) {
            return Err(ModelError::Input(
                "expected frozen weights to round to 8 bits, found trainable ones".into(),
            ));
        }
        let mut parts = Vec::with_capacity(self.layers.len());
        for l in &mut self.layers {
            parts.push([
                q8::round_group(&mut [&mut l.q, &mut l.k, &mut l.v])?,
                q8::round_group(&mut [&mut l.o])?,
                q8::round_group(&mut [&mut l.mlp.fc1])?,
                q8::round_group(&mut [&mut l.mlp.fc2])?,
            ]);
        }
        self.q8 = q8::layers(parts);
        Ok(())
    }

    /// Whether the inference pass multiplies on 8-bit weights ([`Bert::use_q8_weights`] on a CPU
    /// with the integer kernels).
    pub fn runs_q8(&self) -> bool {
        self.q8.is_some()
    }

    /// The word-embedding table `[vocab, d]` (BERT's MLM decoder is tied to it).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.word.weight
    }

    fn check_input(&self, ids: &Tensor, mask: &Tensor) -> Result<(usize, usize)> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        if t > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "{t} tokens exceed the model's {} positions",
                c.max_position_embeddings
            )));
        }
        if mask.dims() != [b, t] {
            return Err(ModelError::Input(format!(
                "attention mask has shape {:?}, expected [{b}, {t}]",
                mask.dims()
            )));
        }
        Ok((b, t))
    }

    /// The forward pass through composed `canon-nn` layers (records a backward pass).
    pub fn forward_composed(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<Tensor> {
        self.check_input(ids, mask)?;
        self.forward_embeds(&self.word.forward(ids)?, type_ids, mask)
    }

    /// [`Bert::forward_composed`] from word embeddings `word: [b, t, d]` (the rows of
    /// [`Bert::word_embeddings`], or any other vectors) instead of ids: positions and token types
    /// are added here. Records a backward pass through `word` (AutoPrompt, paper 11).
    pub fn forward_embeds(
        &self,
        word: &Tensor,
        type_ids: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, d) = word.dims3()?;
        if d != c.hidden_size {
            return Err(ModelError::Input(format!(
                "expected word vectors of width {}, found {d}",
                c.hidden_size
            )));
        }
        if t > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "{t} tokens exceed the model's {} positions",
                c.max_position_embeddings
            )));
        }
        if mask.dims() != [b, t] {
            return Err(ModelError::Input(format!(
                "attention mask has shape {:?}, expected [{b}, {t}]",
                mask.dims()
            )));
        }
        let pos = Tensor::arange(0u32, t as u32, word.device())?
            .unsqueeze(0)?
            .broadcast_as((b, t))?
            .contiguous()?;
        let types = match type_ids {
            Some(t) => t.clone(),
            None => Tensor::zeros((b, t), DType::U32, word.device())?,
        };
        let x = (word + self.position.forward(&pos)?)?;
        let x = (x + self.token_type.forward(&types)?)?;
        // Layer norms and GELU pick their fused kernels themselves (with a backward in training).
        let ln = |n: &LayerNorm, x: &Tensor| -> Result<Tensor> { Ok(n.forward(x)?) };
        let mut x = ln(&self.emb_norm, &x)?;
        let nh = c.num_attention_heads;
        let hd = c.hidden_size / nh;
        for l in &self.layers {
            // [b, t, d] -> [b, t, nh, hd] -> [b, nh, t, hd]
            let split = |y: Tensor| -> Result<Tensor> {
                Ok(y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let q = split(l.q.forward(&x)?)?;
            let k = split(l.k.forward(&x)?)?;
            let v = split(l.v.forward(&x)?)?;
            let a = attention(&q, &k, &v, AttnMask::Padding(mask))?;
            let a = a.transpose(1, 2)?.reshape((b, t, c.hidden_size))?;
            let h = ln(&l.attn_norm, &(x + l.o.forward(&a)?)?)?;
            let ff = l.mlp.fc1.forward(&h)?;
            let ff = l.mlp.fc2.forward(&l.mlp.act.forward(&ff)?)?;
            x = ln(&l.out_norm, &(&h + ff)?)?;
        }
        Ok(x)
    }

    /// Every parameter tensor.
    fn parameters(&self) -> Vec<&Tensor> {
        fn lin<'a>(l: &'a Linear, v: &mut Vec<&'a Tensor>) {
            if let Weight::Dense(w) = &l.weight {
                v.push(w);
            }
            v.extend(l.bias.iter());
        }
        fn ln<'a>(n: &'a LayerNorm, v: &mut Vec<&'a Tensor>) {
            v.push(&n.weight);
            v.extend(n.bias.iter());
        }
        let mut v = Vec::new();
        v.extend([
            &self.word.weight,
            &self.position.weight,
            &self.token_type.weight,
        ]);
        ln(&self.emb_norm, &mut v);
        for l in &self.layers {
            for x in [&l.q, &l.k, &l.v, &l.o, &l.mlp.fc1, &l.mlp.fc2] {
                lin(x, &mut v);
            }
            ln(&l.attn_norm, &mut v);
            ln(&l.out_norm, &mut v);
        }
        v
    }

    /// The inference pass (no backward), or `None` when it does not apply: a parameter tracks
    /// gradients, a weight is not dense f32 on the CPU, a linear layer carries a LoRA adapter, or
    /// the activation is not exact GELU.
    pub fn forward_inference(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<Option<Tensor>> {
        let c = &self.config;
        let (b, t) = self.check_input(ids, mask)?;
        let params = self.parameters();
        let linears_plain = self.layers.iter().all(|l| {
            [&l.q, &l.k, &l.v, &l.o, &l.mlp.fc1, &l.mlp.fc2]
                .iter()
                .all(|x| {
                    x.lora.is_none() && matches!(x.weight, Weight::Dense(_)) && x.bias.is_some()
                })
        });
        let norms_biased = self
            .layers
            .iter()
            .flat_map(|l| [&l.attn_norm, &l.out_norm])
            .chain([&self.emb_norm])
            .all(|n| n.bias.is_some());
        if !linears_plain
            || !norms_biased
            || c.hidden_act != Activation::Gelu
            || !fused::no_grad(&params)
            || !matches!(ids.device(), Device::Cpu)
        {
            return Ok(None);
        }
        // Fixed order: word, position, type, LN γ, LN β, then per layer q w/b, k w/b, v w/b,
        // o w/b, fc1 w/b, fc2 w/b, attention LN γ/β, output LN γ/β (see `parameters`).
        let data: Option<Vec<F32Data<'_>>> = params.iter().map(|p| F32Data::new(p)).collect();
        let Some(data) = data else {
            return Ok(None);
        };
        let p: Vec<&[f32]> = data.iter().map(|d| &**d).collect();
        let w = Weights {
            word: p[0],
            position: p[1],
            token_type: p[2],
            emb_norm: (p[3], p[4]),
            layers: p[5..]
                .chunks_exact(16)
                .map(|q| LayerW {
                    qkv: [(q[0], q[1]), (q[2], q[3]), (q[4], q[5])],
                    o: (q[6], q[7]),
                    fc1: (q[8], q[9]),
                    fc2: (q[10], q[11]),
                    attn_norm: (q[12], q[13]),
                    out_norm: (q[14], q[15]),
                })
                .collect(),
            d: c.hidden_size,
            inter: c.intermediate_size,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps as f32,
            q8: self.q8.as_deref().map(|v| v.as_slice()),
        };

        let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let types: Vec<u32> = match type_ids {
            Some(tt) => tt.flatten_all()?.to_vec1()?,
            None => vec![0; b * t],
        };
        if types.len() != b * t {
            return Err(ModelError::Input(format!(
                "token type ids have {} elements, expected {b}×{t}",
                types.len()
            )));
        }
        for (what, v, n) in [
            ("token", &ids, c.vocab_size),
            ("token type", &types, c.type_vocab_size),
        ] {
            if let Some(bad) = v.iter().find(|&&i| i as usize >= n) {
                return Err(ModelError::Input(format!(
                    "{what} id {bad} is out of range 0..{n}"
                )));
            }
        }
        let keep: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;

        // Work split: whole sequences per task, about TASK_ROWS rows each, at least one task per
        // thread. One task (a single long sequence) lets the GEMMs use the threads instead.
        const TASK_ROWS: usize = 512;
        let threads = rayon::current_num_threads().max(1);
        let per = b.div_ceil(threads).min(TASK_ROWS.div_ceil(t.max(1))).max(1);
        let par = if per >= b && threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        let d = c.hidden_size;
        let mut out = vec![0f32; b * t * d];
        if b * t > 0 {
            out.par_chunks_mut(per * t * d)
                .enumerate()
                .for_each(|(i, o)| {
                    let (s0, n) = (i * per, o.len() / (t * d));
                    let r = s0 * t..(s0 + n) * t;
                    let run =
                        || w.encode(&ids[r.clone()], &types[r.clone()], &keep[r], n, t, o, par);
                    // Several tasks already keep the cores busy: the 8-bit products (which
                    // otherwise hand their panels to the kernel pool) run on this task's thread.
                    if w.q8.is_some() && matches!(par, Parallelism::None) {
                        canon_quant::pool::serial(run)
                    } else {
                        run()
                    }
                });
        }
        Ok(Some(Tensor::from_vec(out, (b, t, d), &Device::Cpu)?))
    }
}

impl Encoder for Bert {
    /// The inference pass when it applies (see [`Bert::forward_inference`]), else the composed one.
    fn forward(&self, ids: &Tensor, type_ids: Option<&Tensor>, mask: &Tensor) -> Result<Tensor> {
        match self.forward_inference(ids, type_ids, mask)? {
            Some(h) => Ok(h),
            None => self.forward_composed(ids, type_ids, mask),
        }
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn use_q8_weights(&mut self) -> Result<()> {
        Bert::use_q8_weights(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use canon_testkit::{Tol, assert_close, randn, to_vec};
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Random weights by HF name; `vars` makes every tensor a trainable `Var`.
    struct Random {
        made: RefCell<HashMap<String, Tensor>>,
        vars: bool,
    }
    impl WeightSource for Random {
        fn describe(&self) -> String {
            "random".into()
        }
        fn has(&self, _name: &str) -> bool {
            true
        }
        fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
            let mut m = self.made.borrow_mut();
            let seed = m.len() as u64 + 1;
            let t = (randn(shape, seed) * 0.3)?;
            // LayerNorm γ around 1, as trained models have.
            let t = if name.ends_with("LayerNorm.weight") {
                (t + 1.0)?
            } else {
                t
            };
            let t = if self.vars {
                Var::from_tensor(&t)?.as_tensor().clone()
            } else {
                t
            };
            Ok(m.entry(name.to_string()).or_insert(t).clone())
        }
    }

    pub(super) fn tiny(vars: bool, act: Activation) -> (Bert, Vec<Tensor>) {
        let cfg = BertConfig {
            vocab_size: 40,
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 96,
            hidden_act: act,
            layer_norm_eps: 1e-12,
            max_position_embeddings: 48,
            type_vocab_size: 2,
        };
        let src = Random {
            made: Default::default(),
            vars,
        };
        let bert = Bert::load(cfg, &src).unwrap();
        let params = src.made.into_inner().into_values().collect();
        (bert, params)
    }

    /// Three sequences of 37 positions: full, padded after 20, padded after 1.
    pub(super) fn batch() -> (Tensor, Tensor, Tensor) {
        let (b, t) = (3usize, 37usize);
        let lens = [37usize, 20, 1];
        let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % 40) as u32).collect();
        let types: Vec<u32> = (0..b * t).map(|i| u32::from(i % t >= 10)).collect();
        let mask: Vec<f32> = (0..b * t)
            .map(|i| f32::from(u8::from(i % t < lens[i / t])))
            .collect();
        let dev = &Device::Cpu;
        (
            Tensor::from_vec(ids, (b, t), dev).unwrap(),
            Tensor::from_vec(types, (b, t), dev).unwrap(),
            Tensor::from_vec(mask, (b, t), dev).unwrap(),
        )
    }

    #[test]
    fn inference_pass_equals_the_composed_pass_padding_included() {
        let (bert, _) = tiny(false, Activation::Gelu);
        let (ids, types, mask) = batch();
        for tt in [None, Some(&types)] {
            let fast = bert
                .forward_inference(&ids, tt, &mask)
                .unwrap()
                .expect("inference pass applies to a frozen dense f32 model");
            let composed = bert.forward_composed(&ids, tt, &mask).unwrap();
            // Padded positions too: both compute every query against the real keys.
            assert_close(&fast, &composed, Tol::F32);
            assert_close(&bert.forward(&ids, tt, &mask).unwrap(), &fast, Tol::EXACT);
        }
        // One sequence alone (the GEMMs share the threads instead of the sequences).
        let one = |t: &Tensor| t.narrow(0, 1, 1).unwrap();
        let fast = bert
            .forward_inference(&one(&ids), None, &one(&mask))
            .unwrap()
            .unwrap();
        let composed = bert
            .forward_composed(&one(&ids), None, &one(&mask))
            .unwrap();
        assert_close(&fast, &composed, Tol::F32);
    }

    #[test]
    fn inference_pass_rejects_out_of_range_ids() {
        let (bert, _) = tiny(false, Activation::Gelu);
        let (_, _, mask) = batch();
        let ids = Tensor::full(40u32, (3, 37), &Device::Cpu).unwrap();
        let err = bert.forward(&ids, None, &mask).unwrap_err().to_string();
        assert!(err.contains("token id 40"), "{err}");
    }

    #[test]
    fn inference_pass_steps_aside_when_it_does_not_apply() {
        // tanh GELU: not what the fused kernel computes.
        let (bert, _) = tiny(false, Activation::GeluTanh);
        let (ids, _, mask) = batch();
        assert!(bert.forward_inference(&ids, None, &mask).unwrap().is_none());
        // Trainable weights: must take the composed path.
        let (bert, _) = tiny(true, Activation::Gelu);
        assert!(bert.forward_inference(&ids, None, &mask).unwrap().is_none());
    }

    #[test]
    fn gradients_reach_every_parameter_when_weights_are_trainable() {
        let (bert, params) = tiny(true, Activation::Gelu);
        let (ids, types, mask) = batch();
        let h = bert.forward(&ids, Some(&types), &mask).unwrap();
        assert!(h.track_op(), "a trainable model must run the composed pass");
        let grads = h.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(params.len(), 5 + 2 * 16);
        for p in &params {
            let g = grads.get(p).expect("every parameter receives a gradient");
            assert!(to_vec(g).iter().any(|v| *v != 0.0));
        }
    }
}
