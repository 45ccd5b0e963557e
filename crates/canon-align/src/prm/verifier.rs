//! The verifiers: a binary head read at each step's end (PRM) or at the last token (ORM), its
//! training objective, accuracy and solution scores.

use candle_core::{Device, Tensor};
use canon_nn::SplitMix64;
use canon_train::{BatchLoss, Objective};

use super::task::Labeled;
use crate::lm::{Lm, pad};
use crate::losses::softplus;
use crate::sft::draw;
use crate::{Result, data_err};

/// Head logits at every target position of a batch, `[Σ targets]` (graph kept).
fn verifier_logits(v: &Lm, batch: &[&Labeled]) -> Result<Tensor> {
    let seqs: Vec<Vec<u32>> = batch.iter().map(|l| l.ids.clone()).collect();
    let (ids, t) = pad(&seqs)?;
    let h = v.hidden(&ids)?;
    let (b, _, d) = h.dims3()?;
    let flat: Vec<usize> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.targets.iter().map(move |&(p, _)| i * t + p))
        .collect();
    let rows = h.reshape((b * t, d))?; // [b·t, d]
    let idx: Vec<u32> = flat.iter().map(|&x| x as u32).collect();
    let sel = rows.index_select(&Tensor::from_slice(&idx, idx.len(), &Device::Cpu)?, 0)?;
    v.head
        .as_ref()
        .ok_or_else(|| data_err("the verifier has no head"))?
        .forward(&sel)
}

/// Binary cross-entropy `y·softplus(−z) + (1−y)·softplus(z)`, mean over targets.
fn bce(z: &Tensor, y: &[f32]) -> Result<Tensor> {
    let yt = Tensor::from_slice(y, y.len(), &Device::Cpu)?;
    let a = (&yt * softplus(&z.neg()?)?)?;
    let b = (yt.affine(-1.0, 1.0)? * softplus(z)?)?;
    Ok((a + b)?.mean_all()?)
}

/// Verifier training on the engine: BCE at every labelled position.
pub struct VerifierObjective<'a> {
    pub v: &'a Lm,
    pub train: &'a [Labeled],
    pub val: &'a [Labeled],
    pub batch: usize,
}

pub(super) fn accuracy(v: &Lm, data: &[Labeled]) -> Result<(f64, f64)> {
    let (mut predicted, mut gold, mut loss, mut nb) = (Vec::new(), Vec::new(), 0.0, 0usize);
    for chunk in data.chunks(128) {
        let refs: Vec<&Labeled> = chunk.iter().collect();
        let z = verifier_logits(v, &refs)?.detach();
        let y: Vec<f32> = refs
            .iter()
            .flat_map(|l| l.targets.iter().map(|t| t.1))
            .collect();
        loss += bce(&z, &y)?.to_scalar::<f32>()? as f64;
        nb += 1;
        let zv: Vec<f32> = z.to_vec1()?;
        predicted.extend(zv.iter().map(|&z| z > 0.0));
        gold.extend(y.iter().map(|&y| y > 0.5));
    }
    Ok((
        canon_nn::ops::accuracy(&predicted, &gold),
        loss / nb.max(1) as f64,
    ))
}

impl Objective for VerifierObjective<'_> {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        if self.train.is_empty() {
            return Err(data_err("verifier: no labelled solutions"));
        }
        let batch = draw(self.train, self.batch, rng);
        let z = verifier_logits(self.v, &batch)?;
        let y: Vec<f32> = batch
            .iter()
            .flat_map(|l| l.targets.iter().map(|t| t.1))
            .collect();
        let total = bce(&z, &y)?;
        Ok(BatchLoss {
            loss: total.to_scalar::<f32>()? as f64,
            total,
            tokens: batch.iter().map(|l| l.ids.len()).sum(),
            extra: Vec::new(),
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let (acc, loss) = accuracy(self.v, self.val)?;
        Ok(vec![
            ("eval_loss".into(), loss),
            ("eval_label_accuracy".into(), acc),
        ])
    }
}

/// Log-scores of solutions under a verifier: the sum of `log σ(z)` over its targets.
pub fn log_scores(v: &Lm, data: &[Labeled]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(data.len());
    for chunk in data.chunks(128) {
        let refs: Vec<&Labeled> = chunk.iter().collect();
        let z: Vec<f32> = verifier_logits(v, &refs)?.detach().to_vec1()?;
        let mut off = 0;
        for l in &refs {
            let k = l.targets.len();
            // log σ(z) = −softplus(−z)
            let s: f64 = z[off..off + k]
                .iter()
                .map(|&x| {
                    let x = x as f64;
                    -((-x).max(0.0) + (1.0 + (-x.abs()).exp()).ln())
                })
                .sum();
            out.push(s);
            off += k;
        }
    }
    Ok(out)
}
