//! Attention of one new query row per sequence (a decode step) against its cached keys and
//! values, written straight into the step's `[rows, heads·hd]` output: no per-sequence output
//! tensor, transpose or concatenation.
//!
//! The arithmetic is `canon_nn::attention`'s direct loop, operation for operation (the same
//! eight-lane products summed in the same order, the same `exp`, the same running sums), so a
//! sequence decoded here gets bit-for-bit the values the single-sequence path computes; what
//! changes is how they are scheduled: the key rows are read from the cache's storage without an
//! indirect call per key, four keys' products are interleaved, and the output row stays in
//! registers across the keys.

use candle_core::{DType, Tensor};

/// A rank-4 f32 CPU tensor `[1, h, t, d]` whose rows are contiguous, read in place.
struct Rows<'a> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    /// Strides of the head and position dimensions.
    head: usize,
    pos: usize,
}

impl<'a> Rows<'a> {
    fn new(t: &'a Tensor) -> Option<Rows<'a>> {
        if t.dtype() != DType::F32 || t.rank() != 4 || !t.device().is_cpu() {
            return None;
        }
        let (guard, layout) = t.storage_and_layout();
        let stride = layout.stride();
        let dims = t.dims();
        if stride[3] != 1 || dims[0] != 1 || dims.contains(&0) {
            return None;
        }
        let last = layout.start_offset() + (0..4).map(|i| (dims[i] - 1) * stride[i]).sum::<usize>();
        match &*guard {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) if last < v.len() => {}
            _ => return None,
        }
        Some(Rows {
            start: layout.start_offset(),
            head: stride[1],
            pos: stride[2],
            guard,
        })
    }

    fn data(&self) -> &[f32] {
        match &*self.guard {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v,
            _ => &[],
        }
    }
}

/// `out[h·d..] = softmax(scale · q_h · K) V` for each query head `h` of one query row, with the
/// `h / hkv` query heads of a K/V head sharing it, over keys `lo..tk` (`lo > 0` for a sliding
/// window). `q` is `[1, h, 1, d]`, `k` and `v` `[1, hkv, tk, d]` (strided views allowed).
/// Returns `false`, touching nothing, when a tensor is not an f32 CPU tensor of that form; the
/// caller then takes the general path.
pub(crate) fn one_row(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lo: usize,
    scale: f32,
    out: &mut [f32],
) -> bool {
    let (Ok((1, h, 1, d)), Ok((1, hkv, tk, dk))) = (q.dims4(), k.dims4()) else {
        return false;
    };
    if v.dims4().ok() != Some((1, hkv, tk, d))
        || dk != d
        || hkv == 0
        || h % hkv != 0
        || lo >= tk
        || out.len() != h * d
    {
        return false;
    }
    let (Some(qr), Some(kr), Some(vr)) = (Rows::new(q), Rows::new(k), Rows::new(v)) else {
        return false;
    };
    let g = h / hkv;
    let n = tk - lo;
    let (qd, kd, vd) = (qr.data(), kr.data(), vr.data());
    let mut p = vec![0.0f32; n];
    for hi in 0..h {
        let kh = hi / g;
        let qrow = &qd[qr.start + hi * qr.head..][..d];
        let kbase = kr.start + kh * kr.head + lo * kr.pos;
        let vbase = vr.start + kh * vr.head + lo * vr.pos;
        let o = &mut out[hi * d..(hi + 1) * d];
        o.fill(0.0);
        head(
            qrow, kd, kbase, kr.pos, vd, vbase, vr.pos, n, scale, &mut p, o,
        );
    }
    true
}

/// One query head: scores, softmax and the weighted sum of values (`o` starts at zero).
#[allow(clippy::too_many_arguments)]
fn head(
    q: &[f32],
    kd: &[f32],
    kbase: usize,
    kstride: usize,
    vd: &[f32],
    vbase: usize,
    vstride: usize,
    n: usize,
    scale: f32,
    p: &mut [f32],
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if q.len().is_multiple_of(8) && q.len() <= 256 && avx2() {
            // SAFETY: the CPU has AVX2 (checked by `avx2`); the rows read lie inside `kd` and
            // `vd` (the `Rows` views checked the furthest element of each tensor).
            unsafe { head_avx2(q, kd, kbase, kstride, vd, vbase, vstride, n, scale, p, o) };
            return;
        }
    }
    let mut max = f32::NEG_INFINITY;
    for (j, pj) in p[..n].iter_mut().enumerate() {
        let at = kbase + j * kstride;
        *pj = dot(q, &kd[at..at + q.len()]) * scale;
        max = max.max(*pj);
    }
    let mut sum = 0.0f32;
    for pj in &mut p[..n] {
        *pj = (*pj - max).exp();
        sum += *pj;
    }
    let inv = 1.0 / sum;
    let d = o.len();
    for (j, pj) in p[..n].iter().enumerate() {
        let w = pj * inv;
        let at = vbase + j * vstride;
        for (ov, vv) in o.iter_mut().zip(&vd[at..at + d]) {
            *ov += w * vv;
        }
    }
}

/// `q · k` as `canon_nn::attention` computes it: eight lanes, then the lanes summed in order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// [`head`] with AVX2, for `d = q.len()` a multiple of 8 up to 256. The same roundings as the
/// scalar loop: separate multiplies and adds (no fused multiply-add), each key's eight lanes
/// summed lane 0 first, the keys' weights applied in key order.
///
/// # Safety
/// The CPU must support AVX2; rows `kbase + j·kstride .. + d` of `kd` and `vbase + j·vstride ..
/// + d` of `vd` must lie inside them for `j < n`; `p` holds `n` values and `o` `d`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_avx2(
    q: &[f32],
    kd: &[f32],
    kbase: usize,
    kstride: usize,
    vd: &[f32],
    vbase: usize,
    vstride: usize,
    n: usize,
    scale: f32,
    p: &mut [f32],
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = q.len();
    let lanes = d / 8;
    debug_assert!(p.len() >= n && o.len() == d);
    debug_assert!(n == 0 || kbase + (n - 1) * kstride + d <= kd.len());
    debug_assert!(n == 0 || vbase + (n - 1) * vstride + d <= vd.len());
    let hsum = |v: __m256| -> f32 {
        let mut a = [0.0f32; 8];
        // SAFETY: `a` holds eight floats.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
        a.iter().sum::<f32>()
    };
    // The scalar loop adds its (empty) tail sum: the same value here, whatever a sum of
    // nothing is (it decides the sign of a zero product).
    let empty: f32 = std::iter::empty::<f32>().sum();
    let qp = q.as_ptr();
    let kp = kd.as_ptr();
    let vp = vd.as_ptr();
    // Scores, four keys at a time (independent chains), each lane's sum in the scalar order.
    let mut max = f32::NEG_INFINITY;
    let mut j = 0;
    while j + 4 <= n {
        // SAFETY: keys j..j+4 are rows inside `kd` (caller's contract); q has d values.
        unsafe {
            let k0 = kp.add(kbase + j * kstride);
            let k1 = k0.add(kstride);
            let k2 = k1.add(kstride);
            let k3 = k2.add(kstride);
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            for c in 0..lanes {
                let x = _mm256_loadu_ps(qp.add(8 * c));
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(x, _mm256_loadu_ps(k0.add(8 * c))));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(x, _mm256_loadu_ps(k1.add(8 * c))));
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(x, _mm256_loadu_ps(k2.add(8 * c))));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(x, _mm256_loadu_ps(k3.add(8 * c))));
            }
            for (i, a) in [a0, a1, a2, a3].into_iter().enumerate() {
                let s = (hsum(a) + empty) * scale;
                p[j + i] = s;
                max = max.max(s);
            }
        }
        j += 4;
    }
    while j < n {
        // SAFETY: as above, for key j.
        unsafe {
            let k0 = kp.add(kbase + j * kstride);
            let mut a0 = _mm256_setzero_ps();
            for c in 0..lanes {
                let x = _mm256_loadu_ps(qp.add(8 * c));
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(x, _mm256_loadu_ps(k0.add(8 * c))));
            }
            let s = (hsum(a0) + empty) * scale;
            p[j] = s;
            max = max.max(s);
        }
        j += 1;
    }
    let mut sum = 0.0f32;
    for pj in &mut p[..n] {
        *pj = (*pj - max).exp();
        sum += *pj;
    }
    let inv = 1.0 / sum;
    // o += w_j · v_j in key order, the output in registers (32 of them at most for d = 256:
    // chunks of 8 registers, each chunk over all keys; lanes are independent, so the order of
    // the additions per lane is the scalar loop's).
    let op = o.as_mut_ptr();
    let mut c0 = 0;
    while c0 < lanes {
        let width = (lanes - c0).min(8);
        // SAFETY: o has d = 8·lanes values; value rows as for the keys.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (c, a) in acc.iter_mut().enumerate().take(width) {
                *a = _mm256_loadu_ps(op.add(8 * (c0 + c)));
            }
            for (jj, pj) in p[..n].iter().enumerate() {
                let w = _mm256_set1_ps(pj * inv);
                let row = vp.add(vbase + jj * vstride + 8 * c0);
                for (c, a) in acc.iter_mut().enumerate().take(width) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(w, _mm256_loadu_ps(row.add(8 * c))));
                }
            }
            for (c, a) in acc.iter().enumerate().take(width) {
                _mm256_storeu_ps(op.add(8 * (c0 + c)), *a);
            }
        }
        c0 += width;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use canon_nn::{AttnMask, KvCache, attention};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        // A small LCG: values in [-2, 2), different per seed.
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Bit-for-bit `canon_nn::attention` on one query row, on a strided cache view, with GQA,
    /// head widths 64 (the AVX2 path) and 12 (the scalar one), key counts that do and do not
    /// fill groups of four, and a sliding window.
    #[test]
    fn one_row_equals_the_direct_attention_bit_for_bit() {
        for &(h, hkv, d) in &[(9usize, 3usize, 64usize), (4, 4, 12), (8, 2, 128)] {
            for &tk in &[1usize, 5, 70, 129] {
                let mut cache = KvCache::new();
                let k = randn(&[1, hkv, tk, d], 1 + tk as u64);
                let v = randn(&[1, hkv, tk, d], 2 + tk as u64);
                let (kv, vv) = cache.append(&k, &v).unwrap(); // strided views (capacity ≥ 64)
                let q = randn(&[1, h, 1, d], 3 + d as u64);
                let scale = (1.0 / (d as f64).sqrt()) as f32;
                for window in [None, Some(4usize)] {
                    let mask = match window {
                        Some(w) if tk > w => AttnMask::SlidingCausal {
                            offset: tk - 1,
                            window: w,
                        },
                        _ => AttnMask::Causal { offset: tk - 1 },
                    };
                    let want = attention(&q, &kv, &vv, mask)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let lo = window.map_or(0, |w| tk.saturating_sub(w));
                    let mut got = vec![f32::NAN; h * d];
                    assert!(one_row(&q, &kv, &vv, lo, scale, &mut got));
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "h {h} hkv {hkv} d {d} tk {tk} window {window:?}: value {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn other_shapes_are_declined() {
        let q = randn(&[2, 4, 1, 8], 1);
        let k = randn(&[2, 4, 3, 8], 2);
        let mut out = vec![0.0; 32];
        assert!(!one_row(&q, &k, &k, 0, 1.0, &mut out));
        let q = randn(&[1, 4, 1, 8], 1);
        let k = randn(&[1, 3, 3, 8], 2);
        assert!(!one_row(&q, &k, &k, 0, 1.0, &mut out));
    }
}
