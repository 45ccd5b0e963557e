//! Fine-tuning BERT for sequence classification (Devlin et al., 2019, paper 3, §4 and appendix
//! A.3): the pretrained encoder and pooler, a fresh `W_c` on the pooled `[CLS]` state, every weight
//! trained with the cross-entropy of the class, AdamW, linear warmup then linear decay. Inputs are
//! `[CLS] text [SEP]` (truncated to `max_len`), padded per batch; batches are class-balanced.
//!
//! The pretrained model is a `canon train` BERT run or an HF BERT folder (MiniLM): tensors it lacks
//! (MiniLM's pooler is there; the classifier never is) keep their fresh initialisation.

use candle_core::{Device, Tensor};
use canon_models::VarStore;
use canon_models::bert_heads::{BertClassifier, bert_init_policy, copy_into};
use canon_nn::ops::{argmax_rows, pad_batch};
use canon_nn::{SplitMix64, masked_cross_entropy};
use serde::Serialize;

use crate::bert_data::Specials;
use std::sync::atomic::AtomicBool;

use crate::bert_pretrain::{Pretrained, params_of};
use crate::engine::BatchLoss;
use crate::finetune::{
    TaskData, TaskExample, TaskModel, TaskRun, TaskSchedule, TaskState, run_task, task_accuracy,
};
use crate::optim::{Optimizer, OptimizerConfig, Param};
use crate::trainer::{Outcome, StepReport};
use crate::{Result, TrainError};

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
        let sp = &self.specials;
        let rows: Vec<Vec<u32>> = batch
            .iter()
            .map(|e| {
                let n = e.parts[0].len().min(keep);
                let mut r = Vec::with_capacity(n + 2);
                r.push(sp.cls);
                r.extend_from_slice(&e.parts[0][..n]);
                r.push(sp.sep);
                r
            })
            .collect();
        let p = pad_batch(&rows, sp.pad, 2);
        let dev = &Device::Cpu;
        Ok((p.ids_tensor(dev)?, p.mask_tensor(1f32, 0f32, dev)?))
    }

    /// The engine's view of the hyper-parameters.
    pub fn schedule(&self) -> TaskSchedule {
        let c = &self.cfg;
        TaskSchedule {
            lr: c.lr,
            steps: c.steps,
            warmup: c.warmup,
            batch_size: c.batch_size,
            weight_decay: c.weight_decay,
            grad_clip: c.grad_clip,
            seed: c.seed,
            eval_every: c.eval_every,
            eval_max: c.eval_max,
        }
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
        task_accuracy(self, examples)
    }

    /// Restores weights, optimizer state, step and data order from a checkpoint a run wrote.
    pub fn resume(&mut self, checkpoint: &std::path::Path) -> Result<()> {
        let (st, _) = crate::checkpoint::load(checkpoint, &self.params, &mut self.opt)?;
        self.step = st.step;
        self.rng = SplitMix64 {
            state: st.rng_state,
        };
        Ok(())
    }

    /// Trains to `cfg.steps` class-balanced steps on the engine; held-out accuracy on a fixed
    /// subset of `test` every `eval_every` steps and on all of `test` at the end. With
    /// `run.files` the engine writes metrics.jsonl, loss.png and the checkpoint (exact resume,
    /// Ctrl-C). Returns the outcome and the final accuracy.
    pub fn run_on_engine(
        &mut self,
        train: &[TaskExample],
        test: &[TaskExample],
        run: TaskRun<'_>,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<(Outcome, Option<f64>)> {
        if train.is_empty() || test.is_empty() {
            return Err(TrainError::Data(
                "the training and held-out splits must not be empty".into(),
            ));
        }
        let sched = self.schedule();
        let data = TaskData {
            train,
            test,
            labels: self.classes,
        };
        let mut opt = std::mem::replace(&mut self.opt, Optimizer::new(sched.optimizer(), &[]));
        let (mut step, mut rng) = (self.step, self.rng);
        let state = TaskState {
            params: &self.params,
            opt: &mut opt,
            step: &mut step,
            rng: &mut rng,
        };
        let out = run_task(&*self, state, data, &sched, run, on_step);
        (self.opt, self.step, self.rng) = (opt, step, rng);
        out
    }

    /// [`BertFinetuner::run_on_engine`] writing nothing; returns the final held-out accuracy.
    pub fn run(
        &mut self,
        train: &[TaskExample],
        test: &[TaskExample],
        on_step: &mut dyn FnMut(&BertFinetuneReport) -> Result<()>,
    ) -> Result<f64> {
        let stop = AtomicBool::new(false);
        let run = TaskRun {
            files: None,
            stop: &stop,
            block_size: self.cfg.max_len,
        };
        let mut failed = None;
        let (_, acc) = self.run_on_engine(train, test, run, &mut |r| {
            if failed.is_none() {
                failed = on_step(&BertFinetuneReport::of(r)).err();
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        match acc {
            Some(a) => Ok(a),
            None => self.accuracy(test),
        }
    }
}

impl BertFinetuneReport {
    /// The fine-tuning view of an engine step.
    pub fn of(r: &StepReport) -> Self {
        Self {
            step: r.step,
            loss: r.loss,
            lr: r.lr,
            grad_norm: r.grad_norm,
            eval_accuracy: r
                .eval
                .iter()
                .find(|(k, _)| k == "eval_accuracy")
                .map(|e| e.1),
        }
    }
}

impl TaskModel for BertFinetuner {
    /// Cross-entropy of the class from the pooled `[CLS]` state.
    fn batch_loss(&self, batch: &[&TaskExample]) -> Result<BatchLoss> {
        let (ids, mask) = self.inputs(batch)?;
        let logits = self.model.forward(&ids, &mask)?;
        let labels: Vec<i64> = batch.iter().map(|e| e.label as i64).collect();
        let (total, _) = masked_cross_entropy(&logits, &labels, 0.0)?;
        Ok(BatchLoss {
            loss: total.to_scalar::<f32>()? as f64,
            total,
            tokens: mask.sum_all()?.to_scalar::<f32>()? as usize,
            extra: Vec::new(),
        })
    }

    fn predict(&self, examples: &[TaskExample]) -> Result<Vec<u32>> {
        BertFinetuner::predict(self, examples)
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
