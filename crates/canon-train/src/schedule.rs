//! Learning-rate schedules, as a multiplier-free function of the step (0-based) returning the rate.
//!
//! - `Constant { warmup }`: linear warmup from 0, then the peak.
//! - `Cosine { warmup, min_lr_ratio }`: linear warmup, then half a cosine from the peak down to
//!   `min_lr_ratio · peak` at `total` steps (GPT-1: to 0; LLaMA: to 10 %).
//! - `Linear { warmup }`: linear warmup, then linear decay to 0 at `total` (GPT-1 fine-tuning).
//! - `InverseSqrt { warmup }`: the Transformer's (Vaswani et al., 2017, eq. 3)
//!   `d^−0.5 · min(s^−0.5, s · warmup^−1.5)` with `s = step + 1`, rescaled so that its maximum (at
//!   `s = warmup`) equals the peak: `peak · min(s / warmup, sqrt(warmup / s))`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Constant {
        #[serde(default)]
        warmup: u64,
    },
    Cosine {
        #[serde(default)]
        warmup: u64,
        #[serde(default)]
        min_lr_ratio: f64,
    },
    Linear {
        #[serde(default)]
        warmup: u64,
    },
    InverseSqrt {
        warmup: u64,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Constant { warmup: 0 }
    }
}

impl Schedule {
    /// Learning rate at `step` (0-based) of a run of `total` steps with peak `peak`.
    pub fn lr(&self, step: u64, total: u64, peak: f64) -> f64 {
        let s = (step + 1) as f64;
        let warm = |w: u64| -> Option<f64> {
            if w > 0 && step < w {
                Some(peak * s / w as f64)
            } else {
                None
            }
        };
        match *self {
            Schedule::Constant { warmup } => warm(warmup).unwrap_or(peak),
            Schedule::Cosine {
                warmup,
                min_lr_ratio,
            } => warm(warmup).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                let min = peak * min_lr_ratio;
                min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * progress).cos())
            }),
            Schedule::Linear { warmup } => warm(warmup).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup).max(1) as f64;
                peak * (1.0 - ((step - warmup) as f64 / span).min(1.0))
            }),
            Schedule::InverseSqrt { warmup } => {
                let w = warmup.max(1) as f64;
                peak * (s / w).min((w / s).sqrt())
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Schedule::Cosine { min_lr_ratio, .. } = self
            && !(0.0..=1.0).contains(min_lr_ratio)
        {
            return Err(format!(
                "train.schedule.min_lr_ratio must be in [0, 1], found {min_lr_ratio}"
            ));
        }
        if let Schedule::InverseSqrt { warmup: 0 } = self {
            return Err("train.schedule.warmup must be positive for inverse_sqrt".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn cosine_warms_up_linearly_then_decays_to_the_floor() {
        let s = Schedule::Cosine {
            warmup: 10,
            min_lr_ratio: 0.1,
        };
        close(s.lr(0, 110, 1.0), 0.1);
        close(s.lr(4, 110, 1.0), 0.5);
        close(s.lr(10, 110, 1.0), 1.0); // first step after warmup: the peak
        close(
            s.lr(60, 110, 1.0),
            0.1 + 0.45 * (1.0 + (std::f64::consts::PI * 0.5).cos()),
        );
        close(s.lr(110, 110, 1.0), 0.1);
        close(s.lr(500, 110, 1.0), 0.1);
    }

    #[test]
    fn linear_decays_to_zero() {
        let s = Schedule::Linear { warmup: 0 };
        close(s.lr(0, 100, 2.0), 2.0);
        close(s.lr(50, 100, 2.0), 1.0);
        close(s.lr(100, 100, 2.0), 0.0);
    }

    #[test]
    fn inverse_sqrt_is_the_transformer_formula_rescaled() {
        // Vaswani et al.: lrate = d^−0.5 · min(s^−0.5, s · w^−1.5); peak at s = w is d^−0.5 · w^−0.5.
        let (d, w) = (512f64, 4000u64);
        let peak = d.powf(-0.5) * (w as f64).powf(-0.5);
        let s = Schedule::InverseSqrt { warmup: w };
        for step in [0u64, 1, 999, 3999, 4000, 10_000, 100_000] {
            let n = (step + 1) as f64;
            let want = d.powf(-0.5) * n.powf(-0.5).min(n * (w as f64).powf(-1.5));
            close(s.lr(step, 0, peak), want);
        }
    }

    #[test]
    fn constant_and_validation() {
        close(Schedule::default().lr(5, 10, 3e-4), 3e-4);
        assert!(Schedule::InverseSqrt { warmup: 0 }.validate().is_err());
        assert!(
            Schedule::Cosine {
                warmup: 0,
                min_lr_ratio: 2.0
            }
            .validate()
            .unwrap_err()
            .contains("min_lr_ratio")
        );
    }
}
