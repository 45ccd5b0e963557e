//! The inference RMS norm over several rows (`crate::norm::RmsNorm`'s fast path): eight rows at
//! a time side by side in the lanes of one register, so that their sums of squares, each the
//! sequential chain `crate::norm::rms_row` computes (the same bits), advance together instead of
//! one row's chain after another's. A decode step of 8 streams normalises 8 rows 61 times
//! (SmolLM2), on one thread between two products: the chains were most of that serial time.

/// `y = x / √(mean(x²) + ε) · g` for each row of `xs: [rows, d]` into `ys`, with the bits of
/// [`crate::norm::rms_row`] row by row.
pub fn rms_rows(xs: &[f32], ys: &mut [f32], d: usize, g: &[f32], eps: f32) {
    assert!(
        d > 0 && xs.len() == ys.len() && xs.len().is_multiple_of(d) && g.len() >= d,
        "rms_rows: rows of width {d}, {} inputs, {} outputs, {} gains",
        xs.len(),
        ys.len(),
        g.len()
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        while done + 8 * d <= xs.len() {
            // SAFETY: the CPU has AVX2; rows done/d .. +8 lie inside both slices (checked by the
            // loop bound), and g holds d gains (asserted).
            unsafe {
                eight_rows(
                    &xs[done..done + 8 * d],
                    &mut ys[done..done + 8 * d],
                    d,
                    g,
                    eps,
                )
            };
            done += 8 * d;
        }
    }
    for (xr, yr) in xs[done..]
        .chunks_exact(d)
        .zip(ys[done..].chunks_exact_mut(d))
    {
        crate::norm::rms_row(xr, yr, g, eps);
    }
}

/// Eight rows: the squares' sums in lanes (lane r is row r's sequential sum, from `Sum`'s
/// starting value −0), columns brought into lanes by an 8 × 8 transpose; then each row divided
/// by its root and multiplied by the gains, eight columns at a time (the same operations as
/// `rms_row`, unfused).
///
/// # Safety
/// The CPU has AVX2; `x` and `y` hold 8 rows of width `d`; `g` holds `d` gains.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn eight_rows(x: &[f32], y: &mut [f32], d: usize, g: &[f32], eps: f32) {
    use std::arch::x86_64::*;
    let xp = x.as_ptr();
    let mut acc = _mm256_set1_ps(-0.0);
    let mut j = 0;
    // SAFETY: every load and store below stays inside rows 0..8 of width d of `x`,
    // `y` and the d gains (the caller's contract).
    unsafe {
        while j + 8 <= d {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(xp.add(i * d + j)));
            for c in transpose8(r) {
                acc = _mm256_add_ps(acc, _mm256_mul_ps(c, c));
            }
            j += 8;
        }
        while j < d {
            let c = _mm256_setr_ps(
                x[j],
                x[d + j],
                x[2 * d + j],
                x[3 * d + j],
                x[4 * d + j],
                x[5 * d + j],
                x[6 * d + j],
                x[7 * d + j],
            );
            acc = _mm256_add_ps(acc, _mm256_mul_ps(c, c));
            j += 1;
        }
        let mut sums = [0.0f32; 8];
        _mm256_storeu_ps(sums.as_mut_ptr(), acc);
        for (r, s) in sums.iter().enumerate() {
            let denom = (s / d as f32 + eps).sqrt();
            let (xr, yr) = (&x[r * d..(r + 1) * d], &mut y[r * d..(r + 1) * d]);
            let dv = _mm256_set1_ps(denom);
            let mut c = 0;
            while c + 8 <= d {
                let v = _mm256_div_ps(_mm256_loadu_ps(xr.as_ptr().add(c)), dv);
                let v = _mm256_mul_ps(v, _mm256_loadu_ps(g.as_ptr().add(c)));
                _mm256_storeu_ps(yr.as_mut_ptr().add(c), v);
                c += 8;
            }
            for ((yv, v), gv) in yr[c..].iter_mut().zip(&xr[c..]).zip(&g[c..d]) {
                *yv = v / denom * gv;
            }
        }
    }
}

/// Rows of an 8 × 8 block to its columns: element `c` of row `r` becomes element `r` of the
/// `c`-th result (here and in decode attention's eight-key scores).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let (u0, u1) = (
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
    );
    let (u2, u3) = (
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
    );
    let (u4, u5) = (
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
    );
    let (u6, u7) = (
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    );
    let s0 = _mm256_shuffle_ps::<0x44>(u0, u2);
    let s1 = _mm256_shuffle_ps::<0xEE>(u0, u2);
    let s2 = _mm256_shuffle_ps::<0x44>(u1, u3);
    let s3 = _mm256_shuffle_ps::<0xEE>(u1, u3);
    let s4 = _mm256_shuffle_ps::<0x44>(u4, u6);
    let s5 = _mm256_shuffle_ps::<0xEE>(u4, u6);
    let s6 = _mm256_shuffle_ps::<0x44>(u5, u7);
    let s7 = _mm256_shuffle_ps::<0xEE>(u5, u7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

#[cfg(test)]
mod tests {
    /// Eight rows side by side give `rms_row`'s bits row by row: widths with and without a tail
    /// of columns, 1 to 19 rows, hostile values among ordinary ones.
    #[test]
    fn rows_side_by_side_equal_rms_row_bit_for_bit() {
        let mut seed = 5u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 8.0
        };
        for d in [1usize, 7, 8, 13, 64, 576, 579] {
            for rows in [1usize, 7, 8, 9, 16, 19] {
                let mut xs: Vec<f32> = (0..rows * d).map(|_| next()).collect();
                let g: Vec<f32> = (0..d).map(|_| next()).collect();
                if rows * d > 20 {
                    xs[3] = 0.0;
                    xs[5] = -0.0;
                    xs[11] = 1e30;
                    xs[17] = 1e-30;
                }
                if rows >= 9 && d > 2 {
                    xs[8 * d + 1] = f32::NAN;
                    xs[8 * d + 2] = f32::INFINITY;
                }
                let mut want = vec![0.0f32; rows * d];
                for (xr, yr) in xs.chunks_exact(d).zip(want.chunks_exact_mut(d)) {
                    crate::norm::rms_row(xr, yr, &g, 1e-5);
                }
                let mut got = vec![0.0f32; rows * d];
                super::rms_rows(&xs, &mut got, d, &g, 1e-5);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "width {d}, {rows} rows");
            }
        }
    }
}
