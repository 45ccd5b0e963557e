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
    /// Per-parameter multipliers of the learning rate (parameter groups, e.g. a fully trained
    /// query encoder beside LoRA adapters); `None` = 1 for every parameter. Not checkpointed: the
    /// run's setup sets them again on resume.
    pub lr_scales: Option<Vec<f64>>,
}

const CHUNK: usize = 1 << 14;

/// A gradient value times the clipping factor, rounded to f32 as a stored clipped gradient would be.
#[inline(always)]
fn scaled(g: f32, scale: Option<f32>) -> f32 {
    match scale {
        Some(s) => g * s,
        None => g,
    }
}

/// AdamW's per-step constants.
#[derive(Clone, Copy)]
struct AdamStep {
    b1: f32,
    b2: f32,
    bc1: f32,
    bc2: f32,
    shrink: f32,
    lr: f32,
    eps: f32,
    scale: Option<f32>,
}

#[inline(always)]
fn adamw_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) {
    // Zipped iterators (no index checks) let the compiler vectorise the loop; the arithmetic and
    // its order are the recurrence's, element by element, without fused multiply-adds, so every
    // compiled copy below gives the same bits.
    let it = p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut());
    for (((p, &g), m), v) in it {
        let gi = scaled(g, k.scale);
        *m = k.b1 * *m + (1.0 - k.b1) * gi;
        *v = k.b2 * *v + (1.0 - k.b2) * gi * gi;
        let mh = *m / k.bc1;
        let vh = *v / k.bc2;
        *p = *p * k.shrink - k.lr * mh / (vh.sqrt() + k.eps);
    }
}

/// One chunk of the AdamW update on the widest vector unit the CPU has (the crate is built for
/// baseline x86-64, whose 4-wide divisions and square roots made this loop compute-bound).
fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must have AVX-512F.
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) {
            adamw_body(p, g, m, v, k)
        }
        /// # Safety
        /// The CPU must have AVX.
        #[target_feature(enable = "avx")]
        unsafe fn avx(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) {
            adamw_body(p, g, m, v, k)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected.
            return unsafe { wide(p, g, m, v, k) };
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the feature was detected.
            return unsafe { avx(p, g, m, v, k) };
        }
    }
    adamw_body(p, g, m, v, k)
}

/// The update of one parameter, run by candle on the variable's own storage.
struct Update<'a> {
    grad: &'a [f32],
    /// Global-norm clipping's factor, applied to each gradient value as it is read (`None`: no
    /// clipping this step).
    grad_scale: Option<f32>,
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
                let k = AdamStep {
                    b1,
                    b2,
                    bc1,
                    bc2,
                    shrink,
                    lr,
                    eps,
                    scale: self.grad_scale,
                };
                p.par_chunks_mut(CHUNK)
                    .zip(self.grad.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, k));
            }
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
            } => {
                let mu = momentum as f32;
                let wd = if self.decay { weight_decay as f32 } else { 0.0 };
                let scale = self.grad_scale;
                p.par_chunks_mut(CHUNK)
                    .zip(self.grad.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .for_each(|((p, g), b)| {
                        for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                            let gi = scaled(g, scale) + wd * *p;
                            *b = mu * *b + gi;
                            *p -= lr * *b;
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
            lr_scales: None,
        }
    }

    /// One update of every parameter with `grads` (same order), in place.
    pub fn step(&mut self, params: &[Param], grads: &[Vec<f32>], lr: f64) -> Result<()> {
        self.step_scaled(params, grads, None, lr)
    }

    /// [`Optimizer::step`] with every gradient value multiplied by `grad_scale` as it is read
    /// (global-norm clipping without a pass that rewrites the gradients; the same f32 products).
    pub fn step_scaled<G: AsRef<[f32]>>(
        &mut self,
        params: &[Param],
        grads: &[G],
        grad_scale: Option<f32>,
        lr: f64,
    ) -> Result<()> {
        if params.len() != grads.len() || params.len() != self.m.len() {
            return Err(TrainError::Data(format!(
                "optimizer: {} parameters, {} gradients, {} states",
                params.len(),
                grads.len(),
                self.m.len()
            )));
        }
        if let Some(s) = &self.lr_scales
            && s.len() != params.len()
        {
            return Err(TrainError::Data(format!(
                "optimizer: {} parameters, {} learning-rate scales",
                params.len(),
                s.len()
            )));
        }
        self.t += 1;
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let lr = self.lr_scales.as_ref().map_or(lr, |s| lr * s[i]);
            let op = Update {
                grad: g.as_ref(),
                grad_scale,
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
    let (norm, scale) = clip_factor(grads, max_norm);
    if let Some(s) = scale {
        grads.iter_mut().for_each(|g| {
            g.par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|x| *x *= s))
        });
    }
    norm
}

/// The global L2 norm of `grads` and, when it exceeds `max_norm`, the factor `max_norm / norm`
/// that clipping multiplies every gradient by. The sum of squares runs in f64 over fixed chunks
/// of each parameter on the rayon pool and adds the chunks' sums in order, so the norm does not
/// depend on the thread count.
pub fn clip_factor<G: AsRef<[f32]>>(grads: &[G], max_norm: Option<f64>) -> (f64, Option<f32>) {
    fn sq(c: &[f32]) -> f64 {
        // Eight running sums (independent additions the CPU overlaps), added at the end.
        let mut acc = [0f64; 8];
        let mut it = c.chunks_exact(8);
        for x in &mut it {
            for (a, &v) in acc.iter_mut().zip(x) {
                *a += (v as f64) * (v as f64);
            }
        }
        let tail: f64 = it
            .remainder()
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum();
        acc.iter().sum::<f64>() + tail
    }
    let sq: f64 = grads
        .iter()
        .map(|g| {
            let parts: Vec<f64> = g.as_ref().par_chunks(CHUNK).map(sq).collect();
            parts.iter().sum::<f64>()
        })
        .sum();
    let norm = sq.sqrt();
    let scale = match max_norm {
        Some(c) if norm > c && norm.is_finite() => Some((c / norm) as f32),
        _ => None,
    };
    (norm, scale)
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

    #[test]
    fn lr_scales_give_each_parameter_its_own_rate() {
        // Two parameters with the same gradient: the second at a quarter of the rate moves a
        // quarter as far (AdamW's first step moves every element by lr · sign(g)).
        let cfg = OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-12,
            weight_decay: 0.0,
        };
        let ps = vec![param(&[1.0, 1.0], false), param(&[1.0, 1.0], false)];
        let mut opt = Optimizer::new(cfg, &ps);
        opt.lr_scales = Some(vec![1.0, 0.25]);
        let g = vec![vec![0.5f32, -2.0], vec![0.5, -2.0]];
        opt.step(&ps, &g, 0.1).unwrap();
        let a = ps[0].var.as_tensor().to_vec1::<f32>().unwrap();
        let b = ps[1].var.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (a[0] - 0.9).abs() < 1e-6 && (a[1] - 1.1).abs() < 1e-6,
            "{a:?}"
        );
        assert!(
            (b[0] - 0.975).abs() < 1e-6 && (b[1] - 1.025).abs() < 1e-6,
            "{b:?}"
        );
        opt.lr_scales = Some(vec![1.0]);
        assert!(
            opt.step(&ps, &g, 0.1).is_err(),
            "a scale per parameter is required"
        );
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
    fn the_norm_does_not_depend_on_the_thread_count_and_matches_f64() {
        let mut rng = canon_nn::SplitMix64::new(5);
        let grads: Vec<Vec<f32>> = [3usize, 40_000, 70_001, 1]
            .iter()
            .map(|&n| (0..n).map(|_| rng.normal() as f32).collect())
            .collect();
        let exact: f64 = grads
            .iter()
            .flatten()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        let at = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| clip_factor(&grads, Some(1.0)))
        };
        let (n1, s1) = at(1);
        let (n2, s2) = at(2);
        let (n3, s3) = at(3);
        assert_eq!((n1.to_bits(), s1), (n2.to_bits(), s2));
        assert_eq!((n1.to_bits(), s1), (n3.to_bits(), s3));
        assert!((n1 - exact).abs() <= 1e-12 * exact, "{n1} vs {exact}");
        assert_eq!(s1, Some((1.0 / n1) as f32));
        assert_eq!(clip_factor(&grads, Some(1e9)).1, None);
        assert_eq!(clip_factor(&grads, None).1, None);
    }

    #[test]
    fn a_folded_clipping_factor_equals_clipping_the_buffers_first() {
        let mut rng = canon_nn::SplitMix64::new(9);
        let init: Vec<f32> = (0..50_000).map(|_| rng.normal() as f32).collect();
        let grads = vec![init.iter().map(|&x| 3.0 * x).collect::<Vec<f32>>()];
        for cfg in [
            OptimizerConfig::default(),
            OptimizerConfig::Sgd {
                momentum: 0.9,
                weight_decay: 0.01,
            },
        ] {
            let a = vec![param(&init, true)];
            let b = vec![param(&init, true)];
            let (mut oa, mut ob) = (Optimizer::new(cfg, &a), Optimizer::new(cfg, &b));
            for _ in 0..3 {
                let mut clipped = grads.clone();
                let na = clip_global_norm(&mut clipped, Some(1.0));
                oa.step(&a, &clipped, 1e-2).unwrap();
                let (nb, scale) = clip_factor(&grads, Some(1.0));
                assert!(scale.is_some());
                ob.step_scaled(&b, &grads, scale, 1e-2).unwrap();
                assert_eq!(na.to_bits(), nb.to_bits());
            }
            let pa: Vec<f32> = a[0].var.as_tensor().to_vec1().unwrap();
            let pb: Vec<f32> = b[0].var.as_tensor().to_vec1().unwrap();
            assert!(pa.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(pa.iter().zip(&init).any(|(x, y)| x != y));
        }
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
