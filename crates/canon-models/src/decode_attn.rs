//! Attention of one new query row per sequence (a decode step) against its cached keys and
//! values, written straight into the step's `[rows, heads·hd]` output: no per-sequence output
//! tensor, transpose or concatenation.
//!
//! Each query head runs `canon_nn::attention::one_query`, the kernel the single-sequence path
//! runs, on the cache's rows read in place, so a sequence decoded here gets bit-for-bit the values
//! the single-sequence path computes.

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
        let (kp, vp) = (kr.pos, vr.pos);
        canon_nn::attention::one_query(
            qrow,
            canon_nn::attention::StridedRows {
                data: kd,
                start: kbase,
                stride: kp,
            },
            canon_nn::attention::StridedRows {
                data: vd,
                start: vbase,
                stride: vp,
            },
            n,
            scale,
            &mut p,
            o,
        );
    }
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
