//! Training a GPT-1 task model on the training engine: class-balanced batches, held-out accuracy
//! during and after training, and the checks of both splits first.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::optim::Optimizer;
use crate::trainer::{Outcome, StepReport};
use crate::{Result, TrainError};

impl Finetuner {
    /// Trains to `cfg.steps` steps on the engine with class-balanced batches from `train`,
    /// held-out accuracy on `test` every `eval_every` steps (a fixed subset of `eval_max`) and on
    /// all of `test` at the end. With `run.files` the engine writes metrics.jsonl, loss.png and
    /// the checkpoint (exact resume, Ctrl-C). Returns the outcome and the final accuracy.
    pub fn run_on_engine(
        &mut self,
        train: &[TaskExample],
        test: &[TaskExample],
        run: TaskRun<'_>,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<(Outcome, Option<f64>)> {
        check_split("training", train, self.kind)?;
        check_split("held-out", test, self.kind)?;
        let sched = self.schedule();
        let data = TaskData {
            train,
            test,
            labels: self.kind.labels(),
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

    /// [`Finetuner::run_on_engine`] writing nothing: each step's report goes to `on_step`;
    /// returns the final held-out accuracy.
    pub fn run(
        &mut self,
        train: &[TaskExample],
        test: &[TaskExample],
        on_step: &mut dyn FnMut(&FinetuneReport) -> Result<()>,
    ) -> Result<f64> {
        let stop = AtomicBool::new(false);
        let run = TaskRun {
            files: None,
            stop: &stop,
            block_size: self.base.max_seq_len,
        };
        let mut failed = None;
        let (_, acc) = self.run_on_engine(train, test, run, &mut |r| {
            if failed.is_none() {
                failed = on_step(&FinetuneReport::of(r)).err();
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

pub(super) fn check_split(what: &str, s: &[TaskExample], kind: TaskKind) -> Result<()> {
    if s.is_empty() {
        return Err(TrainError::Data(format!("the {what} split is empty")));
    }
    for (i, e) in s.iter().enumerate() {
        if e.parts.len() != kind.parts() {
            return Err(TrainError::Data(format!(
                "example {i} of the {what} split has {} segments; a {kind:?} task needs {}",
                e.parts.len(),
                kind.parts()
            )));
        }
        if e.parts.iter().any(Vec::is_empty) {
            return Err(TrainError::Data(format!(
                "the {what} split has an example with no tokens (example {i})"
            )));
        }
        if e.label as usize >= kind.labels() {
            return Err(TrainError::Data(format!(
                "example {i} of the {what} split has label {}; the task has {}",
                e.label,
                kind.labels()
            )));
        }
    }
    Ok(())
}
