//! GPT-1 supervised fine-tuning (Radford et al., 2018, §3.2–3.3) of a pretrained run on a text
//! classification, similarity or multiple-choice task, and the tasks this repository builds from the
//! Python standard library: which module group a source snippet comes from (classification);
//! whether two snippets come from the same group (similarity, both input orders summed); which of
//! `k` candidate endings continues a snippet (multiple choice, the Story Cloze shape).
//!
//! The model is the pretrained GPT with its token table (and untied output head) grown by three rows
//! for the start, delimiter and extract tokens (new rows drawn from the init policy, pretrained rows
//! copied); the classifier `W_y` (+ bias) reads the final hidden state at the extract token. Each
//! step minimises `L3 = L2 + λ·L1` over a class-balanced batch of `[s] text [e]` inputs with AdamW
//! and the paper's linear warmup then linear decay; accuracy is measured on a held-out split.
//!
//! The dataset: every `.py` file under the directories of group A (label 0) and group B (label 1)
//! is cut at line boundaries into snippets of about `snippet_bytes`; files, not snippets, are split
//! into train and test (every fourth file of each group, in path order, is held out), so no test
//! snippet shares a file with a training snippet.

use std::path::{Path, PathBuf};

use candle_core::{D, Tensor};
use canon_models::gpt::{Gpt, GptConfig};
use canon_models::gpt_tasks::{Combine, TaskTokens, task_logits, task_loss};
use canon_models::source::WeightSource;
use canon_models::{ModelConfig, VarStore, WeightMode};
use canon_nn::{Linear, SplitMix64};
use serde::{Deserialize, Serialize};

use crate::engine::{BatchLoss, step_on_loss};
use crate::optim::{Optimizer, OptimizerConfig, Param};
use crate::trainer::StepReport;
use crate::{Result, TrainError, io_err};

mod batches;
mod objective;
mod persist;
mod run;
use run::check_split;
mod tasks;
pub use batches::{ClassBalanced, eval_subset};
pub use objective::*;
pub use persist::{FINETUNED_FILE, TASK_FILE};
pub use tasks::*;

/// Which task head and input transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskKind {
    /// `[s] text [e]` → `classes` logits.
    Classification { classes: usize },
    /// `[s] a [d] b [e]` and `[s] b [d] a [e]`, states added → `classes` logits.
    Similarity { classes: usize },
    /// `[s] context [d] answer_k [e]` per candidate → one score each; the label is the right index.
    MultipleChoice { choices: usize },
}

impl TaskKind {
    /// Outputs of `W_y`.
    pub fn head_outputs(&self) -> usize {
        match *self {
            TaskKind::Classification { classes } | TaskKind::Similarity { classes } => classes,
            TaskKind::MultipleChoice { .. } => 1,
        }
    }
    /// Distinct labels.
    pub fn labels(&self) -> usize {
        match *self {
            TaskKind::Classification { classes } | TaskKind::Similarity { classes } => classes,
            TaskKind::MultipleChoice { choices } => choices,
        }
    }
    /// Token segments per example (text; a and b; context and each answer).
    pub fn parts(&self) -> usize {
        match *self {
            TaskKind::Classification { .. } => 1,
            TaskKind::Similarity { .. } => 2,
            TaskKind::MultipleChoice { choices } => 1 + choices,
        }
    }
    fn combine(&self) -> Combine {
        match self {
            TaskKind::Classification { .. } => Combine::Single,
            TaskKind::Similarity { .. } => Combine::Sum,
            TaskKind::MultipleChoice { .. } => Combine::Choices,
        }
    }
}

/// One labelled example, already tokenized (without the task tokens): `parts` holds the text
/// (classification), the two texts (similarity) or the context then each candidate (multiple
/// choice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExample {
    pub parts: Vec<Vec<u32>>,
    pub label: u32,
}

impl TaskExample {
    /// A classification example.
    pub fn text(tokens: Vec<u32>, label: u32) -> Self {
        Self {
            parts: vec![tokens],
            label,
        }
    }
}

/// A labelled snippet of text and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    pub text: String,
    pub label: u32,
    pub file: PathBuf,
}

/// Fine-tuning hyper-parameters (paper defaults where they apply: λ = 0.5, linear schedule with
/// warmup, AdamW).
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneConfig {
    pub lambda: f64,
    pub lr: f64,
    pub steps: u64,
    pub warmup: u64,
    pub batch_size: usize,
    pub grad_clip: Option<f64>,
    pub weight_decay: f64,
    pub seed: u64,
    /// Evaluate held-out accuracy every this many steps (and at the end); 0 = only at the end.
    pub eval_every: u64,
    /// At most this many held-out examples in the periodic evaluations (the final one uses all).
    pub eval_max: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            lambda: 0.5,
            lr: 6.25e-5,
            steps: 100,
            warmup: 10,
            batch_size: 8,
            grad_clip: Some(1.0),
            weight_decay: 0.01,
            seed: 1,
            eval_every: 25,
            eval_max: 200,
        }
    }
}

/// What one fine-tuning step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinetuneReport {
    pub step: u64,
    /// `L3 = L2 + λ·L1`.
    pub loss: f64,
    pub clf_loss: f64,
    pub lm_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
}

pub struct Finetuner {
    pub model: Gpt,
    pub head: Linear,
    pub params: Vec<Param>,
    pub opt: Optimizer,
    pub tokens: TaskTokens,
    pub pad: u32,
    /// The pretrained model's config (its vocabulary without the task tokens).
    pub base: GptConfig,
    pub kind: TaskKind,
    pub cfg: FinetuneConfig,
    pub step: u64,
    rng: SplitMix64,
}

fn cfg_err(m: impl Into<String>) -> TrainError {
    TrainError::Config {
        file: "fine-tuning".into(),
        message: m.into(),
    }
}

impl Finetuner {
    /// A GPT of `base` (whose `vocab_size` is the pretraining vocabulary) with three task tokens
    /// added, and a `classes`-way head; every parameter freshly initialised from `cfg.seed`.
    pub fn new_random(base: &GptConfig, kind: TaskKind, cfg: FinetuneConfig) -> Result<Self> {
        Self::build(base, kind, cfg, None)
    }

    /// Loads a pretrained GPT run folder (`model.json`, `checkpoint.safetensors` from `canon train`).
    pub fn from_run(dir: &Path, kind: TaskKind, cfg: FinetuneConfig) -> Result<Self> {
        let ck = dir.join(canon_models::family::RUN_CHECKPOINT_FILE);
        if !canon_models::family::is_run_dir(dir) {
            return Err(io_err(
                dir,
                "not a pretrained run folder (needs model.json and checkpoint.safetensors from \
                 `canon train --config configs/gpt1.toml`)",
            ));
        }
        let base = match canon_models::family::read_run_model_config(dir)? {
            ModelConfig::Gpt(c) => c,
            _ => {
                return Err(cfg_err(format!(
                    "{} is not a GPT run; GPT-1 fine-tuning needs one",
                    dir.display()
                )));
            }
        };
        Self::build(&base, kind, cfg, Some(&ck))
    }

    fn build(
        base: &GptConfig,
        kind: TaskKind,
        cfg: FinetuneConfig,
        pretrained: Option<&Path>,
    ) -> Result<Self> {
        if kind.labels() < 2 {
            return Err(cfg_err(format!(
                "a task needs at least 2 classes or candidates, found {}",
                kind.labels()
            )));
        }
        if base.max_seq_len < 5 {
            return Err(cfg_err(format!(
                "the model's context of {} tokens cannot hold a task input",
                base.max_seq_len
            )));
        }
        if cfg.batch_size == 0 || cfg.steps == 0 {
            return Err(cfg_err("batch size and steps must be positive"));
        }
        if base.vocab_size == 0 || base.max_seq_len < 3 {
            return Err(cfg_err(
                "the pretrained config has no vocabulary or context",
            ));
        }
        let vocab = base.vocab_size;
        let mut c = base.clone();
        c.vocab_size = vocab + 3;
        let store = VarStore::new_random(cfg.seed, c.init_policy());
        let model = Gpt::load(c.clone(), &store)?;
        if let Some(ck) = pretrained {
            let pre = VarStore::from_safetensors(
                ck,
                canon_models::family::CHECKPOINT_PARAM_PREFIX,
                base.init_policy(),
            )?;
            for (name, var, _) in store.vars() {
                let src = pre.get(&name).ok_or_else(|| {
                    cfg_err(format!(
                        "{}: missing pretrained tensor '{name}'",
                        ck.display()
                    ))
                })?;
                let (want, have) = (var.dims().to_vec(), src.dims().to_vec());
                let t = if want == have {
                    src.as_tensor().clone()
                } else if have.first() == Some(&vocab)
                    && want.first() == Some(&(vocab + 3))
                    && want[1..] == have[1..]
                {
                    // The token table (or output head) grows: pretrained rows, then the new ones.
                    Tensor::cat(&[src.as_tensor(), &var.as_tensor().narrow(0, vocab, 3)?], 0)?
                } else {
                    return Err(cfg_err(format!(
                        "{}: tensor '{name}' is {have:?}, the model needs {want:?}",
                        ck.display()
                    )));
                };
                var.set(&t)?;
            }
        }
        let (d, outs) = (c.d_model, kind.head_outputs());
        let w = store.weight("clf.weight", &[outs, d], WeightMode::DequantizeF32)?;
        let b = store.tensor("clf.bias", &[outs])?;
        let head = Linear::new(w, Some(b));
        let params: Vec<Param> = store
            .vars()
            .into_iter()
            .map(|(name, var, decay)| Param { name, var, decay })
            .collect();
        let opt = Optimizer::new(
            OptimizerConfig::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: cfg.weight_decay,
            },
            &params,
        );
        let rng = SplitMix64::new(cfg.seed ^ 0xF1E7_0D3D_5EED_0002);
        Ok(Self {
            model,
            head,
            params,
            opt,
            tokens: TaskTokens::after_vocab(vocab as u32),
            pad: 0,
            base: base.clone(),
            kind,
            cfg,
            step: 0,
            rng,
        })
    }

    /// The task's input transformation: per example, its token sequences. A text keeps
    /// `max_seq_len − 2` tokens; each segment of a pair keeps `(max_seq_len − 3) / 2`.
    fn inputs(&self, batch: &[&TaskExample]) -> Vec<Vec<Vec<u32>>> {
        let n_ctx = self.base.max_seq_len;
        let (one, two) = (n_ctx - 2, (n_ctx - 3) / 2);
        let t = &self.tokens;
        batch
            .iter()
            .map(|e| match self.kind {
                TaskKind::Classification { .. } => vec![t.classification(&e.parts[0], one)],
                TaskKind::Similarity { .. } => vec![
                    t.pair(&e.parts[0], &e.parts[1], two),
                    t.pair(&e.parts[1], &e.parts[0], two),
                ],
                TaskKind::MultipleChoice { .. } => e.parts[1..]
                    .iter()
                    .map(|a| t.pair(&e.parts[0], a, two))
                    .collect(),
            })
            .collect()
    }

    /// One optimizer step on `batch` (outside a run: tests and probes).
    pub fn train_step(&mut self, batch: &[&TaskExample]) -> Result<FinetuneReport> {
        let l = self.batch_loss(batch)?;
        if !l.loss.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step + 1,
                loss: l.loss,
            });
        }
        let lr = self
            .schedule()
            .train_config(self.base.max_seq_len)
            .schedule
            .lr(self.step, self.cfg.steps, self.cfg.lr);
        let grad_norm = step_on_loss(
            &l.total,
            &self.params,
            &mut self.opt,
            lr,
            self.cfg.grad_clip,
        )?;
        self.step += 1;
        let term = |k: &str| {
            l.extra
                .iter()
                .find(|(n, _)| n == k)
                .map_or(f64::NAN, |e| e.1)
        };
        Ok(FinetuneReport {
            step: self.step,
            loss: l.loss,
            clf_loss: term("clf_loss"),
            lm_loss: term("lm_loss"),
            lr,
            grad_norm,
            eval_accuracy: None,
        })
    }

    /// The engine's view of this fine-tuner's hyper-parameters.
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

    /// Predicted class of each example.
    pub fn predict(&self, examples: &[TaskExample]) -> Result<Vec<u32>> {
        check_split("prediction", examples, self.kind)?;
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(16) {
            let refs: Vec<&TaskExample> = chunk.iter().collect();
            let (logits, _) = task_logits(
                &self.model,
                &self.head,
                &self.inputs(&refs),
                self.kind.combine(),
                self.pad,
            )?;
            out.extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        }
        Ok(out)
    }

    /// Fraction of `examples` classified correctly.
    pub fn accuracy(&self, examples: &[TaskExample]) -> Result<f64> {
        task_accuracy(self, examples)
    }
}

impl FinetuneReport {
    /// The fine-tuning view of an engine step.
    pub fn of(r: &StepReport) -> Self {
        let term = |k: &str| {
            r.extra
                .iter()
                .find(|(n, _)| n == k)
                .map_or(f64::NAN, |e| e.1)
        };
        Self {
            step: r.step,
            loss: r.loss,
            clf_loss: term("clf_loss"),
            lm_loss: term("lm_loss"),
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

impl TaskModel for Finetuner {
    /// `L3 = L2 + λ·L1` of `batch`, with `clf_loss` (L2) and `lm_loss` (L1) as terms.
    fn batch_loss(&self, batch: &[&TaskExample]) -> Result<BatchLoss> {
        let seqs = self.inputs(batch);
        let tokens = seqs.iter().flatten().map(Vec::len).sum();
        let labels: Vec<u32> = batch.iter().map(|e| e.label).collect();
        let (total, clf, lm) = task_loss(
            &self.model,
            &self.head,
            &seqs,
            self.kind.combine(),
            &labels,
            self.cfg.lambda,
            self.pad,
        )?;
        Ok(BatchLoss {
            loss: total.to_scalar::<f32>()? as f64,
            total,
            tokens,
            extra: vec![
                ("clf_loss".into(), clf.to_scalar::<f32>()? as f64),
                ("lm_loss".into(), lm.to_scalar::<f32>()? as f64),
            ],
        })
    }

    fn predict(&self, examples: &[TaskExample]) -> Result<Vec<u32>> {
        Finetuner::predict(self, examples)
    }
}

#[cfg(test)]
mod tests;
