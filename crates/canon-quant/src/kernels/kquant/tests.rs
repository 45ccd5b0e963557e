//! K-quant tests: the unpacking against candle's independent dequantization, the scalar product
//! against f64 arithmetic on dequantized values, every SIMD path against the scalar reference, and
//! the row quantizer's error. A SIMD path the CPU lacks is reported as SKIPPED on stderr.

use std::borrow::Cow;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{Device, Tensor};

use super::*;
use crate::kernels::tests::{Rng, simd_paths};
use crate::kernels::{Isa, QMatrixRef, matmul};

const KINDS: [Kind; 5] = [Kind::Q2K, Kind::Q3K, Kind::Q4K, Kind::Q5K, Kind::Q6K];

/// Random blocks: random bytes except the f16 scales, which get finite values.
fn random_blocks(kind: Kind, rng: &mut Rng, nb: usize) -> Vec<u8> {
    let bb = kind.block_bytes();
    let mut out = Vec::with_capacity(nb * bb);
    for _ in 0..nb {
        let mut blk: Vec<u8> = (0..bb).map(|_| rng.next() as u8).collect();
        let mut put = |at: usize, v: f32| {
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
        };
        match kind {
            Kind::Q2K => {
                put(80, rng.normal(0.01));
                put(82, rng.normal(0.01));
            }
            Kind::Q3K => put(108, rng.normal(0.01)),
            Kind::Q6K => put(208, rng.normal(0.01)),
            _ => {
                put(0, rng.normal(0.01));
                put(2, rng.normal(0.01));
            }
        }
        out.extend_from_slice(&blk);
    }
    out
}

/// candle's dequantization of `[rows, k]` blocks (an implementation independent of ours).
fn candle_dequantize(kind: Kind, bytes: &[u8], rows: usize, k: usize) -> Vec<f32> {
    let storage = QStorage::from_data(
        Cow::Borrowed(bytes),
        &Device::Cpu,
        crate::GgmlTensor::from_bytes(kind.ggml(), &[rows, k], bytes)
            .unwrap()
            .dtype
            .candle(),
    )
    .unwrap();
    let t: Tensor = QTensor::new(storage, vec![rows, k])
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// `Σ|w_i·x_i|` for weight row `w` and activation row `t`: sums of terms of either sign carry an
/// f32 error proportional to it, not to the result.
fn magnitude(kind: Kind, w: &[u8], act: &Q8KRows, t: usize) -> f32 {
    let k = act.nb * QK_K;
    let mut wf = vec![0.0f32; k];
    scalar::dequantize_row(kind, w, &mut wf);
    wf.iter()
        .zip(&act.qs[t * k..(t + 1) * k])
        .enumerate()
        .map(|(i, (w, &q))| (w * act.d[t * act.nb + i / QK_K] * q as f32).abs())
        .sum()
}

#[test]
fn unpacking_matches_candles_dequantization() {
    let mut rng = Rng(41);
    for kind in KINDS {
        let (rows, nb) = (3, 4);
        let k = nb * QK_K;
        let mut bytes = Vec::new();
        for _ in 0..rows {
            bytes.extend(random_blocks(kind, &mut rng, nb));
        }
        let want = candle_dequantize(kind, &bytes, rows, k);
        let mut got = vec![0.0f32; rows * k];
        for (r, o) in got.chunks_mut(k).enumerate() {
            let rb = nb * kind.block_bytes();
            scalar::dequantize_row(kind, &bytes[r * rb..(r + 1) * rb], o);
        }
        let mut paths = vec![(Isa::Scalar, got)];
        for isa in simd_paths("unpacking_matches_candles_dequantization") {
            let w = QMatrixRef {
                kind,
                rows,
                cols: k,
                bytes: &bytes,
            };
            let mut v = vec![0.0f32; rows * k];
            for (r, o) in v.chunks_mut(k).enumerate() {
                crate::kernels::dequantize_row_with(isa, w, r, o);
            }
            paths.push((isa, v));
        }
        for (isa, got) in paths {
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // Same formula, different association of the f32 products (Q6_K's −32 offset,
                // the fused multiply-add).
                let tol = 1e-5 * w.abs().max(1e-3);
                assert!(
                    (g - w).abs() <= tol,
                    "{isa:?} {kind:?} value {i}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn activation_rounding_keeps_group_sums_and_half_a_step() {
    let mut rng = Rng(8);
    let x = rng.vec(2 * 512, 4.0);
    let a = Q8KRows::quantize(&x, 2, 512);
    for (b, xb) in x.chunks(QK_K).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (j, v) in xb.iter().enumerate() {
            let r = a.d[b] * a.qs[b * QK_K + j] as f32;
            assert!((r - v).abs() <= amax / 127.0 * 0.5 * (1.0 + 1e-5));
        }
        for g in 0..16 {
            let s: i32 = (0..16).map(|i| a.qs[b * QK_K + 16 * g + i] as i32).sum();
            assert_eq!(s, a.bsums[b * 16 + g] as i32);
        }
    }
    let z = Q8KRows::quantize(&[0.0; QK_K], 1, QK_K);
    assert_eq!(z.d[0], 0.0);
    assert!(z.qs.iter().all(|&q| q == 0) && z.bsums.iter().all(|&s| s == 0));
}

/// The scalar block product equals `Σ w_i · dx·q_i` in f64, with `w` from candle's
/// dequantization: the integer rewriting (codes, group scales, minima over `bsums`) is exact.
#[test]
fn scalar_dot_equals_the_f64_product_of_dequantized_values() {
    let mut rng = Rng(12);
    for kind in KINDS {
        for nb in [1, 3] {
            let k = nb * QK_K;
            let w = random_blocks(kind, &mut rng, nb);
            let wf = candle_dequantize(kind, &w, 1, k);
            let x = rng.vec(k, 2.0);
            let act = Q8KRows::quantize(&x, 1, k);
            let (mut want, mut scale) = (0.0f64, 0.0f64);
            for (i, (&wv, &q)) in wf.iter().zip(&act.qs).enumerate() {
                let xv = act.d[i / QK_K] as f64 * q as f64;
                want += wv as f64 * xv;
                scale += (wv as f64 * xv).abs();
            }
            let mut got = [0.0f32];
            scalar::dot_rows(kind, &w, &[act.row(0)], &mut got);
            assert!(
                (got[0] as f64 - want).abs() <= 1e-5 * scale.max(1e-6),
                "{kind:?} nb {nb}: {} vs {want} (scale {scale})",
                got[0]
            );
        }
    }
}

#[test]
fn simd_k_dot_equals_scalar() {
    let mut rng = Rng(77);
    for isa in simd_paths("simd_k_dot_equals_scalar") {
        for kind in KINDS {
            for nb in [1, 2, 5] {
                let k = nb * QK_K;
                let w = random_blocks(kind, &mut rng, nb);
                for m in 1..=10 {
                    let mut x = rng.vec(m * k, 1.0);
                    x[0] = 1e4; // one block dominated by a spike
                    let act = Q8KRows::quantize(&x, m, k);
                    let acts: Vec<_> = (0..m).map(|t| act.row(t)).collect();
                    let mut want = vec![0.0; m];
                    let mut got = vec![0.0; m];
                    scalar::dot_rows(kind, &w, &acts, &mut want);
                    // SAFETY: `simd_paths` lists only paths this CPU runs; rows match `w`.
                    unsafe {
                        match isa {
                            Isa::Avx2 => simd::avx2::dot_rows(kind, &w, &acts, &mut got),
                            Isa::Avx512Vnni => simd::avx512::dot_rows(kind, &w, &acts, &mut got),
                            Isa::Scalar => unreachable!(),
                        }
                    }
                    for (t, (g, e)) in got.iter().zip(&want).enumerate() {
                        let tol = 2e-5 * e.abs().max(1.0) + 1e-6 * magnitude(kind, &w, &act, t);
                        assert!(
                            (g - e).abs() <= tol,
                            "{isa:?} {kind:?} nb {nb} m {m}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_takes_the_k_kernels_on_every_path() {
    let mut rng = Rng(6);
    let mut paths = simd_paths("matmul_takes_the_k_kernels_on_every_path");
    paths.push(Isa::Scalar);
    for kind in KINDS {
        let (n, k) = (23, 512);
        let bytes = random_blocks(kind, &mut rng, n * k / QK_K);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        for m in [1, 3, 9] {
            let x = rng.vec(m * k, 1.0);
            let act = Q8KRows::quantize(&x, m, k);
            let tact = crate::kernels::tile::TileActs::quantize(&x, m, k);
            let mut tile_want = vec![0.0; m * n];
            crate::kernels::tile::reference(w, &tact, &mut tile_want);
            for &isa in &paths {
                let mut y = vec![0.0; m * n];
                matmul(isa, w, &x, m, &mut y);
                for t in 0..m {
                    for r in 0..n {
                        let mut e = [0.0];
                        if crate::kernels::tile::takes(isa, kind, m) {
                            // Q8 blocks of 32 there, not Q8_K: compare with the tile sums.
                            e[0] = tile_want[t * n + r];
                        } else {
                            scalar::dot_rows(kind, w.row(r), &[act.row(t)], &mut e);
                        }
                        let g = y[t * n + r];
                        let tol =
                            2e-5 * e[0].abs().max(1.0) + 1e-6 * magnitude(kind, w.row(r), &act, t);
                        assert!(
                            (g - e[0]).abs() <= tol,
                            "{isa:?} {kind:?} m {m} ({t},{r}): {g} vs {}",
                            e[0]
                        );
                    }
                }
            }
        }
    }
}

/// Quantizing then dequantizing stays within a step of each group (plus the scales' own
/// rounding), and the 8-bit product stays close to the float product.
#[test]
fn row_quantizer_round_trips_and_products_stay_close() {
    let mut rng = Rng(19);
    let (n, k) = (8, 512);
    for kind in KINDS {
        let wf = rng.vec(n * k, 0.2);
        let mut bytes = Vec::new();
        scalar::quantize_row(kind, &wf, &mut bytes);
        assert_eq!(bytes.len(), n * k / QK_K * kind.block_bytes());
        let back = candle_dequantize(kind, &bytes, n, k);
        for (g, (xs, ys)) in wf.chunks(16).zip(back.chunks(16)).enumerate() {
            let lo = xs.iter().copied().fold(0.0f32, f32::min);
            let hi = xs.iter().copied().fold(0.0f32, f32::max);
            // Codes have 15, 31 or 63 steps over the range; the 6/8-bit scales add a relative
            // error of about 1/63 of the largest scale in the block.
            let steps = match kind {
                Kind::Q2K => 3.0,
                Kind::Q3K => 7.0,
                Kind::Q4K => 15.0,
                Kind::Q5K => 31.0,
                _ => 63.0,
            };
            let bound = (hi - lo) / steps + 0.05 * 0.2 * 4.0;
            for (a, b) in xs.iter().zip(ys) {
                assert!((a - b).abs() <= bound, "{kind:?} group {g}: {a} vs {b}");
            }
        }
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let x = rng.vec(k, 1.0);
        let mut y = vec![0.0; n];
        matmul(Isa::best(), w, &x, 1, &mut y);
        for (r, yr) in y.iter().enumerate() {
            let row = &back[r * k..(r + 1) * k];
            let exact: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
            let scale: f32 = row.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            assert!(
                (yr - exact).abs() <= 0.02 * scale,
                "{kind:?} row {r}: {yr} vs {exact}"
            );
        }
    }
}
