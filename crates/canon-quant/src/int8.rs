//! LLM.int8() — Dettmers et al., 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers
//! at Scale" (paper 22).
//!
//! Idea: quantize `Y = X Wᵀ` vector-wise (one absmax per row of X and per output row of W) and
//! multiply in int8 with int32 accumulation; the few hidden features where activations reach large
//! magnitudes ("outlier features") are split off and multiplied in floating point.
//!
//! Equations implemented (section 3 of the paper):
//! - vector-wise quantization: `c_x[i] = max_j |X[i,j]|`, `c_w[o] = max_j |W[o,j]|`,
//!   `X8 = round(127·X/c_x)`, `W8 = round(127·W/c_w)`;
//!   `Y ≈ (X8 W8ᵀ)_i32 ⊙ (c_x c_wᵀ) / 127²` (the reference multiplies by 6.200124e-05 = 1/127²).
//! - (7) mixed-precision decomposition: `O = { j : max_i |X[i,j]| ≥ α }`,
//!   `Y = X[:,O] W[:,O]ᵀ (floating point) + int8 product over the other columns` (outlier columns are
//!   zeroed in X8 and excluded from `c_x`). α = 6.0; `α = ∞` turns the decomposition off.
//!
//! Deviations: the floating-point part is f32 (the paper: fp16). It multiplies with the
//! full-precision weight columns when the tensor keeps them (the paper's behaviour, `quantize(..,
//! keep_dense = true)`); a tensor read back from a file has only `W8` and `c_w`, and then uses the
//! dequantized int8 columns, as current bitsandbytes does when fp16 weights are not kept.
//! Rounding is to nearest, ties to even (`torch.round`).
//!
//! Shapes: `W: [rows, cols]` (rows = output features), `X: [m, cols]`, `Y: [m, rows]`.

use crate::{Bytes, Isa, QuantError};

/// The paper's outlier threshold α.
pub const THRESHOLD: f32 = 6.0;
/// 1/127², the dequantization constant of the reference.
pub const INV_127_SQ: f32 = 1.0 / (127.0 * 127.0);

/// An int8 vector-wise quantized matrix `[rows, cols]`.
#[derive(Debug, Clone)]
pub struct Int8Tensor {
    pub rows: usize,
    pub cols: usize,
    /// `W8`, row-major, as bytes (i8).
    pub q: Bytes,
    /// `c_w`, one absmax per output row.
    pub scale: Vec<f32>,
    /// The f32 weight, kept for the outlier columns (paper behaviour); `None` after loading.
    pub dense: Option<Vec<f32>>,
    /// α; `f32::INFINITY` disables the decomposition.
    pub threshold: f32,
}

/// Rounds `v·127/c` to i8 (ties to even); `c = 0` gives 0.
#[inline]
fn q8(v: f32, inv: f32) -> i8 {
    (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// Row-wise absmax quantization of `x: [m, k]`, skipping (zeroing) the columns where `skip[j]`:
/// returns `(X8, c_x)`.
pub fn quantize_rows(x: &[f32], m: usize, k: usize, skip: &[bool]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; m * k];
    let mut c = vec![0.0f32; m];
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let amax = row
            .iter()
            .zip(skip)
            .filter(|(_, s)| !**s)
            .fold(0.0f32, |a, (v, _)| a.max(v.abs()));
        c[i] = amax;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (j, (o, &v)) in q[i * k..(i + 1) * k].iter_mut().zip(row).enumerate() {
            *o = if skip[j] { 0 } else { q8(v, inv) };
        }
    }
    (q, c)
}

/// Outlier feature columns of `x: [m, k]`: `max_i |x[i,j]| ≥ threshold`.
pub fn outlier_columns(x: &[f32], m: usize, k: usize, threshold: f32) -> Vec<bool> {
    let mut out = vec![false; k];
    if !threshold.is_finite() {
        return out;
    }
    for i in 0..m {
        for (o, v) in out.iter_mut().zip(&x[i * k..(i + 1) * k]) {
            *o |= v.abs() >= threshold;
        }
    }
    out
}

/// `acc[t, r] = Σ_j a[t, j]·b[r, j]` in i32: `a: [m, k]`, `b: [n, k]`, `acc: [m, n]`.
pub fn matmul_i8(isa: Isa, a: &[i8], b: &[i8], m: usize, n: usize, k: usize, acc: &mut [i32]) {
    let out = SyncI32(acc.as_mut_ptr());
    let threads = crate::pool::pool().threads();
    let per = n.div_ceil(threads * 8).max(4);
    crate::pool::parallel_for(n.div_ceil(per), &|task| {
        for r in task * per..((task + 1) * per).min(n) {
            let br = &b[r * k..(r + 1) * k];
            for t in 0..m {
                let v = dot_i8(isa, &a[t * k..(t + 1) * k], br);
                // SAFETY: t < m, r < n; tasks own disjoint rows r.
                unsafe { *out.get().add(t * n + r) = v };
            }
        }
    });
}

#[derive(Clone, Copy)]
struct SyncI32(*mut i32);
// SAFETY: disjoint writes inside `parallel_for`, which returns after all of them.
unsafe impl Send for SyncI32 {}
// SAFETY: as for `Send`: tasks never write the same element, and no one reads until all are done.
unsafe impl Sync for SyncI32 {}
impl SyncI32 {
    fn get(self) -> *mut i32 {
        self.0
    }
}

/// `Σ a_j b_j` of two i8 vectors in i32.
pub fn dot_i8(isa: Isa, a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // SAFETY: `Isa::Avx2` is only chosen after run-time detection.
        return unsafe { avx2::dot_i8(a, b) };
    }
    let _ = isa;
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

impl Int8Tensor {
    /// Quantizes a row-major `[rows, cols]` weight; `keep_dense` keeps the f32 weight for the
    /// outlier columns (the paper's behaviour).
    pub fn quantize(
        w: &[f32],
        rows: usize,
        cols: usize,
        threshold: f32,
        keep_dense: bool,
    ) -> Result<Self, QuantError> {
        if w.len() != rows * cols {
            return Err(QuantError::Layout {
                what: format!("int8 input [{rows}, {cols}] values"),
                expected: rows * cols,
                found: w.len(),
            });
        }
        let (q, scale) = quantize_rows(w, rows, cols, &vec![false; cols]);
        Ok(Self {
            rows,
            cols,
            q: Bytes::Owned(q.into_iter().map(|v| v as u8).collect()),
            scale,
            dense: keep_dense.then(|| w.to_vec()),
            threshold,
        })
    }

    /// Assembles a tensor from stored parts (no full-precision weight), checking sizes.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        q: Bytes,
        scale: Vec<f32>,
        threshold: f32,
    ) -> Result<Self, QuantError> {
        if q.len() != rows * cols || scale.len() != rows {
            return Err(QuantError::Layout {
                what: format!("int8 [{rows}, {cols}] weight bytes + row scales"),
                expected: rows * cols + rows,
                found: q.len() + scale.len(),
            });
        }
        Ok(Self {
            rows,
            cols,
            q,
            scale,
            dense: None,
            threshold,
        })
    }

    pub fn shape(&self) -> Vec<usize> {
        vec![self.rows, self.cols]
    }

    /// `W8` as i8.
    pub fn q8(&self) -> &[i8] {
        // SAFETY: u8 and i8 have the same size and alignment.
        unsafe { std::slice::from_raw_parts(self.q.as_ptr() as *const i8, self.q.len()) }
    }

    /// Storage of the int8 format (W8 + c_w), in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.q.len() + 4 * self.scale.len()
    }

    /// `W8 · c_w / 127`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let k = self.cols;
        let q = self.q8();
        let mut out = vec![0.0f32; self.rows * k];
        for (r, row) in out.chunks_mut(k.max(1)).enumerate() {
            let s = self.scale[r] / 127.0;
            for (o, &v) in row.iter_mut().zip(&q[r * k..(r + 1) * k]) {
                *o = v as f32 * s;
            }
        }
        out
    }

    /// Weight element `(r, j)` for the floating-point outlier product.
    fn outlier_weight(&self, r: usize, j: usize) -> f32 {
        match &self.dense {
            Some(d) => d[r * self.cols + j],
            None => self.q8()[r * self.cols + j] as f32 * (self.scale[r] / 127.0),
        }
    }

    /// `y = x Wᵀ` with LLM.int8(): `x: [m, cols]`, `y: [m, rows]`. Returns the number of outlier
    /// columns that went through the floating-point product.
    pub fn matmul(
        &self,
        isa: Isa,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<usize, QuantError> {
        let (n, k) = (self.rows, self.cols);
        if x.len() != m * k || y.len() != m * n {
            return Err(QuantError::Layout {
                what: format!("int8 matmul [{m}, {k}] × [{n}, {k}]ᵀ input/output values"),
                expected: m * k + m * n,
                found: x.len() + y.len(),
            });
        }
        let outl = outlier_columns(x, m, k, self.threshold);
        let (x8, cx) = quantize_rows(x, m, k, &outl);
        let mut acc = vec![0i32; m * n];
        matmul_i8(isa, &x8, self.q8(), m, n, k, &mut acc);
        for t in 0..m {
            for r in 0..n {
                y[t * n + r] = acc[t * n + r] as f32 * (cx[t] * self.scale[r]) * INV_127_SQ;
            }
        }
        let cols: Vec<usize> = (0..k).filter(|&j| outl[j]).collect();
        if !cols.is_empty() {
            // Gather X[:, O] ([m, |O|]) and W[:, O] ([n, |O|]) once, then a small f32 product.
            let o = cols.len();
            let xo: Vec<f32> = (0..m)
                .flat_map(|t| cols.iter().map(move |&j| x[t * k + j]))
                .collect();
            let wo: Vec<f32> = (0..n)
                .flat_map(|r| cols.iter().map(move |&j| (r, j)))
                .map(|(r, j)| self.outlier_weight(r, j))
                .collect();
            for t in 0..m {
                let xr = &xo[t * o..(t + 1) * o];
                for r in 0..n {
                    y[t * n + r] += crate::nf4::dot(isa, xr, &wo[r * o..(r + 1) * o]);
                }
            }
        }
        Ok(cols.len())
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// i8 dot product: 16 bytes at a time sign-extended to i16, `madd` into 8 i32 lanes.
    /// A pair sum is at most 2·127² < 2³¹, and k ≤ 2²⁴ keeps the total in range.
    ///
    /// # Safety
    /// The CPU must support AVX2 (callers check with `is_x86_feature_detected!`).
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        // SAFETY: every load reads 16 bytes at i with i + 16 ≤ n ≤ both lengths; loads are unaligned.
        unsafe {
            let mut acc = _mm256_setzero_si256();
            let mut i = 0;
            while i + 16 <= n {
                let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i));
                let y = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, y));
                i += 16;
            }
            let s = _mm_add_epi32(
                _mm256_castsi256_si128(acc),
                _mm256_extracti128_si256(acc, 1),
            );
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            let mut total = _mm_cvtsi128_si32(s);
            while i < n {
                total += a[i] as i32 * b[i] as i32;
                i += 1;
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nf4::tests::normals;

    /// ‖A − B‖_F / ‖B‖_F.
    fn rel_fro(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for t in 0..m {
            for r in 0..n {
                y[t * n + r] = (0..k)
                    .map(|j| x[t * k + j] as f64 * w[r * k + j] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    /// The spec's setting: X ~ N(0,1) [64, 1024] with 4 columns at ±20 + N(0,1), W ~ N(0, 0.02²).
    fn outlier_case(seed: u64) -> (Vec<f32>, Vec<f32>) {
        let (m, k) = (64, 1024);
        let mut x = normals(m * k, seed, 1.0);
        let noise = normals(m * 4, seed + 100, 1.0);
        for (c, &j) in [17usize, 301, 640, 1000].iter().enumerate() {
            for i in 0..m {
                let sign = if (i + c) % 2 == 0 { 1.0 } else { -1.0 };
                x[i * k + j] = sign * 20.0 + noise[i * 4 + c];
            }
        }
        (x, normals(k * k, seed + 200, 0.02))
    }

    #[test]
    fn decomposition_beats_plain_vectorwise_int8_on_outlier_columns() {
        let (m, k) = (64, 1024);
        for seed in 0..2 {
            let (x, w) = outlier_case(seed);
            let exact = reference(&x, &w, m, k, k);
            let mut y = vec![0.0f32; m * k];
            let plain = Int8Tensor::quantize(&w, k, k, f32::INFINITY, true).unwrap();
            assert_eq!(plain.matmul(Isa::best(), &x, m, &mut y).unwrap(), 0);
            let e_plain = rel_fro(&y, &exact);
            let dec = Int8Tensor::quantize(&w, k, k, THRESHOLD, true).unwrap();
            assert_eq!(dec.matmul(Isa::best(), &x, m, &mut y).unwrap(), 4);
            let e_dec = rel_fro(&y, &exact);
            eprintln!(
                "seed {seed}: rel. Frobenius error plain {e_plain:.4}, decomposed {e_dec:.4}"
            );
            // Spec: plain 0.0307–0.0314, decomposed 0.0069–0.0070.
            assert!(e_dec < 0.010, "decomposed {e_dec}");
            assert!(e_plain > 0.025, "plain {e_plain}");
            assert!(e_plain / e_dec > 3.0, "{e_plain} / {e_dec}");
        }
    }

    #[test]
    fn without_outliers_the_decomposition_is_plain_int8_bitwise() {
        let (m, n, k) = (8, 40, 96);
        let x = normals(m * k, 3, 1.0)
            .into_iter()
            .map(|v| v.clamp(-5.9, 5.9))
            .collect::<Vec<_>>();
        let w = normals(n * k, 4, 0.02);
        let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
        let dec = Int8Tensor::quantize(&w, n, k, THRESHOLD, true).unwrap();
        let plain = Int8Tensor::quantize(&w, n, k, f32::INFINITY, true).unwrap();
        assert_eq!(dec.matmul(Isa::best(), &x, m, &mut a).unwrap(), 0);
        plain.matmul(Isa::best(), &x, m, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn the_threshold_test_is_greater_or_equal() {
        let x = [6.0, 5.999, -6.0, 0.0];
        assert_eq!(
            outlier_columns(&x, 1, 4, 6.0),
            vec![true, false, true, false]
        );
    }

    #[test]
    fn integer_accumulation_is_exact_and_simd_matches_scalar() {
        let (m, n, k) = (5, 9, 1000 + 7);
        let a: Vec<i8> = (0..m * k)
            .map(|i| ((i * 73 % 255) as i32 - 127) as i8)
            .collect();
        let b: Vec<i8> = (0..n * k)
            .map(|i| ((i * 151 % 255) as i32 - 127) as i8)
            .collect();
        let mut acc = vec![0i32; m * n];
        matmul_i8(Isa::Scalar, &a, &b, m, n, k, &mut acc);
        for t in 0..m {
            for r in 0..n {
                let want: f64 = (0..k)
                    .map(|j| a[t * k + j] as f64 * b[r * k + j] as f64)
                    .sum();
                assert_eq!(acc[t * n + r] as f64, want);
            }
        }
        if !Isa::Avx2.available() {
            eprintln!("skipped the AVX2 comparison: this CPU lacks AVX2");
            return;
        }
        let mut simd = vec![0i32; m * n];
        matmul_i8(Isa::Avx2, &a, &b, m, n, k, &mut simd);
        assert_eq!(simd, acc);
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step_per_row() {
        let (n, k) = (16, 100);
        let w = normals(n * k, 8, 0.05);
        let q = Int8Tensor::quantize(&w, n, k, THRESHOLD, false).unwrap();
        let d = q.dequantize();
        for r in 0..n {
            let step = q.scale[r] / 127.0;
            for j in 0..k {
                let e = (w[r * k + j] - d[r * k + j]).abs();
                assert!(e <= step / 2.0 * 1.0001, "row {r}: {e} > {}", step / 2.0);
            }
        }
    }

    #[test]
    fn rowwise_scaling_beats_tensorwise_on_rows_of_different_scales() {
        let (m, n, k) = (16, 32, 256);
        let mut x = normals(m * k, 12, 1.0);
        for i in 0..m {
            let s = 10f32.powi(i as i32 % 4 - 2);
            x[i * k..(i + 1) * k].iter_mut().for_each(|v| *v *= s);
        }
        let w = normals(n * k, 13, 0.02);
        let exact = reference(&x, &w, m, n, k);
        let mut y = vec![0.0; m * n];
        Int8Tensor::quantize(&w, n, k, f32::INFINITY, false)
            .unwrap()
            .matmul(Isa::best(), &x, m, &mut y)
            .unwrap();
        let e_row = rel_fro(&y, &exact);
        // Tensor-wise: one absmax for all of X and one for all of W.
        let cx = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let cw = w.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let xt: Vec<f32> = x
            .iter()
            .map(|&v| q8(v, 127.0 / cx) as f32 * cx / 127.0)
            .collect();
        let wt: Vec<f32> = w
            .iter()
            .map(|&v| q8(v, 127.0 / cw) as f32 * cw / 127.0)
            .collect();
        let e_tensor = rel_fro(&reference(&xt, &wt, m, n, k), &exact);
        assert!(
            e_row < e_tensor,
            "row-wise {e_row} vs tensor-wise {e_tensor}"
        );
    }
}
