//! The AVX2 layout's panels dequantized to f32 rows (a LoRA/QLoRA input gradient's frozen base).

use std::arch::x86_64::*;

use super::super::*;
use super::fifth;

/// Panel `pi`'s 16 rows dequantized into `out` (`[16, p.cols]` row-major), as the AVX-512
/// `dequantize_panel` does it with half the width: per block, half (rows 0..8, 8..16) and
/// line, two rows' four codes at a time widened to i32, less the offset, to f32, times the
/// row's scale plus its minimum (zero for the symmetric formats): the operations and order
/// of `Packed::dequantize_row`, so the same bits. A LoRA/QLoRA input gradient dequantizes
/// every row of the frozen base this way.
///
/// # Safety
/// CPU with AVX2 and F16C; `p.half`; `pi < p.panels` with all 16 rows inside `p.rows`; `out`
/// points at `16 · p.cols` writable floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels::tile::packed) unsafe fn dequantize_panel(
    p: &Packed,
    pi: usize,
    out: *mut f32,
) {
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
    let off = _mm256_set1_epi32(p.offset);
    let low = _mm256_set1_epi8(15);
    // Quarter q of a half-line holds rows 2q and 2q + 1 (four codes each): scales 2q, 2q + 1
    // repeated 4×.
    let idx: [__m256i; 4] = std::array::from_fn(|q| {
        let l = 2 * q as i32;
        _mm256_setr_epi32(l, l, l, l, l + 1, l + 1, l + 1, l + 1)
    });
    for b in 0..nb {
        // SAFETY: block b's scales: 16 f16 scales, then 16 minimums when m != 0.
        let (d, mn) = unsafe {
            let s = sp.add(b * sb);
            let half = |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(s.add(at) as *const __m128i));
            let d = [half(0), half(16)];
            let mn = if m == 0 {
                [_mm256_setzero_ps(); 2]
            } else {
                [half(32), half(48)]
            };
            (d, mn)
        };
        for h in 0..2 {
            let ds: [__m256; 4] = std::array::from_fn(|q| _mm256_permutevar8x32_ps(d[h], idx[q]));
            let ms: [__m256; 4] = std::array::from_fn(|q| _mm256_permutevar8x32_ps(mn[h], idx[q]));
            let reg = |g: usize, v: __m256i| {
                for q in 0..4 {
                    let lane = if q < 2 {
                        _mm256_castsi256_si128(v)
                    } else {
                        _mm256_extracti128_si256::<1>(v)
                    };
                    let c = if q % 2 == 0 {
                        lane
                    } else {
                        _mm_srli_si128::<8>(lane)
                    };
                    let x = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(c), off));
                    let y = _mm256_add_ps(_mm256_mul_ps(ds[q], x), ms[q]);
                    let (row, col) = (8 * h + 2 * q, b * QK + 4 * g);
                    // SAFETY: rows `row`, `row + 1` < 16 of the panel, columns col..col+4 < k,
                    // inside `out`.
                    unsafe {
                        _mm_storeu_ps(out.add(row * k + col), _mm256_castps256_ps128(y));
                        _mm_storeu_ps(out.add((row + 1) * k + col), _mm256_extractf128_ps::<1>(y));
                    }
                }
            };
            let hv = if p.hi5 {
                // SAFETY: half h of line 4 of block b (the fifth bits, present when `hi5`).
                unsafe { _mm256_load_si256(cp.add((b * cl + 4) * 64 + 32 * h) as *const __m256i) }
            } else {
                _mm256_setzero_si256()
            };
            for j in 0..if p.nib { 4 } else { 8 } {
                // SAFETY: half h of line j of block b (64-byte aligned lines, so 32-byte
                // aligned halves).
                let v = unsafe {
                    _mm256_load_si256(cp.add((b * cl + j) * 64 + 32 * h) as *const __m256i)
                };
                if p.nib {
                    let (lo, hi) = (
                        _mm256_and_si256(v, low),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), low),
                    );
                    if p.hi5 {
                        reg(j, _mm256_or_si256(lo, fifth(hv, j)));
                        reg(j + 4, _mm256_or_si256(hi, fifth(hv, j + 4)));
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
}
