//! Attention of one new query row per sequence (a decode step) against its cached keys and
//! values, written straight into the step's `[rows, heads·hd]` output: no per-sequence output
//! tensor, transpose or concatenation.
//!
//! Each query head runs `canon_nn::attention::one_query`, the kernel the single-sequence path
//! runs, on the cache's rows read in place, so a sequence decoded here gets bit-for-bit the values
//! the single-sequence path computes. An f16 cache (llama.cpp's default cache type) is read in
//! place too: a K/V head's rows are widened to f32 (exactly; F16C's `vcvtph2ps` where the CPU has
//! it) into a small per-thread buffer that the head's query heads then share, so the loop reads
//! half the bytes of an f32 cache and gets the values the converted cache would give.

use std::cell::Cell;

use candle_core::{DType, Tensor};
use canon_nn::attention::StridedRows;
use half::f16;

/// The elements of a cache tensor's storage.
enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// A rank-4 f32 or f16 CPU tensor `[1, h, t, d]` whose rows are contiguous, read in place.
struct Rows<'a> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    /// Strides of the head and position dimensions.
    head: usize,
    pos: usize,
}

impl<'a> Rows<'a> {
    fn new(t: &'a Tensor) -> Option<Rows<'a>> {
        if !matches!(t.dtype(), DType::F32 | DType::F16) || t.rank() != 4 || !t.device().is_cpu() {
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
            candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) if last < v.len() => {}
            _ => return None,
        }
        Some(Rows {
            start: layout.start_offset(),
            head: stride[1],
            pos: stride[2],
            guard,
        })
    }

    fn elems(&self) -> Elems<'_> {
        match &*self.guard {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) => Elems::F16(v),
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => Elems::F32(v),
            _ => Elems::F32(&[]),
        }
    }
}

thread_local! {
    /// Scratch kept per thread across calls: the scores, and an f16 cache's widened key and value
    /// rows of one K/V head.
    static SCRATCH: Cell<[Vec<f32>; 3]> = Cell::new(Default::default());
}

/// Rows `lo..lo + n` of width `d` of head `kh` as the kernel's strided view: the cache's own
/// rows for f32, widened into `buf` (stride `d`) for f16.
fn head_rows<'s>(
    r: &Rows<'_>,
    elems: &'s Elems<'s>,
    kh: usize,
    lo: usize,
    n: usize,
    d: usize,
    buf: &'s mut Vec<f32>,
) -> StridedRows<'s> {
    let base = r.start + kh * r.head + lo * r.pos;
    match elems {
        Elems::F32(data) => StridedRows {
            data,
            start: base,
            stride: r.pos,
        },
        Elems::F16(data) => {
            buf.clear();
            buf.resize(n * d, 0.0);
            for (j, dst) in buf.chunks_exact_mut(d).enumerate() {
                let at = base + j * r.pos;
                widen(&data[at..at + d], dst);
            }
            StridedRows {
                data: buf,
                start: 0,
                stride: d,
            }
        }
    }
}

/// `dst[i] = src[i] as f32` (exact): eight at a time with F16C where the CPU has it.
pub(crate) fn widen(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has F16C and AVX (checked just above).
        return unsafe { widen_f16c(src, dst) };
    }
    for (o, x) in dst.iter_mut().zip(src) {
        *o = x.to_f32();
    }
}

/// [`widen`] with `vcvtph2ps`.
///
/// # Safety
/// The CPU must support F16C and AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    let mut sc = src.chunks_exact(8);
    let mut dc = dst.chunks_exact_mut(8);
    for (s8, d8) in (&mut sc).zip(&mut dc) {
        // SAFETY: `s8` holds 8 f16 (16 bytes) and `d8` 8 f32 (32 bytes); both loads and stores
        // are unaligned, and the target features are enabled on this function.
        unsafe {
            let h = _mm_loadu_si128(s8.as_ptr().cast::<__m128i>());
            _mm256_storeu_ps(d8.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for (o, x) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
        *o = x.to_f32();
    }
}

/// `out[h·d..] = softmax(scale · q_h · K) V` for each query head `h` of one query row, with the
/// `h / hkv` query heads of a K/V head sharing it, over keys `lo..tk` (`lo > 0` for a sliding
/// window). `q` is an f32 `[1, h, 1, d]`, `k` and `v` `[1, hkv, tk, d]` in f32 or f16 (strided
/// views allowed). Returns `false`, touching nothing, when a tensor is not a CPU tensor of that
/// form; the caller then takes the general path.
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
    if q.dtype() != DType::F32
        || v.dims4().ok() != Some((1, hkv, tk, d))
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
    let Elems::F32(qd) = qr.elems() else {
        return false;
    };
    let g = h / hkv;
    let n = tk - lo;
    let (ke, ve) = (kr.elems(), vr.elems());
    let [mut p, mut kbuf, mut vbuf] = SCRATCH.take();
    p.clear();
    p.resize(n, 0.0);
    for kh in 0..hkv {
        let keys = head_rows(&kr, &ke, kh, lo, n, d, &mut kbuf);
        let vals = head_rows(&vr, &ve, kh, lo, n, d, &mut vbuf);
        for hi in kh * g..(kh + 1) * g {
            let qrow = &qd[qr.start + hi * qr.head..][..d];
            let o = &mut out[hi * d..(hi + 1) * d];
            o.fill(0.0);
            canon_nn::attention::one_query(qrow, keys, vals, n, scale, &mut p, o);
        }
    }
    SCRATCH.set([p, kbuf, vbuf]);
    true
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

    /// An f16 cache read in place gives bit for bit what the cache converted to f32 gives (the
    /// per-layer conversion `KvCache::append` does), on both widening paths' shapes (head widths
    /// 64 and 12, a remainder after groups of eight), with GQA and a sliding window.
    #[test]
    fn an_f16_cache_read_in_place_equals_the_converted_cache_bit_for_bit() {
        for &(h, hkv, d) in &[(9usize, 3usize, 64usize), (4, 4, 12), (8, 2, 128)] {
            for &tk in &[1usize, 5, 70, 129] {
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
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "h {h} hkv {hkv} d {d} tk {tk} lo {lo}: value {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn widening_equals_the_scalar_conversion() {
        let src: Vec<f16> = (0..37u16)
            .map(|i| f16::from_bits(i.wrapping_mul(1777)))
            .chain([
                f16::INFINITY,
                f16::NEG_INFINITY,
                f16::MIN_POSITIVE_SUBNORMAL,
            ])
            .collect();
        let mut dst = vec![0.0f32; src.len()];
        widen(&src, &mut dst);
        for (a, b) in dst.iter().zip(&src) {
            assert_eq!(a.to_bits(), b.to_f32().to_bits());
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
