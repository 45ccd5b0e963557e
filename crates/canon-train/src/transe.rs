//! TransE (Bordes et al., 2013, "Translating Embeddings for Modeling Multi-relational Data"): the
//! knowledge embeddings ERNIE (paper 6) takes as frozen entity inputs.
//!
//! A relation is a translation: for a true triple `(h, r, t)`, `e_h + r ≈ e_t`. The dissimilarity is
//! `d(h, r, t) = ‖e_h + r − e_t‖_p` with `p` = 1 or 2, and the loss over a batch of true triples and
//! their corrupted copies (head or tail replaced, with equal probability, by a uniformly drawn
//! different entity) is the margin ranking loss
//!   L = mean_i [γ + d(h_i, r_i, t_i) − d(h'_i, r_i, t'_i)]₊          (Bordes et al., eq. 1)
//! (the paper sums; the mean only rescales the learning rate). Algorithm 1: relations and entities
//! start uniform in ±6/√k, relations are normalised once, and every entity vector is projected onto
//! the unit sphere before each minibatch (this keeps the loss from being lowered by inflating norms).
//! Updates go through our optimizers (`optim`: SGD as in the paper, or AdamW).
//!
//! Shapes: entities `[n_entities, k]`, relations `[n_relations, k]`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{D, Device, Tensor, Var};
use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::engine::{BatchLoss, Engine, Objective};
use crate::ernie_data::Triple;
use crate::optim::{OptimizerConfig, Param};
use crate::trainer::{Outcome, RunFiles};
use crate::{Result, Schedule, TrainConfig, TrainError, io_err};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    L1,
    L2,
}

fn d_dim() -> usize {
    32
}
fn d_margin() -> f64 {
    1.0
}
fn d_steps() -> u64 {
    1500
}
fn d_batch() -> usize {
    512
}
fn d_lr() -> f64 {
    0.01
}
fn d_norm() -> Norm {
    Norm::L1
}

/// The `[transe]` table of an ERNIE run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransEConfig {
    /// Embedding size k (the paper's ERNIE uses 100).
    #[serde(default = "d_dim")]
    pub dim: usize,
    /// γ.
    #[serde(default = "d_margin")]
    pub margin: f64,
    #[serde(default = "d_norm")]
    pub norm: Norm,
    #[serde(default = "d_steps")]
    pub steps: u64,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// `sgd` (the paper; momentum 0) or `adamw`.
    #[serde(default = "d_opt")]
    pub optimizer: OptimizerConfig,
}

fn d_opt() -> OptimizerConfig {
    OptimizerConfig::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}

impl Default for TransEConfig {
    fn default() -> Self {
        Self {
            dim: d_dim(),
            margin: d_margin(),
            norm: d_norm(),
            steps: d_steps(),
            batch_size: d_batch(),
            lr: d_lr(),
            optimizer: d_opt(),
        }
    }
}

impl TransEConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.dim == 0 || self.batch_size == 0 {
            return Err("transe.dim and transe.batch_size must be positive".into());
        }
        if !(self.margin > 0.0 && self.margin.is_finite()) {
            return Err(format!(
                "transe.margin must be positive, found {}",
                self.margin
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("transe.lr must be positive, found {}", self.lr));
        }
        self.optimizer.validate()
    }
}

pub struct TransE {
    pub entities: Var,
    pub relations: Var,
    pub norm: Norm,
    pub margin: f64,
}

/// Summary of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TransEReport {
    pub first_loss: f64,
    pub last_loss: f64,
    pub seconds: f64,
}

fn uniform(n: usize, bound: f64, rng: &mut SplitMix64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

/// Rows scaled to unit L2 norm (zero rows stay zero).
fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&n)?)
}

impl TransE {
    /// Bordes et al.'s initialisation: uniform in ±6/√k, relations normalised, entities normalised.
    pub fn new(
        n_entities: usize,
        n_relations: usize,
        cfg: &TransEConfig,
        seed: u64,
    ) -> Result<Self> {
        let k = cfg.dim;
        let b = 6.0 / (k as f64).sqrt();
        let mut rng = SplitMix64::new(seed);
        let dev = &Device::Cpu;
        let e = Tensor::from_vec(uniform(n_entities * k, b, &mut rng), (n_entities, k), dev)?;
        let r = Tensor::from_vec(uniform(n_relations * k, b, &mut rng), (n_relations, k), dev)?;
        Ok(Self {
            entities: Var::from_tensor(&unit_rows(&e)?)?,
            relations: Var::from_tensor(&unit_rows(&r)?)?,
            norm: cfg.norm,
            margin: cfg.margin,
        })
    }

    /// Projects every entity vector onto the unit sphere (Algorithm 1, line 5).
    pub fn normalize_entities(&self) -> Result<()> {
        Ok(self.entities.set(&unit_rows(self.entities.as_tensor())?)?)
    }

    /// `d(h, r, t) = ‖e_h + r − e_t‖_p` for each triple: `[n]`.
    pub fn distance(&self, triples: &[Triple]) -> Result<Tensor> {
        let dev = &Device::Cpu;
        let col = |f: fn(&Triple) -> u32| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                triples.iter().map(f).collect::<Vec<u32>>(),
                triples.len(),
                dev,
            )?)
        };
        let e = self.entities.as_tensor();
        let h = e.index_select(&col(|t| t.h)?, 0)?;
        let t = e.index_select(&col(|t| t.t)?, 0)?;
        let r = self.relations.as_tensor().index_select(&col(|t| t.r)?, 0)?;
        let diff = ((h + r)? - t)?; // [n, k]
        Ok(match self.norm {
            Norm::L1 => diff.abs()?.sum(D::Minus1)?,
            // A tiny floor keeps the square root differentiable at zero.
            Norm::L2 => (diff.sqr()?.sum(D::Minus1)? + 1e-12)?.sqrt()?,
        })
    }

    /// Margin ranking loss of true triples against their corrupted copies (same order).
    pub fn loss(&self, pos: &[Triple], neg: &[Triple]) -> Result<Tensor> {
        if pos.len() != neg.len() || pos.is_empty() {
            return Err(TrainError::Data(format!(
                "transe: {} true and {} corrupted triples; expected equal, non-zero counts",
                pos.len(),
                neg.len()
            )));
        }
        let d = (self.distance(pos)? - self.distance(neg)?)?;
        Ok((d + self.margin)?.relu()?.mean_all()?)
    }

    /// One corrupted copy of each triple: head or tail (each with probability ½) replaced by a
    /// uniformly drawn different entity.
    pub fn corrupt(triples: &[Triple], n_entities: usize, rng: &mut SplitMix64) -> Vec<Triple> {
        triples
            .iter()
            .map(|tr| {
                let mut c = *tr;
                let head = rng.next_f64() < 0.5;
                let old = if head { tr.h } else { tr.t };
                let mut e = rng.below(n_entities.max(2) - 1) as u32;
                if e >= old {
                    e += 1;
                }
                if head {
                    c.h = e;
                } else {
                    c.t = e;
                }
                c
            })
            .collect()
    }

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

    /// Raw rank (1 = best) of the true tail of each triple among all entities as tails, and the
    /// same for heads: returns (mean rank, hits@10) over both.
    pub fn link_prediction(&self, triples: &[Triple]) -> Result<(f64, f64)> {
        let e = self.entities.as_tensor().detach();
        let n = e.dim(0)?;
        let (mut rank_sum, mut hits, mut count) = (0f64, 0usize, 0usize);
        for tr in triples {
            let r = self.relations.as_tensor().get(tr.r as usize)?.detach();
            let h = e.get(tr.h as usize)?;
            let t = e.get(tr.t as usize)?;
            // Tails: ‖(h + r) − e_j‖ for all j; heads: ‖e_j + r − t‖.
            for target in [(h + &r)?.unsqueeze(0)?, (t - &r)?.unsqueeze(0)?] {
                let diff = e.broadcast_sub(&target)?;
                let d: Vec<f32> = match self.norm {
                    Norm::L1 => diff.abs()?.sum(D::Minus1)?,
                    Norm::L2 => diff.sqr()?.sum(D::Minus1)?,
                }
                .to_vec1()?;
                let truth = (if count % 2 == 0 { tr.t } else { tr.h }) as usize;
                let rank = 1 + (0..n).filter(|&j| d[j] < d[truth]).count();
                rank_sum += rank as f64;
                hits += usize::from(rank <= 10);
                count += 1;
            }
        }
        let c = count.max(1) as f64;
        Ok((rank_sum / c, hits as f64 / c))
    }

    /// The entity table, detached (ERNIE's frozen inputs).
    pub fn entity_table(&self) -> Tensor {
        self.entities.as_tensor().detach()
    }

    /// Writes entities and relations to a safetensors file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut m = HashMap::new();
        m.insert("entities".to_string(), self.entities.as_tensor().detach());
        m.insert("relations".to_string(), self.relations.as_tensor().detach());
        let bytes = safetensors::serialize(&m, None).map_err(|e| io_err(path, e))?;
        canon_fs::write_atomic(path, &bytes).map_err(|e| io_err(path, e))
    }

    /// Reads the entity table written by [`TransE::save`], checking its shape.
    pub fn load_entities(path: &Path, n_entities: usize, dim: usize) -> Result<Tensor> {
        let m = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| io_err(path, e))?;
        let e = m
            .get("entities")
            .ok_or_else(|| TrainError::Data(format!("{}: no 'entities' tensor", path.display())))?;
        if e.dims() != [n_entities, dim] {
            return Err(TrainError::Data(format!(
                "{}: entity table has shape {:?}, expected [{n_entities}, {dim}] (the knowledge graph changed?)",
                path.display(),
                e.dims()
            )));
        }
        Ok(e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(h: u32, r: u32, t: u32) -> Triple {
        Triple { h, r, t }
    }

    #[test]
    fn loss_on_a_hand_computed_case() {
        let dev = &Device::Cpu;
        let m = |v: Vec<f32>, r: usize| {
            Var::from_tensor(&Tensor::from_vec(v, (r, 2), dev).unwrap()).unwrap()
        };
        for norm in [Norm::L1, Norm::L2] {
            let te = TransE {
                // e0 = (1, 0), e1 = (0, 1), e2 = (1, 1); r0 = (−1, 1).
                entities: m(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3),
                relations: m(vec![-1.0, 1.0], 1),
                norm,
                margin: 0.5,
            };
            // True (0, r, 1): e0 + r − e1 = (0, 0) → d = 0.
            // Corrupt (0, r, 2): (−1, 0) → d = 1 for L1 and L2 → [0.5 + 0 − 1]₊ = 0.
            // True (2, r, 1): (0, 1) → d = 1.  Corrupt (2, r, 0): (−1, 2) → L1 3, L2 √5.
            // Second pair: [0.5 + 1 − 3]₊ = 0 (L1), [0.5 + 1 − √5]₊ = 0.
            // Third: true (1, r, 2): (−2, 1): L1 3, L2 √5; corrupt (1, r, 1): (−1, 1): L1 2, L2 √2.
            // → L1: [0.5 + 3 − 2]₊ = 1.5; L2: 0.5 + √5 − √2.
            let pos = [tr(0, 0, 1), tr(2, 0, 1), tr(1, 0, 2)];
            let neg = [tr(0, 0, 2), tr(2, 0, 0), tr(1, 0, 1)];
            let d: Vec<f32> = te.distance(&pos).unwrap().to_vec1().unwrap();
            let l = te.loss(&pos, &neg).unwrap().to_scalar::<f32>().unwrap();
            let want = match norm {
                Norm::L1 => {
                    assert_eq!(d, vec![0.0, 1.0, 3.0]);
                    1.5 / 3.0
                }
                Norm::L2 => {
                    assert!((d[2] - 5f32.sqrt()).abs() < 1e-6);
                    (0.5 + 5f32.sqrt() - 2f32.sqrt()) / 3.0
                }
            };
            assert!((l - want).abs() < 1e-6, "{norm:?}: {l} vs {want}");
        }
        assert!(
            TransE::new(3, 1, &TransEConfig::default(), 1)
                .unwrap()
                .loss(&[tr(0, 0, 1)], &[])
                .is_err()
        );
    }

    #[test]
    fn corruption_changes_exactly_one_side_to_a_different_entity() {
        let triples: Vec<Triple> = (0..4000).map(|i| tr(i % 7, 0, (i + 3) % 7)).collect();
        let neg = TransE::corrupt(&triples, 7, &mut SplitMix64::new(3));
        let mut heads = 0;
        for (a, b) in triples.iter().zip(&neg) {
            assert_eq!(a.r, b.r);
            assert!((a.h != b.h) ^ (a.t != b.t), "{a:?} {b:?}");
            assert!(b.h < 7 && b.t < 7);
            heads += usize::from(a.h != b.h);
        }
        let f = heads as f64 / 4000.0;
        assert!((f - 0.5).abs() < 0.03, "{f}");
    }

    #[test]
    fn a_run_in_a_folder_writes_its_files_and_resumes_exactly_after_a_stop() {
        let mut triples: Vec<Triple> = (4..20).map(|f| tr(f, 0, f % 4)).collect();
        triples.extend((0..4).map(|m| tr(m, 1, (m + 1) % 4)));
        let cfg = TransEConfig {
            dim: 8,
            steps: 30,
            batch_size: 16,
            ..Default::default()
        };
        let tmp = tempfile::tempdir().unwrap();
        let files = |name: &str| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            RunFiles::in_dir(&dir)
        };
        let go = AtomicBool::new(false);
        // Uninterrupted, and as `train` (no folder): the same tables.
        let whole = TransE::new(20, 2, &cfg, 3).unwrap();
        let (rep, out) = whole
            .train_run(&triples, &cfg, 5, &files("whole"), &go, &mut |_, _| {})
            .unwrap();
        assert_eq!(out, Outcome::Finished);
        assert!(rep.last_loss < rep.first_loss, "{rep:?}");
        let plain = TransE::new(20, 2, &cfg, 3).unwrap();
        plain.train(&triples, &cfg, 5, &mut |_, _| {}).unwrap();
        let table = |t: &TransE| {
            t.entity_table()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(table(&whole), table(&plain));
        let f = files("whole");
        assert!(f.checkpoint.is_file() && f.plot.is_file());
        assert_eq!(crate::metrics::read_lines(&f.metrics).unwrap().len(), 30);
        // Stopped after step 12 (the Ctrl-C path), then resumed from the checkpoint by fresh tables.
        let stop = AtomicBool::new(false);
        let cut = TransE::new(20, 2, &cfg, 3).unwrap();
        let (_, out) = cut
            .train_run(&triples, &cfg, 5, &files("cut"), &stop, &mut |s, _| {
                if s == 12 {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .unwrap();
        assert_eq!(out, Outcome::Interrupted);
        let resumed = TransE::new(20, 2, &cfg, 99).unwrap();
        let mut steps = Vec::new();
        let (rep2, out) = resumed
            .train_run(&triples, &cfg, 5, &files("cut"), &go, &mut |s, _| {
                steps.push(s)
            })
            .unwrap();
        assert_eq!(out, Outcome::Finished);
        assert_eq!(steps.first(), Some(&13));
        assert_eq!(table(&resumed), table(&whole));
        assert_eq!(rep2.first_loss, rep.first_loss);
        assert_eq!(rep2.last_loss, rep.last_loss);
        assert_eq!(
            crate::metrics::read_lines(&files("cut").metrics)
                .unwrap()
                .len(),
            30
        );
    }

    #[test]
    fn after_training_true_triples_score_better_than_corrupted_ones() {
        // 4 modules (0..4), 16 functions (4..20): f defined_in module f % 4 (relation 0); each
        // module imports the next (relation 1).
        let mut triples: Vec<Triple> = (4..20).map(|f| tr(f, 0, f % 4)).collect();
        triples.extend((0..4).map(|m| tr(m, 1, (m + 1) % 4)));
        for norm in [Norm::L1, Norm::L2] {
            let cfg = TransEConfig {
                dim: 16,
                steps: 300,
                batch_size: 32,
                lr: 0.02,
                norm,
                ..Default::default()
            };
            let te = TransE::new(20, 2, &cfg, 7).unwrap();
            let neg_before = TransE::corrupt(&triples, 20, &mut SplitMix64::new(9));
            let before = te
                .loss(&triples, &neg_before)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let rep = te.train(&triples, &cfg, 11, &mut |_, _| {}).unwrap();
            assert!(rep.last_loss < rep.first_loss);
            let after = te
                .loss(&triples, &neg_before)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(after < 0.2 * before, "{norm:?}: {before} -> {after}");
            // Every function's true module is the nearest of the four modules.
            for f in 4..20u32 {
                let cands: Vec<Triple> = (0..4).map(|m| tr(f, 0, m)).collect();
                let d: Vec<f32> = te.distance(&cands).unwrap().to_vec1().unwrap();
                let best = (0..4).min_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap();
                assert_eq!(best as u32, f % 4, "{norm:?} f{f}: {d:?}");
            }
            let (mr, hits) = te.link_prediction(&triples).unwrap();
            assert!(
                mr < 6.0 && hits > 0.8,
                "{norm:?}: mean rank {mr}, hits@10 {hits}"
            );
            // Entities stay on the unit sphere.
            let n: Vec<f32> = te
                .entity_table()
                .sqr()
                .unwrap()
                .sum(1)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(n.iter().all(|x| (x - 1.0).abs() < 1e-4));
        }
    }

    #[test]
    fn saved_table_round_trips_and_a_wrong_shape_is_named() {
        let te = TransE::new(
            5,
            2,
            &TransEConfig {
                dim: 4,
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("transe.safetensors");
        te.save(&p).unwrap();
        let e = TransE::load_entities(&p, 5, 4).unwrap();
        assert_eq!(
            e.to_vec2::<f32>().unwrap(),
            te.entity_table().to_vec2::<f32>().unwrap()
        );
        let err = TransE::load_entities(&p, 6, 4).unwrap_err().to_string();
        assert!(
            err.contains("[6, 4]") && err.contains("transe.safetensors"),
            "{err}"
        );
    }
}
