//! Training TransE on the engine: the margin-loss objective, plain training and a run in a folder
//! of its own (metrics, plot, checkpoint, exact resume).

use std::sync::atomic::AtomicBool;

use canon_nn::SplitMix64;

use super::{TransE, TransEConfig};
use crate::engine::{BatchLoss, Engine, Objective};
use crate::ernie_data::Triple;
use crate::optim::Param;
use crate::trainer::{Outcome, RunFiles};
use crate::{Result, Schedule, TrainConfig, TrainError};

/// TransE's margin loss on the engine: minibatches of true triples drawn with replacement and
/// their corrupted copies; the entity vectors are projected onto the unit sphere before each step
/// (the engine's `before_step` hook).
pub struct TransEObjective<'a> {
    pub model: &'a TransE,
    pub triples: &'a [Triple],
    pub n_entities: usize,
    pub batch_size: usize,
}

impl Objective for TransEObjective<'_> {
    fn before_step(&mut self) -> Result<()> {
        self.model.normalize_entities()
    }

    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        let batch: Vec<Triple> = (0..self.batch_size)
            .map(|_| self.triples[rng.below(self.triples.len())])
            .collect();
        let neg = TransE::corrupt(&batch, self.n_entities, rng);
        let total = self.model.loss(&batch, &neg)?;
        Ok(BatchLoss {
            loss: f64::from(total.to_scalar::<f32>()?),
            total,
            tokens: batch.len(),
            extra: Vec::new(),
        })
    }

    /// TransE's held-out measure is link prediction, run by the caller after training.
    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// Summary of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TransEReport {
    pub first_loss: f64,
    pub last_loss: f64,
    pub seconds: f64,
}

impl TransE {
    /// The engine over the two tables with `cfg`'s schedule and optimizer (one metrics line per
    /// step, one checkpoint at the end), drawing batches and corruptions from `seed`'s own stream.
    fn engine(&self, cfg: &TransEConfig, seed: u64) -> Result<Engine> {
        let params = vec![
            Param {
                name: "entities".into(),
                var: self.entities.clone(),
                decay: false,
            },
            Param {
                name: "relations".into(),
                var: self.relations.clone(),
                decay: false,
            },
        ];
        let steps = cfg.steps.max(1);
        let train_cfg = TrainConfig {
            batch_size: cfg.batch_size,
            block_size: 1,
            grad_accum: 1,
            max_steps: cfg.steps,
            lr: cfg.lr,
            schedule: Schedule::Constant { warmup: 0 },
            optimizer: cfg.optimizer,
            grad_clip: None,
            eval_every: steps,
            eval_batches: 1,
            log_every: 1,
            checkpoint_every: steps,
            seed,
            z_loss: 0.0,
            moe_aux_weight: 0.0,
        };
        let mut engine = Engine::new(params, train_cfg)?;
        engine.rng = SplitMix64::new(seed);
        Ok(engine)
    }

    fn objective<'a>(
        &'a self,
        triples: &'a [Triple],
        cfg: &TransEConfig,
    ) -> Result<TransEObjective<'a>> {
        if triples.is_empty() {
            return Err(TrainError::Data(
                "transe: the knowledge graph has no triples".into(),
            ));
        }
        Ok(TransEObjective {
            model: self,
            triples,
            n_entities: self.entities.dim(0)?,
            batch_size: cfg.batch_size,
        })
    }

    /// Trains on `triples` for `cfg.steps` minibatches drawn with replacement.
    pub fn train(
        &self,
        triples: &[Triple],
        cfg: &TransEConfig,
        seed: u64,
        on_step: &mut dyn FnMut(u64, f64),
    ) -> Result<TransEReport> {
        let mut obj = self.objective(triples, cfg)?;
        let t0 = std::time::Instant::now();
        let mut engine = self.engine(cfg, seed)?;
        let (mut first, mut last) = (f64::NAN, f64::NAN);
        while engine.step < cfg.steps {
            let r = engine.train_step(&mut obj)?;
            if r.step == 1 {
                first = r.loss;
            }
            last = r.loss;
            on_step(r.step - 1, r.loss);
        }
        self.normalize_entities()?;
        Ok(TransEReport {
            first_loss: first,
            last_loss: last,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// [`TransE::train`] as a run in a folder of its own: `files` receives `metrics.jsonl` (every
    /// step), `loss.png` and the checkpoint (at the end, or when `stop` is raised). A checkpoint
    /// already there is resumed exactly: the same tables as a run never stopped. The losses of
    /// the report are the metrics file's first and last; the entities are projected onto the unit
    /// sphere when the run finishes. `on_step(steps_done, loss)` follows the steps.
    pub fn train_run(
        &self,
        triples: &[Triple],
        cfg: &TransEConfig,
        seed: u64,
        files: &RunFiles,
        stop: &AtomicBool,
        on_step: &mut dyn FnMut(u64, f64),
    ) -> Result<(TransEReport, Outcome)> {
        let mut obj = self.objective(triples, cfg)?;
        let t0 = std::time::Instant::now();
        let mut engine = self.engine(cfg, seed)?;
        if files.checkpoint.is_file() {
            engine.resume(&mut obj, &files.checkpoint)?;
        }
        let outcome = engine.run(&mut obj, cfg.steps, stop, files, &mut |r| {
            on_step(r.step, r.loss)
        })?;
        let lines = if files.metrics.is_file() {
            crate::metrics::read_lines(&files.metrics)?
        } else {
            Vec::new()
        };
        let loss = |l: Option<&crate::metrics::MetricsLine>| l.map_or(f64::NAN, |l| l.loss);
        if outcome == Outcome::Finished {
            self.normalize_entities()?;
        }
        let report = TransEReport {
            first_loss: loss(lines.first()),
            last_loss: loss(lines.last()),
            seconds: t0.elapsed().as_secs_f64(),
        };
        Ok((report, outcome))
    }
}
