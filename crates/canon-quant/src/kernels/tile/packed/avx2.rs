//! The panel kernel on AVX2 alone, for the 4-bit and 5-bit formats, Q6_K and Q8_0. A 64-byte line
//! holds rows 0..8 of a panel in its first 32 bytes and rows 8..16 in the others, so each half is one 256-bit
//! register of eight rows. Per activation row and block, register `g` (codes `4g..4g+4` of
//! each row) meets the four activation bytes `4g..4g+4` broadcast: `maddubs` leaves two
//! 16-bit pair sums per row, the eight registers' sums add up in 16 bits (a 4-bit code times
//! a byte of at most 127 in magnitude, two of them eight times: |Σ| ≤ 16·15·127 = 30,480 <
//! 2¹⁵), and the two halves of each row's lane are widened and added into 32 bits. The float
//! steps are the AVX-512 kernel's, in the same order: a row's result does not depend on the
//! other rows, and the integer sums are the same integers, so the products keep their bits.
//!
//! The code (`panel_kernel!`) has three instances, chosen once per CPU (`Instance::detect`),
//! which form the same integers and so give the same bits:
//! - `Madd`: the halves widened by one `madd` by ones. On Intel cores, whose two multiply pipes
//!   also run the vector shifts, this is 6-10 % faster at eight rows than `Shifts` (Xeon family 6
//!   model 207, Q4_1 `[1536, 576]` and `[49152, 576]`, one thread, the two alternated);
//! - `Shifts`: three shifts and an add (`pair_sum16`) instead, on AMD's family 17h (Zen to Zen 2),
//!   where `maddubs` and `madd` share one multiply pipe, which then takes 8 instead of 9
//!   instructions per row and block;
//! - `Vnni`, where the CPU has AVX-VNNI (`kernels::avx_vnni`): the integer sums are `vpdpbusd`s,
//!   in fewer instructions. Q8_0 there keeps its stored codes `u = q + 128` and takes
//!   `128 · Σx` off the sum, as the AVX-512 kernel does, instead of moving the weights' signs
//!   onto the activations (`sign` per register and row): half the instructions per row and
//!   block.

use std::arch::x86_64::*;

use super::*;

mod dequant;
pub(in crate::kernels::tile::packed) use dequant::dequantize_panel;

/// Each 32-bit lane of `s` as the sum of its two signed 16-bit halves, in 32 bits: the integer
/// `madd(s, ones)`, without the multiply pipe (the high half by an arithmetic shift, the low
/// half shifted up and back down to sign-extend it). The sum itself may need 17 bits
/// (2·30,480 for 4-bit codes), so the halves are widened before they are added.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_sum16(s: __m256i) -> __m256i {
    _mm256_add_epi32(
        _mm256_srai_epi32::<16>(s),
        _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(s)),
    )
}

/// Bit `g` of every byte of `hv` as that byte's bit 4 (the fifth bits, `packed` docs): the
/// 16-bit shifts carry bits across bytes only into positions the mask clears.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth(hv: __m256i, g: usize) -> __m256i {
    let m = _mm256_set1_epi8(0x10);
    let v = match g {
        0 => _mm256_slli_epi16::<4>(hv),
        1 => _mm256_slli_epi16::<3>(hv),
        2 => _mm256_slli_epi16::<2>(hv),
        3 => _mm256_slli_epi16::<1>(hv),
        4 => hv,
        5 => _mm256_srli_epi16::<1>(hv),
        6 => _mm256_srli_epi16::<2>(hv),
        _ => _mm256_srli_epi16::<3>(hv),
    };
    _mm256_and_si256(v, m)
}

/// How many blocks ahead of the one being multiplied the kernel asks for the weights.
const PREFETCH_BLOCKS: usize = 8;

/// The integer sum of one activation row's block against the eight weight registers `wv` of a
/// half panel, with AVX-VNNI's `vpdpbusd` (unsigned weight bytes × signed activation bytes,
/// four products added into each 32-bit lane): registers `gs` in two interleaved chains, so
/// that the multiply-adds of one row do not wait on each other. The weights are the stored
/// unsigned codes (Q8_0's `u = q + 128` too: the caller takes `offset · Σx` off, as the AVX-512
/// kernel does). The integers equal the `maddubs` path's sums exactly: no lane saturates there
/// (module docs) and every sum is exact in 32 bits.
///
/// # Safety
/// CPU with AVX2 and AVX-VNNI; `q` points at the block's 32 activation bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn vnni_sum(wv: &[__m256i; 8], q: *const i8, gs: std::ops::Range<usize>) -> __m256i {
    let mut s = [_mm256_setzero_si256(); 2];
    for g in gs {
        // SAFETY: codes 4g..4g + 4 of the block lie inside the row (caller).
        let x = unsafe { _mm256_set1_epi32((q.add(4 * g) as *const i32).read_unaligned()) };
        s[g % 2] = _mm256_dpbusd_avx_epi32(s[g % 2], wv[g], x);
    }
    _mm256_add_epi32(s[0], s[1])
}

/// The panel kernel's three functions, instantiated twice with the AVX2 instructions alone (the
/// 4-bit codes' 16-bit sums widened by `madd`, or by shifts where `$shifts`) and once with
/// AVX-VNNI as well (`$vnni`): the same layout, loop and float steps; only the integer sums of a
/// row and block differ in how they are formed, never in their value, so all give the same bits
/// (module docs).
macro_rules! panel_kernel {
    (
        $features:literal,
        $vnni:literal,
        $shifts:literal,
        $rows:ident,
        $rows_t:ident,
        $panel_times:ident
    ) => {
        /// `T` activation rows from `t0` against half `half_rows` (0: rows 0..8, 1: rows 8..16)
        /// of panel `pi`; writes `y[t, r0..r0 + valid]` for that half's valid rows.
        ///
        /// # Safety
        /// CPU with the function's features; `F16`, `NIB`, `H5` and `MODE` (0, 1 or 2; 0 when
        /// not `NIB`) are `p`'s; `cp`/`sp` hold panel `pi`'s `p.nb` blocks; rows `t0..t0 + T`
        /// exist in `act`, whose width is `p`'s; `y` points at `[act.rows, p.rows]`.
        #[inline]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $rows<
            const MODE: u8,
            const T: usize,
            const F16: bool,
            const NIB: bool,
            const H5: bool,
        >(
            p: &Packed,
            half_rows: usize,
            pi: usize,
            cp: *const u8,
            sp: *const u8,
            act: &TileActs,
            t0: usize,
            y: *mut f32,
        ) {
            let (nb, n, offset) = (p.nb, p.rows, p.offset);
            let k = nb * QK;
            let r0 = pi * PANEL + 8 * half_rows;
            if r0 >= n {
                return;
            }
            let valid = 8.min(n - r0);
            let sb = scale_bytes(MODE, F16);
            let low = _mm256_set1_epi8(0x0F);
            let ones = _mm256_set1_epi16(1);
            let flip = _mm256_set1_epi8(-128);
            let cl = lines_per_block(NIB, H5);
            debug_assert!(
                MODE != 1 || offset == 0,
                "a format with a minimum has offset 0"
            );
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                // Several rows: this half's lines PREFETCH_BLOCKS blocks ahead, as the AVX-512
                // kernel does (there measured); a hint, the address may lie past the buffer.
                for j in 0..if T > 1 { cl } else { 0 } {
                    _mm_prefetch::<_MM_HINT_T0>(
                        cp.wrapping_add((b + PREFETCH_BLOCKS) * cl * 64 + j * 64 + 32 * half_rows)
                            as *const i8,
                    );
                }
                // SAFETY: block b of panel pi: cl lines and sb scale bytes inside the buffers;
                // this half's 32 bytes of each line, its 8 scales (and 8 minimums) of the
                // vectors.
                let (wv, s0, s1) = unsafe {
                    let l = cp.add(b * cl * 64 + 32 * half_rows);
                    let wv: [__m256i; 8] = if NIB {
                        let r: [__m256i; 4] = std::array::from_fn(|j| {
                            _mm256_loadu_si256(l.add(j * 64) as *const __m256i)
                        });
                        let hv = if H5 {
                            _mm256_loadu_si256(l.add(4 * 64) as *const __m256i)
                        } else {
                            _mm256_setzero_si256()
                        };
                        std::array::from_fn(|g| {
                            let v = if g < 4 {
                                _mm256_and_si256(r[g], low)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16::<4>(r[g - 4]), low)
                            };
                            if H5 {
                                _mm256_or_si256(v, fifth(hv, g))
                            } else {
                                v
                            }
                        })
                    } else if MODE == 2 {
                        // Q6_K's codes u = q + 32 in 0..64, unsigned as they are.
                        std::array::from_fn(|g| _mm256_loadu_si256(l.add(g * 64) as *const __m256i))
                    } else if $vnni {
                        // Q8_0's codes u = q + 128, unsigned as they are for `vpdpbusd`.
                        std::array::from_fn(|g| _mm256_loadu_si256(l.add(g * 64) as *const __m256i))
                    } else {
                        // Q8_0's codes u = q + 128 back to the signed q.
                        std::array::from_fn(|g| {
                            _mm256_xor_si256(
                                _mm256_loadu_si256(l.add(g * 64) as *const __m256i),
                                flip,
                            )
                        })
                    };
                    let s = sp.add(b * sb);
                    let (s0, s1) = if F16 {
                        let at = |v: usize| s.add(v * 32 + 16 * half_rows) as *const __m128i;
                        let s0 = _mm256_cvtph_ps(_mm_loadu_si128(at(0)));
                        let s1 = if MODE == 0 {
                            _mm256_setzero_ps()
                        } else {
                            _mm256_cvtph_ps(_mm_loadu_si128(at(1)))
                        };
                        (s0, s1)
                    } else {
                        let at = |v: usize| s.add(v * 64 + 32 * half_rows) as *const f32;
                        let s0 = _mm256_loadu_ps(at(0));
                        let s1 = if MODE == 0 {
                            _mm256_setzero_ps()
                        } else {
                            _mm256_loadu_ps(at(1))
                        };
                        (s0, s1)
                    };
                    (wv, s0, s1)
                };
                // Q8_0 without AVX-VNNI: the weights' magnitudes, shared by the activation rows.
                let aw: [__m256i; 8] = if !$vnni && !NIB && MODE == 0 {
                    std::array::from_fn(|g| _mm256_abs_epi8(wv[g]))
                } else {
                    [_mm256_setzero_si256(); 8]
                };
                for (t, a) in acc.iter_mut().enumerate() {
                    let row = t0 + t;
                    let at = row * nb + b;
                    // SAFETY: row < act.rows and b < nb index inside the activation buffers.
                    let (q, [h0, h1], dx) = unsafe {
                        (
                            act.qs.as_ptr().add(row * k + b * QK),
                            *act.h.get_unchecked(at),
                            _mm256_set1_ps(*act.d.get_unchecked(at)),
                        )
                    };
                    // Codes 4g..4g + 4 of the row's block, broadcast.
                    // SAFETY: g < 8, so inside the block's 32 bytes.
                    let xg = |g: usize| unsafe {
                        _mm256_set1_epi32((q.add(4 * g) as *const i32).read_unaligned())
                    };
                    if MODE == 2 {
                        // Six-bit codes, a scale per 16: each half its own integer sum and
                        // scale. With `maddubs`, two registers' pair sums fit 16 bits
                        // (2·2·63·128 = 32,256 < 2¹⁵).
                        let (i0, i1) = if $vnni {
                            // SAFETY: this instance runs with AVX-VNNI; q as above.
                            unsafe { (vnni_sum(&wv, q, 0..4), vnni_sum(&wv, q, 4..8)) }
                        } else {
                            let mut s16 = [_mm256_setzero_si256(); 4];
                            for (g, w) in wv.iter().enumerate() {
                                s16[g / 2] =
                                    _mm256_add_epi16(s16[g / 2], _mm256_maddubs_epi16(*w, xg(g)));
                            }
                            let half = |a: __m256i, b: __m256i| {
                                _mm256_add_epi32(
                                    _mm256_madd_epi16(a, ones),
                                    _mm256_madd_epi16(b, ones),
                                )
                            };
                            (half(s16[0], s16[1]), half(s16[2], s16[3]))
                        };
                        let i0 = _mm256_add_epi32(i0, _mm256_set1_epi32(-offset * h0));
                        let i1 = _mm256_add_epi32(i1, _mm256_set1_epi32(-offset * h1));
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(s0, dx), *a);
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(s1, dx), *a);
                        continue;
                    }
                    let i = if $vnni {
                        // SAFETY: this instance runs with AVX-VNNI; q as above.
                        let s = unsafe { vnni_sum(&wv, q, 0..8) };
                        // The symmetric formats (Q8_0 included) less offset · Σx; the formats
                        // with a minimum have offset 0.
                        if MODE != 1 {
                            _mm256_add_epi32(s, _mm256_set1_epi32(-offset * (h0 + h1)))
                        } else {
                            s
                        }
                    } else if H5 {
                        // Five-bit codes: four registers' pair sums fit 16 bits
                        // (4·2·31·128 = 31,744 < 2¹⁵), so two partial sums.
                        let mut s16 = [_mm256_setzero_si256(); 2];
                        for (g, w) in wv.iter().enumerate() {
                            s16[g / 4] =
                                _mm256_add_epi16(s16[g / 4], _mm256_maddubs_epi16(*w, xg(g)));
                        }
                        // Each partial's halves would add in 16 bits too (|Σ| ≤ 31,744), but
                        // the fifth bits already keep the shift pipe busy: `madd` here. Q5_1
                        // and Q5_K (a minimum) have offset 0.
                        let s = _mm256_add_epi32(
                            _mm256_madd_epi16(s16[0], ones),
                            _mm256_madd_epi16(s16[1], ones),
                        );
                        if MODE == 1 {
                            s
                        } else {
                            _mm256_add_epi32(s, _mm256_set1_epi32(-offset * (h0 + h1)))
                        }
                    } else if NIB {
                        let mut s16 = _mm256_setzero_si256();
                        for (g, w) in wv.iter().enumerate() {
                            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*w, xg(g)));
                        }
                        // Each 16-bit half holds |Σ| ≤ 30,480 (module docs), widened by shifts
                        // or a `madd` (the instance's choice).
                        // The formats with a minimum (Q4_1, Q4_K) store their codes with
                        // offset 0.
                        let w = if $shifts {
                            pair_sum16(s16)
                        } else {
                            _mm256_madd_epi16(s16, ones)
                        };
                        if MODE == 1 {
                            w
                        } else {
                            _mm256_add_epi32(w, _mm256_set1_epi32(-offset * (h0 + h1)))
                        }
                    } else {
                        // Σ (u − 128)·x, the same integer as Σ u·x − 128·Σx: |w|·(x signed by
                        // w). Each register's pair sums (up to 2·128·127) are widened alone, by
                        // `madd`: two do not fit 16 bits.
                        let mut s32 = _mm256_setzero_si256();
                        for (g, w) in wv.iter().enumerate() {
                            let p = _mm256_maddubs_epi16(aw[g], _mm256_sign_epi8(xg(g), *w));
                            s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(p, ones));
                        }
                        s32
                    };
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(s0, dx), *a);
                    if MODE == 1 {
                        // SAFETY: as above.
                        let sx = unsafe { _mm256_set1_ps(*act.s.get_unchecked(at)) };
                        *a = _mm256_fmadd_ps(s1, sx, *a);
                    }
                }
            }
            for (t, a) in acc.iter().enumerate() {
                if valid == 8 {
                    // A whole half panel: one store (the element loop below becomes a
                    // `memcpy` call per row and half panel, a few percent of a decode step).
                    // SAFETY: y[(t0 + t)·n + r0 ..][..8] with r0 + 8 ≤ n lies inside y
                    // (caller).
                    unsafe { _mm256_storeu_ps(y.add((t0 + t) * n + r0), *a) };
                    continue;
                }
                let mut out = [0.0f32; 8];
                // SAFETY: `out` holds 8 floats.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), *a) };
                for (j, v) in out[..valid].iter().enumerate() {
                    // SAFETY: y[(t0 + t)·n + r0 + j] with r0 + j < n lies inside y (caller).
                    unsafe { *y.add((t0 + t) * n + r0 + j) = *v };
                }
            }
        }

        /// `T` rows through the instance of the row function for `p`'s layout, both halves of
        /// the panel.
        ///
        /// # Safety
        /// As the row function.
        #[inline]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $rows_t<const T: usize>(
            p: &Packed,
            pi: usize,
            cp: *const u8,
            sp: *const u8,
            act: &TileActs,
            t0: usize,
            y: *mut f32,
        ) {
            for h in 0..2 {
                // SAFETY: the layout parameters are `p`'s; the rest is the caller's contract.
                unsafe {
                    match (mode_id(p.mode), p.half, p.nib, p.hi5) {
                        (0, true, true, true) => {
                            $rows::<0, T, true, true, true>(p, h, pi, cp, sp, act, t0, y)
                        }
                        (0, true, true, false) => {
                            $rows::<0, T, true, true, false>(p, h, pi, cp, sp, act, t0, y)
                        }
                        (1, true, true, false) => {
                            $rows::<1, T, true, true, false>(p, h, pi, cp, sp, act, t0, y)
                        }
                        (1, true, true, true) => {
                            $rows::<1, T, true, true, true>(p, h, pi, cp, sp, act, t0, y)
                        }
                        (1, false, true, true) => {
                            $rows::<1, T, false, true, true>(p, h, pi, cp, sp, act, t0, y)
                        }
                        (1, false, true, false) => {
                            $rows::<1, T, false, true, false>(p, h, pi, cp, sp, act, t0, y)
                        }
                        (0, true, false, false) => {
                            $rows::<0, T, true, false, false>(p, h, pi, cp, sp, act, t0, y)
                        }
                        (2, false, false, false) => {
                            $rows::<2, T, false, false, false>(p, h, pi, cp, sp, act, t0, y)
                        }
                        _ => {}
                    }
                }
            }
        }

        /// Every activation row against panel `pi`, up to eight rows per pass (four for `Shifts`).
        ///
        /// # Safety
        /// CPU with the function's features; `p` packed for the AVX2 layout; `act` has `p`'s
        /// width; `y` points at `[act.rows, p.rows]`; `pi < panels`.
        #[target_feature(enable = $features)]
        unsafe fn $panel_times(p: &Packed, pi: usize, act: &TileActs, y: *mut f32) {
            let m = act.rows;
            let nb = p.nb;
            let sb = scale_bytes(mode_id(p.mode), p.half);
            let cl = lines_per_block(p.nib, p.hi5);
            // SAFETY: panel pi's lines start inside the buffers (pi < panels).
            let (cp, sp) = unsafe {
                (
                    (p.codes.as_ptr() as *const u8).add(pi * nb * cl * 64),
                    (p.scales.as_ptr() as *const u8).add(pi * nb * sb),
                )
            };
            let mut t0 = 0;
            while t0 < m {
                // SAFETY: rows t0..t0 + t exist; the rest is the caller's contract.
                let t = unsafe {
                    match m - t0 {
                        1 => {
                            $rows_t::<1>(p, pi, cp, sp, act, t0, y);
                            1
                        }
                        2 => {
                            $rows_t::<2>(p, pi, cp, sp, act, t0, y);
                            2
                        }
                        3 => {
                            $rows_t::<3>(p, pi, cp, sp, act, t0, y);
                            3
                        }
                        // Up to eight rows share one unpacking of the weights: with `vpdpbusd`
                        // 3-5 % faster at eight rows than two passes of four; with `maddubs` on
                        // an Intel core (`Madd`) Q8_0 8-14 % and Q4_1 0-3 % faster (Xeon
                        // family 6 model 207, the two alternated in one process); on Zen 2
                        // (`Shifts`) 1-2 % slower, so four there.
                        5 if $vnni || !$shifts => {
                            $rows_t::<5>(p, pi, cp, sp, act, t0, y);
                            5
                        }
                        6 if $vnni || !$shifts => {
                            $rows_t::<6>(p, pi, cp, sp, act, t0, y);
                            6
                        }
                        7 if $vnni || !$shifts => {
                            $rows_t::<7>(p, pi, cp, sp, act, t0, y);
                            7
                        }
                        r if ($vnni || !$shifts) && r >= 8 => {
                            $rows_t::<8>(p, pi, cp, sp, act, t0, y);
                            8
                        }
                        _ => {
                            $rows_t::<4>(p, pi, cp, sp, act, t0, y);
                            4
                        }
                    }
                };
                t0 += t;
            }
        }
    };
}

panel_kernel!(
    "avx2,fma,f16c",
    false,
    false,
    rows,
    rows_t,
    panel_times_avx2
);
panel_kernel!(
    "avx2,fma,f16c",
    false,
    true,
    rows_shifts,
    rows_t_shifts,
    panel_times_shifts
);
panel_kernel!(
    "avx2,fma,f16c,avxvnni",
    true,
    false,
    rows_vnni,
    rows_t_vnni,
    panel_times_vnni
);

/// The instances of the AVX2 panel kernel: the same layout, loop and integer sums (so the same
/// bits), formed by AVX-VNNI's `vpdpbusd` (`Vnni`), or by `maddubs` with the 4-bit codes' 16-bit
/// sums widened by `madd` (`Madd`) or by shifts (`Shifts`, see `pair_sum16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    Vnni,
    Madd,
    Shifts,
}

impl Instance {
    /// The instance for this CPU (detected once): `Vnni` where `kernels::avx_vnni` says so;
    /// else `Shifts` on AMD family 17h (Zen, Zen+ and Zen 2: one pipe multiplies bytes and words,
    /// so a `madd` competes with the `maddubs`), `Madd` elsewhere (Intel's two multiply pipes
    /// also run the shifts: one `madd` instead of three shifts and an add). The environment
    /// variable `CANON_WIDEN` (`madd` or `shifts`) overrides the choice without AVX-VNNI, for
    /// side-by-side measurements.
    pub fn detect() -> Instance {
        static ONE: std::sync::OnceLock<Instance> = std::sync::OnceLock::new();
        *ONE.get_or_init(|| {
            if crate::kernels::avx_vnni() {
                return Instance::Vnni;
            }
            match std::env::var("CANON_WIDEN").as_deref() {
                Ok("madd") => Instance::Madd,
                Ok("shifts") => Instance::Shifts,
                _ if amd_family_17h() => Instance::Shifts,
                _ => Instance::Madd,
            }
        })
    }
}

/// Whether the CPU is AMD's family 17h (Zen to Zen 2).
fn amd_family_17h() -> bool {
    // CPUID leaves 0 and 1 exist on every x86-64 CPU.
    let (v, f) = (__cpuid(0), __cpuid(1));
    let amd = (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    // Family: base (bits 8..12) plus extended (bits 20..28) when the base is 0xF.
    let base = (f.eax >> 8) & 0xF;
    let family = if base == 0xF {
        base + ((f.eax >> 20) & 0xFF)
    } else {
        base
    };
    amd && family == 0x17
}

/// Every activation row against panel `pi` through instance `kernel`.
///
/// # Safety
/// CPU with AVX2, FMA and F16C, and AVX-VNNI for `Instance::Vnni`; `p` packed for the AVX2
/// layout; `act` has `p`'s width; `y` points at `[act.rows, p.rows]`; `pi < panels`.
pub(super) unsafe fn panel_times(
    p: &Packed,
    pi: usize,
    act: &TileActs,
    y: *mut f32,
    kernel: Instance,
) {
    // SAFETY: the caller's contract, with the extensions `kernel` needs.
    unsafe {
        match kernel {
            Instance::Vnni => panel_times_vnni(p, pi, act, y),
            Instance::Madd => panel_times_avx2(p, pi, act, y),
            Instance::Shifts => panel_times_shifts(p, pi, act, y),
        }
    }
}
