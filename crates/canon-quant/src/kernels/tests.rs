//! Kernel tests: the scalar reference against plain f64 arithmetic on dequantized values, and every
//! SIMD path against the scalar reference on random and adversarial blocks. A SIMD path the running
//! CPU lacks is reported as skipped on stderr, never counted silently.

use super::*;

const KINDS: [Kind; 5] = [Kind::Q4_0, Kind::Q4_1, Kind::Q5_0, Kind::Q5_1, Kind::Q8_0];

/// xorshift64*: deterministic test data without dependencies.
pub(crate) struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of uniforms), scaled.
    pub fn normal(&mut self, scale: f32) -> f32 {
        ((0..4).map(|_| self.uniform()).sum::<f32>() - 2.0) * scale * 1.7
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(scale)).collect()
    }
}

fn quantize_matrix(kind: Kind, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    scalar::quantize_row(kind, x, &mut out);
    out
}

pub(crate) fn simd_paths(test: &str) -> Vec<Isa> {
    let mut v = Vec::new();
    for isa in [Isa::Avx2, Isa::Avx512Vnni] {
        if isa.available() {
            v.push(isa);
        } else {
            eprintln!(
                "SKIPPED {test} ({isa:?}): CPU lacks one of {}",
                isa.extensions()
            );
        }
    }
    v
}

#[test]
fn round_trip_error_is_within_the_format_step() {
    let mut rng = Rng(7);
    for kind in KINDS {
        let x = rng.vec(32 * 40, 1.0);
        let q = quantize_matrix(kind, &x);
        assert_eq!(q.len(), 40 * kind.block_bytes());
        let mut y = vec![0.0; x.len()];
        scalar::dequantize_row(kind, &q, &mut y);
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let lo = xb.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = xb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let amax = lo.abs().max(hi.abs());
            // Half a step, except that the symmetric 4/5-bit formats put the extreme at -8·d or
            // -16·d, so the other sign reaches only 7·d or 15·d: a value there can be a whole step
            // off. Plus the f16 rounding of the scale applied to the largest code.
            let err = match kind {
                Kind::Q4_0 => amax / 8.0,
                Kind::Q5_0 => amax / 16.0,
                Kind::Q4_1 => 0.5 * (hi - lo) / 15.0,
                Kind::Q5_1 => 0.5 * (hi - lo) / 31.0,
                Kind::Q8_0 => 0.5 * amax / 127.0,
                Kind::Q2K | Kind::Q3K | Kind::Q4K | Kind::Q5K | Kind::Q6K => {
                    unreachable!("not in KINDS")
                }
            };
            let bound = err + amax * 2e-3 + 1e-6;
            for (a, b) in xb.iter().zip(yb) {
                assert!(
                    (a - b).abs() <= bound,
                    "{kind:?}: {a} vs {b}, bound {bound}"
                );
            }
        }
    }
}

#[test]
fn dequantize_matches_the_documented_layout() {
    // Q5_1 block: d = 0.25, m = 1.0, value j = j (0..31): nibbles j & 15, fifth bit j >> 4.
    let mut b = Vec::new();
    b.extend_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
    b.extend_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
    b.extend_from_slice(&0xFFFF_0000u32.to_le_bytes());
    for i in 0..16u8 {
        b.push(i | (i << 4));
    }
    let mut y = [0.0f32; 32];
    scalar::dequantize_row(Kind::Q5_1, &b, &mut y);
    for (j, v) in y.iter().enumerate() {
        assert_eq!(*v, 0.25 * j as f32 + 1.0);
    }
    // Q5_0 on the same codes: x = d·(q − 16).
    let mut b0 = b[..2].to_vec();
    b0.extend_from_slice(&b[4..]);
    scalar::dequantize_row(Kind::Q5_0, &b0, &mut y);
    for (j, v) in y.iter().enumerate() {
        assert_eq!(*v, 0.25 * (j as f32 - 16.0));
    }
}

/// The scalar block product equals the same formula evaluated in f64.
#[test]
fn scalar_dot_equals_the_product_of_dequantized_values() {
    let mut rng = Rng(11);
    for kind in KINDS {
        let k = 32 * 9;
        let w = quantize_matrix(kind, &rng.vec(k, 0.5));
        let x = rng.vec(k, 2.0);
        let act = Q8Rows::quantize(&x, 1, k);
        // The kernel's formula in f64: integer codes, f16 scales, and the f16-rounded s = d·Σq.
        let mut want = 0.0f64;
        let mut q = [0i32; 32];
        for (b, blk) in w.chunks(kind.block_bytes()).enumerate() {
            let (d, m) = scalar::unpack_block(kind, blk, &mut q);
            let isum: i64 = (0..32)
                .map(|j| q[j] as i64 * act.qs[b * 32 + j] as i64)
                .sum();
            want += d as f64 * act.d[b] as f64 * isum as f64;
            if kind.has_min() {
                want += m as f64 * act.s[b] as f64;
            }
        }
        let mut got = [0.0f32];
        scalar::dot_rows(kind, &w, &[act.row(0)], &mut got);
        let tol = 1e-5 * want.abs().max(1.0);
        assert!(
            (got[0] as f64 - want).abs() <= tol,
            "{kind:?}: {} vs {want}",
            got[0]
        );
    }
}

/// Activations rounded to 8 bits stay within half a step of the input.
#[test]
fn activation_rounding_is_within_half_a_step() {
    let mut rng = Rng(3);
    let x = rng.vec(32 * 8, 3.0);
    let a = Q8Rows::quantize(&x, 2, 128);
    for (b, xb) in x.chunks(32).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (j, v) in xb.iter().enumerate() {
            let r = a.d[b] * a.qs[b * 32 + j] as f32;
            assert!((r - v).abs() <= amax / 127.0 * 0.5 + amax * 1e-3);
        }
    }
    // An all-zero block has scale 0 and codes 0, not NaN.
    let z = Q8Rows::quantize(&[0.0; 32], 1, 32);
    assert_eq!(z.d[0], 0.0);
    assert!(z.qs.iter().all(|&q| q == 0));
}

fn random_blocks(kind: Kind, rng: &mut Rng, nblocks: usize) -> Vec<u8> {
    // Random bytes everywhere except the f16 scales, which get finite values: this reaches every
    // code (including Q8_0's -128 and all fifth-bit patterns) that a well-formed file can hold.
    let bb = kind.block_bytes();
    let scales = if kind.has_min() { 2 } else { 1 };
    let mut out = Vec::with_capacity(nblocks * bb);
    for _ in 0..nblocks {
        for _ in 0..scales {
            let s = half::f16::from_f32(rng.normal(0.1));
            out.extend_from_slice(&s.to_bits().to_le_bytes());
        }
        for _ in 2 * scales..bb {
            out.push(rng.next() as u8);
        }
    }
    out
}

#[test]
fn simd_dot_equals_scalar_on_random_and_adversarial_blocks() {
    let mut rng = Rng(99);
    for isa in simd_paths("simd_dot_equals_scalar_on_random_and_adversarial_blocks") {
        for kind in KINDS {
            for nb in [1, 2, 3, 18, 48] {
                let k = nb * 32;
                let w = random_blocks(kind, &mut rng, nb);
                for m in 1..=10 {
                    let mut x = rng.vec(m * k, 1.0);
                    // Extreme activations: a block of a single spike and one of equal magnitudes.
                    x[0] = 1e4;
                    let act = Q8Rows::quantize(&x, m, k);
                    let acts: Vec<_> = (0..m).map(|t| act.row(t)).collect();
                    let mut want = vec![0.0; m];
                    let mut got = vec![0.0; m];
                    scalar::dot_rows(kind, &w, &acts, &mut want);
                    dot_rows(isa, kind, &w, &acts, &mut got);
                    for (g, e) in got.iter().zip(&want) {
                        let tol = 1e-5 * e.abs().max(1.0) + 1e-4;
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
fn matmul_equals_row_by_row_scalar_products_for_every_path() {
    let mut rng = Rng(5);
    let mut paths = simd_paths("matmul_equals_row_by_row_scalar_products_for_every_path");
    paths.push(Isa::Scalar);
    for kind in [Kind::Q4_1, Kind::Q8_0, Kind::Q5_0] {
        let (n, k) = (37, 96);
        let wf = rng.vec(n * k, 0.3);
        let bytes = quantize_matrix(kind, &wf);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        for m in [1, 2, 5, 9] {
            let x = rng.vec(m * k, 1.0);
            let act = Q8Rows::quantize(&x, m, k);
            let tact = tile::TileActs::quantize(&x, m, k);
            let mut tile_want = vec![0.0; m * n];
            tile::reference(w, &tact, &mut tile_want);
            for &isa in &paths {
                let mut y = vec![0.0; m * n];
                matmul(isa, w, &x, m, &mut y);
                for t in 0..m {
                    for r in 0..n {
                        let mut e = [0.0];
                        if tile::takes(isa, kind, m) {
                            e[0] = tile_want[t * n + r];
                        } else {
                            scalar::dot_rows(kind, w.row(r), &[act.row(t)], &mut e);
                        }
                        let g = y[t * n + r];
                        assert!(
                            (g - e[0]).abs() <= 1e-5 * e[0].abs().max(1.0),
                            "{isa:?} {kind:?} m {m} ({t},{r}): {g} vs {}",
                            e[0]
                        );
                    }
                }
            }
        }
    }
}

/// The 8-bit product approximates the float product of the dequantized weights closely: the error
/// comes only from rounding activations, about 1/254 of each block's range.
#[test]
fn quantized_product_is_close_to_the_float_product() {
    let mut rng = Rng(21);
    let (n, k) = (16, 256);
    for kind in KINDS {
        let bytes = quantize_matrix(kind, &rng.vec(n * k, 0.2));
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let x = rng.vec(k, 1.0);
        let mut y = vec![0.0; n];
        matmul(Isa::best(), w, &x, 1, &mut y);
        let mut row = vec![0.0; k];
        for (r, yr) in y.iter().enumerate() {
            dequantize_row(w, r, &mut row);
            let exact: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
            let scale: f32 = row.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            assert!(
                (yr - exact).abs() <= 0.02 * scale,
                "{kind:?} row {r}: {yr} vs {exact} (scale {scale})"
            );
        }
    }
}

#[test]
fn simd_activation_rounding_equals_scalar() {
    let mut rng = Rng(17);
    for isa in simd_paths("simd_activation_rounding_equals_scalar") {
        for case in 0..200 {
            let mut x = rng.vec(32, if case % 2 == 0 { 1.0 } else { 300.0 });
            if case == 0 {
                x = vec![0.0; 32];
            }
            if case == 1 {
                // A ramp: many codes, one block maximum.
                x = (0..32)
                    .map(|j| j as f32 / 254.0 * if j == 31 { 2.0 } else { 1.0 })
                    .collect();
            }
            let (mut q0, mut d0, mut s0) = ([0i8; 32], 0.0, 0.0);
            let (mut q1, mut d1, mut s1) = ([0i8; 32], 0.0, 0.0);
            quantize_block(&x, &mut q0, &mut d0, &mut s0);
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa` lists only paths this CPU supports; both buffers hold 32 values.
                Isa::Avx2 | Isa::Avx512Vnni => unsafe {
                    avx2::quantize_block(&x, &mut q1, &mut d1, &mut s1)
                },
                _ => unreachable!(),
            }
            assert_eq!((q0, d0, s0), (q1, d1, s1), "{isa:?} case {case}");
        }
    }
}

#[test]
fn many_rows_take_the_dequantized_gemm_and_equal_float_products() {
    let mut rng = Rng(31);
    for (n, k, m, kind) in [
        (70, 64, GEMM_MIN_ROWS + 3, Kind::Q4_1),
        (70, 64, GEMM_MIN_ROWS + 3, Kind::Q8_0),
        // Fewer rows than one tile's minimum.
        (5, 32, GEMM_MIN_ROWS, Kind::Q8_0),
    ] {
        let bytes = quantize_matrix(kind, &rng.vec(n * k, 0.3));
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let x = rng.vec(m * k, 1.0);
        let mut y = vec![0.0; m * n];
        if tile::takes(Isa::best(), kind, m) {
            // The tile kernel's own tests cover this path; here the f32 GEMM itself.
            matmul_dequantized(w, &x, m, &mut y);
        } else {
            matmul(Isa::best(), w, &x, m, &mut y);
        }
        let mut row = vec![0.0; k];
        for r in 0..n {
            dequantize_row(w, r, &mut row);
            for t in 0..m {
                let e: f32 = row
                    .iter()
                    .zip(&x[t * k..(t + 1) * k])
                    .map(|(a, b)| a * b)
                    .sum();
                assert!(
                    (y[t * n + r] - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "{kind:?}"
                );
            }
        }
    }
}

/// The row-at-a-time AVX-512 kernels reproduce the AVX2 arithmetic bit for bit, for any number
/// of rows; and on every path a row's result is the same whether it is multiplied alone or in a
/// batch (on AVX-512 VNNI `matmul` takes the tile kernels, whose own test checks the same).
#[test]
fn avx512_equals_avx2_bit_for_bit_and_rows_do_not_depend_on_the_batch() {
    let test = "avx512_equals_avx2_bit_for_bit_and_rows_do_not_depend_on_the_batch";
    let mut rng = Rng(23);
    let (n, k, m) = (19, 512, 15);
    let paths = simd_paths(test);
    for kind in [
        Kind::Q4_0,
        Kind::Q4_1,
        Kind::Q5_0,
        Kind::Q5_1,
        Kind::Q8_0,
        Kind::Q4K,
        Kind::Q6K,
    ] {
        for nb_extra in [0, 1] {
            // An odd number of blocks exercises the AVX-512 tail.
            let k = k + 32 * nb_extra * usize::from(!kind.is_k());
            let bytes = quantize_matrix(kind, &rng.vec(n * k, 0.3));
            let w = QMatrixRef {
                kind,
                rows: n,
                cols: k,
                bytes: &bytes,
            };
            let x = rng.vec(m * k, 1.0);
            // The row-at-a-time kernels, as `matmul` runs them below the GEMM's row count.
            let rows_kernel = |isa: Isa, x: &[f32], m: usize, y: &mut [f32]| {
                if kind.is_k() {
                    matmul_q8k(isa, w, &kquant::Q8KRows::quantize(x, m, k), y)
                } else if m == 1 && isa == Isa::Avx512Vnni {
                    // `matmul_q8` gives one row AVX2's kernel on the VNNI path (as `matmul`).
                    matmul_q8(Isa::Avx2, w, &Q8Rows::quantize(x, m, k), y)
                } else {
                    matmul_q8(isa, w, &Q8Rows::quantize(x, m, k), y)
                }
            };
            let mut results = Vec::new();
            for &isa in &paths {
                for product in [0, 1] {
                    let mut y = vec![0.0; m * n];
                    let run = |x: &[f32], m: usize, y: &mut [f32]| {
                        if product == 0 {
                            rows_kernel(isa, x, m, y)
                        } else {
                            matmul(isa, w, x, m, y)
                        }
                    };
                    run(&x, m, &mut y);
                    for t in 0..m {
                        let mut one = vec![0.0; n];
                        run(&x[t * k..(t + 1) * k], 1, &mut one);
                        assert_eq!(&y[t * n..(t + 1) * n], &one[..], "{isa:?} {kind:?} row {t}");
                    }
                    if product == 0 {
                        results.push((isa, y));
                    }
                }
            }
            for pair in results.windows(2) {
                assert_eq!(
                    pair[0].1, pair[1].1,
                    "{kind:?}: {:?} and {:?} differ",
                    pair[0].0, pair[1].0
                );
            }
        }
    }
}
