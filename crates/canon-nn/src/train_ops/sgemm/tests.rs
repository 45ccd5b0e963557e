use super::*;
use canon_testkit::{Tol, assert_close_f32};

fn rnd(len: usize, seed: &mut u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Every edge of the blocking (rows around `MR`, columns around `NR` and `NC`, depths around
/// `KC`), all four operand layouts, accumulation and `alpha`, against an f64 reference; and the
/// same bits at 1 and 3 threads.
#[test]
fn sgemm_matches_a_reference_on_every_edge_and_layout() {
    if !available() {
        eprintln!("skipped: this CPU has no AVX-512F");
        return;
    }
    let mut seed = 7u64;
    let shapes = [
        (1, 1, 1),
        (13, 31, 7),
        (14, 32, 256),
        (15, 33, 257),
        (29, 65, 300),
        (100, 1537, 40),
        (300, 70, 513),
        (64, 64, 64),
    ];
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (acc, alpha) in [(false, 1.0f32), (true, 0.5)] {
                let a = rnd(m * k, &mut seed);
                let b = rnd(k * n, &mut seed);
                // A stored [m, k] or (ta) [k, m]; B stored [k, n] or (tb) [n, k].
                let (ars, acs) = if ta { (1, m) } else { (k, 1) };
                let (brs, bcs) = if tb { (1, k) } else { (n, 1) };
                let ldc = n + 3;
                let c0 = rnd((m - 1) * ldc + n, &mut seed);
                let mut want = vec![0f32; (m - 1) * ldc + n];
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0f64;
                        for l in 0..k {
                            s += a[i * ars + l * acs] as f64 * b[l * brs + j * bcs] as f64;
                        }
                        let base = if acc { c0[i * ldc + j] as f64 } else { 0.0 };
                        want[i * ldc + j] = (base + alpha as f64 * s) as f32;
                    }
                }
                let mut outs = Vec::new();
                for threads in [1, 3] {
                    let mut c = c0.clone();
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("a rayon pool");
                    // SAFETY: AVX-512F checked above; the operands hold every index named.
                    pool.install(|| unsafe {
                        sgemm(
                            (m, n, k),
                            &mut c,
                            ldc,
                            acc,
                            (&a, ars, acs),
                            (&b, brs, bcs),
                            alpha,
                            threads,
                            false,
                        )
                    });
                    // The gaps between rows (ldc > n) are never written.
                    for i in 0..m.saturating_sub(1) {
                        assert_eq!(
                            &c[i * ldc + n..(i + 1) * ldc],
                            &c0[i * ldc + n..(i + 1) * ldc]
                        );
                    }
                    let (got, exp): (Vec<f32>, Vec<f32>) = (0..m)
                        .flat_map(|i| (0..n).map(move |j| i * ldc + j))
                        .map(|x| (c[x], want[x]))
                        .unzip();
                    assert_close_f32(&got, &exp, Tol::F32);
                    outs.push(c);
                }
                assert_eq!(
                    outs[0], outs[1],
                    "{m}x{n}x{k}: thread count changed the bits"
                );
            }
        }
    }
}

/// The bf16 product equals an f64 product of the operands rounded to bfloat16 (each product
/// of two bf16 values is exact in f32; only the f32 sums differ), on every edge and layout,
/// odd depths included; and it stays within bf16 rounding of the f32 product.
#[test]
fn bf16_product_is_the_product_of_the_rounded_operands() {
    if !bf16_available() {
        eprintln!("skipped: this CPU has no AVX512_BF16");
        return;
    }
    let round = |x: f32| f32::from_bits(bf16_bits(x) << 16);
    assert_eq!(round(1.0), 1.0);
    assert_eq!(round(1.0 + 1.0 / 256.0), 1.0); // a tie rounds to even
    assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    let mut seed = 11u64;
    for &(m, n, k) in &[
        (14, 32, 1),
        (15, 33, 257),
        (29, 65, 300),
        (64, 40, 64),
        (100, 1537, 9),
    ] {
        for (ta, tb) in [(false, false), (true, true), (false, true)] {
            let a = rnd(m * k, &mut seed);
            let b = rnd(k * n, &mut seed);
            let (ars, acs) = if ta { (1, m) } else { (k, 1) };
            let (brs, bcs) = if tb { (1, k) } else { (n, 1) };
            let alpha = 0.5f32;
            let (mut want, mut full) = (vec![0f32; m * n], vec![0f32; m * n]);
            for i in 0..m {
                for j in 0..n {
                    let (mut s, mut f) = (0f64, 0f64);
                    for l in 0..k {
                        let (x, y) = (alpha * a[i * ars + l * acs], b[l * brs + j * bcs]);
                        s += round(x) as f64 * round(y) as f64;
                        f += x as f64 * y as f64;
                    }
                    want[i * n + j] = s as f32;
                    full[i * n + j] = f as f32;
                }
            }
            let mut c = vec![0f32; m * n];
            // SAFETY: AVX512_BF16 checked above; the operands hold every index named.
            unsafe {
                sgemm(
                    (m, n, k),
                    &mut c,
                    n,
                    false,
                    (&a, ars, acs),
                    (&b, brs, bcs),
                    alpha,
                    1,
                    true,
                )
            };
            assert_close_f32(&c, &want, Tol::F32);
            // Against the unrounded product: bf16 keeps 8 bits, |error| ≤ ~2^-8 of the terms.
            let scale = 0.25 * alpha * (k as f32).sqrt();
            assert_close_f32(&c, &full, Tol::new(0.02 * scale as f64, 0.0));
        }
    }
}
