//! AVX2 + FMA + F16C block products (x86-64). Same arithmetic as `scalar`: integer dot products of
//! 32 byte pairs per block, then one fused multiply-add per block with the two scales.
//!
//! Unsigned weights (Q4_1, Q5_1) multiply directly with `maddubs` (u8 × i8 → pairs of i16).
//! Signed weights (Q4_0, Q5_0, Q8_0) use the sign identity `w·x = |w|·(sign(w)·x)` so that `maddubs`
//! sees an unsigned left operand. Pair sums stay below 2·128·127 < 2¹⁵, so nothing saturates.

use std::arch::x86_64::*;

use super::{ActRow, Kind, QK};

/// A block format: how to turn one block into 32 bytes plus its scale and minimum.
pub(super) trait Fmt {
    const HAS_MIN: bool;
    const BYTES: usize;
    /// (values as bytes — unsigned if `HAS_MIN`, signed otherwise —, d, m)
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C, and `p` points at `BYTES` readable bytes.
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32);
}

/// Values 0..15 from 16 packed bytes: low nibbles are elements 0..15, high nibbles 16..31.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (callers check with `is_x86_feature_detected!`); `p` points at 16 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`; the load is unaligned.
    let qs = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let m = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(qs, m);
    let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m);
    _mm256_set_m128i(hi, lo)
}

/// 16 in every byte `j` whose bit `j` of `qh` is set, 0 elsewhere.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (callers check with `is_x86_feature_detected!`); `p` points at 4 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`; `read_unaligned` needs no alignment.
    let qh = unsafe { (p as *const u32).read_unaligned() };
    // Byte j takes byte j/8 of the word, then keeps bit j%8 of it.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Two f16 values at `p` as f32.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (callers check with `is_x86_feature_detected!`); `p` points at 4 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x2(p: *const u8) -> (f32, f32) {
    // SAFETY: the caller guarantees 4 readable bytes at `p`; `read_unaligned` needs no alignment.
    let bits = unsafe { (p as *const u32).read_unaligned() };
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
}

/// One f16 value at `p` as f32.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (callers check with `is_x86_feature_detected!`); `p` points at 2 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x1(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes at `p`; `read_unaligned` needs no alignment.
    let bits = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

pub(super) struct Q40;
pub(super) struct Q41;
pub(super) struct Q50;
pub(super) struct Q51;
pub(super) struct Q80;

impl Fmt for Q40 {
    const HAS_MIN: bool = false;
    const BYTES: usize = 18;
    /// # Safety
    /// As `Fmt::unpack`: AVX2/FMA/F16C present and `BYTES` readable bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: every offset read below (scales, high bits, quants) lies inside the block's
        // `BYTES` bytes, which the caller guarantees are readable.
        unsafe {
            let v = _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8));
            (v, f16x1(p), 0.0)
        }
    }
}

impl Fmt for Q41 {
    const HAS_MIN: bool = true;
    const BYTES: usize = 20;
    /// # Safety
    /// As `Fmt::unpack`: AVX2/FMA/F16C present and `BYTES` readable bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: every offset read below (scales, high bits, quants) lies inside the block's
        // `BYTES` bytes, which the caller guarantees are readable.
        unsafe {
            let (d, m) = f16x2(p);
            (nibbles(p.add(4)), d, m)
        }
    }
}

impl Fmt for Q50 {
    const HAS_MIN: bool = false;
    const BYTES: usize = 22;
    /// # Safety
    /// As `Fmt::unpack`: AVX2/FMA/F16C present and `BYTES` readable bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: every offset read below (scales, high bits, quants) lies inside the block's
        // `BYTES` bytes, which the caller guarantees are readable.
        unsafe {
            let v = _mm256_or_si256(nibbles(p.add(6)), fifth_bits(p.add(2)));
            (_mm256_sub_epi8(v, _mm256_set1_epi8(16)), f16x1(p), 0.0)
        }
    }
}

impl Fmt for Q51 {
    const HAS_MIN: bool = true;
    const BYTES: usize = 24;
    /// # Safety
    /// As `Fmt::unpack`: AVX2/FMA/F16C present and `BYTES` readable bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: every offset read below (scales, high bits, quants) lies inside the block's
        // `BYTES` bytes, which the caller guarantees are readable.
        unsafe {
            let (d, m) = f16x2(p);
            let v = _mm256_or_si256(nibbles(p.add(8)), fifth_bits(p.add(4)));
            (v, d, m)
        }
    }
}

impl Fmt for Q80 {
    const HAS_MIN: bool = false;
    const BYTES: usize = 34;
    /// # Safety
    /// As `Fmt::unpack`: AVX2/FMA/F16C present and `BYTES` readable bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: every offset read below (scales, high bits, quants) lies inside the block's
        // `BYTES` bytes, which the caller guarantees are readable.
        unsafe {
            let v = _mm256_loadu_si256(p.add(2) as *const __m256i);
            (v, f16x1(p), 0.0)
        }
    }
}

/// Sum of the 8 lanes.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (callers check with `is_x86_feature_detected!`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The body of `step`, expanded in place: called as a function, `step` was left out of line
/// by the compiler for four rows, so every block stored and reloaded the accumulators
/// (`#[inline(always)]` is not allowed with `#[target_feature]`). Same operations in the
/// same order, so the results are bit-identical.
///
/// Expands to unsafe operations; the caller's contract is `step`'s.
macro_rules! block_step {
    ($F:ty, $T:expr, $w:expr, $acts:expr, $b:expr, $acc:expr, $macc:expr) => {{
        let (w, acts, b) = ($w, $acts, $b);
        // SAFETY: block b lies inside `w`; activation rows hold as many blocks as `w` (caller).
        let (v, d, m) = <$F as Fmt>::unpack(w.as_ptr().add(b * <$F as Fmt>::BYTES));
        let av = if <$F as Fmt>::HAS_MIN {
            v
        } else {
            _mm256_sign_epi8(v, v)
        };
        let ones = _mm256_set1_epi16(1);
        for t in 0..$T {
            let a: &ActRow<'_> = &acts[t];
            // SAFETY: row `t` holds at least `(b + 1)·QK` bytes (caller): these 32 are in bounds.
            let x = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK) as *const __m256i);
            let x = if <$F as Fmt>::HAS_MIN {
                x
            } else {
                _mm256_sign_epi8(x, v)
            };
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(av, x), ones));
            $acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[b]), p, $acc[t]);
            if <$F as Fmt>::HAS_MIN {
                $macc[t] += m * a.s[b];
            }
        }
    }};
}
#[allow(unused_imports)]
use block_step;

/// Block `b` of one weight row against `T` activation rows, accumulated into `acc` (and the
/// minimum terms into `macc`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (callers check with `is_x86_feature_detected!`); `w` holds at least `b + 1` blocks of `F` and every
/// row of `acts` holds at least `(b + 1)·QK` quantized values and `b + 1` scales.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn step<F: Fmt, const T: usize>(
    w: &[u8],
    acts: &[ActRow<'_>],
    b: usize,
    acc: &mut [__m256; T],
    macc: &mut [f32; T],
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block_step!(F, T, w, acts, b, acc, macc) }
}

/// One weight row against `T` activation rows. Even and odd blocks go to separate accumulators so
/// that consecutive fused multiply-adds do not wait on each other.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (callers check with `is_x86_feature_detected!`); `acts.len() == T ≤ out.len()`, `w` holds whole
/// blocks of `F`, and every activation row holds as many blocks as `w`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_n<F: Fmt, const T: usize>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let nb = w.len() / F::BYTES;
    let mut acc0 = [_mm256_setzero_ps(); T];
    let mut acc1 = [_mm256_setzero_ps(); T];
    let mut macc0 = [0.0f32; T];
    let mut macc1 = [0.0f32; T];
    let mut b = 0;
    while b + 1 < nb {
        // SAFETY: b + 1 < nb, so both blocks lie inside `w`, and the rows match `w` (caller).
        unsafe {
            block_step!(F, T, w, acts, b, acc0, macc0);
            block_step!(F, T, w, acts, b + 1, acc1, macc1);
        }
        b += 2;
    }
    if b < nb {
        // SAFETY: b < nb, so the block lies inside `w`, and the rows match `w` (caller).
        unsafe { block_step!(F, T, w, acts, b, acc0, macc0) };
    }
    for t in 0..T {
        // SAFETY: the CPU features are guaranteed by the caller (this function's own contract).
        out[t] = unsafe { hsum(_mm256_add_ps(acc0[t], acc1[t])) } + (macc0[t] + macc1[t]);
    }
}

/// `round(v·id)` to nearest, ties to even.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (callers check with `is_x86_feature_detected!`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_scaled(v: __m256, id: __m256) -> __m256i {
    _mm256_cvtps_epi32(_mm256_round_ps(
        _mm256_mul_ps(v, id),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    ))
}

/// One block of 32 activations at `p` rounded as `super::quantize_block` rounds them: the
/// codes as four registers of eight i32 (before saturation) and the scale `d = max|x| / 127`
/// (not yet rounded to f16). Shared by [`quantize_block`] and the tile kernel's row loop.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; 32 readable floats at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn round_block(p: *const f32) -> ([__m256i; 4], f32) {
    // SAFETY: 32 floats at p (caller), read unaligned.
    let v = unsafe {
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    };
    let sign = _mm256_set1_ps(-0.0);
    let mut mx = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *vi));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    let dd = _mm_cvtss_f32(m4) / 127.0;
    let id = _mm256_set1_ps(if dd > 0.0 { 1.0 / dd } else { 0.0 });
    // SAFETY: register-only operations; AVX2 (this function's features).
    let i = v.map(|x| unsafe { round_scaled(x, id) });
    (i, dd)
}

/// [`round_block`]'s four registers of i32 codes packed, saturating, to 32 bytes in element
/// order (the in-lane packs interleave 128-bit halves; the final permute restores the order).
///
/// # Safety
/// The CPU supports AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn pack_block(i: [__m256i; 4]) -> __m256i {
    let p16a = _mm256_packs_epi32(i[0], i[1]);
    let p16b = _mm256_packs_epi32(i[2], i[3]);
    let p8 = _mm256_packs_epi16(p16a, p16b);
    _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Rounds one block of 32 activations to bytes, as `super::quantize_block` does.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x` and `q` hold 32 values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_block(x: &[f32], q: &mut [i8], d: &mut f32, s: &mut f32) {
    debug_assert!(x.len() >= QK && q.len() >= QK);
    // SAFETY: the caller guarantees 32 values in `x` and `q`; all loads and the store are
    // unaligned and stay within those 32 elements.
    unsafe {
        let ([i0, i1, i2, i3], dd) = round_block(x.as_ptr());
        let sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        let s4 = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
        let isum = _mm_cvtsi128_si32(s4);
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, pack_block([i0, i1, i2, i3]));
        *d = super::f16_round(dd);
        *s = super::f16_round(dd * isum as f32);
    }
}

/// `dot_n` for any number of activation rows, four at a time.
///
/// # Safety
/// As `dot_n`, with `acts.len() ≤ out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dispatch<F: Fmt>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: each arm passes T = acts.len() rows and at least as many outputs; the CPU and
    // block-shape conditions are the caller's.
    unsafe {
        match acts.len() {
            1 => dot_n::<F, 1>(w, acts, out),
            2 => dot_n::<F, 2>(w, acts, out),
            3 => dot_n::<F, 3>(w, acts, out),
            4 => dot_n::<F, 4>(w, acts, out),
            n => {
                for (a, o) in acts.chunks(4).zip(out.chunks_mut(4)) {
                    debug_assert!(n > 4);
                    dispatch::<F>(w, a, o);
                }
            }
        }
    }
}

/// `out[t] = w · acts[t]` for one weight row (see `scalar::dot_rows`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds whole blocks of `kind` and every activation row
/// has as many blocks as `w`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows(kind: Kind, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: forwarded from this function's contract; `kind` selects the matching block layout.
    unsafe {
        match kind {
            Kind::Q4_0 => dispatch::<Q40>(w, acts, out),
            Kind::Q4_1 => dispatch::<Q41>(w, acts, out),
            Kind::Q5_0 => dispatch::<Q50>(w, acts, out),
            Kind::Q5_1 => dispatch::<Q51>(w, acts, out),
            Kind::Q8_0 => dispatch::<Q80>(w, acts, out),
            Kind::Q2K | Kind::Q3K | Kind::Q4K | Kind::Q5K | Kind::Q6K => {
                unreachable!("K-quant kinds take the kquant kernels")
            }
        }
    }
}

/// `gemv` for one block format.
///
/// # Safety
/// As `gemv`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_fmt<F: Fmt>(w: &[u8], row_bytes: usize, act: &ActRow<'_>, out: &mut [f32]) {
    let acts = std::slice::from_ref(act);
    for (row, o) in w.chunks_exact(row_bytes).zip(out.iter_mut()) {
        // SAFETY: one row of whole blocks against one activation row of the same length (caller).
        unsafe { dot_n::<F, 1>(row, acts, std::slice::from_mut(o)) };
    }
}

/// `out[r] = w_r · act` for consecutive rows `w` (`out.len()` rows of `row_bytes` each): decoding's
/// matrix–vector product with one dispatch per call instead of per row.
///
/// # Safety
/// As `dot_rows`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv(kind: Kind, w: &[u8], row_bytes: usize, act: &ActRow<'_>, out: &mut [f32]) {
    // SAFETY: forwarded from this function's contract; `kind` selects the matching block layout.
    unsafe {
        match kind {
            Kind::Q4_0 => gemv_fmt::<Q40>(w, row_bytes, act, out),
            Kind::Q4_1 => gemv_fmt::<Q41>(w, row_bytes, act, out),
            Kind::Q5_0 => gemv_fmt::<Q50>(w, row_bytes, act, out),
            Kind::Q5_1 => gemv_fmt::<Q51>(w, row_bytes, act, out),
            Kind::Q8_0 => gemv_fmt::<Q80>(w, row_bytes, act, out),
            Kind::Q2K | Kind::Q3K | Kind::Q4K | Kind::Q5K | Kind::Q6K => {
                unreachable!("K-quant kinds take the kquant kernels")
            }
        }
    }
}
