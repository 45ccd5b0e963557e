//! Decoding's loops on f32 and f16 caches: `one_row` against `attention`, and an f16 cache read
//! in place against the same cache converted to f32 first.

use candle_core::{DType, Tensor};
use canon_testkit::{Tol, assert_close, randn};
use half::f16;

use super::decode::KvElem;
use super::{AttnMask, attention, one_row};
use crate::KvCache;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{what}: value {i}: {a} vs {b}");
    }
}

/// Head counts with GQA, head widths 64 (whole groups of eight) and 12 (a remainder, the scalar
/// tails), and key counts that do and do not cross the cache's first capacity.
const SHAPES: [(usize, usize, usize); 4] = [(9, 3, 64), (4, 4, 12), (8, 2, 128), (14, 2, 32)];
const KEYS: [usize; 4] = [1, 5, 70, 129];

/// Bit-for-bit `attention` on one query row, on a strided cache view, with a sliding window.
#[test]
fn one_row_equals_the_direct_attention_bit_for_bit() {
    for &(h, hkv, d) in &SHAPES {
        for &tk in &KEYS {
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
                let what = format!("h {h} hkv {hkv} d {d} tk {tk} window {window:?}");
                assert_same_bits(&got, &want, &what);
            }
        }
    }
}

/// An f16 cache read in place by `one_row` gives bit for bit what the cache converted to f32
/// gives (the conversion `KvCache::append` does).
#[test]
fn one_row_reads_an_f16_cache_in_place_bit_for_bit() {
    for &(h, hkv, d) in &SHAPES {
        for &tk in &KEYS {
            let mut cache = KvCache::new_f16();
            let k = randn(&[1, hkv, tk, d], 5 + tk as u64);
            let v = randn(&[1, hkv, tk, d], 6 + tk as u64);
            let (ks, vs) = cache.append_stored(&k, &v).unwrap();
            assert_eq!(ks.dtype(), DType::F16);
            let (kf, vf) = cache.view().unwrap().unwrap();
            let q = randn(&[1, h, 1, d], 7 + d as u64);
            let scale = (1.0 / (d as f64).sqrt()) as f32;
            for lo in [0, tk.saturating_sub(4)] {
                let mut want = vec![f32::NAN; h * d];
                assert!(one_row(&q, &kf, &vf, lo, scale, &mut want));
                let mut got = vec![f32::NAN; h * d];
                assert!(one_row(&q, &ks, &vs, lo, scale, &mut got));
                assert_same_bits(
                    &got,
                    &want,
                    &format!("h {h} hkv {hkv} d {d} tk {tk} lo {lo}"),
                );
            }
        }
    }
}

/// `attention` on an f16 cache's views (the single-sequence decode path: one to four queries,
/// on the calling thread for a short cache and on the kernel pool for a long one; prompts through
/// the matrix products) equals `attention` on the cache converted to f32: bit for bit for the
/// loops, which read it in place, and to f32 rounding for the converted prompt path.
#[test]
fn attention_over_an_f16_cache_equals_the_converted_cache() {
    for &(h, hkv, d) in &SHAPES {
        for &tk in &[3usize, 70, 600] {
            let mut cache = KvCache::new_f16();
            let k = randn(&[1, hkv, tk, d], 11 + tk as u64);
            let v = randn(&[1, hkv, tk, d], 12 + tk as u64);
            let (ks, vs) = cache.append_stored(&k, &v).unwrap();
            let (kf, vf) = cache.view().unwrap().unwrap();
            for tq in [1usize, 3, tk.min(9)] {
                let q = randn(&[1, h, tq, d], 13 + tq as u64);
                let offset = tk - tq;
                for mask in [
                    AttnMask::Causal { offset },
                    AttnMask::SlidingCausal { offset, window: 5 },
                ] {
                    let got = attention(&q, &ks, &vs, mask).unwrap();
                    let want = attention(&q, &kf, &vf, mask).unwrap();
                    assert_eq!(got.dims(), &[1, h, tq, d]);
                    if tq <= 4 {
                        assert_eq!(bits(&got), bits(&want), "h {h} d {d} tk {tk} tq {tq}");
                    } else {
                        assert_close(&got, &want, Tol::F32);
                    }
                }
            }
        }
    }
}

/// A batch of two sequences and an f16 cache under gradients-free decoding take the loops too;
/// mixed dtypes (f16 keys, f32 values) are converted rather than refused.
#[test]
fn batched_and_mixed_f16_caches_agree_with_f32() {
    let q = randn(&[2, 4, 1, 16], 21);
    let k = randn(&[2, 2, 40, 16], 22);
    let v = randn(&[2, 2, 40, 16], 23);
    let half = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
    let round = |t: &Tensor| half(t).to_dtype(DType::F32).unwrap();
    let mask = AttnMask::Causal { offset: 39 };
    let want = attention(&q, &round(&k), &round(&v), mask).unwrap();
    let got = attention(&q, &half(&k), &half(&v), mask).unwrap();
    assert_eq!(bits(&got), bits(&want));
    let mixed = attention(&q, &half(&k), &round(&v), mask).unwrap();
    assert_close(&mixed, &want, Tol::F32);
}

/// The f16 rows' dot product and accumulation, vector (F16C) and scalar, equal the f32 ones on
/// the widened values bit for bit, specials (infinities, subnormals) included.
#[test]
fn f16_row_arithmetic_equals_the_widened_f32_rows() {
    let src: Vec<f16> = (0..37u16)
        .map(|i| f16::from_bits(i.wrapping_mul(1777) & 0x7bff))
        .chain([f16::MIN_POSITIVE_SUBNORMAL, f16::from_f32(-0.5), f16::ONE])
        .collect();
    let wide: Vec<f32> = src.iter().map(|x| x.to_f32()).collect();
    let q: Vec<f32> = (0..src.len()).map(|i| (i as f32 * 0.37).sin()).collect();
    let fast = cfg!(target_arch = "x86_64")
        && std::arch::is_x86_feature_detected!("f16c")
        && std::arch::is_x86_feature_detected!("fma");
    // SAFETY: `F = false` needs no target feature.
    let (d16, d32) = unsafe { (f16::dot::<false>(&q, &src), f32::dot::<false>(&q, &wide)) };
    assert_eq!(d16.to_bits(), d32.to_bits());
    let mut o16 = q.clone();
    let mut o32 = q.clone();
    // SAFETY: as above.
    unsafe {
        f16::axpy::<false>(0.75, &src, &mut o16);
        f32::axpy::<false>(0.75, &wide, &mut o32);
    }
    assert_same_bits(&o16, &o32, "scalar axpy");
    if fast {
        // SAFETY: the CPU has F16C and FMA (checked above), which `F = true` needs.
        let (d16, d32) = unsafe { (f16::dot::<true>(&q, &src), f32::dot::<true>(&q, &wide)) };
        assert_eq!(d16.to_bits(), d32.to_bits());
        let (mut o16, mut o32) = (q.clone(), q.clone());
        // SAFETY: as above.
        unsafe {
            f16::axpy::<true>(0.75, &src, &mut o16);
            f32::axpy::<true>(0.75, &wide, &mut o32);
        }
        assert_same_bits(&o16, &o32, "F16C axpy");
    }
    let inf = [f16::INFINITY; 8];
    // SAFETY: `F = false` needs no target feature.
    let d = unsafe { f16::dot::<false>(&[1.0; 8], &inf) };
    assert_eq!(d, f32::INFINITY);
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
    // Keys f16, values f32: not one dtype.
    let k = randn(&[1, 4, 3, 8], 2);
    let kh = k.to_dtype(DType::F16).unwrap();
    assert!(!one_row(&q, &kh, &k, 0, 1.0, &mut out));
}

/// Whether the AVX2 block loops can run here (says so when not).
#[cfg(target_arch = "x86_64")]
fn avx2_fma_f16c() -> bool {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    if !ok {
        eprintln!("skipped: this CPU lacks AVX2, FMA or F16C");
    }
    ok
}

/// Decoding's scores in blocks of eight keys (`scores8`, lanes summed after a transpose) are, bit
/// for bit, the per-key dot products they replaced, for f32 and f16 keys in a strided view, widths
/// 8 to 128, with signed zeros and wide magnitudes among the values.
#[cfg(target_arch = "x86_64")]
#[test]
fn eight_key_score_blocks_equal_the_per_key_dots_bit_for_bit() {
    use super::decode::{StridedRows, lanes_max, scores8};
    if !avx2_fma_f16c() {
        return;
    }
    /// The block's scores and maximum, and each key's `dot` times the scale.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn both<T: KvElem>(
        q: &[f32],
        keys: StridedRows<'_, T>,
        scale: f32,
    ) -> ([f32; 8], [f32; 8], f32) {
        let mut blocked = [0.0f32; 8];
        // SAFETY: keys 0..8 of width q.len() lie in the view (built so below); AVX2/F16C here.
        let max = unsafe { lanes_max(scores8(q, &keys, 0, scale, blocked.as_mut_ptr())) };
        let per: [f32; 8] = std::array::from_fn(|j| {
            let k = &keys.data[keys.start + j * keys.stride..][..q.len()];
            // SAFETY: compiled with the types' features (this function).
            unsafe { T::dot::<true>(q, k) * scale }
        });
        (blocked, per, max)
    }
    for (seed, d) in [8usize, 16, 64, 128].into_iter().enumerate() {
        let (start, stride) = (5, d + 3);
        let q = randn(&[d], 100 + seed as u64).to_vec1::<f32>().unwrap();
        let mut data = randn(&[start + 8 * stride], 200 + seed as u64)
            .to_vec1::<f32>()
            .unwrap();
        // Signed zeros, a huge and a tiny key value among the products.
        data[start] = -0.0;
        data[start + stride + 1] = 0.0;
        data[start + 2 * stride] = 3.0e4;
        data[start + 3 * stride + d - 1] = -1.0e-6;
        let scale = 1.0 / (d as f32).sqrt();
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        let (b, p, m) = unsafe {
            both(
                &q,
                StridedRows {
                    data: data.as_slice(),
                    start,
                    stride,
                },
                scale,
            )
        };
        assert_same_bits(&b, &p, &format!("f32 keys, width {d}"));
        assert_eq!(m, p.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)));
        let halves: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        let (b, p, m) = unsafe {
            both(
                &q,
                StridedRows {
                    data: halves.as_slice(),
                    start,
                    stride,
                },
                scale,
            )
        };
        assert_same_bits(&b, &p, &format!("f16 keys, width {d}"));
        assert_eq!(m, p.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)));
    }
}

/// The weighted sum of value rows with the output held in registers (`weighted8`) is, bit for
/// bit, the row-by-row `axpy` it replaced, for f32 and f16 values in a strided view, widths 8 to
/// 200 (whole blocks of 64 columns and every remainder of eight), output not starting at zero.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_register_weighted_sum_equals_the_row_by_row_axpy_bit_for_bit() {
    use super::decode::{StridedRows, weighted8};
    if !avx2_fma_f16c() {
        return;
    }
    /// `o0` plus the weighted rows both ways.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn both<T: KvElem>(
        p: &[f32],
        inv: f32,
        vals: StridedRows<'_, T>,
        o0: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let mut fast = o0.to_vec();
        // SAFETY: rows 0..p.len() of width o0.len() lie in the view (built so below).
        unsafe { weighted8(p, inv, &vals, &mut fast) };
        let mut rows = o0.to_vec();
        for (j, pj) in p.iter().enumerate() {
            let v = &vals.data[vals.start + j * vals.stride..][..o0.len()];
            // SAFETY: compiled with the types' features (this function).
            unsafe { T::axpy::<true>(pj * inv, v, &mut rows) };
        }
        (fast, rows)
    }
    for (seed, (dv, n)) in [(8usize, 3usize), (64, 37), (128, 9), (200, 70)]
        .into_iter()
        .enumerate()
    {
        let (start, stride) = (3, dv + 5);
        let p: Vec<f32> = randn(&[n], 300 + seed as u64)
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.exp())
            .collect();
        let inv = 1.0 / p.iter().sum::<f32>();
        let data = randn(&[start + n * stride], 400 + seed as u64)
            .to_vec1::<f32>()
            .unwrap();
        let o0 = randn(&[dv], 500 + seed as u64).to_vec1::<f32>().unwrap();
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        let (a, b) = unsafe {
            both(
                &p,
                inv,
                StridedRows {
                    data: data.as_slice(),
                    start,
                    stride,
                },
                &o0,
            )
        };
        assert_same_bits(&a, &b, &format!("f32 values, width {dv}, {n} rows"));
        let halves: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
        // SAFETY: as above.
        let (a, b) = unsafe {
            both(
                &p,
                inv,
                StridedRows {
                    data: halves.as_slice(),
                    start,
                    stride,
                },
                &o0,
            )
        };
        assert_same_bits(&a, &b, &format!("f16 values, width {dv}, {n} rows"));
    }
}

/// `prefetch_head` is a hint: any head, length or tensor is accepted, nothing changes, and the
/// cache reads the same after it.
#[test]
fn prefetching_a_cache_head_changes_nothing_and_accepts_anything() {
    let dev = candle_core::Device::Cpu;
    for f16_cache in [false, true] {
        let mut c = if f16_cache {
            KvCache::new_f16()
        } else {
            KvCache::new()
        };
        c.prefetch_head(0); // empty: nothing to fetch
        let k = randn(&[1, 3, 5, 16], 1);
        let v = randn(&[1, 3, 5, 16], 2);
        let (k0, v0) = c.append_stored(&k, &v).unwrap();
        let before = (
            bits(&k0.to_dtype(DType::F32).unwrap()),
            bits(&v0.to_dtype(DType::F32).unwrap()),
        );
        for h in [0, 2, 3, 99] {
            c.prefetch_head(h);
            super::prefetch_head(&k0, &v0, h, 1_000_000);
        }
        let (k1, v1) = c.view().unwrap().unwrap();
        assert_eq!(before, (bits(&k1), bits(&v1)));
    }
    // Not a [1, heads, positions, d] f32/f16 CPU tensor: ignored.
    let odd = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    super::prefetch_head(&odd, &odd, 0, 4);
    let ints = Tensor::zeros((1, 2, 3, 4), DType::U32, &dev).unwrap();
    super::prefetch_head(&ints, &ints, 1, 4);
}

/// A NaN among the keys makes every output of the query NaN, on the blocked path (more than
/// eight keys, the scores' maximum taken lane-wise) as on the per-key loop (fewer than eight),
/// wherever the NaN sits: the maximum's handling of NaN cannot show.
#[test]
fn a_nan_key_makes_the_whole_output_nan_on_every_path() {
    use super::decode::{StridedRows, one_query};
    let d = 16;
    for n in [3usize, 8, 13, 24] {
        for at in [0, n / 2, n - 1] {
            let q = randn(&[d], 7).to_vec1::<f32>().unwrap();
            let mut k = randn(&[n * d], 8).to_vec1::<f32>().unwrap();
            let v = randn(&[n * d], 9).to_vec1::<f32>().unwrap();
            k[at * d + 3] = f32::NAN;
            let (kr, vr) = (
                StridedRows {
                    data: k.as_slice(),
                    start: 0,
                    stride: d,
                },
                StridedRows {
                    data: v.as_slice(),
                    start: 0,
                    stride: d,
                },
            );
            let (mut p, mut o) = (vec![0.0f32; n], vec![0.0f32; d]);
            one_query(&q, kr, vr, n, 0.25, &mut p, &mut o);
            assert!(o.iter().all(|x| x.is_nan()), "{n} keys, NaN at {at}: {o:?}");
        }
    }
}
