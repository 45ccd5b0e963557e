//! Classifier fine-tuning (GPT-1's task heads, BERT's `W_c`) as an [`Objective`] on the engine:
//! class-balanced batches drawn from the engine's RNG, held-out accuracy on a fixed subset during
//! training and on the whole held-out split at the last step. The engine does the update
//! (gather, clip, scheduled step), metrics, loss figure, checkpoints, exact resume and Ctrl-C.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use canon_nn::SplitMix64;

use super::{ClassBalanced, TaskExample, eval_subset};
use crate::engine::{BatchLoss, Engine, Objective};
use crate::optim::{Optimizer, OptimizerConfig, Param};
use crate::trainer::{Outcome, RunFiles, StepReport};
use crate::{Result, Schedule, TrainConfig};

/// A model with a classification head: the loss of a batch and a prediction per example.
pub trait TaskModel {
    /// Loss of `batch` (graph kept), with its terms (`clf_loss`, …) in `extra`.
    fn batch_loss(&self, batch: &[&TaskExample]) -> Result<BatchLoss>;
    /// Predicted label of each example.
    fn predict(&self, examples: &[TaskExample]) -> Result<Vec<u32>>;
}

/// Fraction of `examples` a model labels correctly (an error for an empty split).
pub fn task_accuracy(model: &dyn TaskModel, examples: &[TaskExample]) -> Result<f64> {
    if examples.is_empty() {
        return Err(crate::TrainError::Data("no examples to evaluate".into()));
    }
    let gold: Vec<u32> = examples.iter().map(|e| e.label).collect();
    Ok(canon_nn::ops::accuracy(&model.predict(examples)?, &gold))
}

/// The engine objective of a [`TaskModel`] on a training and a held-out split.
pub struct TaskObjective<'a> {
    model: &'a dyn TaskModel,
    pools: ClassBalanced<'a>,
    batch_size: usize,
    test: &'a [TaskExample],
    subset: Vec<TaskExample>,
    max_steps: u64,
    /// Steps begun so far (the engine's micro-batch index + 1; no accumulation).
    steps: u64,
    /// Accuracy on the whole held-out split, once the last step has been evaluated.
    pub final_accuracy: Option<f64>,
}

impl<'a> TaskObjective<'a> {
    pub fn new(
        model: &'a dyn TaskModel,
        train: &'a [TaskExample],
        test: &'a [TaskExample],
        labels: usize,
        s: &TaskSchedule,
    ) -> Result<Self> {
        Ok(Self {
            model,
            pools: ClassBalanced::new(train, labels)?,
            batch_size: s.batch_size,
            test,
            subset: eval_subset(test, s.eval_max),
            max_steps: s.steps,
            steps: 0,
            final_accuracy: None,
        })
    }
}

impl Objective for TaskObjective<'_> {
    fn train_batch(&mut self, rng: &mut SplitMix64, index: u64) -> Result<BatchLoss> {
        self.steps = index + 1;
        let batch = self.pools.batch(rng, self.batch_size);
        self.model.batch_loss(&batch)
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let last = self.steps >= self.max_steps;
        let split = if last { self.test } else { &self.subset };
        let acc = task_accuracy(self.model, split)?;
        if last {
            self.final_accuracy = Some(acc);
        }
        Ok(vec![("eval_accuracy".into(), acc)])
    }
}

/// The fine-tuning hyper-parameters the engine needs (both fine-tuners' configs map onto it):
/// AdamW, linear warmup then linear decay, one batch per step.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSchedule {
    pub lr: f64,
    pub steps: u64,
    pub warmup: u64,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub grad_clip: Option<f64>,
    pub seed: u64,
    /// Held-out accuracy on the subset every this many steps; 0 = only at the end.
    pub eval_every: u64,
    pub eval_max: usize,
}

impl TaskSchedule {
    pub fn optimizer(&self) -> OptimizerConfig {
        OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: self.weight_decay,
        }
    }

    /// The engine's config: every step logged, a checkpoint at the end (and on Ctrl-C).
    pub fn train_config(&self, block_size: usize) -> TrainConfig {
        let steps = self.steps.max(1);
        TrainConfig {
            batch_size: self.batch_size,
            block_size: block_size.max(1),
            grad_accum: 1,
            max_steps: steps,
            lr: self.lr,
            schedule: Schedule::Linear {
                warmup: self.warmup,
            },
            optimizer: self.optimizer(),
            grad_clip: self.grad_clip,
            eval_every: if self.eval_every == 0 {
                steps
            } else {
                self.eval_every
            },
            eval_batches: 1,
            log_every: 1,
            checkpoint_every: steps,
            seed: self.seed,
            z_loss: 0.0,
            moe_aux_weight: 0.0,
        }
    }
}

/// What a fine-tuner keeps between runs: its parameters, optimizer state, step and data RNG.
pub struct TaskState<'a> {
    pub params: &'a [Param],
    pub opt: &'a mut Optimizer,
    pub step: &'a mut u64,
    pub rng: &'a mut SplitMix64,
}

/// The splits of a task and its number of labels.
pub struct TaskData<'a> {
    pub train: &'a [TaskExample],
    pub test: &'a [TaskExample],
    pub labels: usize,
}

/// Where a fine-tuning run writes (`files: None`: nowhere, as in tests) and what stops it.
pub struct TaskRun<'a> {
    pub files: Option<&'a RunFiles>,
    pub stop: &'a AtomicBool,
    /// Longest input (for the loss figure's footnote).
    pub block_size: usize,
}

/// Trains `model` (whose parameters, optimizer, step and RNG are `state`) to `sched.steps` steps
/// on the engine. With `run.files`, metrics.jsonl, the loss figure and the checkpoint are written
/// and Ctrl-C (`run.stop`) checkpoints; without, the same steps run with nothing written. Returns
/// the outcome and the final held-out accuracy (when the last step was reached).
pub fn run_task(
    model: &dyn TaskModel,
    state: TaskState<'_>,
    data: TaskData<'_>,
    sched: &TaskSchedule,
    run: TaskRun<'_>,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<(Outcome, Option<f64>)> {
    let mut obj = TaskObjective::new(model, data.train, data.test, data.labels, sched)?;
    let mut engine = Engine::new(state.params.to_vec(), sched.train_config(run.block_size))?;
    // The fine-tuner's optimizer state, step and data order carry over (resume, or more steps).
    std::mem::swap(&mut engine.opt, state.opt);
    engine.step = *state.step;
    engine.rng = *state.rng;
    obj.steps = engine.step;
    let result = match run.files {
        Some(files) => engine.run(&mut obj, sched.steps, run.stop, files, on_step),
        None => (|| {
            while engine.step < sched.steps {
                let mut r = engine.train_step(&mut obj)?;
                if r.step % engine.cfg.eval_every == 0 || r.step == sched.steps {
                    (r.eval_loss, r.eval) = Engine::evaluate(&mut obj)?;
                }
                on_step(&r);
            }
            Ok(Outcome::Finished)
        })(),
    };
    std::mem::swap(&mut engine.opt, state.opt);
    *state.step = engine.step;
    *state.rng = engine.rng;
    Ok((result?, obj.final_accuracy))
}

/// The checkpoint a fine-tuning run folder holds.
pub fn task_files(dir: &Path, checkpoint: &str) -> RunFiles {
    RunFiles {
        checkpoint: dir.join(checkpoint),
        metrics: dir.join("metrics.jsonl"),
        plot: dir.join("loss.png"),
    }
}
