//! Optimizers as fused in-place updates over the f32 storage of candle variables (candle's own
//! AdamW issues many small tensor ops per parameter and is slow on CPU).
//!
//! - AdamW (Loshchilov & Hutter, 2019): decoupled weight decay `p ← p − lr·λ·p` (only on parameters
//!   marked `decay`: matrices, not norm gains, biases or embeddings), then
//!   `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p − lr · m̂ / (√v̂ + ε)` with bias-corrected
//!   `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)` (PyTorch's `AdamW`).
//! - SGD with momentum (PyTorch convention): `g ← g + λp` (decay params), `b ← μb + g`, `p ← p − lr·b`.
//! - Clipping by global norm: all gradients scaled by `min(1, c / ‖g‖₂)`.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, Layout, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

fn d_b1() -> f64 {
    0.9
}
fn d_b2() -> f64 {
    0.95
}
fn d_eps() -> f64 {
    1e-8
}
fn d_wd() -> f64 {
    0.1
}
fn d_mom() -> f64 {
    0.9
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    #[serde(rename = "adamw")]
    AdamW {
        #[serde(default = "d_b1")]
        beta1: f64,
        #[serde(default = "d_b2")]
        beta2: f64,
        #[serde(default = "d_eps")]
        eps: f64,
        #[serde(default = "d_wd")]
        weight_decay: f64,
    },
    Sgd {
        #[serde(default = "d_mom")]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::AdamW {
            beta1: d_b1(),
            beta2: d_b2(),
            eps: d_eps(),
            weight_decay: d_wd(),
        }
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        match *self {
            OptimizerConfig::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                for (k, v) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&v) {
                        return Err(format!("train.optimizer.{k} must be in [0, 1), found {v}"));
                    }
                }
                if eps.is_nan() || eps <= 0.0 || weight_decay < 0.0 {
                    return Err("train.optimizer.eps must be positive and weight_decay ≥ 0".into());
                }
            }
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
            } => {
                if !(0.0..1.0).contains(&momentum) || weight_decay < 0.0 {
                    return Err(format!(
                        "train.optimizer.momentum must be in [0, 1) and weight_decay ≥ 0, found {momentum}, {weight_decay}"
                    ));
                }
            }
        }
        Ok(())
    }
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::AdamW { .. } => "adamw",
            OptimizerConfig::Sgd { .. } => "sgd",
        }
    }
}

/// One trainable parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
}

/// Optimizer state: per parameter, AdamW's `m` and `v` (or SGD's momentum buffer in `m`).
#[derive(Debug, Clone)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Number of updates taken (AdamW's `t`).
    pub t: u64,
}

const CHUNK: usize = 1 << 14;

/// The update of one parameter, run by candle on the variable's own storage.
struct Update<'a> {
    grad: &'a [f32],
    state: Mutex<(&'a mut [f32], &'a mut [f32])>,
    cfg: OptimizerConfig,
    lr: f32,
    decay: bool,
    t: u64,
}

impl InplaceOp1 for Update<'_> {
    fn name(&self) -> &'static str {
        "canon-optimizer-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("optimizer: parameters must be f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("optimizer: parameters must be contiguous");
        };
        let p = &mut data[start..end];
        if p.len() != self.grad.len() {
            candle_core::bail!(
                "optimizer: {} gradient values for {} parameters",
                self.grad.len(),
                p.len()
            );
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (m, v) = &mut *st;
        let lr = self.lr;
        match self.cfg {
            OptimizerConfig::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let (b1, b2, eps) = (beta1 as f32, beta2 as f32, eps as f32);
                let bc1 = 1.0 - beta1.powi(self.t as i32) as f32;
                let bc2 = 1.0 - beta2.powi(self.t as i32) as f32;
                let shrink = if self.decay {
                    1.0 - lr * weight_decay as f32
                } else {
                    1.0
                };
                p.par_chunks_mut(CHUNK)
                    .zip(self.grad.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .for_each(|(((p, g), m), v)| {
                        for i in 0..p.len() {
                            let gi = g[i];
                            m[i] = b1 * m[i] + (1.0 - b1) * gi;
                            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                            let mh = m[i] / bc1;
                            let vh = v[i] / bc2;
                            p[i] = p[i] * shrink - lr * mh / (vh.sqrt() + eps);
                        }
                    });
            }
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
            } => {
                let mu = momentum as f32;
                let wd = if self.decay { weight_decay as f32 } else { 0.0 };
                p.par_chunks_mut(CHUNK)
                    .zip(self.grad.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .for_each(|((p, g), b)| {
                        for i in 0..p.len() {
                            let gi = g[i] + wd * p[i];
                            b[i] = mu * b[i] + gi;
                            p[i] -= lr * b[i];
                        }
                    });
            }
        }
        Ok(())
    }
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, params: &[Param]) -> Self {
        let zeros = |p: &Param| vec![0f32; p.var.elem_count()];
        let v = match config {
            OptimizerConfig::AdamW { .. } => params.iter().map(zeros).collect(),
            OptimizerConfig::Sgd { .. } => params.iter().map(|_| Vec::new()).collect(),
        };
        Self {
            config,
            m: params.iter().map(zeros).collect(),
            v,
            t: 0,
        }
    }

    /// One update of every parameter with `grads` (same order), in place.
    pub fn step(&mut self, params: &[Param], grads: &[Vec<f32>], lr: f64) -> Result<()> {
        if params.len() != grads.len() || params.len() != self.m.len() {
            return Err(TrainError::Data(format!(
                "optimizer: {} parameters, {} gradients, {} states",
                params.len(),
                grads.len(),
                self.m.len()
            )));
        }
        self.t += 1;
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let op = Update {
                grad: g,
                state: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                cfg: self.config,
                lr: lr as f32,
                decay: p.decay,
                t: self.t,
            };
            p.var.as_tensor().inplace_op1(&op)?;
        }
        Ok(())
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_global_norm(grads: &mut [Vec<f32>], max_norm: Option<f64>) -> f64 {
    let sq: f64 = grads
        .iter()
        .map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum();
    let norm = sq.sqrt();
    if let Some(c) = max_norm
        && norm > c
        && norm.is_finite()
    {
        let s = (c / norm) as f32;
        grads
            .iter_mut()
            .for_each(|g| g.iter_mut().for_each(|x| *x *= s));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn param(v: &[f32], decay: bool) -> Param {
        Param {
            name: "p".into(),
            var: Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap(),
            decay,
        }
    }

    /// A plain f64 AdamW, written from the equations, for comparison.
    fn reference_adamw(p: &mut [f64], grads: &[Vec<f64>], lr: f64, wd: f64) {
        let (b1, b2, eps) = (0.9, 0.95, 1e-8);
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            for i in 0..p.len() {
                p[i] -= lr * wd * p[i];
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let mh = m[i] / (1.0 - b1.powi(t));
                let vh = v[i] / (1.0 - b2.powi(t));
                p[i] -= lr * mh / (vh.sqrt() + eps);
            }
        }
    }

    #[test]
    fn fused_adamw_matches_the_equations_and_skips_decay_where_told() {
        let init = [0.5f32, -1.0, 2.0];
        let grads = vec![
            vec![0.1f32, -0.2, 0.3],
            vec![0.05, 0.4, -0.1],
            vec![1.0, 0.0, 0.2],
        ];
        for decay in [true, false] {
            let params = vec![param(&init, decay)];
            let mut opt = Optimizer::new(OptimizerConfig::default(), &params);
            for g in &grads {
                opt.step(&params, std::slice::from_ref(g), 0.01).unwrap();
            }
            let got: Vec<f32> = params[0].var.as_tensor().to_vec1().unwrap();
            let mut want: Vec<f64> = init.iter().map(|&x| x as f64).collect();
            let g64: Vec<Vec<f64>> = grads
                .iter()
                .map(|g| g.iter().map(|&x| x as f64).collect())
                .collect();
            reference_adamw(&mut want, &g64, 0.01, if decay { 0.1 } else { 0.0 });
            for (a, b) in got.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn sgd_momentum_matches_the_recurrence() {
        let params = vec![param(&[1.0, 2.0], false)];
        let cfg = OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
        };
        let mut opt = Optimizer::new(cfg, &params);
        opt.step(&params, &[vec![1.0, -1.0]], 0.1).unwrap();
        opt.step(&params, &[vec![1.0, -1.0]], 0.1).unwrap();
        // b1 = g, b2 = 0.9 g + g = 1.9 g; p = p0 − 0.1·(1 + 1.9)·g.
        let got: Vec<f32> = params[0].var.as_tensor().to_vec1().unwrap();
        assert!((got[0] - (1.0 - 0.29)).abs() < 1e-6 && (got[1] - (2.0 + 0.29)).abs() < 1e-6);
    }

    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        let n = clip_global_norm(&mut g, Some(1.0));
        assert!((n - 5.0).abs() < 1e-12);
        assert!((g[0][0] - 0.6).abs() < 1e-7 && (g[1][0] - 0.8).abs() < 1e-7);
        let mut g = vec![vec![0.3f32]];
        clip_global_norm(&mut g, Some(1.0));
        assert_eq!(g[0][0], 0.3);
    }

    #[test]
    fn bad_hyper_parameters_name_the_field() {
        let c = OptimizerConfig::AdamW {
            beta1: 1.5,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        assert!(c.validate().unwrap_err().contains("beta1"));
    }
}
