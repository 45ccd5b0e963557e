//! Fine-tuning BERT for sequence classification (Devlin et al., 2019, paper 3, §4 and appendix
//! A.3): the pretrained encoder and pooler, a fresh `W_c` on the pooled `[CLS]` state, every weight
//! trained with the cross-entropy of the class, AdamW, linear warmup then linear decay. Inputs are
//! `[CLS] text [SEP]` (truncated to `max_len`), padded per batch; batches are class-balanced.
//!
//! The pretrained model is a `canon train` BERT run or an HF BERT folder (MiniLM): tensors it lacks
//! (MiniLM's pooler is there; the classifier never is) keep their fresh initialisation.

use candle_core::{Device, Tensor};
use canon_models::VarStore;
use canon_models::bert_heads::{BertClassifier, argmax_rows, bert_init_policy, copy_into};
use canon_nn::{SplitMix64, masked_cross_entropy};
use serde::Serialize;

use crate::bert_data::Specials;
use crate::bert_pretrain::{Pretrained, optimizer_step, params_of};
use crate::finetune::{ClassBalanced, TaskExample, eval_subset};
use crate::optim::{Optimizer, OptimizerConfig, Param};
use crate::{Result, Schedule, TrainError};

#[derive(Debug, Clone, PartialEq)]
pub struct BertFinetuneConfig {
    pub lr: f64,
    pub steps: u64,
    pub warmup: u64,
    pub batch_size: usize,
    /// Longest input, [CLS] and [SEP] included.
    pub max_len: usize,
    pub weight_decay: f64,
    pub grad_clip: Option<f64>,
    pub seed: u64,
    pub eval_every: u64,
    pub eval_max: usize,
}

impl Default for BertFinetuneConfig {
    fn default() -> Self {
        Self {
            lr: 5e-5,
            steps: 200,
            warmup: 20,
            batch_size: 16,
            max_len: 128,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            seed: 1,
            eval_every: 50,
            eval_max: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BertFinetuneReport {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
}

pub struct BertFinetuner {
    pub model: BertClassifier,
    pub params: Vec<Param>,
    pub opt: Optimizer,
    pub specials: Specials,
    pub classes: usize,
    pub cfg: BertFinetuneConfig,
    pub step: u64,
    /// Names of tensors the pretrained model supplied.
    pub copied: Vec<String>,
    rng: SplitMix64,
}

impl BertFinetuner {
    /// A classifier over `pretrained` (or a fresh encoder of its config when `pretrained.weights`
    /// is not to be used: pass `from_scratch = true` for the no-pretraining baseline).
    pub fn new(
        pretrained: &Pretrained,
        classes: usize,
        cfg: BertFinetuneConfig,
        from_scratch: bool,
    ) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.steps == 0 || cfg.max_len < 3 {
            return Err(TrainError::Data(
                "batch size and steps must be positive and max_len at least 3".into(),
            ));
        }
        if cfg.max_len > pretrained.config.max_position_embeddings {
            return Err(TrainError::Data(format!(
                "max_len {} exceeds the model's {} positions",
                cfg.max_len, pretrained.config.max_position_embeddings
            )));
        }
        let store = VarStore::new_random(cfg.seed, bert_init_policy(0.02));
        let model = BertClassifier::load(pretrained.config.clone(), &store, classes)?;
        let copied = if from_scratch {
            Vec::new()
        } else {
            copy_into(&store, &*pretrained.weights)?.0
        };
        let params = params_of(&store);
        let opt = Optimizer::new(
            OptimizerConfig::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: cfg.weight_decay,
            },
            &params,
        );
        Ok(Self {
            model,
            params,
            opt,
            specials: Specials::of(&pretrained.tokenizer)?,
            classes,
            rng: SplitMix64::new(cfg.seed ^ 0xB3E7_F1E7),
            cfg,
            step: 0,
            copied,
        })
    }

    /// `[CLS] text [SEP]` rows, padded: ids and mask `[b, t]`.
    fn inputs(&self, batch: &[&TaskExample]) -> Result<(Tensor, Tensor)> {
        let keep = self.cfg.max_len - 2;
        let t = batch
            .iter()
            .map(|e| e.parts[0].len().min(keep) + 2)
            .max()
            .unwrap_or(2);
        let b = batch.len();
        let mut ids = vec![self.specials.pad; b * t];
        let mut mask = vec![0f32; b * t];
        for (i, e) in batch.iter().enumerate() {
            let n = e.parts[0].len().min(keep);
            ids[i * t] = self.specials.cls;
            ids[i * t + 1..i * t + 1 + n].copy_from_slice(&e.parts[0][..n]);
            ids[i * t + 1 + n] = self.specials.sep;
            mask[i * t..i * t + n + 2].iter_mut().for_each(|m| *m = 1.0);
        }
        let dev = &Device::Cpu;
        Ok((
            Tensor::from_vec(ids, (b, t), dev)?,
            Tensor::from_vec(mask, (b, t), dev)?,
        ))
    }

    pub fn train_step(&mut self, batch: &[&TaskExample]) -> Result<BertFinetuneReport> {
        let (ids, mask) = self.inputs(batch)?;
        let logits = self.model.forward(&ids, &mask)?;
        let labels: Vec<i64> = batch.iter().map(|e| e.label as i64).collect();
        let (loss, _) = masked_cross_entropy(&logits, &labels, 0.0)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step + 1,
                loss: l,
            });
        }
        let lr = Schedule::Linear {
            warmup: self.cfg.warmup,
        }
        .lr(self.step, self.cfg.steps, self.cfg.lr);
        let grad_norm = optimizer_step(&loss, &self.params, &mut self.opt, lr, self.cfg.grad_clip)?;
        self.step += 1;
        Ok(BertFinetuneReport {
            step: self.step,
            loss: l,
            lr,
            grad_norm,
            eval_accuracy: None,
        })
    }

    pub fn predict(&self, examples: &[TaskExample]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(32) {
            let refs: Vec<&TaskExample> = chunk.iter().collect();
            let (ids, mask) = self.inputs(&refs)?;
            out.extend(argmax_rows(&self.model.forward(&ids, &mask)?.detach())?);
        }
        Ok(out)
    }

    pub fn accuracy(&self, examples: &[TaskExample]) -> Result<f64> {
        if examples.is_empty() {
            return Err(TrainError::Data("no examples to evaluate".into()));
        }
        let p = self.predict(examples)?;
        let right = p
            .iter()
            .zip(examples)
            .filter(|(p, e)| **p == e.label)
            .count();
        Ok(right as f64 / examples.len() as f64)
    }

    /// `cfg.steps` class-balanced steps on `train`; held-out accuracy on a fixed subset of `test`
    /// every `eval_every` steps and on all of `test` at the end (returned).
    pub fn run(
        &mut self,
        train: &[TaskExample],
        test: &[TaskExample],
        on_step: &mut dyn FnMut(&BertFinetuneReport) -> Result<()>,
    ) -> Result<f64> {
        if train.is_empty() || test.is_empty() {
            return Err(TrainError::Data(
                "the training and held-out splits must not be empty".into(),
            ));
        }
        let pools = ClassBalanced::new(train, self.classes)?;
        let subset = eval_subset(test, self.cfg.eval_max);
        let mut last = None;
        while self.step < self.cfg.steps {
            let batch = pools.batch(&mut self.rng, self.cfg.batch_size);
            let mut r = self.train_step(&batch)?;
            if r.step == self.cfg.steps {
                let a = self.accuracy(test)?;
                last = Some(a);
                r.eval_accuracy = Some(a);
            } else if self.cfg.eval_every > 0 && r.step % self.cfg.eval_every == 0 {
                r.eval_accuracy = Some(self.accuracy(&subset)?);
            }
            on_step(&r)?;
        }
        match last {
            Some(a) => Ok(a),
            None => self.accuracy(test),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert_data::train_wordpiece;

    #[test]
    fn a_classifier_learns_a_token_presence_task_from_scratch() {
        // Class 1 iff the word "bright" occurs: learnable from the pooled [CLS] state.
        let words = [
            "alpha", "beta", "gamma", "delta", "omega", "sigma", "bright",
        ];
        let docs: Vec<String> = (0..50).map(|i| words[i % 7].repeat(1 + i % 3)).collect();
        let tok = train_wordpiece(&[docs.join(" ")], 100).unwrap();
        let mut rng = SplitMix64::new(3);
        let mut make = |n: usize| -> Vec<TaskExample> {
            (0..n)
                .map(|i| {
                    let label = (i % 2) as u32;
                    let mut w: Vec<&str> = (0..6).map(|_| words[rng.below(6)]).collect();
                    if label == 1 {
                        let at = rng.below(6);
                        w[at] = "bright";
                    }
                    let enc = tok.encode(w.join(" "), false).unwrap();
                    TaskExample {
                        parts: vec![enc.get_ids().to_vec()],
                        label,
                    }
                })
                .collect()
        };
        let (train, test) = (make(200), make(60));
        let p = Pretrained {
            config: crate::bert_pretrain::tests::tiny_cfg(tok.get_vocab_size(true)),
            weights: Box::new(VarStore::new_random(1, bert_init_policy(0.02))),
            tokenizer: tok,
            has_mlm_head: false,
            nsp: false,
        };
        let cfg = BertFinetuneConfig {
            lr: 3e-3,
            steps: 60,
            warmup: 5,
            max_len: 16,
            eval_every: 0,
            ..Default::default()
        };
        let mut ft = BertFinetuner::new(&p, 2, cfg, true).unwrap();
        let mut losses = Vec::new();
        let acc = ft
            .run(&train, &test, &mut |r| {
                losses.push(r.loss);
                Ok(())
            })
            .unwrap();
        assert!(acc > 0.9, "held-out accuracy {acc}");
        assert!(losses[55..].iter().sum::<f64>() < losses[..5].iter().sum::<f64>());
        let bad = vec![TaskExample {
            parts: vec![vec![7]],
            label: 5,
        }];
        assert!(ft.run(&bad, &test, &mut |_| Ok(())).is_err());
    }
}
