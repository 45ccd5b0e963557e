//! BERT's heads (Devlin et al., 2019, paper 3, §3.1 and appendix A.1), over the encoder of
//! `bert.rs`, named as HF's `BertForPreTraining` names them so that checkpoints interchange:
//!
//! - pooler: `p = tanh(W_p h_[CLS] + b_p)` (`pooler.dense`);
//! - next-sentence prediction: `logits = W_nsp p + b_nsp`, two classes IsNext = 0, NotNext = 1
//!   (`cls.seq_relationship`);
//! - masked LM: `logits = LayerNorm(act(W_t h + b_t)) · Eᵀ + b_out` — the decoder is the word
//!   embedding table `E` itself (tied: the same variable, so one gradient), plus an output bias
//!   (`cls.predictions.transform.{dense,LayerNorm}`, `cls.predictions.bias`);
//! - sequence classification for fine-tuning: `logits = W_c p + b_c` (`classifier`).
//!
//! The MLM head is evaluated only at the rows that are predicted (about 15 % of the positions),
//! which saves most of the `[rows, vocab]` product.
//!
//! Shapes: hidden `[b, t, d]`; MLM rows `[k, d]` → `[k, vocab]`; pooled `[b, d]` → `[b, classes]`.

use candle_core::Tensor;
use canon_nn::{Activation, LayerNorm, Linear};
use serde::{Deserialize, Serialize};

use crate::source::{WeightMode, WeightSource};
use crate::varstore::{Init, InitPolicy, ParamInfo, VarStore};
use crate::{Bert, BertConfig, ModelError, Result};

fn d_std() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-12
}
fn d_types() -> usize {
    2
}
fn d_act() -> Activation {
    Activation::Gelu
}

/// A BERT trained from scratch: the `[model]` table of `configs/bert.toml` (its `family` key is
/// read by the caller). `vocab_size` comes from the trained WordPiece vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertTrainConfig {
    #[serde(default)]
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    /// Default `4 · d_model` (the paper's ratio).
    #[serde(default)]
    pub d_ff: Option<usize>,
    /// Learned positions (also the longest input).
    pub max_seq_len: usize,
    #[serde(default = "d_types")]
    pub type_vocab_size: usize,
    #[serde(default = "d_act")]
    pub activation: Activation,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Truncated-normal σ of the paper; here a plain normal with this σ.
    #[serde(default = "d_std")]
    pub init_std: f64,
}

impl BertTrainConfig {
    pub fn to_bert(&self) -> BertConfig {
        BertConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.d_model,
            num_hidden_layers: self.n_layer,
            num_attention_heads: self.n_head,
            intermediate_size: self.d_ff.unwrap_or(4 * self.d_model),
            hidden_act: self.activation,
            layer_norm_eps: self.layer_norm_eps,
            max_position_embeddings: self.max_seq_len,
            type_vocab_size: self.type_vocab_size,
        }
    }
}

/// BERT's initialisation (normal σ = `std` for matrices and embeddings, LayerNorm γ = 1, β and
/// biases 0) and the AdamW convention of this repository: decay on matrices only.
pub fn bert_init_policy(std: f64) -> InitPolicy {
    Box::new(move |name: &str, _shape: &[usize]| {
        let (init, decay) = if name.ends_with("LayerNorm.weight") {
            (Init::Ones, false)
        } else if name.ends_with(".bias") || name.ends_with("predictions.bias") {
            (Init::Zeros, false)
        } else if name.starts_with("embeddings.") {
            (Init::Normal { std }, false)
        } else {
            (Init::Normal { std }, true)
        };
        ParamInfo { init, decay }
    })
}

fn linear(src: &dyn WeightSource, p: &str, out: usize, inp: usize) -> Result<Linear> {
    Ok(Linear::new(
        src.weight(
            &format!("{p}.weight"),
            &[out, inp],
            WeightMode::DequantizeF32,
        )?,
        Some(src.tensor(&format!("{p}.bias"), &[out])?),
    ))
}

/// `tanh(W_p h_[CLS] + b_p)`.
#[derive(Debug, Clone)]
pub struct Pooler {
    pub dense: Linear,
}

impl Pooler {
    pub fn load(cfg: &BertConfig, src: &dyn WeightSource) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            dense: linear(src, "pooler.dense", d, d)?,
        })
    }

    /// `hidden: [b, t, d]` → `[b, d]` from position 0 ([CLS]).
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?; // [b, d]
        Ok(self.dense.forward(&cls)?.tanh()?)
    }
}

/// The masked-LM head with its decoder tied to the word embeddings.
#[derive(Debug, Clone)]
pub struct MlmHead {
    pub transform: Linear,
    pub act: Activation,
    pub norm: LayerNorm,
    /// `[vocab, d]`: the encoder's word-embedding table (the same tensor, not a copy).
    pub decoder: Tensor,
    /// `[vocab]`
    pub bias: Tensor,
}

impl MlmHead {
    pub fn load(cfg: &BertConfig, bert: &Bert, src: &dyn WeightSource) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            transform: linear(src, "cls.predictions.transform.dense", d, d)?,
            act: cfg.hidden_act,
            norm: LayerNorm::new(
                src.tensor("cls.predictions.transform.LayerNorm.weight", &[d])?,
                Some(src.tensor("cls.predictions.transform.LayerNorm.bias", &[d])?),
                cfg.layer_norm_eps,
            ),
            decoder: bert.word_embeddings().clone(),
            bias: src.tensor("cls.predictions.bias", &[cfg.vocab_size])?,
        })
    }

    /// `rows: [k, d]` → logits `[k, vocab]`.
    pub fn forward(&self, rows: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&self.transform.forward(rows)?)?;
        let h = self.norm.forward(&h)?;
        Ok(h.matmul(&self.decoder.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// Rows `[k, d]` of `hidden: [b, t, d]` at the flat positions `rows` (`i·t + j`).
pub fn gather_rows(hidden: &Tensor, rows: &[u32]) -> Result<Tensor> {
    let (b, t, d) = hidden.dims3()?;
    if let Some(bad) = rows.iter().find(|&&r| r as usize >= b * t) {
        return Err(ModelError::Input(format!(
            "row {bad} is outside the {b}×{t} positions"
        )));
    }
    let idx = Tensor::from_vec(rows.to_vec(), rows.len(), hidden.device())?;
    Ok(hidden.reshape((b * t, d))?.index_select(&idx, 0)?)
}

/// The encoder with its pre-training heads. `nsp` is `None` for models pre-trained without
/// next-sentence prediction (the DistilBERT student, which also has no pooler).
#[derive(Debug, Clone)]
pub struct BertPretraining {
    pub bert: Bert,
    pub mlm: MlmHead,
    pub nsp: Option<(Pooler, Linear)>,
}

/// What one pre-training forward pass returns.
#[derive(Debug, Clone)]
pub struct PretrainOutput {
    /// `[b, t, d]`: the last hidden layer.
    pub hidden: Tensor,
    /// `[k, vocab]` at the requested rows.
    pub mlm_logits: Tensor,
    /// `[b, 2]` (IsNext, NotNext) when the model has the NSP head.
    pub nsp_logits: Option<Tensor>,
}

impl BertPretraining {
    pub fn load(cfg: BertConfig, src: &dyn WeightSource, nsp: bool) -> Result<Self> {
        let bert = Bert::load(cfg.clone(), src)?;
        let mlm = MlmHead::load(&cfg, &bert, src)?;
        let nsp = if nsp {
            Some((
                Pooler::load(&cfg, src)?,
                linear(src, "cls.seq_relationship", 2, cfg.hidden_size)?,
            ))
        } else {
            None
        };
        Ok(Self { bert, mlm, nsp })
    }

    /// `ids, types, mask: [b, t]`; `mlm_rows`: flat positions whose tokens are predicted.
    /// Runs the composed (trainable) encoder.
    pub fn forward(
        &self,
        ids: &Tensor,
        types: Option<&Tensor>,
        mask: &Tensor,
        mlm_rows: &[u32],
    ) -> Result<PretrainOutput> {
        let hidden = self.bert.forward_composed(ids, types, mask)?;
        let mlm_logits = self.mlm.forward(&gather_rows(&hidden, mlm_rows)?)?;
        let nsp_logits = match &self.nsp {
            Some((pool, head)) => Some(head.forward(&pool.forward(&hidden)?)?),
            None => None,
        };
        Ok(PretrainOutput {
            hidden,
            mlm_logits,
            nsp_logits,
        })
    }
}

/// A sequence classifier for fine-tuning (appendix A.3, Figure 4a): pooled [CLS] → classes.
#[derive(Debug, Clone)]
pub struct BertClassifier {
    pub bert: Bert,
    pub pooler: Pooler,
    pub head: Linear,
}

impl BertClassifier {
    pub fn load(cfg: BertConfig, src: &dyn WeightSource, classes: usize) -> Result<Self> {
        if classes < 2 {
            return Err(ModelError::Input(format!(
                "a classifier needs at least 2 classes, found {classes}"
            )));
        }
        let bert = Bert::load(cfg.clone(), src)?;
        Ok(Self {
            pooler: Pooler::load(&cfg, src)?,
            head: linear(src, "classifier", classes, cfg.hidden_size)?,
            bert,
        })
    }

    /// `ids, mask: [b, t]` → logits `[b, classes]` (composed, trainable pass).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let h = self.bert.forward_composed(ids, None, mask)?;
        Ok(self.head.forward(&self.pooler.forward(&h)?)?)
    }
}

/// Copies every tensor `src` has into the same-named variables of `store` (shapes must agree);
/// variables `src` lacks keep their initialisation. Returns the names copied and those kept.
pub fn copy_into(store: &VarStore, src: &dyn WeightSource) -> Result<(Vec<String>, Vec<String>)> {
    let (mut copied, mut kept) = (Vec::new(), Vec::new());
    for (name, var, _) in store.vars() {
        if src.has(&name) {
            var.set(&src.tensor(&name, var.dims())?)?;
            copied.push(name);
        } else {
            kept.push(name);
        }
    }
    Ok((copied, kept))
}

#[cfg(test)]
#[path = "bert_heads_tests.rs"]
mod tests;
