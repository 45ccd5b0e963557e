//! BERT pre-training (Devlin et al., 2019, paper 3, §3.1): the masked LM plus next-sentence
//! prediction, `L = L_MLM + L_NSP`, each the mean cross-entropy over its predictions (the masked
//! positions of the batch; one IsNext/NotNext decision per sequence).
//!
//! Each training micro-batch draws `batch_size` fresh sentence pairs and masks them (15 % of the
//! non-special positions; 80 % [MASK], 10 % random, 10 % kept) from the engine's generator, so a
//! resumed run sees the same stream. Evaluation uses fixed held-out batches drawn once from the
//! held-out documents with a fixed seed (the same pairs and masks every time): it reports the
//! total loss, the MLM loss and accuracy over masked positions and the NSP accuracy.

use std::path::Path;

use candle_core::{Device, Tensor};
use canon_models::bert_heads::{BertPretraining, bert_init_policy};
use canon_models::family::{
    CHECKPOINT_PARAM_PREFIX, RUN_CHECKPOINT_FILE, RUN_MODEL_FILE, RUN_TOKENIZER_FILE,
};
use canon_models::source::{SafetensorsSource, WeightSource};
use canon_models::{BertConfig, VarStore};
use canon_nn::ops::argmax_rows;
use canon_nn::{SplitMix64, masked_cross_entropy};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::bert_data::{MlmBatch, PairConfig, SentenceData, Specials, collate, draw_example};
use crate::engine::{BatchLoss, Objective};
use crate::objectives::mlm::MlmConfig;
use crate::optim::Param;
use crate::{Result, TrainError, io_err};

/// `model.json` of a BERT-family run folder (`bert` pre-training or a `distilbert` student).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertRunModel {
    pub family: String,
    pub config: BertConfig,
    /// Whether the model has the pooler and NSP head.
    pub nsp: bool,
}

/// A pretrained BERT: its config, weights (HF names), tokenizer, and where it came from.
pub struct Pretrained {
    pub config: BertConfig,
    pub weights: Box<dyn WeightSource>,
    pub tokenizer: Tokenizer,
    /// Whether the weights hold the MLM head (`cls.predictions.*`); MiniLM's do not.
    pub has_mlm_head: bool,
    pub nsp: bool,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config {
        file: path.display().to_string(),
        message: e.to_string(),
    })
}

fn read_tokenizer(path: &Path) -> Result<Tokenizer> {
    let mut t = Tokenizer::from_file(path).map_err(|e| io_err(path, e))?;
    // Examples are assembled here: no truncation or padding by the tokenizer.
    t.with_truncation(None)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    t.with_padding(None);
    Ok(t)
}

/// Opens a BERT run folder of `canon train` (`model.json`, `checkpoint.safetensors`,
/// `tokenizer.json`) or an HF BERT folder (`config.json`, `model.safetensors`, `tokenizer.json`,
/// e.g. MiniLM's).
pub fn open_pretrained(dir: &Path) -> Result<Pretrained> {
    if canon_models::family::is_run_dir(dir) {
        let mpath = dir.join(RUN_MODEL_FILE);
        let m: BertRunModel =
            serde_json::from_value(read_json(&mpath)?).map_err(|e| TrainError::Config {
                file: mpath.display().to_string(),
                message: format!("not a BERT-family run: {e}"),
            })?;
        let store = VarStore::from_safetensors(
            &dir.join(RUN_CHECKPOINT_FILE),
            CHECKPOINT_PARAM_PREFIX,
            bert_init_policy(0.02),
        )?;
        let has_mlm_head = store.get("cls.predictions.bias").is_some();
        return Ok(Pretrained {
            config: m.config,
            weights: Box::new(store),
            tokenizer: read_tokenizer(&dir.join(RUN_TOKENIZER_FILE))?,
            has_mlm_head,
            nsp: m.nsp,
        });
    }
    let cpath = dir.join("config.json");
    if !cpath.is_file() {
        return Err(io_err(
            dir,
            "neither a BERT run folder (model.json, checkpoint.safetensors) nor an HF BERT folder (config.json)",
        ));
    }
    let v = read_json(&cpath)?;
    let file = cpath.display().to_string();
    let cfg_err = |m: String| TrainError::Config {
        file: file.clone(),
        message: m,
    };
    if v["model_type"].as_str() != Some("bert") {
        return Err(cfg_err(format!(
            "model_type is {}, expected \"bert\"",
            v["model_type"]
        )));
    }
    let num = |k: &str, default: Option<u64>| -> Result<usize> {
        v[k].as_u64()
            .or(default)
            .map(|x| x as usize)
            .ok_or_else(|| cfg_err(format!("missing integer '{k}'")))
    };
    let act = v["hidden_act"].as_str().unwrap_or("gelu");
    let config = BertConfig {
        vocab_size: num("vocab_size", None)?,
        hidden_size: num("hidden_size", None)?,
        num_hidden_layers: num("num_hidden_layers", None)?,
        num_attention_heads: num("num_attention_heads", None)?,
        intermediate_size: num("intermediate_size", None)?,
        hidden_act: BertConfig::activation_from_hf(act)
            .ok_or_else(|| cfg_err(format!("unsupported hidden_act '{act}'")))?,
        layer_norm_eps: v["layer_norm_eps"].as_f64().unwrap_or(1e-12),
        max_position_embeddings: num("max_position_embeddings", Some(512))?,
        type_vocab_size: num("type_vocab_size", Some(2))?,
    };
    config.validate().map_err(cfg_err)?;
    let mut src = SafetensorsSource::open_dir(dir)?;
    src.detect_prefix("embeddings.word_embeddings.weight", &["bert.", "model."]);
    let has_mlm_head = src.has("cls.predictions.transform.dense.weight");
    let nsp = src.has("cls.seq_relationship.weight");
    Ok(Pretrained {
        config,
        weights: Box::new(src),
        tokenizer: read_tokenizer(&dir.join("tokenizer.json"))?,
        has_mlm_head,
        nsp,
    })
}

/// The parameters of a variable store, for the optimizer.
pub fn params_of(store: &canon_models::VarStore) -> Vec<Param> {
    crate::engine::Engine::params_of(store)
}

/// The tensors of a batch: ids, types, mask `[b, t]`.
pub fn batch_tensors(b: &MlmBatch) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = &Device::Cpu;
    Ok((
        Tensor::from_vec(b.input.clone(), (b.b, b.t), dev)?,
        Tensor::from_vec(b.types.clone(), (b.b, b.t), dev)?,
        Tensor::from_vec(b.mask.clone(), (b.b, b.t), dev)?,
    ))
}

/// The losses of one batch and the counts evaluation needs.
#[derive(Debug, Clone)]
pub struct PretrainLosses {
    /// `L_MLM + L_NSP` (graph kept).
    pub total: Tensor,
    pub mlm: f64,
    pub nsp: Option<f64>,
    pub mlm_predicted: usize,
    pub mlm_correct: usize,
    pub nsp_correct: usize,
}

/// `L_MLM + L_NSP` of `model` on `batch`.
pub fn pretrain_losses(model: &BertPretraining, batch: &MlmBatch) -> Result<PretrainLosses> {
    let (ids, types, mask) = batch_tensors(batch)?;
    let out = model.forward(&ids, Some(&types), &mask, &batch.rows)?;
    let (mlm, k) = masked_cross_entropy(&out.mlm_logits, &batch.labels, 0.0)?;
    let mlm_correct = if k == 0 {
        0
    } else {
        argmax_rows(&out.mlm_logits)?
            .iter()
            .zip(&batch.labels)
            .filter(|(p, l)| **p as i64 == **l)
            .count()
    };
    let (total, nsp, nsp_correct) = match &out.nsp_logits {
        Some(z) => {
            let labels: Vec<i64> = batch.nsp.iter().map(|&x| x as i64).collect();
            let (l, _) = masked_cross_entropy(z, &labels, 0.0)?;
            let correct = argmax_rows(z)?
                .iter()
                .zip(&batch.nsp)
                .filter(|(p, l)| p == l)
                .count();
            let v = l.to_scalar::<f32>()? as f64;
            ((&mlm + l)?, Some(v), correct)
        }
        None => (mlm.clone(), None, 0),
    };
    Ok(PretrainLosses {
        mlm: mlm.to_scalar::<f32>()? as f64,
        total,
        nsp,
        mlm_predicted: k,
        mlm_correct,
        nsp_correct,
    })
}

/// What one training micro-batch reports (the engine's `BatchLoss` fields).
#[derive(Debug, Clone)]
pub struct MicroBatch {
    pub total: Tensor,
    pub loss: f64,
    pub tokens: usize,
    pub extra: Vec<(String, f64)>,
}

/// The BERT pre-training objective over a model built on trainable variables.
pub struct BertPretrain {
    pub model: BertPretraining,
    pub data: SentenceData,
    pub specials: Specials,
    pub vocab: usize,
    pub pairs: PairConfig,
    pub mlm: MlmConfig,
    pub batch_size: usize,
    eval: Vec<MlmBatch>,
}

impl BertPretrain {
    /// `eval_batches` held-out batches of `batch_size` are drawn once from `eval_seed`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: BertPretraining,
        data: SentenceData,
        specials: Specials,
        pairs: PairConfig,
        mlm: MlmConfig,
        batch_size: usize,
        eval_batches: usize,
        eval_seed: u64,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(TrainError::Data("train.batch_size must be positive".into()));
        }
        if pairs.pairs != model.nsp.is_some() {
            return Err(TrainError::Data(
                "sentence pairs go with an NSP head, single segments without one".into(),
            ));
        }
        let vocab = model.bert.config.vocab_size;
        let mut rng = SplitMix64::new(eval_seed);
        let mut eval = Vec::with_capacity(eval_batches);
        for _ in 0..eval_batches.max(1) {
            let ex = (0..batch_size)
                .map(|_| draw_example(&data.val, &specials, &pairs, &mut rng))
                .collect::<Result<Vec<_>>>()?;
            eval.push(collate(&ex, &specials, vocab, &mlm, &mut rng));
        }
        Ok(Self {
            model,
            data,
            specials,
            vocab,
            pairs,
            mlm,
            batch_size,
            eval,
        })
    }

    /// A fresh training batch drawn from `rng`.
    pub fn draw_batch(&self, rng: &mut SplitMix64) -> Result<MlmBatch> {
        let ex = (0..self.batch_size)
            .map(|_| draw_example(&self.data.train, &self.specials, &self.pairs, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(collate(&ex, &self.specials, self.vocab, &self.mlm, rng))
    }

    /// Training micro-batch: loss = `L_MLM + L_NSP`, extras `mlm_loss`, `nsp_loss`.
    pub fn micro_batch(&mut self, rng: &mut SplitMix64) -> Result<MicroBatch> {
        let batch = self.draw_batch(rng)?;
        let l = pretrain_losses(&self.model, &batch)?;
        let mut extra = vec![("mlm_loss".to_string(), l.mlm)];
        if let Some(n) = l.nsp {
            extra.push(("nsp_loss".into(), n));
        }
        Ok(MicroBatch {
            loss: l.mlm + l.nsp.unwrap_or(0.0),
            total: l.total,
            tokens: batch.tokens,
            extra,
        })
    }

    /// Held-out metrics: `eval_loss` (MLM + NSP), `eval_mlm_loss`, `eval_mlm_accuracy`,
    /// `eval_nsp_loss`, `eval_nsp_accuracy` (the MLM terms weighted by predicted positions).
    pub fn eval_metrics(&self) -> Result<Vec<(String, f64)>> {
        let (mut mlm_sum, mut k, mut correct) = (0.0, 0usize, 0usize);
        let (mut nsp_sum, mut nsp_correct, mut n) = (0.0, 0usize, 0usize);
        for b in &self.eval {
            let l = pretrain_losses(&self.model, b)?;
            mlm_sum += l.mlm * l.mlm_predicted as f64;
            k += l.mlm_predicted;
            correct += l.mlm_correct;
            if let Some(x) = l.nsp {
                nsp_sum += x * b.b as f64;
                nsp_correct += l.nsp_correct;
                n += b.b;
            }
        }
        let mlm = mlm_sum / k.max(1) as f64;
        let mut out = Vec::new();
        if n > 0 {
            let nsp = nsp_sum / n as f64;
            out.push(("eval_loss".to_string(), mlm + nsp));
            out.push(("eval_mlm_loss".into(), mlm));
            out.push(("eval_mlm_accuracy".into(), correct as f64 / k.max(1) as f64));
            out.push(("eval_nsp_loss".into(), nsp));
            out.push(("eval_nsp_accuracy".into(), nsp_correct as f64 / n as f64));
        } else {
            out.push(("eval_loss".to_string(), mlm));
            out.push(("eval_mlm_accuracy".into(), correct as f64 / k.max(1) as f64));
        }
        Ok(out)
    }
}

impl Objective for BertPretrain {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        let m = self.micro_batch(rng)?;
        Ok(BatchLoss {
            total: m.total,
            loss: m.loss,
            tokens: m.tokens,
            extra: m.extra,
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        self.eval_metrics()
    }
}

#[cfg(test)]
#[path = "bert_pretrain_tests.rs"]
pub(crate) mod tests;
