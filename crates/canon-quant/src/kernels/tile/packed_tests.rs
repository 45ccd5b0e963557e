//! The packed weights (`packed::Packed`, AVX-512 VNNI and AVX2 panel layouts) against the tile
//! kernel and the plain reference: bit-for-bit products, one row equal to the same row in any
//! batch, sizes, and rows dequantized from the packed copy.

use canon_testkit::{Tol, assert_close_f32};

use super::tests::{KINDS, random_matrix, tile_available};
use super::*;
use crate::kernels::tests::Rng;
use crate::kernels::{Isa, dequantize_row_with};

/// Weights repacked once (`packed::Packed`) give the unpacking tile kernel's products bit for bit
/// (so also its distance to the plain reference), for every packed format, 1 to 37 activation
/// rows and a partial last panel; formats that are not packed say so.
#[test]
fn packed_weights_equal_the_tile_kernel_bit_for_bit() {
    if !tile_available("packed_weights_equal_the_tile_kernel_bit_for_bit") {
        return;
    }
    let mut rng = Rng(71);
    let k = 512;
    for kind in KINDS {
        for (n, m) in [(16, 1), (40, 2), (33, 7), (48, 13), (17, 20), (64, 37)] {
            let bytes = random_matrix(kind, &mut rng, n, k);
            let w = QMatrixRef {
                kind,
                rows: n,
                cols: k,
                bytes: &bytes,
            };
            let Some(p) = packed::Packed::pack(w) else {
                assert_eq!(kind, Kind::Q3K, "{kind:?} was not packed");
                eprintln!("{kind:?}: not packed (kept on the unpacking kernels)");
                continue;
            };
            let x = rng.vec(m * k, 1.0);
            let act = TileActs::quantize(&x, m, k);
            let mut want = vec![0.0f32; m * n];
            assert!(matmul(w, &act, &mut want));
            let mut got = vec![f32::NAN; m * n];
            p.matmul(&x, m, &mut got);
            assert_close_f32(&got, &want, Tol::EXACT);
            let mut plain = vec![0.0f32; m * n];
            reference(w, &act, &mut plain);
            let scale = plain.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
            assert_close_f32(&got, &plain, Tol::new(1e-6 * scale.max(1e-3), 1e-5));
        }
    }
}

/// Packed products of one row alone equal the same row among 2..15 (decoding batches), among
/// 24 (a prompt chunk) and among 40 (prompts sharing a pass: their activations rounded over the
/// pool), bit for bit: a sequence's logits do not depend on its batch.
#[test]
fn packed_one_row_equals_the_same_row_in_any_batch() {
    if !tile_available("packed_one_row_equals_the_same_row_in_any_batch") {
        return;
    }
    let mut rng = Rng(23);
    let (n, k) = (40, 768);
    for kind in [
        Kind::Q4_0,
        Kind::Q4_1,
        Kind::Q8_0,
        Kind::Q5_0,
        Kind::Q4K,
        Kind::Q6K,
    ] {
        let bytes = random_matrix(kind, &mut rng, n, k);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let p = packed::Packed::pack(w).expect("packed");
        for m in [2, 5, 9, 15, 24, 40] {
            let x = rng.vec(m * k, 1.0);
            let mut batch = vec![0.0f32; m * n];
            p.matmul(&x, m, &mut batch);
            for t in 0..m {
                let mut one = vec![0.0f32; n];
                p.matmul(&x[t * k..(t + 1) * k], 1, &mut one);
                assert_close_f32(&one, &batch[t * n..(t + 1) * n], Tol::EXACT);
            }
        }
    }
}

/// The packed copy is the size the module documents: the 4-bit formats, Q5_0, Q5_1 and Q8_0 no
/// larger than the file's blocks, the K-quants at most 1.9× (a whole number of 64-byte scale
/// lines aside).
#[test]
fn packed_sizes_replace_the_blocks() {
    if !tile_available("packed_sizes_replace_the_blocks") {
        return;
    }
    let mut rng = Rng(5);
    let (n, k) = (64, 512);
    for kind in KINDS {
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
        let ratio = p.bytes() as f64 / bytes.len() as f64;
        eprintln!(
            "{kind:?}: packed {} bytes, blocks {}, {ratio:.3}×",
            p.bytes(),
            bytes.len()
        );
        match kind {
            Kind::Q4_0 | Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 | Kind::Q8_0 => {
                assert!(ratio <= 1.0 + 1e-9, "{kind:?}")
            }
            _ => assert!(ratio <= 1.9, "{kind:?} {ratio}"),
        }
    }
}

/// Rows dequantized from the packed copy equal the file's rows bit for bit (legacy formats); the
/// K-quants decline (their rows are read from the file).
#[test]
fn packed_rows_dequantize_to_the_same_bits() {
    if !tile_available("packed_rows_dequantize_to_the_same_bits") {
        return;
    }
    let mut rng = Rng(31);
    let (n, k) = (37, 256);
    for kind in KINDS {
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
        let mut got = vec![f32::NAN; k];
        let mut want = vec![0.0f32; k];
        for r in 0..n {
            if !p.dequantize_row(r, &mut got) {
                assert!(kind.is_k(), "{kind:?} declined row {r}");
                continue;
            }
            dequantize_row_with(Isa::Scalar, w, r, &mut want);
            let gb: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            assert_eq!(gb, wb, "{kind:?} row {r}");
        }
        assert!(
            !p.dequantize_row(n, &mut got),
            "a row out of range is declined"
        );
        // Whole panels at once (and the rows around them one by one): the same bits, from any
        // first row.
        for (r0, rows) in [(0, n), (16, 16), (3, 30), (32, 5), (0, 32)] {
            let mut many = vec![f32::NAN; rows * k];
            if !p.dequantize_rows(r0, &mut many) {
                assert!(kind.is_k(), "{kind:?} declined rows {r0}+{rows}");
                continue;
            }
            for (i, row) in many.chunks(k).enumerate() {
                dequantize_row_with(Isa::Scalar, w, r0 + i, &mut want);
                let gb: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
                let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(gb, wb, "{kind:?} rows from {r0}: row {}", r0 + i);
            }
        }
        assert!(
            !p.dequantize_rows(30, &mut vec![0.0; 8 * k]),
            "rows out of range are declined"
        );
    }
}

/// On AVX2 alone (or with `CANON_ISA=avx2`) the 4-bit and 5-bit formats, Q6_K and Q8_0 are packed for the AVX2 panel
/// kernel: its products match the plain tile arithmetic (to rounding: fused multiply-adds), one
/// row alone equals the same row in any batch bit for bit, the packed rows dequantize to the
/// file's bits, and the other formats stay unpacked.
#[test]
fn avx2_packed_weights_match_the_reference_and_any_batch() {
    if !(Isa::Avx2.available() && Isa::best() == Isa::Avx2) {
        eprintln!(
            "SKIPPED avx2_packed_weights_match_the_reference_and_any_batch: best path is not AVX2"
        );
        return;
    }
    let mut rng = Rng(97);
    let k = 512;
    for kind in KINDS {
        for (n, m) in [
            (16, 1),
            (40, 2),
            (33, 7),
            (48, 13),
            (17, 20),
            (64, 37),
            (8, 3),
        ] {
            let bytes = random_matrix(kind, &mut rng, n, k);
            let w = QMatrixRef {
                kind,
                rows: n,
                cols: k,
                bytes: &bytes,
            };
            let Some(p) = packed::Packed::pack(w) else {
                assert!(
                    !matches!(
                        kind,
                        Kind::Q4_0
                            | Kind::Q4_1
                            | Kind::Q4K
                            | Kind::Q5_0
                            | Kind::Q5_1
                            | Kind::Q5K
                            | Kind::Q6K
                            | Kind::Q8_0
                    ),
                    "{kind:?} was not packed"
                );
                continue;
            };
            assert!(
                matches!(
                    kind,
                    Kind::Q4_0
                        | Kind::Q4_1
                        | Kind::Q4K
                        | Kind::Q5_0
                        | Kind::Q5_1
                        | Kind::Q5K
                        | Kind::Q6K
                        | Kind::Q8_0
                ),
                "{kind:?} was packed"
            );
            let x = rng.vec(m * k, 1.0);
            let act = TileActs::quantize(&x, m, k);
            let mut got = vec![f32::NAN; m * n];
            p.matmul(&x, m, &mut got);
            let mut plain = vec![0.0f32; m * n];
            reference(w, &act, &mut plain);
            let scale = plain.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
            assert_close_f32(&got, &plain, Tol::new(1e-6 * scale.max(1e-3), 1e-5));
            for t in 0..m {
                let mut one = vec![f32::NAN; n];
                p.matmul(&x[t * k..(t + 1) * k], 1, &mut one);
                assert_close_f32(&one, &got[t * n..(t + 1) * n], Tol::EXACT);
            }
            let (mut row, mut want) = (vec![f32::NAN; k], vec![0.0f32; k]);
            for r in 0..n {
                if p.dequantize_row(r, &mut row) {
                    dequantize_row_with(Isa::Scalar, w, r, &mut want);
                    let gb: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
                    let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(gb, wb, "{kind:?} row {r}");
                }
            }
            // Whole panels at once (the QLoRA input gradient's path) give the same bits.
            if n >= 16 {
                let mut all = vec![f32::NAN; 16 * k];
                if p.dequantize_rows(0, &mut all) {
                    for r in 0..16 {
                        dequantize_row_with(Isa::Scalar, w, r, &mut want);
                        let gb: Vec<u32> = all[r * k..(r + 1) * k]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect();
                        let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(gb, wb, "{kind:?} panel row {r}");
                    }
                }
            }
            // Q5_0's and Q5_1's five-bit layout is the file's size (whole panels).
            if matches!(kind, Kind::Q5_0 | Kind::Q5_1) && n % 16 == 0 {
                assert_eq!(p.bytes(), bytes.len(), "{kind:?} packed size");
            }
        }
    }
}

/// The instances of the AVX2 panel kernel give the same products bit for bit (the same integer
/// sums, the same float steps): `maddubs` with the 16-bit sums widened by `madd` or by shifts,
/// and AVX-VNNI's `vpdpbusd` where the CPU has it; for every format the AVX2 layout packs, 1 to
/// 37 activation rows and partial panels. Runs where AVX2 is the best path (on a CPU with
/// AVX-512: `CANON_ISA=avxvnni` or `CANON_ISA=avx2`).
#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_panel_kernel_instances_agree_bit_for_bit() {
    use packed::Instance;
    if !(Isa::Avx2.available() && Isa::best() == Isa::Avx2) {
        eprintln!("SKIPPED avx2_panel_kernel_instances_agree_bit_for_bit: best path is not AVX2");
        return;
    }
    let mut rng = Rng(131);
    let k = 384;
    let (mut compared, mut with_vnni) = (0, 0);
    for kind in KINDS {
        for (n, m) in [
            (16, 1),
            (40, 2),
            (33, 5),
            (24, 6),
            (40, 7),
            (48, 8),
            (17, 13),
            (64, 37),
        ] {
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
            let x = rng.vec(m * k, 1.0);
            let mut plain = vec![f32::NAN; m * n];
            assert!(
                p.matmul_avx2_kernel(&x, m, &mut plain, Instance::Madd),
                "{kind:?}: AVX2 layout"
            );
            let mut shifts = vec![f32::NAN; m * n];
            assert!(p.matmul_avx2_kernel(&x, m, &mut shifts, Instance::Shifts));
            assert_close_f32(&shifts, &plain, Tol::EXACT);
            let mut vnni = vec![f32::NAN; m * n];
            if p.matmul_avx2_kernel(&x, m, &mut vnni, Instance::Vnni) {
                assert_close_f32(&vnni, &plain, Tol::EXACT);
                with_vnni += 1;
            }
            let mut pooled = vec![f32::NAN; m * n];
            p.matmul(&x, m, &mut pooled);
            assert_close_f32(&pooled, &plain, Tol::EXACT);
            compared += 1;
        }
    }
    assert!(compared >= 30, "only {compared} products compared");
    if with_vnni == 0 {
        eprintln!("avx2_panel_kernel_instances_agree_bit_for_bit: no AVX-VNNI, two instances");
    }
}
