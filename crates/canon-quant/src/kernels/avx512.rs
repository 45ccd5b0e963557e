//! AVX-512 (F/BW/VL/DQ) + VNNI block products (x86-64). Same arithmetic as `scalar` and `avx2`:
//! integer dot products of 32 byte pairs per block, one fused multiply-add per block with the two
//! scales. Each step takes two consecutive blocks in one 512-bit register, and `vpdpbusd`
//! (u8 × i8, four products summed into each i32 lane, no saturation) replaces AVX2's
//! `maddubs` + `madd` pair. Lanes 0..7 hold the first block's partial sums and 8..15 the second's,
//! so one vector of scales `[d₀·dx₀ ×8, d₁·dx₁ ×8]` applies both.
//!
//! Unsigned weights (Q4_1, Q5_1) go straight into `vpdpbusd`. Signed weights (Q4_0, Q5_0, Q8_0)
//! use `w·x = |w|·(sign(w)·x)`: the sign is a byte mask (`vpmovb2m`) and the activation is negated
//! under it. Activations lie in [-127, 127], so the negation never overflows.
//!
//! An odd last block runs AVX2's single-block step (its features are a subset of these).

use std::arch::x86_64::*;

use super::avx2::{self, Fmt, Q40, Q41, Q50, Q51, Q80};
use super::{ActRow, Kind, QK};

/// Blocks `b` (even) and `b + 1` of one weight row against `T` activation rows: lanes 0..7 of
/// `acc` take block `b`, lanes 8..15 block `b + 1`; the minimum terms go to `macc_even` and
/// `macc_odd`.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL/DQ and VNNI (callers check with
/// `Isa::Avx512Vnni.available()`); `w` holds at least `b + 2` blocks of `F`, and every row of
/// `acts` holds at least `(b + 2)·QK` quantized values and `b + 2` scales.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn pair_step<F: Fmt, const T: usize>(
    w: &[u8],
    acts: &[ActRow<'_>],
    b: usize,
    acc: &mut [__m512; T],
    macc_even: &mut [f32; T],
    macc_odd: &mut [f32; T],
) {
    // SAFETY: blocks b and b + 1 lie inside `w`; activation rows hold as many blocks (caller).
    let (v0, d0, m0, v1, d1, m1) = unsafe {
        let p = w.as_ptr().add(b * F::BYTES);
        let (v0, d0, m0) = F::unpack(p);
        let (v1, d1, m1) = F::unpack(p.add(F::BYTES));
        (v0, d0, m0, v1, d1, m1)
    };
    let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v0), v1);
    let (uv, neg) = if F::HAS_MIN {
        (v, 0)
    } else {
        (_mm512_abs_epi8(v), _mm512_movepi8_mask(v))
    };
    let dw = _mm512_insertf32x8::<1>(
        _mm512_castps256_ps512(_mm256_set1_ps(d0)),
        _mm256_set1_ps(d1),
    );
    // Lanes 0..7 take scale 0, lanes 8..15 scale 1.
    let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    for t in 0..T {
        let a = &acts[t];
        // SAFETY: row `t` holds at least `(b + 2)·QK` bytes and `b + 2` scales (caller); both
        // loads are unaligned.
        let (x, dpair) = unsafe {
            (
                _mm512_loadu_si512(a.qs.as_ptr().add(b * QK) as *const __m512i),
                (a.d.as_ptr().add(b) as *const u64).read_unaligned(),
            )
        };
        let x = if F::HAS_MIN {
            x
        } else {
            _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x)
        };
        let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), uv, x);
        let dx = _mm512_permutexvar_ps(
            idx,
            _mm512_castps128_ps512(_mm_castsi128_ps(_mm_cvtsi64_si128(dpair as i64))),
        );
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(p), acc[t]);
        if F::HAS_MIN {
            macc_even[t] += m0 * a.s[b];
            macc_odd[t] += m1 * a.s[b + 1];
        }
    }
}

/// One weight row against `T` activation rows, with the arithmetic of `avx2::dot_n` lane for
/// lane: AVX2 accumulates even blocks in one register and odd blocks in another, here the low and
/// high halves of one 512-bit register; `vpdpbusd`'s lane sums equal `maddubs` + `madd`'s (no
/// saturation either way), the scales are the same f32 products, and the halves are added and
/// reduced as AVX2 does. Results are therefore bit-identical to the AVX2 path, so a row's result
/// does not depend on whether it was multiplied alone (AVX2's one-row kernel) or with others.
///
/// # Safety
/// As `pair_step`'s CPU condition; `acts.len() == T ≤ out.len()`, `w` holds whole blocks of `F`,
/// and every activation row holds as many blocks as `w`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn dot_n<F: Fmt, const T: usize>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let nb = w.len() / F::BYTES;
    let mut acc = [_mm512_setzero_ps(); T];
    let mut macc0 = [0.0f32; T];
    let mut macc1 = [0.0f32; T];
    let mut b = 0;
    while b + 1 < nb {
        // SAFETY: b + 1 < nb, so both blocks lie inside `w`, and the rows match `w` (caller).
        unsafe { pair_step::<F, T>(w, acts, b, &mut acc, &mut macc0, &mut macc1) };
        b += 2;
    }
    let mut lo = [_mm256_setzero_ps(); T];
    for t in 0..T {
        lo[t] = _mm512_castps512_ps256(acc[t]);
    }
    if b < nb {
        // The last, even block goes where AVX2 puts it: the even-block accumulator.
        // SAFETY: b < nb, so the block lies inside `w`; AVX2/FMA/F16C are part of this path.
        unsafe { avx2::step::<F, T>(w, acts, b, &mut lo, &mut macc0) };
    }
    for t in 0..T {
        let hi = _mm512_extractf32x8_ps::<1>(acc[t]);
        // SAFETY: the CPU features are guaranteed by the caller (this function's own contract).
        out[t] = unsafe { avx2::hsum(_mm256_add_ps(lo[t], hi)) } + (macc0[t] + macc1[t]);
    }
}

/// Activation rows per pass over a weight row (32 vector registers).
pub const ROWS: usize = 8;

/// Fewest activation rows worth this kernel: each row has one accumulator chain (to keep AVX2's
/// summation order), so with 1–3 rows the fused multiply-adds wait on each other and AVX2's
/// kernel (two chains per row, identical results) is faster (`qbench`).
pub const MIN_ROWS: usize = 4;

/// `dot_n` for any number of activation rows, `ROWS` at a time.
///
/// # Safety
/// As `dot_n`, with `acts.len() ≤ out.len()`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn dispatch<F: Fmt>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: each arm passes T = acts.len() rows and at least as many outputs; the CPU and
    // block-shape conditions are the caller's.
    unsafe {
        match acts.len() {
            0 => {}
            1 => dot_n::<F, 1>(w, acts, out),
            2 => dot_n::<F, 2>(w, acts, out),
            3 => dot_n::<F, 3>(w, acts, out),
            4 => dot_n::<F, 4>(w, acts, out),
            5 => dot_n::<F, 5>(w, acts, out),
            6 => dot_n::<F, 6>(w, acts, out),
            7 => dot_n::<F, 7>(w, acts, out),
            8 => dot_n::<F, 8>(w, acts, out),
            _ => {
                for (a, o) in acts.chunks(ROWS).zip(out.chunks_mut(ROWS)) {
                    dispatch::<F>(w, a, o);
                }
            }
        }
    }
}

/// `out[t] = w · acts[t]` for one weight row (see `scalar::dot_rows`).
///
/// # Safety
/// The CPU must support the `Isa::Avx512Vnni` extensions; `w` holds whole blocks of `kind` and
/// every activation row has as many blocks as `w`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub unsafe fn dot_rows(kind: Kind, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: forwarded from this function's contract; `kind` selects the matching block layout.
    unsafe {
        match kind {
            Kind::Q4_0 => dispatch::<Q40>(w, acts, out),
            Kind::Q4_1 => dispatch::<Q41>(w, acts, out),
            Kind::Q5_0 => dispatch::<Q50>(w, acts, out),
            Kind::Q5_1 => dispatch::<Q51>(w, acts, out),
            Kind::Q8_0 => dispatch::<Q80>(w, acts, out),
            _ => unreachable!("K-quant kinds take the kquant kernels"),
        }
    }
}
