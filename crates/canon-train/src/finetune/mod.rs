//! GPT-1 supervised fine-tuning (Radford et al., 2018, §3.2–3.3) of a pretrained run on a text
//! classification task, and the task this repository ships: which module group of the Python
//! standard library a source snippet comes from.
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
use canon_models::gpt_tasks::{TaskTokens, classify, finetune_loss};
use canon_models::source::WeightSource;
use canon_models::{ModelConfig, VarStore, WeightMode};
use canon_nn::{Linear, SplitMix64};
use serde::Serialize;

use crate::optim::{Optimizer, OptimizerConfig, Param, clip_global_norm};
use crate::{Result, Schedule, TrainError, io_err};

/// One labelled input, already tokenized (without the task tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClfExample {
    pub tokens: Vec<u32>,
    pub label: u32,
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
    /// Text tokens kept per input (`max_seq_len − 2`).
    pub budget: usize,
    pub classes: usize,
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
    pub fn new_random(base: &GptConfig, classes: usize, cfg: FinetuneConfig) -> Result<Self> {
        Self::build(base, classes, cfg, None)
    }

    /// Loads a pretrained GPT run folder (`model.json`, `checkpoint.safetensors` from `canon train`).
    pub fn from_run(dir: &Path, classes: usize, cfg: FinetuneConfig) -> Result<Self> {
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
        Self::build(&base, classes, cfg, Some(&ck))
    }

    fn build(
        base: &GptConfig,
        classes: usize,
        cfg: FinetuneConfig,
        pretrained: Option<&Path>,
    ) -> Result<Self> {
        if classes < 2 {
            return Err(cfg_err("a classification task needs at least 2 classes"));
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
        let d = c.d_model;
        let w = store.weight("clf.weight", &[classes, d], WeightMode::DequantizeF32)?;
        let b = store.tensor("clf.bias", &[classes])?;
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
            budget: c.max_seq_len - 2,
            classes,
            cfg,
            step: 0,
            rng,
        })
    }

    fn inputs(&self, batch: &[&ClfExample]) -> Vec<Vec<u32>> {
        batch
            .iter()
            .map(|e| self.tokens.classification(&e.tokens, self.budget))
            .collect()
    }

    /// A class-balanced batch: row `i` draws uniformly from class `i mod classes`.
    fn sample<'a>(&mut self, by_class: &[Vec<&'a ClfExample>]) -> Vec<&'a ClfExample> {
        (0..self.cfg.batch_size)
            .map(|i| {
                let pool = &by_class[i % by_class.len()];
                pool[self.rng.below(pool.len())]
            })
            .collect()
    }

    /// One optimizer step on `batch`.
    pub fn train_step(&mut self, batch: &[&ClfExample]) -> Result<FinetuneReport> {
        let seqs = self.inputs(batch);
        let labels: Vec<u32> = batch.iter().map(|e| e.label).collect();
        let (total, clf, lm) = finetune_loss(
            &self.model,
            &self.head,
            &seqs,
            &labels,
            self.cfg.lambda,
            self.pad,
        )?;
        let loss = total.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step + 1,
                loss,
            });
        }
        let gs = total.backward()?;
        let mut grads = Vec::with_capacity(self.params.len());
        for p in &self.params {
            grads.push(match gs.get(p.var.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                None => vec![0f32; p.var.elem_count()],
            });
        }
        let grad_norm = clip_global_norm(&mut grads, self.cfg.grad_clip);
        let lr = Schedule::Linear {
            warmup: self.cfg.warmup,
        }
        .lr(self.step, self.cfg.steps, self.cfg.lr);
        self.opt.step(&self.params, &grads, lr)?;
        self.step += 1;
        Ok(FinetuneReport {
            step: self.step,
            loss,
            clf_loss: clf.to_scalar::<f32>()? as f64,
            lm_loss: lm.to_scalar::<f32>()? as f64,
            lr,
            grad_norm,
            eval_accuracy: None,
        })
    }

    /// Predicted class of each example.
    pub fn predict(&self, examples: &[ClfExample]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(16) {
            let refs: Vec<&ClfExample> = chunk.iter().collect();
            let logits = classify(&self.model, &self.head, &self.inputs(&refs), self.pad)?;
            out.extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        }
        Ok(out)
    }

    /// Fraction of `examples` classified correctly.
    pub fn accuracy(&self, examples: &[ClfExample]) -> Result<f64> {
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

    /// `cfg.steps` steps of class-balanced batches from `train`, with held-out accuracy on `test`
    /// every `eval_every` steps (a fixed subset of `eval_max`) and on all of `test` at the end.
    /// Each report goes to `on_step` (and is what a caller writes to `metrics.jsonl`); returns the
    /// final held-out accuracy.
    pub fn run(
        &mut self,
        train: &[ClfExample],
        test: &[ClfExample],
        on_step: &mut dyn FnMut(&FinetuneReport) -> Result<()>,
    ) -> Result<f64> {
        check_split("training", train)?;
        check_split("held-out", test)?;
        let classes = self.classes;
        let mut by_class: Vec<Vec<&ClfExample>> = vec![Vec::new(); classes];
        for e in train {
            let c = by_class.get_mut(e.label as usize).ok_or_else(|| {
                TrainError::Data(format!("label {} ≥ {classes} classes", e.label))
            })?;
            c.push(e);
        }
        if let Some(c) = by_class.iter().position(Vec::is_empty) {
            return Err(TrainError::Data(format!(
                "the training split has no example of class {c}"
            )));
        }
        let stride = test.len().div_ceil(self.cfg.eval_max.max(1));
        let subset: Vec<ClfExample> = test.iter().step_by(stride.max(1)).cloned().collect();
        let mut final_acc = None;
        while self.step < self.cfg.steps {
            let batch = self.sample(&by_class);
            let mut r = self.train_step(&batch)?;
            if r.step == self.cfg.steps {
                let a = self.accuracy(test)?;
                final_acc = Some(a);
                r.eval_accuracy = Some(a);
            } else if self.cfg.eval_every > 0 && r.step % self.cfg.eval_every == 0 {
                r.eval_accuracy = Some(self.accuracy(&subset)?);
            }
            on_step(&r)?;
        }
        match final_acc {
            Some(a) => Ok(a),
            None => self.accuracy(test),
        }
    }
}

fn check_split(what: &str, s: &[ClfExample]) -> Result<()> {
    if s.is_empty() {
        return Err(TrainError::Data(format!("the {what} split is empty")));
    }
    if s.iter().any(|e| e.tokens.is_empty()) {
        return Err(TrainError::Data(format!(
            "the {what} split has an example with no tokens"
        )));
    }
    Ok(())
}

/// Fraction of `test` in its most frequent class (the majority-class baseline).
pub fn majority_baseline(test: &[ClfExample]) -> f64 {
    if test.is_empty() {
        return 0.0;
    }
    let mut counts = std::collections::BTreeMap::new();
    for e in test {
        *counts.entry(e.label).or_insert(0usize) += 1;
    }
    *counts.values().max().unwrap_or(&0) as f64 / test.len() as f64
}

/// Cuts `text` at line boundaries into pieces of at least `target` bytes (the last, shorter piece is
/// kept if it is at least `target / 2`); pieces with no non-blank line are dropped.
pub fn snippets(text: &str, target: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let push = |s: &mut String, out: &mut Vec<String>| {
        if s.lines().any(|l| !l.trim().is_empty()) {
            out.push(std::mem::take(s));
        } else {
            s.clear();
        }
    };
    for line in text.split_inclusive('\n') {
        cur.push_str(line);
        if cur.len() >= target {
            push(&mut cur, &mut out);
        }
    }
    if cur.len() >= target / 2 {
        push(&mut cur, &mut out);
    }
    out
}

fn py_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for e in rd {
        let p = e.map_err(|e| io_err(dir, e))?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "__pycache__") {
                py_files(&p, out)?;
            }
        } else if p.extension().is_some_and(|x| x == "py") {
            out.push(p);
        }
    }
    Ok(())
}

/// The module-group task: snippets of every `.py` file under `root/<dir>` for each `dir` of
/// `groups[label]`, split by file into `(train, test)`: in each group, files sorted by path, every
/// fourth file (indices 1, 5, 9, …) is held out.
pub fn module_group_task(
    root: &Path,
    groups: &[Vec<String>],
    snippet_bytes: usize,
) -> Result<(Vec<Snippet>, Vec<Snippet>)> {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, dirs) in groups.iter().enumerate() {
        let mut files = Vec::new();
        for d in dirs {
            let p = root.join(d);
            if !p.is_dir() {
                return Err(TrainError::Data(format!(
                    "module group directory {} does not exist",
                    p.display()
                )));
            }
            py_files(&p, &mut files)?;
        }
        files.sort();
        if files.len() < 2 {
            return Err(TrainError::Data(format!(
                "group {label} ({}) has {} .py files; a file-level split needs at least 2",
                dirs.join("+"),
                files.len()
            )));
        }
        for (i, f) in files.iter().enumerate() {
            let bytes = std::fs::read(f).map_err(|e| io_err(f, e))?;
            let text = String::from_utf8_lossy(&bytes);
            let dest = if i % 4 == 1 { &mut test } else { &mut train };
            dest.extend(snippets(&text, snippet_bytes).into_iter().map(|s| Snippet {
                text: s,
                label: label as u32,
                file: f.clone(),
            }));
        }
    }
    Ok((train, test))
}

#[cfg(test)]
mod tests;
