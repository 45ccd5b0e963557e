//! Fixed sinusoidal position table (Vaswani et al., 2017, §3.5):
//! `PE(pos, 2i) = sin(pos / 10000^(2i/d))`, `PE(pos, 2i+1) = cos(pos / 10000^(2i/d))`.
//! Transformer-XL (paper 4) uses the same frequencies for its relative table, laid out as
//! `[sin(pos·f) ; cos(pos·f)]` (all sines, then all cosines), as its reference code does.
//!
//! Shapes: positions `[t]` → `[t, d]`.

use candle_core::{Device, Tensor};

/// `[sin(p·f_0), …, sin(p·f_{d/2−1}), cos(p·f_0), …]` for each position `p` (Transformer-XL layout).
pub fn sin_cos_concat(positions: &[f32], d: usize, device: &Device) -> crate::Result<Tensor> {
    if d == 0 || !d.is_multiple_of(2) {
        candle_core::bail!("sinusoidal table: the width must be even and positive, found {d}");
    }
    let half = d / 2;
    let mut v = Vec::with_capacity(positions.len() * d);
    for &p in positions {
        let f = |i: usize| p / 10000f32.powf((2 * i) as f32 / d as f32);
        v.extend((0..half).map(|i| f(i).sin()));
        v.extend((0..half).map(|i| f(i).cos()));
    }
    Tensor::from_vec(v, (positions.len(), d), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::to_vec;

    #[test]
    fn position_zero_is_zeros_then_ones_and_values_match_the_formula() {
        let t = sin_cos_concat(&[0.0, 3.0], 8, &Device::Cpu).unwrap();
        let v = to_vec(&t);
        assert_eq!(&v[..8], &[0., 0., 0., 0., 1., 1., 1., 1.]);
        let f1 = 3.0f32 / 10000f32.powf(2.0 / 8.0);
        assert!((v[8 + 1] - f1.sin()).abs() < 1e-7);
        assert!((v[8 + 5] - f1.cos()).abs() < 1e-7);
        assert!(sin_cos_concat(&[0.0], 7, &Device::Cpu).is_err());
    }
}
