//! The linear head over standardised features and its fit with the pairwise loss.

use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::task;
use crate::Result;

/// The linear head over standardised features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardHead {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub w: Vec<f32>,
}

/// How the head is fitted.
#[derive(Debug, Clone, Copy)]
pub struct FitConfig {
    pub steps: usize,
    pub lr: f64,
    /// L2 penalty on `w` (added to the mean pairwise loss as `l2 · |w|²`).
    pub l2: f64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 0.01,
            l2: 1e-3,
        }
    }
}

impl RewardHead {
    pub fn dim(&self) -> usize {
        self.w.len()
    }

    /// The reward of one feature vector.
    pub fn reward(&self, x: &[f32]) -> f64 {
        x.iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .zip(&self.w)
            .map(|(((x, m), s), w)| f64::from((x - m) / s * w))
            .sum()
    }

    /// Fits the head to `pairs` (winner, loser) of rows of `x` with the pairwise loss; returns it
    /// and the loss at each step.
    pub fn fit(x: &[Vec<f32>], pairs: &[(usize, usize)], c: FitConfig) -> Result<(Self, Vec<f64>)> {
        let n = x.len();
        let d = x.first().map_or(0, Vec::len);
        if n == 0 || d == 0 || pairs.is_empty() {
            return Err(task(format!(
                "expected feature rows and ranked pairs to fit a reward head, found {n} rows and {} pairs",
                pairs.len()
            )));
        }
        if let Some(r) = x.iter().find(|r| r.len() != d) {
            return Err(task(format!(
                "expected feature rows of width {d}, found one of {}",
                r.len()
            )));
        }
        if let Some(p) = pairs.iter().find(|p| p.0 >= n || p.1 >= n) {
            return Err(task(format!(
                "a pair {p:?} names a row beyond the {n} feature rows"
            )));
        }
        let mut mean = vec![0f64; d];
        for r in x {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += f64::from(*v) / n as f64;
            }
        }
        let mut var = vec![0f64; d];
        for r in x {
            for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2) / n as f64;
            }
        }
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let scale: Vec<f32> = var.iter().map(|&v| (v.sqrt() as f32).max(1e-6)).collect();
        let flat: Vec<f32> = x
            .iter()
            .flat_map(|r| {
                r.iter()
                    .zip(&mean)
                    .zip(&scale)
                    .map(|((v, m), s)| (v - m) / s)
            })
            .collect();
        let xs = Tensor::from_vec(flat, (n, d), &Device::Cpu)?;
        let w = Var::zeros((d, 1), DType::F32, &Device::Cpu)?;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let mut m1 = vec![0f64; d];
        let mut m2 = vec![0f64; d];
        let mut losses = Vec::with_capacity(c.steps);
        for step in 1..=c.steps {
            let r = xs.matmul(w.as_tensor())?.squeeze(D::Minus1)?;
            let pl =
                canon_align::losses::pairwise_loss(&r, pairs).map_err(|e| task(e.to_string()))?;
            let loss = (pl + (w.as_tensor().sqr()?.sum_all()? * c.l2)?)?;
            losses.push(f64::from(loss.to_scalar::<f32>()?));
            let grads = loss.backward()?;
            let g: Vec<f32> = grads
                .get(&w)
                .ok_or_else(|| task("the pairwise loss has no gradient for the head"))?
                .flatten_all()?
                .to_vec1()?;
            let mut wv: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
            let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            for i in 0..d {
                let gi = f64::from(g[i]);
                m1[i] = b1 * m1[i] + (1.0 - b1) * gi;
                m2[i] = b2 * m2[i] + (1.0 - b2) * gi * gi;
                wv[i] -= (c.lr * (m1[i] / c1) / ((m2[i] / c2).sqrt() + eps)) as f32;
            }
            w.set(&Tensor::from_vec(wv, (d, 1), &Device::Cpu)?)?;
        }
        let w: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
        Ok((Self { mean, scale, w }, losses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webgpt_rm::pair_accuracy;

    #[test]
    fn the_pairwise_loss_ranks_a_planted_preference() {
        // Planted: feature 0 is 1 for the preferred rows; the others are noise.
        let mut x = Vec::new();
        let mut pairs = Vec::new();
        for i in 0..40u32 {
            let noise = |k: u32| ((i * 37 + k * 11) % 17) as f32 / 17.0;
            x.push(vec![1.0, noise(1), noise(2)]);
            x.push(vec![0.0, noise(3), noise(4)]);
            pairs.push((2 * i as usize, 2 * i as usize + 1));
        }
        let (train, held) = pairs.split_at(30);
        let (head, losses) = RewardHead::fit(&x, train, FitConfig::default()).unwrap();
        assert!(losses[0] > losses[losses.len() - 1] + 0.3, "{losses:?}");
        let r: Vec<f64> = x.iter().map(|v| head.reward(v)).collect();
        assert_eq!(pair_accuracy(&r, held), Some(1.0));
        assert!(head.w[0].abs() > head.w[1].abs() && head.w[0] > 0.0);
        // Bad input is an error, not a panic.
        assert!(RewardHead::fit(&x, &[], FitConfig::default()).is_err());
        assert!(RewardHead::fit(&x, &[(0, 999)], FitConfig::default()).is_err());
    }
}
