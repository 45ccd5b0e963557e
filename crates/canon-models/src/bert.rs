//! BERT encoder (Devlin et al., 2019, paper 3).
//!
//! Input representation (§3): `E = LayerNorm(word[ids] + position[0..t] + token_type[types])`.
//! Each of the L post-LN layers (as in the Transformer, paper 1):
//!   h = LayerNorm(x + W_o · Attn(W_q x, W_k x, W_v x; padding mask))
//!   y = LayerNorm(h + W_2 · GELU(W_1 h))
//! GELU is exact (erf) for HF/MiniLM checkpoints, the tanh form when the config says so.
//!
//! Shapes: ids, mask `[b, t]` → hidden `[b, t, d]`.

use candle_core::{DType, Tensor};
use canon_nn::{AttnMask, Embedding, LayerNorm, Linear, Mlp, attention};

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
}

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
        })
    }
}

impl Encoder for Bert {
    fn forward(&self, ids: &Tensor, type_ids: Option<&Tensor>, mask: &Tensor) -> Result<Tensor> {
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
        let pos = Tensor::arange(0u32, t as u32, ids.device())?
            .unsqueeze(0)?
            .broadcast_as((b, t))?
            .contiguous()?;
        let types = match type_ids {
            Some(t) => t.clone(),
            None => Tensor::zeros((b, t), DType::U32, ids.device())?,
        };
        let x = (self.word.forward(ids)? + self.position.forward(&pos)?)?;
        let x = (x + self.token_type.forward(&types)?)?;
        let mut x = self.emb_norm.forward(&x)?;
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
            let h = l.attn_norm.forward(&(x + l.o.forward(&a)?)?)?;
            x = l.out_norm.forward(&(&h + l.mlp.forward(&h)?)?)?;
        }
        Ok(x)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
}
