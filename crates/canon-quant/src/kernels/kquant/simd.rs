//! K-quant block products on x86-64: AVX2 (`avx2`) and AVX-512 VL + VNNI (`avx512`), stamped
//! from one body. A block's codes are unpacked once into eight registers of 32 unsigned bytes and
//! multiplied with up to `ROWS` activation rows: `maddubs` (u8 × i8 → pairs in i16; codes ≤ 63
//! and |q| ≤ 127 keep a pair under 2¹⁵) then a multiply-add of the i16 pairs with the group
//! scales into i32 lanes — `madd` + `add` on AVX2, one `vpdpwssd` with VNNI. The minima take one
//! more `madd` of the sixteen `mn` against the sixteen `bsums`. Lane sums reach at most
//! 8 · 2 · 16002 · 128 < 2³¹.

use std::arch::x86_64::*;

use super::{KActRow, QK_K, min_is_d, scales};
use crate::kernels::Kind;

/// Unpacks one block's codes: 8 × 32 values in natural order.
pub(crate) trait KFmt {
    const KIND: Kind;
    /// # Safety
    /// AVX2 present; `p` points at one whole block.
    unsafe fn codes(p: *const u8) -> [__m256i; 8];
}

pub(crate) struct Q2K;
pub(crate) struct Q3K;
pub(crate) struct Q4K;
pub(crate) struct Q5K;
pub(crate) struct Q6K;

/// # Safety
/// AVX2 present; `p` points at 32 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Bits `shift..shift+width` of every byte, moved to bit 4 (`width` = 1 or 2 by `mask`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn high_bits(h: __m256i, shift: i32, mask: i8) -> __m256i {
    let v = _mm256_srl_epi16(h, _mm_cvtsi32_si128(shift));
    _mm256_slli_epi16::<4>(_mm256_and_si256(v, _mm256_set1_epi8(mask)))
}

/// The 2-bit fields of Q2_K/Q3_K: chunk `4h + j` is bits `2j` of the 32 bytes at `qs + 32h`.
///
/// # Safety
/// AVX2 present; `qs` points at 64 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn two_bit(qs: *const u8) -> [__m256i; 8] {
    let m = _mm256_set1_epi8(3);
    let mut u = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        // SAFETY: 32 bytes at 32·h inside the 64 the caller guarantees.
        let v = unsafe { load(qs.add(32 * h)) };
        u[4 * h] = _mm256_and_si256(v, m);
        u[4 * h + 1] = _mm256_and_si256(_mm256_srli_epi16::<2>(v), m);
        u[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
        u[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16::<6>(v), m);
    }
    u
}

impl KFmt for Q2K {
    const KIND: Kind = Kind::Q2K;
    /// # Safety
    /// As [`KFmt::codes`]: AVX2 present; `p` points at one whole block of this format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> [__m256i; 8] {
        // SAFETY: the 64 code bytes start at 16 inside the 84-byte block (caller).
        unsafe { two_bit(p.add(16)) }
    }
}

impl KFmt for Q3K {
    const KIND: Kind = Kind::Q3K;
    /// # Safety
    /// As [`KFmt::codes`]: AVX2 present; `p` points at one whole block of this format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> [__m256i; 8] {
        // SAFETY: the high mask is bytes 0..32 and the low bits 32..96 of the 110-byte block.
        let (mut u, hm) = unsafe { (two_bit(p.add(32)), load(p)) };
        for (c, v) in u.iter_mut().enumerate() {
            // Bit c of each mask byte, moved to bit 2.
            let b = _mm256_and_si256(
                _mm256_srl_epi16(hm, _mm_cvtsi32_si128(c as i32)),
                _mm256_set1_epi8(1),
            );
            *v = _mm256_or_si256(*v, _mm256_slli_epi16::<2>(b));
        }
        u
    }
}

impl KFmt for Q4K {
    const KIND: Kind = Kind::Q4K;
    /// # Safety
    /// As [`KFmt::codes`]: AVX2 present; `p` points at one whole block of this format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> [__m256i; 8] {
        let m = _mm256_set1_epi8(0x0F);
        let mut u = [_mm256_setzero_si256(); 8];
        for i in 0..4 {
            // SAFETY: the 128 code bytes start at 16 inside the 144-byte block (caller).
            let v = unsafe { load(p.add(16 + 32 * i)) };
            u[2 * i] = _mm256_and_si256(v, m);
            u[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
        }
        u
    }
}

impl KFmt for Q5K {
    const KIND: Kind = Kind::Q5K;
    /// # Safety
    /// As [`KFmt::codes`]: AVX2 present; `p` points at one whole block of this format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> [__m256i; 8] {
        let m = _mm256_set1_epi8(0x0F);
        // SAFETY: the 32 high-bit bytes start at 16 inside the 176-byte block (caller).
        let h = unsafe { load(p.add(16)) };
        let mut u = [_mm256_setzero_si256(); 8];
        for i in 0..4 {
            // SAFETY: the 128 code bytes start at 48 inside the block (caller).
            let v = unsafe { load(p.add(48 + 32 * i)) };
            let s = 2 * i as i32;
            u[2 * i] = _mm256_or_si256(_mm256_and_si256(v, m), high_bits(h, s, 1));
            u[2 * i + 1] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
                high_bits(h, s + 1, 1),
            );
        }
        u
    }
}

impl KFmt for Q6K {
    const KIND: Kind = Kind::Q6K;
    /// # Safety
    /// As [`KFmt::codes`]: AVX2 present; `p` points at one whole block of this format.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> [__m256i; 8] {
        let m = _mm256_set1_epi8(0x0F);
        let mut u = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            // SAFETY: low bits at 0..128 and high bits at 128..192 inside the 210-byte block.
            let (a, b, hb) = unsafe {
                (
                    load(p.add(64 * h)),
                    load(p.add(64 * h + 32)),
                    load(p.add(128 + 32 * h)),
                )
            };
            u[4 * h] = _mm256_or_si256(_mm256_and_si256(a, m), high_bits(hb, 0, 3));
            u[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(b, m), high_bits(hb, 2, 3));
            u[4 * h + 2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(a), m),
                high_bits(hb, 4, 3),
            );
            u[4 * h + 3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(b), m),
                high_bits(hb, 6, 3),
            );
        }
        u
    }
}

/// Per chunk of 32 codes (groups 2c and 2c + 1), the group scales as 16 i16 lanes: 8 × sc[2c]
/// then 8 × sc[2c + 1].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn chunk_scales(sc: &[i16; 16]) -> [__m256i; 8] {
    // SAFETY: `sc` holds 16 i16 = 32 bytes; both loads are unaligned and in bounds.
    let halves = unsafe {
        [
            _mm256_broadcastsi128_si256(_mm_loadu_si128(sc.as_ptr() as *const __m128i)),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(sc.as_ptr().add(8) as *const __m128i)),
        ]
    };
    let mut out = [_mm256_setzero_si256(); 8];
    for (c, o) in out.iter_mut().enumerate() {
        // Word j = 2·(c % 4) of the half in the low lane, word j + 1 in the high lane.
        let j = (2 * (c % 4)) as i8;
        let (lo0, lo1, hi0, hi1) = (2 * j, 2 * j + 1, 2 * j + 2, 2 * j + 3);
        let pick = _mm256_setr_epi8(
            lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, hi0,
            hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1,
        );
        *o = _mm256_shuffle_epi8(halves[c / 4], pick);
    }
    out
}

/// `acc + madd(a, b)` with AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn madd_avx2(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

/// `acc + madd(a, b)` in one `vpdpwssd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn madd_vnni(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}

/// Sum of 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

macro_rules! k_path {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $madd:ident, $rows:expr) => {
        $(#[$doc])*
        pub mod $name {
            use super::*;

            /// Activation rows per pass over a weight row.
            pub const ROWS: usize = $rows;

            /// One weight row against `T` activation rows.
            ///
            /// # Safety
            /// The path's CPU extensions are present; `w` holds whole blocks of `F`, every row of
            /// `acts` as many blocks, and `acts.len() == T ≤ out.len()`.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn dot_n<F: KFmt, const T: usize>(
                w: &[u8],
                acts: &[KActRow<'_>],
                out: &mut [f32],
            ) {
                let bb = F::KIND.block_bytes();
                let mut acc = [_mm256_setzero_ps(); T];
                for (b, blk) in w.chunks_exact(bb).enumerate() {
                    // SAFETY: `blk` is one whole block (chunks_exact).
                    let u = unsafe { F::codes(blk.as_ptr()) };
                    let s = scales(F::KIND, blk);
                    let sc = chunk_scales(&s.sc);
                    // SAFETY: `mn` holds 16 i16 = 32 bytes.
                    let mn = unsafe { _mm256_loadu_si256(s.mn.as_ptr() as *const __m256i) };
                    for t in 0..T {
                        let a = &acts[t];
                        let mut isum = _mm256_setzero_si256();
                        for c in 0..8 {
                            // SAFETY: row t holds `(b + 1)·256` codes (caller).
                            let x = unsafe {
                                _mm256_loadu_si256(
                                    a.qs.as_ptr().add(b * QK_K + 32 * c) as *const __m256i
                                )
                            };
                            isum = $madd(isum, _mm256_maddubs_epi16(u[c], x), sc[c]);
                        }
                        // SAFETY: row t holds `(b + 1)·16` group sums (caller).
                        let bs = unsafe {
                            _mm256_loadu_si256(a.bsums.as_ptr().add(b * 16) as *const __m256i)
                        };
                        let msum = _mm256_madd_epi16(mn, bs);
                        let dx = a.d[b];
                        if min_is_d(F::KIND) {
                            // dmin = d: subtract in integers (as the scalar reference does).
                            acc[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(_mm256_sub_epi32(isum, msum)),
                                _mm256_set1_ps(dx * s.d),
                                acc[t],
                            );
                        } else {
                            acc[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(isum),
                                _mm256_set1_ps(dx * s.d),
                                acc[t],
                            );
                            acc[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(msum),
                                _mm256_set1_ps(-(dx * s.dmin)),
                                acc[t],
                            );
                        }
                    }
                }
                for t in 0..T {
                    out[t] = hsum(acc[t]);
                }
            }

            /// `dot_n` for any number of rows, `ROWS` at a time.
            ///
            /// # Safety
            /// As `dot_n`, with `acts.len() ≤ out.len()`.
            #[target_feature(enable = $feat)]
            unsafe fn dispatch<F: KFmt>(w: &[u8], acts: &[KActRow<'_>], out: &mut [f32]) {
                for (a, o) in acts.chunks(ROWS).zip(out.chunks_mut(ROWS)) {
                    // SAFETY: each arm passes T = a.len() rows and as many outputs; the CPU
                    // and shape conditions are the caller's.
                    unsafe {
                        match a.len() {
                            1 => dot_n::<F, 1>(w, a, o),
                            2 => dot_n::<F, 2>(w, a, o),
                            3 => dot_n::<F, 3>(w, a, o),
                            4 => dot_n::<F, 4>(w, a, o),
                            5 => dot_n::<F, 5>(w, a, o),
                            6 => dot_n::<F, 6>(w, a, o),
                            7 => dot_n::<F, 7>(w, a, o),
                            _ => dot_n::<F, 8>(w, a, o),
                        }
                    }
                }
            }

            /// `out[t] = w · acts[t]` for one weight row (see `kquant::scalar::dot_rows`).
            ///
            /// # Safety
            /// The path's CPU extensions are present (run-time detection); `w` holds whole
            /// blocks of `kind` and every activation row as many blocks.
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_rows(kind: Kind, w: &[u8], acts: &[KActRow<'_>], out: &mut [f32]) {
                // SAFETY: forwarded from this function's contract.
                unsafe {
                    match kind {
                        Kind::Q2K => dispatch::<Q2K>(w, acts, out),
                        Kind::Q3K => dispatch::<Q3K>(w, acts, out),
                        Kind::Q4K => dispatch::<Q4K>(w, acts, out),
                        Kind::Q5K => dispatch::<Q5K>(w, acts, out),
                        Kind::Q6K => dispatch::<Q6K>(w, acts, out),
                        _ => unreachable!("only K-quant kinds reach the K-quant kernels"),
                    }
                }
            }
        }
    };
}

k_path!(
    /// AVX2 + FMA + F16C.
    avx2,
    "avx2,fma,f16c",
    madd_avx2,
    4
);

k_path!(
    /// AVX-512 VL + VNNI at 256-bit width (`vpdpwssd` on ymm registers; 32 of them hold 8 rows).
    avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni",
    madd_vnni,
    8
);

/// `dequantize_row` for one format.
///
/// # Safety
/// As `dequantize_row`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_fmt<F: KFmt>(w: &[u8], out: &mut [f32]) {
    for (blk, o) in w
        .chunks_exact(F::KIND.block_bytes())
        .zip(out.chunks_exact_mut(QK_K))
    {
        // SAFETY: `blk` is one whole block (chunks_exact).
        let u = unsafe { F::codes(blk.as_ptr()) };
        let s = scales(F::KIND, blk);
        let mut bytes = [0u8; QK_K];
        for (c, v) in u.iter().enumerate() {
            // SAFETY: 32 bytes at 32·c inside the 256-byte buffer.
            unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().add(32 * c) as *mut __m256i, *v) };
        }
        for g in 0..16 {
            let a = _mm256_set1_ps(s.d * s.sc[g] as f32);
            let b = _mm256_set1_ps(-(s.dmin * s.mn[g] as f32));
            for h in 0..2 {
                let at = 16 * g + 8 * h;
                // SAFETY: 8 bytes at `at` inside `bytes`, 8 floats at `at` inside the block's
                // 256 outputs.
                unsafe {
                    let q = _mm_loadl_epi64(bytes.as_ptr().add(at) as *const __m128i);
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
                    _mm256_storeu_ps(o.as_mut_ptr().add(at), _mm256_fmadd_ps(v, a, b));
                }
            }
        }
    }
}

/// Dequantizes one row (`out.len()` values, whole blocks of `kind`), as
/// `kquant::scalar::dequantize_row` does (to one rounding: one fused multiply-add per value).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds `out.len() / 256` whole blocks of `kind`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_row(kind: Kind, w: &[u8], out: &mut [f32]) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match kind {
            Kind::Q2K => dequantize_fmt::<Q2K>(w, out),
            Kind::Q3K => dequantize_fmt::<Q3K>(w, out),
            Kind::Q4K => dequantize_fmt::<Q4K>(w, out),
            Kind::Q5K => dequantize_fmt::<Q5K>(w, out),
            Kind::Q6K => dequantize_fmt::<Q6K>(w, out),
            _ => unreachable!("only K-quant kinds reach the K-quant kernels"),
        }
    }
}
