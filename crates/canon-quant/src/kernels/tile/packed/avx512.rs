//! The packed panels on AVX-512 VNNI: whole-panel dequantization and the tile kernel
//! (`vpdpbusd` on 16 weight rows per register) over the packed lines.

use std::arch::x86_64::*;

use super::*;

/// Panel `pi`'s 16 rows dequantized into `out` (`[16, p.cols]` row-major): per block and
/// register `g`, the 64 codes (4 per row) widened to i32, less the offset, to f32, times the
/// row's scale plus its minimum (zero for the symmetric formats), the operations and order of
/// `Packed::dequantize_row`, so the same bits.
///
/// # Safety
/// CPU with AVX-512F/BW and F16C (any CPU a `Packed` exists on); `p.half`; `pi < p.panels`
/// with all 16 rows inside `p.rows`; `out` points at `16 · p.cols` writable floats.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn dequantize_panel(p: &Packed, pi: usize, out: *mut f32) {
    let (nb, k) = (p.nb, p.cols);
    let cl = lines_per_block(p.nib, p.hi5);
    let m = mode_id(p.mode);
    let sb = scale_bytes(m, p.half);
    // SAFETY: panel pi's lines lie inside the buffers (pi < panels).
    let (cp, sp) = unsafe {
        (
            (p.codes.as_ptr() as *const u8).add(pi * nb * cl * 64),
            (p.scales.as_ptr() as *const u8).add(pi * nb * sb),
        )
    };
    let off = _mm512_set1_epi32(p.offset);
    let low = _mm512_set1_epi8(15);
    // Quarter q of a line holds rows 4q..4q+4, four codes each: their scales repeated 4×.
    let idx: [__m512i; 4] = std::array::from_fn(|q| {
        let l = 4 * q as i32;
        _mm512_setr_epi32(
            l,
            l,
            l,
            l,
            l + 1,
            l + 1,
            l + 1,
            l + 1,
            l + 2,
            l + 2,
            l + 2,
            l + 2,
            l + 3,
            l + 3,
            l + 3,
            l + 3,
        )
    });
    for b in 0..nb {
        // SAFETY: block b's scales (16 f16 scales, then 16 minimums when m != 0).
        let (d, mn) = unsafe {
            let s = sp.add(b * sb);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(s as *const __m256i));
            let mn = if m == 0 {
                _mm512_setzero_ps()
            } else {
                _mm512_cvtph_ps(_mm256_loadu_si256(s.add(32) as *const __m256i))
            };
            (d, mn)
        };
        let ds: [__m512; 4] = std::array::from_fn(|q| _mm512_permutexvar_ps(idx[q], d));
        let ms: [__m512; 4] = std::array::from_fn(|q| _mm512_permutexvar_ps(idx[q], mn));
        let reg = |g: usize, v: __m512i| {
            for q in 0..4 {
                let c = match q {
                    0 => _mm512_extracti32x4_epi32::<0>(v),
                    1 => _mm512_extracti32x4_epi32::<1>(v),
                    2 => _mm512_extracti32x4_epi32::<2>(v),
                    _ => _mm512_extracti32x4_epi32::<3>(v),
                };
                let x = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(c), off));
                let y = _mm512_add_ps(_mm512_mul_ps(ds[q], x), ms[q]);
                let col = b * QK + 4 * g;
                // SAFETY: rows 4q..4q+4 of the panel, columns col..col+4 < k, inside `out`.
                unsafe {
                    let row = |i: usize| out.add((4 * q + i) * k + col);
                    _mm_storeu_ps(row(0), _mm512_extractf32x4_ps::<0>(y));
                    _mm_storeu_ps(row(1), _mm512_extractf32x4_ps::<1>(y));
                    _mm_storeu_ps(row(2), _mm512_extractf32x4_ps::<2>(y));
                    _mm_storeu_ps(row(3), _mm512_extractf32x4_ps::<3>(y));
                }
            }
        };
        let hv = if p.hi5 {
            // SAFETY: line 4 of block b (the fifth bits, present when `hi5`).
            unsafe { _mm512_load_si512(cp.add((b * cl + 4) * 64) as *const __m512i) }
        } else {
            _mm512_setzero_si512()
        };
        for j in 0..if p.nib { 4 } else { 8 } {
            // SAFETY: line j of block b (64-byte aligned lines).
            let v = unsafe { _mm512_load_si512(cp.add((b * cl + j) * 64) as *const __m512i) };
            if p.nib {
                let lo = _mm512_and_si512(v, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                if p.hi5 {
                    reg(j, _mm512_or_si512(lo, fifth(hv, j)));
                    reg(j + 4, _mm512_or_si512(hi, fifth(hv, j + 4)));
                } else {
                    reg(j, lo);
                    reg(j + 4, hi);
                }
            } else {
                reg(j, v);
            }
        }
    }
}

/// Bit `g` of every byte of `hv` as that byte's bit 4 (the five-bit formats' fifth bits,
/// `packed` docs): the 16-bit shifts carry bits across bytes only into positions the mask clears.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
fn fifth(hv: __m512i, g: usize) -> __m512i {
    let m = _mm512_set1_epi8(0x10);
    let v = match g {
        0 => _mm512_slli_epi16::<4>(hv),
        1 => _mm512_slli_epi16::<3>(hv),
        2 => _mm512_slli_epi16::<2>(hv),
        3 => _mm512_slli_epi16::<1>(hv),
        4 => hv,
        5 => _mm512_srli_epi16::<1>(hv),
        6 => _mm512_srli_epi16::<2>(hv),
        _ => _mm512_srli_epi16::<3>(hv),
    };
    _mm512_and_si512(v, m)
}

/// How many blocks ahead of the one being multiplied the tile kernel asks for the weights.
const PREFETCH_BLOCKS: usize = 8;

/// The four activation codes `4g..4g+4` of a block in every 32-bit lane.
///
/// # Safety
/// `q` points at 4 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn bcast(q: *const i8) -> __m512i {
    // SAFETY: 4 readable bytes (caller); unaligned read.
    _mm512_set1_epi32(unsafe { (q as *const i32).read_unaligned() })
}

/// `T` activation rows from `t0` against panel `pi`, whose codes start at `cp` (nibbles if
/// `NIB`, plus a line of fifth bits if `H5`, else one register per line) and scales at `sp`; writes `y[t, r0..r0 + valid]`. The
/// float steps are `tile::avx512::rows`', in the same order.
///
/// # Safety
/// CPU with the `Isa::Avx512Vnni` extensions; `HALF` and `MODE` are `p`'s, `cp`/`sp` hold
/// panel `pi`'s `p.nb` blocks in that layout (`cp` 64-byte aligned); rows `t0..t0 + T` exist
/// in `act`, whose width is `p`'s; `y` points at `[act.rows, p.rows]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<
    const MODE: u8,
    const T: usize,
    const NIB: bool,
    const HALF: bool,
    const H5: bool,
>(
    p: &Packed,
    pi: usize,
    cp: *const u8,
    sp: *const u8,
    act: &TileActs,
    t0: usize,
    y: *mut f32,
) {
    let (nb, n, offset) = (p.nb, p.rows, p.offset);
    let k = nb * QK;
    let r0 = pi * PANEL;
    let valid = PANEL.min(n - r0);
    let cl = lines_per_block(NIB, H5);
    let sb = scale_bytes(MODE, HALF);
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        // Several rows: the lines PREFETCH_BLOCKS blocks ahead (into the next panel at the end
        // of this one: panels lie one after the other), so that memory and the arithmetic
        // overlap when the weights come from memory (Zen 4, weights of 42 MB, 8 rows: 104 →
        // 144 G multiply-adds/s a thread). One row keeps to the hardware's own prefetching,
        // which its faster pass over the lines feeds well (measured 3 % slower with the hint).
        // A hint only: the address may lie past the buffer.
        for j in 0..if T > 1 { cl } else { 0 } {
            _mm_prefetch::<_MM_HINT_T0>(
                cp.wrapping_add((b + PREFETCH_BLOCKS) * cl * 64 + j * 64) as *const i8
            );
        }
        // SAFETY: block b of panel pi: cl aligned lines and sb scale bytes inside the buffers.
        let (wv, s0, s1) = unsafe {
            let l = cp.add(b * cl * 64);
            let wv: [__m512i; 8] = if NIB {
                let r: [__m512i; 4] =
                    std::array::from_fn(|j| _mm512_load_si512(l.add(j * 64) as *const __m512i));
                let hv = if H5 {
                    _mm512_load_si512(l.add(4 * 64) as *const __m512i)
                } else {
                    _mm512_setzero_si512()
                };
                std::array::from_fn(|g| {
                    let v = if g < 4 {
                        _mm512_and_si512(r[g], low)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16::<4>(r[g - 4]), low)
                    };
                    if H5 {
                        _mm512_or_si512(v, fifth(hv, g))
                    } else {
                        v
                    }
                })
            } else {
                std::array::from_fn(|g| _mm512_load_si512(l.add(g * 64) as *const __m512i))
            };
            let s = sp.add(b * sb);
            let (s0, s1) = if HALF {
                let s0 = _mm512_cvtph_ps(_mm256_loadu_si256(s as *const __m256i));
                let s1 = if MODE == 0 {
                    _mm512_setzero_ps()
                } else {
                    _mm512_cvtph_ps(_mm256_loadu_si256(s.add(32) as *const __m256i))
                };
                (s0, s1)
            } else {
                let s0 = _mm512_loadu_ps(s as *const f32);
                let s1 = if MODE == 0 {
                    _mm512_setzero_ps()
                } else {
                    _mm512_loadu_ps(s.add(64) as *const f32)
                };
                (s0, s1)
            };
            (wv, s0, s1)
        };
        for (t, a) in acc.iter_mut().enumerate() {
            let row = t0 + t;
            let at = row * nb + b;
            // SAFETY: row < act.rows and b < nb index inside the activation buffers.
            let (q, [h0, h1], dx) = unsafe {
                (
                    act.qs.as_ptr().add(row * k + b * QK),
                    *act.h.get_unchecked(at),
                    _mm512_set1_ps(*act.d.get_unchecked(at)),
                )
            };
            if MODE == 2 {
                let mut i0 = _mm512_set1_epi32(-offset * h0);
                let mut i1 = _mm512_set1_epi32(-offset * h1);
                for g in 0..4 {
                    // SAFETY: codes 4g.. and 16 + 4g.. of the block lie inside the row.
                    unsafe {
                        i0 = _mm512_dpbusd_epi32(i0, wv[g], bcast(q.add(4 * g)));
                        i1 = _mm512_dpbusd_epi32(i1, wv[g + 4], bcast(q.add(16 + 4 * g)));
                    }
                }
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(s0, dx), *a);
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(s1, dx), *a);
            } else {
                let mut i0 = _mm512_set1_epi32(-offset * (h0 + h1));
                let mut i1 = _mm512_setzero_si512();
                for g in 0..4 {
                    // SAFETY: as above.
                    unsafe {
                        i0 = _mm512_dpbusd_epi32(i0, wv[g], bcast(q.add(4 * g)));
                        i1 = _mm512_dpbusd_epi32(i1, wv[g + 4], bcast(q.add(16 + 4 * g)));
                    }
                }
                let i = _mm512_add_epi32(i0, i1);
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(s0, dx), *a);
                if MODE == 1 {
                    // SAFETY: as above.
                    let sx = unsafe { _mm512_set1_ps(*act.s.get_unchecked(at)) };
                    *a = _mm512_fmadd_ps(s1, sx, *a);
                }
            }
        }
    }
    let mask: __mmask16 = if valid >= PANEL {
        0xFFFF
    } else {
        ((1u32 << valid) - 1) as __mmask16
    };
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: y[(t0 + t)·n + r0 ..][..valid] lies inside y (caller); masked lanes are
        // not written.
        unsafe { _mm512_mask_storeu_ps(y.add((t0 + t) * n + r0), mask, *a) };
    }
}

/// `T` rows through the instance of `rows` for `p`'s layout.
///
/// # Safety
/// As `rows`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_t<const T: usize>(
    p: &Packed,
    pi: usize,
    nib: bool,
    hi5: bool,
    cp: *const u8,
    sp: *const u8,
    act: &TileActs,
    t0: usize,
    y: *mut f32,
) {
    macro_rules! pick {
        ($($m:literal, $nib:literal, $half:literal, $h5:literal);*) => {
            match (mode_id(p.mode), nib, p.half, hi5) {
                $(($m, $nib, $half, $h5) => {
                    // SAFETY: the layout parameters are the caller's; so is the rest.
                    unsafe { rows::<$m, T, $nib, $half, $h5>(p, pi, cp, sp, act, t0, y) }
                })*
                _ => {}
            }
        };
    }
    pick!(0, true, true, false; 1, true, true, false; 1, true, false, false;
          0, false, true, false; 1, false, true, false; 1, false, false, false;
          2, false, false, false; 0, false, false, false; 2, false, true, false;
          0, true, false, false; 2, true, true, false; 2, true, false, false;
          0, true, true, true; 1, true, true, true; 1, true, false, true);
}

/// Every activation row against panel `pi`, eight rows per pass.
///
/// # Safety
/// CPU as `rows`; `act` has `p`'s width; `y` points at `[act.rows, p.rows]`; `pi < panels`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn panel_times(p: &Packed, pi: usize, act: &TileActs, y: *mut f32) {
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
    // Nibble panels stay nibbles whatever the number of rows: widening a panel's codes to bytes
    // once for several passes of eight rows was slower once the weight lines are prefetched
    // (Zen 4, 42 MB of weights, 16 rows: Q4_0 93–115 → 169–170, Q4_1 103–104 → 138–149 G
    // multiply-adds/s a thread; 64 and 256 rows equal or better too).
    let nib = p.nib;
    let mut t0 = 0;
    while t0 < m {
        let left = m - t0;
        // SAFETY: rows t0..t0 + t exist; the rest is the caller's contract.
        let t = unsafe {
            match left {
                1 => {
                    rows_t::<1>(p, pi, nib, p.hi5, cp, sp, act, t0, y);
                    1
                }
                2 => {
                    rows_t::<2>(p, pi, nib, p.hi5, cp, sp, act, t0, y);
                    2
                }
                3 => {
                    rows_t::<3>(p, pi, nib, p.hi5, cp, sp, act, t0, y);
                    3
                }
                4 => {
                    rows_t::<4>(p, pi, nib, p.hi5, cp, sp, act, t0, y);
                    4
                }
                5 => {
                    rows_t::<5>(p, pi, nib, p.hi5, cp, sp, act, t0, y);
                    5
                }
                6 => {
                    rows_t::<6>(p, pi, nib, p.hi5, cp, sp, act, t0, y);
                    6
                }
                7 => {
                    rows_t::<7>(p, pi, nib, p.hi5, cp, sp, act, t0, y);
                    7
                }
                _ => {
                    rows_t::<8>(p, pi, nib, p.hi5, cp, sp, act, t0, y);
                    8
                }
            }
        };
        t0 += t;
    }
}
