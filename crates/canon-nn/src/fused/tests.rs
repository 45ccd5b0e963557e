use super::*;
use canon_testkit::{Tol, assert_close_f32, randn, to_vec};

// Both instantiations are checked on every CPU: `mul_add` is exact fused multiply-add
// everywhere (in software where the CPU lacks it), so `::<true>` is correct, only slower, there.

#[test]
fn exp_is_accurate_over_its_range() {
    let (mut w_fma, mut w_plain) = (0.0f64, 0.0f64);
    let mut x = -87.0f32;
    while x < 88.0 {
        let r = (x as f64).exp();
        w_fma = w_fma.max(((exp::<true>(x) as f64 - r) / r).abs());
        w_plain = w_plain.max(((exp::<false>(x) as f64 - r) / r).abs());
        x += 0.0137;
    }
    assert!(
        w_fma < 4e-7 && w_plain < 4e-7,
        "exp relative error {w_fma:e} / {w_plain:e}"
    );
}

#[test]
fn erf_error_is_within_the_handbook_bound() {
    // erf to 10 digits.
    for (z, r) in [
        (1.0f32, 0.842_700_792_9f64),
        (0.5, 0.520_499_877_8),
        (-1.0, -0.842_700_792_9),
        (2.5, 0.999_593_047_98),
        (0.01, 0.011_283_415_6),
    ] {
        // The formula's 1.5e-7 plus f32 rounding (cancellation in 1 − …).
        for e in [erf::<true>(z), erf::<false>(z)] {
            assert!((e as f64 - r).abs() < 5e-7, "erf({z}) = {e}, expected {r}");
        }
    }
}

#[test]
fn gelu_matches_candle_erf_gelu() {
    let x = (randn(&[4096], 5) * 3.0).unwrap();
    let reference = to_vec(&x.gelu_erf().unwrap());
    for simd in [true, false] {
        let mut v = to_vec(&x);
        if simd {
            gelu_erf_inplace(&mut v);
        } else {
            gelu_erf_impl::<false>(&mut v);
        }
        // A&S 7.1.26: |Δerf| ≤ 1.5e-7, so |Δgelu| ≤ ½|x|·1.5e-7 plus rounding.
        assert_close_f32(&v, &reference, Tol::new(2e-6, 1e-6));
    }
    // Extremes saturate to x and 0, and the odd case 0 stays 0.
    let mut v = vec![-30.0, 0.0, 30.0, f32::MIN_POSITIVE];
    gelu_erf_inplace(&mut v);
    assert_eq!(&v[..3], &[-0.0, 0.0, 30.0]);
}

#[test]
fn layer_norm_rows_with_residual_matches_candle() {
    let (rows, d) = (7, 37);
    let x = randn(&[rows, d], 1);
    let r = randn(&[rows, d], 2);
    let g = randn(&[d], 3);
    let b = randn(&[d], 4);
    let sum = (&x + &r).unwrap();
    let reference = to_vec(&candle_nn::ops::layer_norm(&sum, &g, &b, 1e-12).unwrap());
    let mut v = to_vec(&x);
    layer_norm_rows(
        &mut v,
        Some(&to_vec(&r)),
        None,
        d,
        &to_vec(&g),
        Some(&to_vec(&b)),
        1e-12,
    );
    assert_close_f32(&v, &reference, Tol::F32);
    let mut v = to_vec(&sum);
    layer_norm_impl::<false>(&mut v, None, None, d, &to_vec(&g), Some(&to_vec(&b)), 1e-12);
    assert_close_f32(&v, &reference, Tol::F32);
    // The residual's own bias folded in: LN(x + (r + rb)).
    let rb = randn(&[d], 5);
    let sum = (&x + r.broadcast_add(&rb).unwrap()).unwrap();
    let reference = to_vec(&candle_nn::ops::layer_norm(&sum, &g, &b, 1e-12).unwrap());
    let mut v = to_vec(&x);
    layer_norm_rows(
        &mut v,
        Some(&to_vec(&r)),
        Some(&to_vec(&rb)),
        d,
        &to_vec(&g),
        Some(&to_vec(&b)),
        1e-12,
    );
    assert_close_f32(&v, &reference, Tol::F32);
}

#[test]
fn bias_gelu_equals_gelu_of_the_sum() {
    let x = (randn(&[5, 24], 6) * 2.0).unwrap();
    let b = randn(&[24], 7);
    let reference = to_vec(&x.broadcast_add(&b).unwrap().gelu_erf().unwrap());
    let mut v = to_vec(&x);
    bias_gelu_erf_rows(&mut v, &to_vec(&b));
    assert_close_f32(&v, &reference, Tol::new(2e-6, 1e-6));
}

#[test]
fn linear_matches_matmul_and_fills_a_column_block() {
    let (rows, k, n) = (9, 13, 6);
    let x = randn(&[rows, k], 1);
    let w = randn(&[n, k], 2);
    let b = randn(&[n], 3);
    let reference = to_vec(
        &x.matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap(),
    );
    // Write into columns 2..2+n of a [rows, n + 3] buffer; the other columns stay untouched.
    let stride = n + 3;
    let mut out = vec![7.0f32; rows * stride];
    linear(
        &to_vec(&x),
        rows,
        k,
        &to_vec(&w),
        n,
        Some(&to_vec(&b)),
        &mut out[2..],
        stride,
        Parallelism::None,
    );
    let block: Vec<f32> = (0..rows)
        .flat_map(|r| out[r * stride + 2..r * stride + 2 + n].to_vec())
        .collect();
    assert_close_f32(&block, &reference, Tol::F32);
    assert!((0..rows).all(|r| out[r * stride] == 7.0 && out[r * stride + 1] == 7.0));
}

fn check_self_attention(b: usize, t: usize, h: usize, hd: usize, seed: u64, with_bias: bool) {
    let d = h * hd;
    let raw = (randn(&[b * t, 3 * d], seed) * 2.0).unwrap();
    let bias = randn(&[3 * d], seed + 100);
    // The composed reference sees the biases added; the kernel adds them itself.
    let qkv = if with_bias {
        raw.broadcast_add(&bias).unwrap()
    } else {
        raw.clone()
    };
    // Sequence 0 full, sequence 1 with its last keys padded, sequence 2 without any real key
    // (uniform weights, as the composed additive mask gives).
    let keep_v: Vec<f32> = (0..b * t)
        .map(|r| match r / t {
            0 => 1.0,
            1 => f32::from(u8::from(r % t < t / 2 + 1)),
            _ => 0.0,
        })
        .collect();
    let keep = Tensor::from_vec(keep_v.clone(), (b, t), &Device::Cpu).unwrap();
    // Composed reference: [b·t, 3d] -> three [b, h, t, hd].
    let split = |i: usize| {
        qkv.narrow(1, i * d, d)
            .unwrap()
            .reshape((b, t, h, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let reference = crate::attention(
        &split(0),
        &split(1),
        &split(2),
        crate::AttnMask::Padding(&keep),
    )
    .unwrap()
    .transpose(1, 2)
    .unwrap()
    .reshape((b * t, d))
    .unwrap();
    let mut out = vec![0f32; b * t * d];
    let bias_v = to_vec(&bias);
    self_attention(
        &to_vec(&raw),
        3 * d,
        with_bias.then_some(&bias_v[..]),
        &keep_v,
        AttnDims {
            batch: b,
            seq: t,
            heads: h,
            head_dim: hd,
        },
        &mut out,
        d,
    );
    assert_close_f32(&out, &to_vec(&reference), Tol::F32);
}

#[test]
fn self_attention_matches_composed_attention_with_padding() {
    // Head sizes below, at and above the 32-wide register block; key counts below and above
    // the 32-key score block.
    check_self_attention(3, 5, 2, 4, 9, false);
    check_self_attention(3, 22, 3, 32, 10, true);
    check_self_attention(3, 37, 2, 40, 11, false);
    check_self_attention(3, 70, 2, 64, 12, true);
}

#[test]
fn tensor_entry_points_refuse_what_they_cannot_do() {
    let x = randn(&[2, 8], 1).to_dtype(DType::F64).unwrap();
    let g = randn(&[8], 2);
    assert!(layer_norm(&x, &g, None, 1e-5).unwrap().is_none());
    assert!(gelu_erf(&x).unwrap().is_none());
    // Wrong parameter size.
    let x = randn(&[2, 8], 1);
    assert!(
        layer_norm(&x, &randn(&[7], 2), None, 1e-5)
            .unwrap()
            .is_none()
    );
    // A transposed (non-contiguous) input still works.
    let xt = randn(&[8, 2], 3).t().unwrap();
    let y = layer_norm(&xt, &g, None, 1e-5).unwrap().unwrap();
    assert_eq!(y.dims(), &[2, 8]);
}

#[test]
fn tanh_and_geglu_match_candle() {
    // tanh over its whole range, saturation included.
    let mut z = -20.0f32;
    while z < 20.0 {
        let r = (z as f64).tanh();
        for t in [tanh::<true>(z), tanh::<false>(z)] {
            assert!((t as f64 - r).abs() < 5e-7, "tanh({z}) = {t}, expected {r}");
        }
        z += 0.0173;
    }
    let g = (randn(&[4096], 7) * 3.0).unwrap();
    let u = randn(&[4096], 8);
    let reference = to_vec(&(g.gelu().unwrap() * &u).unwrap());
    for simd in [true, false] {
        let mut v = to_vec(&g);
        if simd {
            geglu_tanh_inplace(&mut v, &to_vec(&u));
        } else {
            geglu_tanh_impl::<false>(&mut v, &to_vec(&u));
        }
        // |Δtanh| ≤ 5e-7, so |Δ| ≤ ½|x|·|u|·5e-7 plus rounding.
        assert_close_f32(&v, &reference, Tol::new(5e-6, 2e-6));
    }
    let t = geglu_tanh(&g.reshape((64, 64)).unwrap(), &u.reshape((64, 64)).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(t.dims(), &[64, 64]);
    assert_close_f32(
        &to_vec(&t.flatten_all().unwrap()),
        &reference,
        Tol::new(5e-6, 2e-6),
    );
    // Extremes saturate to x and 0.
    let mut v = vec![-30.0, 0.0, 30.0];
    geglu_tanh_inplace(&mut v, &[1.0, 1.0, 1.0]);
    assert_eq!(v, [-0.0, 0.0, 30.0]);
    // Different shapes: not this kernel's case.
    assert!(
        geglu_tanh(&g, &u.narrow(0, 0, 10).unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn silu_mul_matches_candle() {
    // Across the exponential's clamp (|x| up to 100) and several chunks of the pool's split.
    let g = (randn(&[3, 9000], 17) * 12.0).unwrap();
    let u = randn(&[3, 9000], 18);
    let reference = to_vec(&(g.silu().unwrap() * &u).unwrap());
    for simd in [true, false] {
        let mut v = to_vec(&g);
        if simd {
            silu_mul_inplace(&mut v, &to_vec(&u));
        } else {
            silu_mul_impl::<false>(&mut v, &to_vec(&u));
        }
        assert_close_f32(&v, &reference, Tol::new(1e-6, 2e-6));
    }
    let t = silu_mul(&g, &u).unwrap().unwrap();
    assert_eq!(t.dims(), &[3, 9000]);
    assert_close_f32(&to_vec(&t), &reference, Tol::new(1e-6, 2e-6));
    let mut v = vec![-100.0, 0.0, 100.0];
    silu_mul_inplace(&mut v, &[1.0, 1.0, 1.0]);
    assert!(v[0].abs() < 1e-30 && v[1] == 0.0 && v[2] == 100.0, "{v:?}");
    // A tracked gradient is not this kernel's case.
    let var = candle_core::Var::from_tensor(&g).unwrap();
    assert!(silu_mul(var.as_tensor(), &u).unwrap().is_none());
}

/// `max8` (eight lanes) is the left-to-right `f32::max` fold, NaN ignored, over lengths around
/// the lane count and with infinities, NaN and signed zeros among the values.
#[test]
fn lane_max_equals_the_sequential_fold() {
    let mut seed = 11u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 100.0
    };
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
    for n in [0usize, 1, 7, 8, 9, 16, 31, 100, 49_152] {
        for case in 0..6 {
            let mut x: Vec<f32> = (0..n).map(|_| next()).collect();
            if case > 0 && n > 0 {
                for j in 0..case.min(n) {
                    let at = (j * 7919 + case) % n;
                    x[at] = specials[(j + case) % specials.len()];
                }
            }
            if case == 5 {
                x.iter_mut().for_each(|v| *v = f32::NAN);
            }
            let want = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let got = super::max8(&x);
            // Equal values; the sign of a zero maximum may differ (either zero is the maximum).
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "n {n} case {case}: {got} vs {want}"
            );
            assert!(!got.is_nan(), "n {n} case {case}: NaN is never the maximum");
        }
    }
}

/// The sampler's three-pass tempered softmax gives, bit for bit, the probabilities and block
/// sums of the eight passes it replaced (copy, maximum, NaN as −∞ and scale, `softmax_inplace`,
/// the f64 block sums over the live tokens), and refuses where they refused: lengths around
/// the lanes and blocks, NaN, masked (−∞) and huge logits, temperatures whose scale overflows,
/// a mask shorter than the row, and rows with no finite maximum.
#[test]
fn tempered_softmax_blocks_equals_the_passes_it_replaced() {
    type Tempered = fn(&[f32], &[f32], f32, usize, &mut Vec<f32>, &mut Vec<f64>) -> bool;
    fn reference(
        x: &[f32],
        live: &[f32],
        inv_t: f32,
        block: usize,
        softmax: fn(&mut [f32]),
    ) -> Option<(Vec<f32>, Vec<f64>)> {
        let mut l = x.to_vec();
        if !max8(&l).is_finite() {
            return None;
        }
        for v in l.iter_mut() {
            *v = if v.is_nan() {
                f32::NEG_INFINITY
            } else {
                *v * inv_t
            };
        }
        softmax(&mut l);
        let weight = |p: f32, m: f32| {
            if m > f32::NEG_INFINITY {
                f64::from(p)
            } else {
                0.0
            }
        };
        let n = l.len().min(live.len());
        let sums = l[..n]
            .chunks(block)
            .zip(live[..n].chunks(block))
            .map(|(p, m)| {
                let mut acc = [0.0f64; 8];
                let (pc, mc) = (p.chunks_exact(8), m.chunks_exact(8));
                let tail: f64 = pc
                    .remainder()
                    .iter()
                    .zip(mc.remainder())
                    .map(|(&p, &m)| weight(p, m))
                    .sum();
                for (p8, m8) in pc.zip(mc) {
                    for k in 0..8 {
                        acc[k] += weight(p8[k], m8[k]);
                    }
                }
                acc.iter().sum::<f64>() + tail
            })
            .collect();
        Some((l, sums))
    }
    let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let bits64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (mut p, mut sums) = (Vec::new(), Vec::new());
    let mut checked = 0;
    for (case, &n) in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000, 49_152]
        .iter()
        .enumerate()
    {
        let base: Vec<f32> = to_vec(&randn(&[n], 40 + case as u64))
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        for variant in 0..6 {
            let mut x = base.clone();
            for (i, v) in x.iter_mut().enumerate() {
                match variant {
                    1 if i % 5 == 2 => *v = f32::NAN,
                    2 if i % 3 != 0 => *v = f32::NEG_INFINITY,
                    3 if i % 11 == 4 => *v = 1e37,
                    4 => {
                        *v = if i % 2 == 0 {
                            f32::NAN
                        } else {
                            f32::NEG_INFINITY
                        }
                    }
                    5 if i == n / 2 => *v = f32::INFINITY,
                    _ => {}
                }
            }
            let live_full = x.clone();
            for live in [&live_full[..], &live_full[..n / 2]] {
                for inv_t in [1.0f32, 1.25, 1.0 / 0.3, 100.0, 0.01] {
                    for block in [64usize, 5] {
                        // The dispatched function (AVX2 here where the CPU has it), and the
                        // baseline instance against the baseline softmax on every CPU.
                        let dispatched = tempered_softmax_blocks;
                        let baseline = draw::tempered::<false>;
                        for (run, soft) in [
                            (dispatched as Tempered, softmax_inplace as fn(&mut [f32])),
                            (baseline, softmax_impl::<false>),
                        ] {
                            let want = reference(&x, live, inv_t, block, soft);
                            let got = run(&x, live, inv_t, block, &mut p, &mut sums);
                            let at = format!("n {n} variant {variant} 1/T {inv_t} block {block}");
                            assert_eq!(got, want.is_some(), "{at}");
                            if let Some((wp, ws)) = want {
                                assert_eq!(bits32(&p), bits32(&wp), "{at}");
                                assert_eq!(bits64(&sums), bits64(&ws), "{at}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} rows compared");
}
