//! BERT pre-training (Devlin et al., 2019, paper 3, §3.1): the masked LM plus next-sentence
//! prediction, `L = L_MLM + L_NSP`, each the mean cross-entropy over its predictions (the masked
//! positions of the batch; one IsNext/NotNext decision per sequence).
//!
//! Each training micro-batch draws `batch_size` fresh sentence pairs and masks them (15 % of the
//! non-special positions; 80 % [MASK], 10 % random, 10 % kept) from the engine's generator, so a
//! resumed run sees the same stream. Evaluation uses fixed held-out batches drawn once from the
//! held-out documents with a fixed seed (the same pairs and masks every time): it reports the
//! total loss, the MLM loss and accuracy over masked positions and the NSP accuracy.

use candle_core::{Device, Tensor};
use canon_models::bert_heads::{BertPretraining, argmax_rows};
use canon_nn::{SplitMix64, masked_cross_entropy};

use crate::bert_data::{MlmBatch, PairConfig, SentenceData, Specials, collate, draw_example};
use crate::objectives::mlm::MlmConfig;
use crate::optim::{Optimizer, Param, clip_global_norm};
use crate::{Result, TrainError};

/// Backward of `total`, clipping to `clip`, and one update of `params` at `lr` (used outside the
/// engine: fine-tuning and tests). Returns the gradient norm before clipping.
pub fn optimizer_step(
    total: &Tensor,
    params: &[Param],
    opt: &mut Optimizer,
    lr: f64,
    clip: Option<f64>,
) -> Result<f64> {
    let gs = total.backward()?;
    let mut grads = Vec::with_capacity(params.len());
    for p in params {
        grads.push(match gs.get(p.var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0f32; p.var.elem_count()],
        });
    }
    let norm = clip_global_norm(&mut grads, clip);
    opt.step(params, &grads, lr)?;
    Ok(norm)
}

/// The parameters of a variable store, for the optimizer.
pub fn params_of(store: &canon_models::VarStore) -> Vec<Param> {
    store
        .vars()
        .into_iter()
        .map(|(name, var, decay)| Param { name, var, decay })
        .collect()
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

#[cfg(test)]
#[path = "bert_pretrain_tests.rs"]
pub(crate) mod tests;
