//! Test support shared by every crate: the one tolerance rule (`|a − r| ≤ atol + rtol·|r|`),
//! seeded random tensors, and reading golden fixtures from `goldens/`.

pub mod runs;
pub mod tiny_gguf;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// A tolerance: `|actual − reference| ≤ atol + rtol·|reference|`, element-wise.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

impl Tol {
    pub const fn new(atol: f64, rtol: f64) -> Self {
        Self { atol, rtol }
    }
    /// Bit-for-bit.
    pub const EXACT: Tol = Tol::new(0.0, 0.0);
    /// Two f32 computations of the same formula with different summation orders.
    pub const F32: Tol = Tol::new(1e-5, 1e-5);
    /// The same in f64.
    pub const F64: Tol = Tol::new(1e-10, 1e-10);
}

/// Checks two slices element-wise; the message names the worst element.
pub fn check_close(actual: &[f64], reference: &[f64], tol: Tol) -> Result<f64, String> {
    if actual.len() != reference.len() {
        return Err(format!(
            "length differs: actual {} vs reference {}",
            actual.len(),
            reference.len()
        ));
    }
    let mut worst = 0.0f64;
    // (index, actual, reference, allowed) of the worst failing element.
    let mut failure: Option<(usize, f64, f64, f64)> = None;
    for (i, (&a, &r)) in actual.iter().zip(reference).enumerate() {
        let d = (a - r).abs();
        let allowed = tol.atol + tol.rtol * r.abs();
        let fails = d.is_nan() || d > allowed;
        if fails && failure.is_none_or(|(_, fa, fr, _)| d > (fa - fr).abs() || d.is_nan()) {
            failure = Some((i, a, r, allowed));
        } else if !fails {
            worst = worst.max(d);
        }
    }
    match failure {
        Some((i, a, r, allowed)) => Err(format!(
            "element {i}: actual {a} vs reference {r}: |diff| {} > allowed {allowed} (atol {}, rtol {})",
            (a - r).abs(),
            tol.atol,
            tol.rtol
        )),
        None => Ok(worst),
    }
}

/// Panics with a clear message unless `actual` is within `tol` of `reference`; returns the max |diff|.
pub fn assert_close_f32(actual: &[f32], reference: &[f32], tol: Tol) -> f64 {
    let a: Vec<f64> = actual.iter().map(|&x| x as f64).collect();
    let r: Vec<f64> = reference.iter().map(|&x| x as f64).collect();
    match check_close(&a, &r, tol) {
        Ok(w) => w,
        Err(e) => panic!("{e}"),
    }
}

/// Tensor version of [`assert_close_f32`] (shapes must match).
pub fn assert_close(actual: &Tensor, reference: &Tensor, tol: Tol) -> f64 {
    assert_eq!(actual.dims(), reference.dims(), "shapes differ");
    let a: Vec<f32> = to_vec(actual);
    let r: Vec<f32> = to_vec(reference);
    assert_close_f32(&a, &r, tol)
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor to vec")
}

/// A standard-normal tensor from a seed.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-7);
            let u2: f32 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("randn")
}

/// The repository's `goldens/` folder.
pub fn goldens_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../goldens")
}

/// Reads a JSON fixture below `goldens/`.
pub fn golden(rel: &str) -> serde_json::Value {
    let p = goldens_dir().join(rel);
    let s =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("cannot parse {}: {e}", p.display()))
}

/// Writes a gettext `.mo` catalog of `(msgid, msgstr)` entries (tables right after the 28-byte header, strings after the tables).
pub fn write_mo(entries: &[(&[u8], &[u8])], little: bool) -> Vec<u8> {
    let w = |v: u32| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let n = entries.len() as u32;
    let (orig, trans) = (28u32, 28 + 8 * n);
    let mut strings = Vec::new();
    let mut tables = (Vec::new(), Vec::new());
    let base = trans + 8 * n;
    for (id, s) in entries {
        for (text, table) in [(id, &mut tables.0), (s, &mut tables.1)] {
            table.extend(w(text.len() as u32));
            table.extend(w(base + strings.len() as u32));
            strings.extend_from_slice(text);
            strings.push(0);
        }
    }
    let mut out = Vec::new();
    for v in [0x950412de, 0, n, orig, trans, 0, 0] {
        out.extend(w(v));
    }
    out.extend(tables.0);
    out.extend(tables.1);
    out.extend(strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_rule_is_atol_plus_rtol_times_reference() {
        assert!(check_close(&[1.0 + 1.5e-5], &[1.0], Tol::new(1e-5, 1e-5)).is_ok());
        assert!(check_close(&[1.0 + 2.5e-5], &[1.0], Tol::new(1e-5, 1e-5)).is_err());
        assert!(check_close(&[f64::NAN], &[1.0], Tol::new(1.0, 1.0)).is_err());
        assert!(check_close(&[1.0, 2.0], &[1.0], Tol::EXACT).is_err());
    }
}
