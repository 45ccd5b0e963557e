//! Dropout (Srivastava et al., 2014) and the training-time randomness it draws from.
//!
//! `dropout(x, p)` zeroes each element with probability `p` and scales the survivors by
//! `1/(1 − p)` (inverted dropout), so the expected activation is unchanged and evaluation needs no
//! rescaling. It is a product with a constant mask, so the backward pass is the same mask.
//!
//! [`Noise`] is a model's source of training randomness (dropout masks, GLaM's sampled second
//! expert). The training objective seeds it from the engine's checkpointed RNG before each batch,
//! which keeps resume exact; it is inactive (no dropout, deterministic routing) until seeded and
//! after `set(None)`, which evaluation and inference rely on.

use std::sync::Mutex;

use candle_core::Tensor;

use crate::SplitMix64;

#[derive(Debug, Default)]
pub struct Noise {
    rng: Mutex<Option<SplitMix64>>,
}

impl Clone for Noise {
    fn clone(&self) -> Self {
        Self {
            rng: Mutex::new(*self.rng.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }
}

impl Noise {
    /// Starts a batch's randomness from `seed`, or turns it off (`None`).
    pub fn set(&self, seed: Option<u64>) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = seed.map(SplitMix64::new);
    }

    pub fn is_active(&self) -> bool {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// An independent stream for one random use (one dropout site, one routing call), or `None`
    /// when inactive. Uses draw in the order the forward pass reaches them.
    pub fn next_rng(&self) -> Option<SplitMix64> {
        self.rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(|r| SplitMix64::new(r.next_u64()))
    }
}

/// Inverted dropout with probability `p` (identity when `p == 0` or `noise` is inactive).
pub fn dropout(x: &Tensor, p: f64, noise: &Noise) -> crate::Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability must be in [0, 1), found {p}");
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let Some(mut rng) = noise.next_rng() else {
        return Ok(x.clone());
    };
    let n = x.elem_count();
    let keep = 1.0 / (1.0 - p) as f32;
    // Two 32-bit uniforms per draw; an element is dropped when its uniform falls below p.
    let threshold = (p * 4_294_967_296.0) as u64;
    let mut mask = Vec::with_capacity(n + 1);
    while mask.len() < n {
        let r = rng.next_u64();
        for u in [r & 0xFFFF_FFFF, r >> 32] {
            mask.push(if u < threshold { 0.0 } else { keep });
        }
    }
    mask.truncate(n);
    let m = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * m
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn drops_the_expected_fraction_and_keeps_the_mean() {
        let x = Tensor::ones(200_000, candle_core::DType::F32, &Device::Cpu).unwrap();
        let noise = Noise::default();
        // Inactive: identity.
        let y = dropout(&x, 0.1, &noise).unwrap();
        assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 200_000.0);
        noise.set(Some(3));
        let y: Vec<f32> = dropout(&x, 0.1, &noise).unwrap().to_vec1().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        assert!((zeros - 0.1).abs() < 0.005, "dropped {zeros}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        // Successive uses draw different masks; the same seed repeats them.
        let a: Vec<f32> = dropout(&x, 0.5, &noise).unwrap().to_vec1().unwrap();
        let b: Vec<f32> = dropout(&x, 0.5, &noise).unwrap().to_vec1().unwrap();
        assert_ne!(a, b);
        noise.set(Some(3));
        let _ = dropout(&x, 0.1, &noise).unwrap();
        let a2: Vec<f32> = dropout(&x, 0.5, &noise).unwrap().to_vec1().unwrap();
        assert_eq!(a, a2);
        noise.set(None);
        assert!(!noise.is_active());
        assert!(dropout(&x, 1.0, &noise).is_err());
    }

    #[test]
    fn gradient_is_the_mask() {
        let v = Var::from_tensor(&Tensor::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let noise = Noise::default();
        noise.set(Some(11));
        let y = dropout(v.as_tensor(), 0.25, &noise).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gv: Vec<f32> = g.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        let yv: Vec<f32> = y.to_vec1().unwrap();
        assert_eq!(gv, yv);
    }
}
