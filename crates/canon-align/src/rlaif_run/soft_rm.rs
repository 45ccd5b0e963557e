//! Reward models on soft preference labels (the paper's distillation loss).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use canon_nn::SplitMix64;
use canon_train::trainer::RunFiles;
use canon_train::{BatchLoss, Engine, Objective, StepReport};

use super::pairs::LabelledPair;
use crate::lm::{Lm, ScalarHead};
use crate::losses::soft_pair_loss;
use crate::pipeline::{io, train_config};
use crate::rm::{Group, normalise, pair_accuracy, rewards};
use crate::sft::demonstrations;
use crate::task::split;
use crate::{Result, data_err};

/// A reward model trained on soft preference labels: each micro-batch is `batch` pairs.
pub(super) struct SoftRmObjective<'a> {
    rm: &'a Lm,
    pairs: &'a [LabelledPair],
    labels: Vec<f64>,
    order: Vec<usize>,
    batch: usize,
    val: &'a [Group],
}

impl Objective for SoftRmObjective<'_> {
    fn train_batch(&mut self, _rng: &mut SplitMix64, index: u64) -> Result<BatchLoss> {
        let n = self.order.len();
        if n == 0 {
            return Err(data_err("RLAIF reward model: no pairs"));
        }
        let start = index as usize * self.batch;
        let idx: Vec<usize> = (0..self.batch.min(n))
            .map(|i| self.order[(start + i) % n])
            .collect();
        let mut seqs = Vec::with_capacity(2 * idx.len());
        for side in 0..2 {
            for &i in &idx {
                let p = &self.pairs[i];
                let r = if side == 0 { &p.a } else { &p.b };
                seqs.push([p.problem.prompt_ids(), r.clone()].concat());
            }
        }
        let r = rewards(self.rm, &seqs)?;
        let m = idx.len();
        let p1: Vec<f32> = idx.iter().map(|&i| self.labels[i] as f32).collect();
        let p1 = Tensor::from_vec(p1, m, &Device::Cpu)?;
        let loss = soft_pair_loss(&r.narrow(0, 0, m)?, &r.narrow(0, m, m)?, &p1)?;
        Ok(BatchLoss {
            loss: loss.to_scalar::<f32>()? as f64,
            total: loss,
            tokens: seqs.iter().map(Vec::len).sum(),
            extra: Vec::new(),
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let (acc, loss) = pair_accuracy(self.rm, self.val)?;
        Ok(vec![
            ("eval_loss".into(), loss),
            ("eval_pair_accuracy".into(), acc),
        ])
    }
}

/// Reward-model settings of the experiment.
#[derive(Debug, Clone)]
pub struct SoftRmOpts {
    pub epochs: u64,
    pub batch: usize,
    pub lr: f64,
}

/// Trains a reward model from the SFT trunk on `labels[i] = P(a ≻ b)` of `pairs[i]` into `out`;
/// returns its held-out pair accuracy on `val` (gold rankings).
#[allow(clippy::too_many_arguments)]
pub fn train_soft_rm(
    dir: &Path,
    out: &Path,
    seed: u64,
    pairs: &[LabelledPair],
    labels: Vec<f64>,
    val: &[Group],
    o: &SoftRmOpts,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<f64> {
    if pairs.is_empty() || labels.len() != pairs.len() {
        return Err(data_err("RLAIF reward model: no labelled pairs"));
    }
    if o.batch == 0 || o.epochs == 0 {
        return Err(data_err("RLAIF reward model: batch and epochs must be ≥ 1"));
    }
    let mut rm = Lm::load(&dir.join("sft"))?;
    rm.head = Some(ScalarHead::zeros(rm.cfg.d_model)?);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = SplitMix64::new(seed ^ 0x5AF7);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let steps = o.epochs * pairs.len().div_ceil(o.batch) as u64;
    let mut obj = SoftRmObjective {
        rm: &rm,
        pairs,
        labels,
        order,
        batch: o.batch,
        val,
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let mut engine = Engine::new(rm.params(), train_config(steps, o.lr, seed, steps / 4))?;
    let stop = AtomicBool::new(false);
    engine.run(&mut obj, steps, &stop, &RunFiles::in_dir(out), on_step)?;
    let (train, _) = split(seed);
    normalise(
        &rm,
        &demonstrations(&train[..train.len().min(1000)], 1, seed)?,
    )?;
    let (acc, _) = pair_accuracy(&rm, val)?;
    rm.save(out)?;
    Ok(acc)
}
