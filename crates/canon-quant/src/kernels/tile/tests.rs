//! The tile kernel against its plain reference, and the reference against the format's formula
//! evaluated in f64 on dequantized weights (so the rewriting into codes, offsets and scales is
//! checked independently of the SIMD code). Random bytes in every block (extreme codes included),
//! with finite scales.

use canon_testkit::{Tol, assert_close_f32};

use super::*;
use crate::kernels::tests::Rng;
use crate::kernels::{Isa, dequantize_row_with};

pub(super) const KINDS: [Kind; 9] = [
    Kind::Q4_0,
    Kind::Q4_1,
    Kind::Q5_0,
    Kind::Q5_1,
    Kind::Q8_0,
    Kind::Q3K,
    Kind::Q4K,
    Kind::Q5K,
    Kind::Q6K,
];

/// `rows` rows of `nb` blocks of random bytes, the f16 scale fields set to small finite values.
pub(super) fn random_matrix(kind: Kind, rng: &mut Rng, rows: usize, k: usize) -> Vec<u8> {
    let nb = k / kind.block_len();
    let bb = kind.block_bytes();
    let mut out = Vec::with_capacity(rows * nb * bb);
    for _ in 0..rows * nb {
        let mut blk: Vec<u8> = (0..bb).map(|_| rng.next() as u8).collect();
        let mut put = |at: usize, v: f32| {
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
        };
        match kind {
            Kind::Q3K => put(108, rng.normal(0.01)),
            Kind::Q6K => put(208, rng.normal(0.01)),
            Kind::Q4K | Kind::Q5K => {
                put(0, rng.normal(0.01));
                put(2, rng.normal(0.01));
            }
            Kind::Q4_1 | Kind::Q5_1 => {
                put(0, rng.normal(0.05));
                put(2, rng.normal(0.2));
            }
            _ => put(0, rng.normal(0.05)),
        }
        out.extend_from_slice(&blk);
    }
    out
}

pub(super) fn tile_available(test: &str) -> bool {
    let ok = Isa::Avx512Vnni.available() && Isa::best() == Isa::Avx512Vnni;
    if !ok {
        eprintln!(
            "SKIPPED {test} (Avx512Vnni): CPU lacks one of {} or CANON_ISA caps it",
            Isa::Avx512Vnni.extensions()
        );
    }
    ok
}

/// The reference equals `Σ_k w[r, k] · d[t, b]·q[t, k]` in f64 with `w` dequantized by the
/// existing row unpacking.
#[test]
fn reference_matches_the_format_formula_in_f64() {
    let mut rng = Rng(21);
    let (n, k, m) = (5, 512, 3);
    for kind in KINDS {
        let bytes = random_matrix(kind, &mut rng, n, k);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let x = rng.vec(m * k, 1.0);
        let act = TileActs::quantize(&x, m, k);
        let mut got = vec![0.0f32; m * n];
        reference(w, &act, &mut got);
        let mut want = vec![0.0f32; m * n];
        let mut row = vec![0.0f32; k];
        for r in 0..n {
            dequantize_row_with(Isa::Scalar, w, r, &mut row);
            for t in 0..m {
                let s: f64 = (0..k)
                    .map(|i| {
                        row[i] as f64 * act.d[t * act.nb + i / QK] as f64 * act.qs[t * k + i] as f64
                    })
                    .sum();
                want[t * n + r] = s as f32;
            }
        }
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
        // f32 sums of per-block terms against one f64 sum: a few ulps of the largest term.
        let w = assert_close_f32(&got, &want, Tol::new(1e-5 * scale.max(1e-3), 1e-4));
        eprintln!("{kind:?}: reference vs f64 formula, max |diff| {w:.3e} (scale {scale:.3e})");
    }
}

/// Activation rounding: the codes and scales of `Q8Rows`, exact half sums, `s = d·Σq`.
#[test]
fn activations_keep_q8_codes_and_exact_half_sums() {
    let mut rng = Rng(5);
    let (m, k) = (3, 96);
    let x = rng.vec(m * k, 2.0);
    let a = TileActs::quantize(&x, m, k);
    let q8 = crate::kernels::Q8Rows::quantize(&x, m, k);
    assert_eq!(a.qs, q8.qs);
    assert_eq!(a.d, q8.d);
    for (i, [h0, h1]) in a.h.iter().enumerate() {
        let q = &a.qs[i * QK..(i + 1) * QK];
        assert_eq!(*h0, q[..16].iter().map(|&v| v as i32).sum::<i32>());
        assert_eq!(*h1, q[16..].iter().map(|&v| v as i32).sum::<i32>());
        assert_eq!(a.s[i], a.d[i] * (h0 + h1) as f32);
    }
}

/// The AVX-512 VNNI tile kernel against the reference: row counts around the 8-row pass and the
/// 16-row panel (a partial last panel), every format with a tile form.
#[test]
fn tile_kernel_matches_the_reference() {
    if !tile_available("tile_kernel_matches_the_reference") {
        return;
    }
    let mut rng = Rng(99);
    let k = 512;
    for kind in KINDS {
        for (n, m) in [(16, 1), (40, 3), (33, 8), (48, 13), (17, 20), (64, 37)] {
            let bytes = random_matrix(kind, &mut rng, n, k);
            let w = QMatrixRef {
                kind,
                rows: n,
                cols: k,
                bytes: &bytes,
            };
            let x = rng.vec(m * k, 1.0);
            let act = TileActs::quantize(&x, m, k);
            let mut want = vec![0.0f32; m * n];
            reference(w, &act, &mut want);
            let mut got = vec![f32::NAN; m * n];
            assert!(matmul(w, &act, &mut got), "{kind:?}: no tile path");
            let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
            // Same terms in the same order; the fused multiply-add rounds once where the
            // reference rounds twice.
            assert_close_f32(&got, &want, Tol::new(1e-6 * scale.max(1e-3), 1e-5));
        }
    }
}

/// Through `kernels::matmul` (the switch by row count): within activation rounding of the f32
/// GEMM on dequantized weights.
#[test]
fn prompt_products_stay_near_the_f32_gemm() {
    let mut rng = Rng(3);
    let (n, k, m) = (48, 256, 24);
    for kind in KINDS {
        let bytes = random_matrix(kind, &mut rng, n, k);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let x = rng.vec(m * k, 1.0);
        let mut got = vec![0.0f32; m * n];
        crate::kernels::matmul(Isa::best(), w, &x, m, &mut got);
        let mut want = vec![0.0f32; m * n];
        crate::kernels::matmul_dequantized(w, &x, m, &mut want);
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
        // 8-bit activations: each product is off by up to half a step of 1/127 of its block's
        // largest value; over 256 terms of random sign that stays within about 2 % of the scale.
        assert_close_f32(&got, &want, Tol::new(0.02 * scale, 0.0));
    }
}

/// A row multiplied alone (`avx512::gemv`, no panel) equals the same row among many (the panel
/// kernel), bit for bit: decoding one sequence or a batch gives the same logits.
#[test]
fn one_row_equals_the_same_row_in_a_batch_bit_for_bit() {
    if !tile_available("one_row_equals_the_same_row_in_a_batch_bit_for_bit") {
        return;
    }
    let mut rng = Rng(17);
    let (n, k, m) = (40, 768, 11);
    assert!(m > GEMV_MAX_ROWS);
    for kind in KINDS {
        let bytes = random_matrix(kind, &mut rng, n, k);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let x = rng.vec(m * k, 1.0);
        let mut batch = vec![0.0f32; m * n];
        assert!(matmul(w, &TileActs::quantize(&x, m, k), &mut batch));
        for t in 0..m {
            let mut one = vec![0.0f32; n];
            let a = TileActs::quantize(&x[t * k..(t + 1) * k], 1, k);
            assert!(matmul(w, &a, &mut one));
            assert_close_f32(&one, &batch[t * n..(t + 1) * n], Tol::EXACT);
        }
    }
}

/// A prompt's activation rows, rounded on the kernel pool in row groups, hold exactly what each
/// row rounded alone holds (codes, scales, code sums).
#[test]
fn prompt_activations_round_as_rows_alone() {
    let (rows, k) = (53, 96);
    let mut st = 0x1234_5678_9abc_def1u64;
    let x: Vec<f32> = (0..rows * k)
        .map(|_| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            (st >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let all = TileActs::quantize(&x, rows, k);
    let nb = k / 32;
    for r in 0..rows {
        let one = TileActs::quantize(&x[r * k..(r + 1) * k], 1, k);
        assert_eq!(&all.qs[r * k..(r + 1) * k], &one.qs[..], "row {r}");
        assert_eq!(&all.d[r * nb..(r + 1) * nb], &one.d[..], "row {r}");
        assert_eq!(&all.s[r * nb..(r + 1) * nb], &one.s[..], "row {r}");
        assert_eq!(&all.h[r * nb..(r + 1) * nb], &one.h[..], "row {r}");
    }
}

/// `matmul_uninit` (a new output buffer with no zero-fill) writes every output: a buffer of NaN
/// comes back with exactly `matmul`'s values, for every packed format, ragged row and panel counts.
#[test]
fn packed_products_write_every_output() {
    let mut rng = Rng(131);
    let k = 256;
    let mut packed_any = false;
    for kind in KINDS {
        for (n, m) in [(16, 1), (33, 7), (17, 5), (64, 9), (8, 2), (100, 1)] {
            let bytes = random_matrix(kind, &mut rng, n, k);
            let w = QMatrixRef {
                kind,
                rows: n,
                cols: k,
                bytes: &bytes,
            };
            let Some(p) = packed::Packed::pack(w) else {
                continue;
            };
            packed_any = true;
            let x = rng.vec(m * k, 1.0);
            let mut want = vec![0.0f32; m * n];
            p.matmul(&x, m, &mut want);
            let mut got = vec![std::mem::MaybeUninit::new(f32::NAN); m * n];
            p.matmul_uninit(&x, m, &mut got);
            // SAFETY: the buffer was initialised (to NaN) before the call.
            let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
            let gb: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            assert_eq!(gb, wb, "{kind:?} n {n} m {m}");
        }
    }
    if !packed_any {
        eprintln!("SKIPPED packed_products_write_every_output: no packed kernel on this CPU");
    }
}

/// The tile arithmetic as the AVX2 panel kernel evaluates it, one activation row and weight row at
/// a time: exact integer sums per block (per half for Q6_K), then `acc = i·(s₀·dx) + acc` fused,
/// and for the formats with a minimum `acc = s₁·sx + acc` fused, block by block.
fn fused_reference(w: QMatrixRef<'_>, act: &TileActs, y: &mut [f32]) {
    let (mode, o) = form(w.kind).expect("tile form");
    let (n, k, nb) = (w.rows, w.cols, act.nb);
    let mut codes = vec![0u8; k];
    let mut scales = vec![[0.0f32; 2]; nb];
    for r in 0..n {
        row_form(w, r, &mut codes, &mut scales);
        for t in 0..act.rows {
            let mut acc = 0.0f32;
            for (b, sc) in scales.iter().enumerate() {
                let q = &act.qs[t * k + b * QK..t * k + (b + 1) * QK];
                let u = &codes[b * QK..(b + 1) * QK];
                let half = |h: usize| -> i32 {
                    (16 * h..16 * h + 16)
                        .map(|i| u[i] as i32 * q[i] as i32)
                        .sum()
                };
                let [h0, h1] = act.h[t * nb + b];
                let dx = act.d[t * nb + b];
                match mode {
                    Mode::Sym | Mode::Min => {
                        let i = half(0) + half(1) - o * (h0 + h1);
                        acc = (i as f32).mul_add(sc[0] * dx, acc);
                        if mode == Mode::Min {
                            acc = sc[1].mul_add(act.s[t * nb + b], acc);
                        }
                    }
                    Mode::Half => {
                        acc = ((half(0) - o * h0) as f32).mul_add(sc[0] * dx, acc);
                        acc = ((half(1) - o * h1) as f32).mul_add(sc[1] * dx, acc);
                    }
                }
            }
            y[t * n + r] = acc;
        }
    }
}

/// The AVX2 panel kernel's products equal the tile arithmetic evaluated with the same fused
/// steps (`fused_reference`) bit for bit, for every format it packs, 1 to 9 activation rows,
/// odd row counts (partial panels and half-panels) and several widths, with activation rows at
/// the extremes of the 8-bit range (every code ±127) next to random ones: the integer sums are
/// exact however the kernel widens its 16-bit pair sums.
#[test]
fn avx2_panel_kernel_equals_the_fused_tile_arithmetic_bit_for_bit() {
    if !(Isa::Avx2.available() && Isa::best() == Isa::Avx2) {
        eprintln!(
            "SKIPPED avx2_panel_kernel_equals_the_fused_tile_arithmetic_bit_for_bit: best path is not AVX2"
        );
        return;
    }
    let mut rng = Rng(4242);
    for kind in [
        Kind::Q4_0,
        Kind::Q4_1,
        Kind::Q4K,
        Kind::Q5_0,
        Kind::Q5_1,
        Kind::Q5K,
        Kind::Q6K,
        Kind::Q8_0,
    ] {
        let widths: &[usize] = if kind.is_k() {
            &[256, 768]
        } else {
            &[32, 96, 544]
        };
        for &k in widths {
            for n in [1usize, 7, 9, 16, 23, 41] {
                let bytes = random_matrix(kind, &mut rng, n, k);
                let w = QMatrixRef {
                    kind,
                    rows: n,
                    cols: k,
                    bytes: &bytes,
                };
                let p = packed::Packed::pack(w).expect("packed for the AVX2 kernel");
                for m in 1..=9usize {
                    let mut x = rng.vec(m * k, 1.0);
                    for (t, row) in x.chunks_mut(k).enumerate() {
                        match t % 3 {
                            // Every code +127 or −127 (all magnitudes equal), signs random or
                            // all the same.
                            1 => row.iter_mut().for_each(|v| *v = v.signum()),
                            2 => row.iter_mut().for_each(|v| *v = 1.0),
                            _ => {}
                        }
                    }
                    let act = TileActs::quantize(&x, m, k);
                    let mut got = vec![f32::NAN; m * n];
                    p.matmul_acts(&act, &mut got);
                    let mut want = vec![0.0f32; m * n];
                    fused_reference(w, &act, &mut want);
                    let gb: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                    let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(gb, wb, "{kind:?} n {n} k {k} m {m}");
                }
            }
        }
    }
}
