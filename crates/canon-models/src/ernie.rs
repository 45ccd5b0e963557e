//! ERNIE: Enhanced Language Representation with Informative Entities (Zhang et al., 2019, paper 6).
//!
//! Two stacks. The T-Encoder is N plain BERT layers over the tokens (our [`Bert`], embeddings
//! included). The K-Encoder is M aggregator layers over two aligned streams: token states `w`
//! `[b, t, d]` and entity states `e` `[b, t, k]`, where position j holds the (frozen, TransE) vector
//! of the entity whose mention *starts* at token j, and a zero vector with entity mask 0 elsewhere.
//! Aggregator layer i (§3.3, eqs. 4–7):
//!   w̃ = MH-ATT(w)               (post-LN BERT attention block over tokens, padding masked)
//!   ẽ = MH-ATT(e)               (the same over entities; keys without an entity masked)
//!   h_j = GELU(W̃_t w̃_j + m_j·(W̃_e ẽ_j + b̃_e) + b̃)     with entity mask m_j ∈ {0, 1}
//!   w_j = LN(w̃_j + W_t h_j + b_t),   e_j = m_j · LN(ẽ_j + W_e h_j + b_e)
//! For a token without an entity (m_j = 0) the fusion is `h_j = GELU(W̃_t w̃_j + b̃)` (eq. 7). The
//! output maps are the reference code's `BertOutput` form (dense + residual LayerNorm) rather than
//! the paper's `σ(W h + b)`; with no entity the token side is then exactly a BERT layer (tested).
//! The paper's activation σ is GELU.
//!
//! Heads. Masked LM: `LN(GELU(W x))` then the word embeddings (tied) plus a bias. Denoising entity
//! auto-encoder (eq. 8): `p(e_j | w_i) = softmax_j((W w_i)ᵀ e_j)` over the candidate entities of the
//! sequence; `W w_i` is the reference `BertEntPredictionHead` transform `LN(GELU(dense(w_i)))`.
//!
//! The last aggregator has no entity output map (`e_j`): nothing reads its entity states.
//!
//! Deviations: every K-layer is a full aggregator (the reference's `layer_types` list also has "mix"
//! layers without entity attention); no NSP head; sizes are configurable (paper: N = 6, M = 6,
//! d = 768 / 12 heads, k = 100 / 4 heads).
//!
//! Parameter names follow the reference (BERT names for the token side, so a K-layer's token
//! weights are a BERT layer's): `kencoder.layer.{i}.attention.self.query`, `...attention.self_ent.*`,
//! `...attention.output.{dense,LayerNorm}`, `...attention.output_ent.{dense,LayerNorm}`,
//! `...intermediate.{dense,dense_ent}`, `...output.{dense,LayerNorm}`, `...output_ent.{dense,LayerNorm}`.

use candle_core::{D, DType, Tensor};
use canon_nn::{Activation, AttnMask, LayerNorm, Linear, attention};
use serde::{Deserialize, Serialize};

use crate::source::{WeightMode, WeightSource};
use crate::varstore::{Init, InitPolicy, ParamInfo};
use crate::{Bert, BertConfig, ModelError, Result};

fn d_eps() -> f64 {
    1e-12
}
fn d_types() -> usize {
    2
}
fn d_act() -> Activation {
    Activation::Gelu
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErnieConfig {
    #[serde(default)]
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// N: plain BERT layers (T-Encoder).
    pub t_layers: usize,
    /// M: aggregator layers (K-Encoder). 0 gives a plain BERT of N layers (the baseline).
    pub k_layers: usize,
    /// k: entity embedding size (the TransE dimension).
    pub entity_dim: usize,
    pub entity_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "d_types")]
    pub type_vocab_size: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
}

impl ErnieConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.bert().validate()?;
        if self.k_layers > 0
            && (self.entity_heads == 0 || !self.entity_dim.is_multiple_of(self.entity_heads))
        {
            return Err(format!(
                "entity_dim ({}) must be a multiple of entity_heads ({})",
                self.entity_dim, self.entity_heads
            ));
        }
        if self.entity_dim == 0 {
            return Err("entity_dim must be positive".into());
        }
        Ok(())
    }

    /// The T-Encoder (with embeddings) as a BERT configuration.
    pub fn bert(&self) -> BertConfig {
        BertConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.t_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
        }
    }
}

/// BERT's initialisation: weights N(0, 0.02), biases 0, LayerNorm gains 1; weight decay on matrices
/// of linear layers only.
pub fn init_policy() -> InitPolicy {
    Box::new(|name: &str, shape: &[usize]| {
        let norm = name.contains("LayerNorm");
        let bias = name.ends_with(".bias") || name == "cls.predictions.bias";
        let init = if norm && name.ends_with(".weight") {
            Init::Ones
        } else if bias {
            Init::Zeros
        } else {
            Init::Normal { std: 0.02 }
        };
        ParamInfo {
            init,
            decay: shape.len() == 2 && !name.starts_with("embeddings."),
        }
    })
}

/// A post-LN multi-head attention block: `LN(x + W_o · Attn(W_q x, W_k x, W_v x; mask))`.
#[derive(Debug, Clone)]
pub struct AttnBlock {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub norm: LayerNorm,
    pub heads: usize,
}

impl AttnBlock {
    /// `x: [b, t, n]`, `keep: [b, t]` (1 = may be attended to).
    pub fn forward(&self, x: &Tensor, keep: &Tensor) -> Result<Tensor> {
        let (b, t, n) = x.dims3()?;
        let hd = n / self.heads;
        // [b, t, n] -> [b, t, h, hd] -> [b, h, t, hd]
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let a = attention(&q, &k, &v, AttnMask::Padding(keep))?;
        let a = a.transpose(1, 2)?.reshape((b, t, n))?;
        Ok(self.norm.forward(&(x + self.o.forward(&a)?)?)?)
    }
}

/// One K-Encoder aggregator layer.
#[derive(Debug, Clone)]
pub struct Aggregator {
    pub tok_attn: AttnBlock,
    pub ent_attn: AttnBlock,
    /// W̃_t, b̃ (`intermediate.dense`).
    pub fuse_tok: Linear,
    /// W̃_e, b̃_e (`intermediate.dense_ent`).
    pub fuse_ent: Linear,
    pub out_tok: Linear,
    pub out_tok_norm: LayerNorm,
    /// W_e, b_e and the entity LayerNorm; none in the last layer, whose entity states nothing
    /// reads (no gradient could reach them).
    pub out_ent: Option<(Linear, LayerNorm)>,
    pub act: Activation,
}

impl Aggregator {
    /// `w: [b, t, d]`, `e: [b, t, k]`, `tok_keep, ent_mask: [b, t]` (f32 1/0) → `(w', e')`.
    pub fn forward(
        &self,
        w: &Tensor,
        e: &Tensor,
        tok_keep: &Tensor,
        ent_mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let m = ent_mask.unsqueeze(2)?; // [b, t, 1]
        let wt = self.tok_attn.forward(w, tok_keep)?;
        let et = self.ent_attn.forward(e, ent_mask)?;
        // h = GELU(W̃_t w̃ + m·(W̃_e ẽ + b̃_e) + b̃): positions without an entity get no entity term.
        let ent_term = self.fuse_ent.forward(&et)?.broadcast_mul(&m)?;
        let h = self
            .act
            .forward(&(self.fuse_tok.forward(&wt)? + ent_term)?)?;
        let w2 = self
            .out_tok_norm
            .forward(&(&wt + self.out_tok.forward(&h)?)?)?;
        let e2 = match &self.out_ent {
            Some((dense, norm)) => norm.forward(&(&et + dense.forward(&h)?)?)?,
            None => et,
        }
        .broadcast_mul(&m)?;
        Ok((w2, e2))
    }
}

/// Entity input of a batch: vectors `[b, t, k]` (zero where no entity) and mask `[b, t]` (f32).
#[derive(Debug, Clone)]
pub struct EntityInput {
    pub vectors: Tensor,
    pub mask: Tensor,
}

impl EntityInput {
    /// Looks up `ids` (`b·t` entries, −1 = no entity) in the frozen `table` `[n_entities, k]`.
    pub fn lookup(table: &Tensor, ids: &[i64], b: usize, t: usize) -> Result<Self> {
        let (n, k) = table.dims2()?;
        if ids.len() != b * t {
            return Err(ModelError::Input(format!(
                "{} entity ids for a batch of {b}×{t}",
                ids.len()
            )));
        }
        if let Some(bad) = ids.iter().find(|&&i| i >= n as i64 || i < -1) {
            return Err(ModelError::Input(format!(
                "entity id {bad} is out of range -1..{n}"
            )));
        }
        let dev = table.device();
        let idx: Vec<u32> = ids.iter().map(|&i| i.max(0) as u32).collect();
        let mask: Vec<f32> = ids.iter().map(|&i| f32::from(u8::from(i >= 0))).collect();
        let mask = Tensor::from_vec(mask, (b, t), dev)?;
        let vectors = table
            .index_select(&Tensor::from_vec(idx, b * t, dev)?, 0)?
            .reshape((b, t, k))?
            .broadcast_mul(&mask.unsqueeze(2)?)?;
        Ok(Self { vectors, mask })
    }
}

/// Hidden states of both streams after the last layer.
#[derive(Debug, Clone)]
pub struct ErnieOutput {
    /// `[b, t, d]`
    pub tokens: Tensor,
    /// `[b, t, k]` (zero where no entity): the last layer's entity attention output ẽ; the input
    /// vectors when there is no K-Encoder.
    pub entities: Tensor,
}

#[derive(Debug, Clone)]
pub struct Ernie {
    pub config: ErnieConfig,
    pub t_encoder: Bert,
    pub k_encoder: Vec<Aggregator>,
    /// MLM head: transform dense, its LayerNorm, tied word embeddings, output bias.
    mlm_dense: Linear,
    mlm_norm: LayerNorm,
    word_embeddings: Tensor,
    mlm_bias: Tensor,
    /// dEA head transform (d → k) and its LayerNorm; none without a K-Encoder.
    dea: Option<(Linear, LayerNorm)>,
}

impl Ernie {
    pub fn load(config: ErnieConfig, src: &dyn WeightSource) -> Result<Self> {
        config.validate().map_err(|message| ModelError::Config {
            file: src.describe(),
            message,
        })?;
        let c = &config;
        let (d, k, inter) = (c.hidden_size, c.entity_dim, c.intermediate_size);
        let lin = |p: &str, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear::new(
                src.weight(
                    &format!("{p}.weight"),
                    &[out, inp],
                    WeightMode::DequantizeF32,
                )?,
                Some(src.tensor(&format!("{p}.bias"), &[out])?),
            ))
        };
        let ln = |p: &str, n: usize| -> Result<LayerNorm> {
            Ok(LayerNorm::new(
                src.tensor(&format!("{p}.weight"), &[n])?,
                Some(src.tensor(&format!("{p}.bias"), &[n])?),
                c.layer_norm_eps,
            ))
        };
        let attn = |p: &str, s: &str, o: &str, n: usize, heads: usize| -> Result<AttnBlock> {
            Ok(AttnBlock {
                q: lin(&format!("{p}.attention.{s}.query"), n, n)?,
                k: lin(&format!("{p}.attention.{s}.key"), n, n)?,
                v: lin(&format!("{p}.attention.{s}.value"), n, n)?,
                o: lin(&format!("{p}.attention.{o}.dense"), n, n)?,
                norm: ln(&format!("{p}.attention.{o}.LayerNorm"), n)?,
                heads,
            })
        };
        let t_encoder = Bert::load(c.bert(), src)?;
        let mut k_encoder = Vec::with_capacity(c.k_layers);
        for i in 0..c.k_layers {
            let p = format!("kencoder.layer.{i}");
            k_encoder.push(Aggregator {
                tok_attn: attn(&p, "self", "output", d, c.num_attention_heads)?,
                ent_attn: attn(&p, "self_ent", "output_ent", k, c.entity_heads)?,
                fuse_tok: lin(&format!("{p}.intermediate.dense"), inter, d)?,
                fuse_ent: lin(&format!("{p}.intermediate.dense_ent"), inter, k)?,
                out_tok: lin(&format!("{p}.output.dense"), d, inter)?,
                out_tok_norm: ln(&format!("{p}.output.LayerNorm"), d)?,
                out_ent: if i + 1 < c.k_layers {
                    Some((
                        lin(&format!("{p}.output_ent.dense"), k, inter)?,
                        ln(&format!("{p}.output_ent.LayerNorm"), k)?,
                    ))
                } else {
                    None
                },
                act: c.hidden_act,
            });
        }
        Ok(Self {
            mlm_dense: lin("cls.predictions.transform.dense", d, d)?,
            mlm_norm: ln("cls.predictions.transform.LayerNorm", d)?,
            word_embeddings: src.tensor("embeddings.word_embeddings.weight", &[c.vocab_size, d])?,
            mlm_bias: src.tensor("cls.predictions.bias", &[c.vocab_size])?,
            dea: if c.k_layers > 0 {
                Some((
                    lin("cls.entity.transform.dense", k, d)?,
                    ln("cls.entity.transform.LayerNorm", k)?,
                ))
            } else {
                None
            },
            t_encoder,
            k_encoder,
            config,
        })
    }

    /// `ids, mask: [b, t]`; `ents`: the aligned entity input (ignored when there is no K-Encoder).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, ents: &EntityInput) -> Result<ErnieOutput> {
        let mask = mask.to_dtype(DType::F32)?;
        let mut w = self.t_encoder.forward_composed(ids, None, &mask)?;
        let (b, t, _) = w.dims3()?;
        let want = [b, t, self.config.entity_dim];
        if ents.vectors.dims() != want || ents.mask.dims() != [b, t] {
            return Err(ModelError::Input(format!(
                "entity input has shapes {:?} and {:?}, expected {want:?} and [{b}, {t}]",
                ents.vectors.dims(),
                ents.mask.dims()
            )));
        }
        let mut e = ents.vectors.clone();
        for layer in &self.k_encoder {
            (w, e) = layer.forward(&w, &e, &mask, &ents.mask)?;
        }
        Ok(ErnieOutput {
            tokens: w,
            entities: e,
        })
    }

    /// MLM logits `[n, vocab]` for token states `[n, d]`.
    pub fn mlm_logits(&self, h: &Tensor) -> Result<Tensor> {
        let x = self
            .config
            .hidden_act
            .forward(&self.mlm_dense.forward(h)?)?;
        let x = self.mlm_norm.forward(&x)?;
        Ok(x.matmul(&self.word_embeddings.t()?)?
            .broadcast_add(&self.mlm_bias)?)
    }

    /// The dEA projection `W w_i`: token states `[.., d]` → `[.., k]`.
    /// Errors for a model without a K-Encoder (a plain BERT has no dEA head).
    pub fn dea_project(&self, h: &Tensor) -> Result<Tensor> {
        let Some((dense, norm)) = &self.dea else {
            return Err(ModelError::Input(
                "a model without K-Encoder layers has no dEA head".into(),
            ));
        };
        let x = self.config.hidden_act.forward(&dense.forward(h)?)?;
        Ok(norm.forward(&x)?)
    }
}

/// dEA logits `(W w_i)ᵀ e_j`: projected states `[b, t, k]` against each sequence's candidates
/// `[b, c, k]`; candidates whose `cand_mask` `[b, c]` is 0 (padding) get −1e9. → `[b, t, c]`.
pub fn dea_logits(projected: &Tensor, candidates: &Tensor, cand_mask: &Tensor) -> Result<Tensor> {
    let (b, _, k) = projected.dims3()?;
    let (cb, c, ck) = candidates.dims3()?;
    if cb != b || ck != k || cand_mask.dims() != [b, c] {
        return Err(ModelError::Input(format!(
            "dEA: projected {:?}, candidates {:?}, mask {:?} do not agree",
            projected.dims(),
            candidates.dims(),
            cand_mask.dims()
        )));
    }
    let logits = projected.matmul(&candidates.transpose(1, 2)?.contiguous()?)?; // [b, t, c]
    let pad = ((cand_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.unsqueeze(1)?; // [b, 1, c]
    Ok(logits.broadcast_add(&pad)?)
}

/// Mean negative log-likelihood of the gold candidates; `labels` has `b·t` entries, the index of
/// the gold entity among the sequence's candidates, or `IGNORE_INDEX` where no entity is aligned.
/// Returns the loss and the number of predicted positions.
pub fn dea_loss(logits: &Tensor, labels: &[i64]) -> Result<(Tensor, usize)> {
    let (b, t, c) = logits.dims3()?;
    let flat = logits.reshape((b * t, c))?;
    Ok(canon_nn::masked_cross_entropy(&flat, labels, 0.0)?)
}

/// Accuracy of the dEA predictions at the labelled positions (argmax over candidates).
pub fn dea_accuracy(logits: &Tensor, labels: &[i64]) -> Result<(usize, usize)> {
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1()?;
    let mut ok = 0;
    let mut n = 0;
    for (p, &l) in pred.iter().zip(labels) {
        if l >= 0 {
            n += 1;
            ok += usize::from(*p as i64 == l);
        }
    }
    Ok((ok, n))
}

#[cfg(test)]
#[path = "ernie_tests.rs"]
mod tests;
