//! Packing for the bf16 micro-kernel: operands rounded to bfloat16 (to nearest, ties to even) and
//! stored two consecutive `k` values per 32-bit slot, as `vdpbf16ps` reads them.

use super::{MR, Mat, NR};

/// `x` rounded to bfloat16 (to nearest, ties to even), as `vcvtneps2bf16` rounds.
pub(super) fn bf16_bits(x: f32) -> u32 {
    let u = x.to_bits();
    if x.is_nan() {
        return (u >> 16) | 0x40;
    }
    u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16
}

/// Two consecutive `k` values as one 32-bit slot of a bf16 panel (the lower half first), stored in
/// an f32 buffer by its bits.
fn bf16_pair(lo: f32, hi: f32) -> f32 {
    f32::from_bits(bf16_bits(lo) | (bf16_bits(hi) << 16))
}

/// `pack_b` for the bf16 kernel: `dst[l/2][j]` holds `B[pc+l, j]` and `B[pc+l+1, j]` (the second
/// zero past `kc`).
pub(super) fn pack_b_bf16(
    dst: &mut [f32],
    p: usize,
    b: Mat,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
) {
    let jr = p * NR;
    let nr = NR.min(nc - jr);
    if nr == NR && kc.is_multiple_of(2) && (b.cs == 1 || b.rs == 1) {
        let at = b.ptr.wrapping_add(pc * b.rs + (jc + jr) * b.cs);
        // SAFETY: the bf16 packers run only when the CPU has AVX512_BF16 (`set_bf16_products`);
        // the whole `kc × NR` block lies inside B (caller) and `dst` holds `NR · kc/2` slots.
        unsafe {
            if b.cs == 1 {
                pairs_across(dst, at, b.rs, NR, kc / 2, 1.0)
            } else {
                pairs_along(dst, at, b.cs, NR, kc / 2, 1.0)
            }
        }
        return;
    }
    // SAFETY: row `pc + l` (`l < kc`), column `jc + jr + j` (`j < nr`) lies inside B (the
    // caller's bounds, as for `pack_b`).
    let at = |l: usize, j: usize| unsafe { *b.ptr.add((pc + l) * b.rs + (jc + jr + j) * b.cs) };
    for (l2, row) in dst.chunks_exact_mut(NR).take(kc.div_ceil(2)).enumerate() {
        let l = 2 * l2;
        for (j, d) in row.iter_mut().enumerate() {
            *d = if j >= nr {
                0.0
            } else {
                bf16_pair(at(l, j), if l + 1 < kc { at(l + 1, j) } else { 0.0 })
            };
        }
    }
}

/// bf16 slots of `w` (≤ 32) lanes whose pairs lie in two consecutive rows of the source
/// (`src[2t·step + lane]` and `src[(2t+1)·step + lane]`, lanes contiguous): `dst[t·w + lane]` for
/// `t < pairs`, each value times `alpha`, rounded to nearest even as `bf16_bits` does (NaN aside).
///
/// # Safety
/// AVX-512F; every element named lies inside the source; `dst` holds `w · pairs` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pairs_across(
    dst: &mut [f32],
    src: *const f32,
    step: usize,
    w: usize,
    pairs: usize,
    alpha: f32,
) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..w * pairs];
    let scale = _mm512_set1_ps(alpha);
    let (one, bias, high) = (
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0x7fff),
        _mm512_set1_epi32(0xffff_0000u32 as i32),
    );
    // Round-to-nearest-even of each lane's upper 16 bits, in place.
    let round = |v: __m512| {
        let u = _mm512_castps_si512(_mm512_mul_ps(v, scale));
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(u), one);
        _mm512_add_epi32(u, _mm512_add_epi32(bias, lsb))
    };
    for t in 0..pairs {
        let (lo, hi) = (
            src.wrapping_add(2 * t * step),
            src.wrapping_add((2 * t + 1) * step),
        );
        for c in (0..w).step_by(16) {
            let lanes = (w - c).min(16);
            let m: __mmask16 = if lanes == 16 {
                0xffff
            } else {
                (1 << lanes) - 1
            };
            // SAFETY: lanes `c ..c+lanes` of both rows lie inside the source, and slots
            // `t·w + c ..+lanes` inside `dst` (caller).
            unsafe {
                let l = round(_mm512_maskz_loadu_ps(m, lo.wrapping_add(c)));
                let h = round(_mm512_maskz_loadu_ps(m, hi.wrapping_add(c)));
                let v = _mm512_or_si512(_mm512_srli_epi32::<16>(l), _mm512_and_si512(h, high));
                _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(t * w + c).cast(), m, v);
            }
        }
    }
}

/// bf16 slots of `w` lanes whose pairs lie side by side along each lane's own row (`src[lane·step
/// + 2t]`, `src[lane·step + 2t + 1]`): `dst[t·w + lane]` for `t < pairs`, times `alpha`, rounded
/// to nearest even by `vcvtne2ps2bf16` (16 pairs at a time; the rest by `bf16_pair`).
///
/// # Safety
/// AVX-512F and AVX512_BF16; every element named lies inside the source; `dst` holds
/// `w · pairs` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pairs_along(
    dst: &mut [f32],
    src: *const f32,
    step: usize,
    w: usize,
    pairs: usize,
    alpha: f32,
) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..w * pairs];
    let scale = _mm512_set1_ps(alpha);
    let mut tmp = [0f32; 16];
    for lane in 0..w {
        let row = src.wrapping_add(lane * step);
        let full = pairs / 16 * 16;
        for t0 in (0..full).step_by(16) {
            // SAFETY: values `2·t0 ..+32` of this row lie inside the source (caller).
            unsafe {
                let v0 = _mm512_mul_ps(_mm512_loadu_ps(row.wrapping_add(2 * t0)), scale);
                let v1 = _mm512_mul_ps(_mm512_loadu_ps(row.wrapping_add(2 * t0 + 16)), scale);
                let bf: __m512 = std::mem::transmute(_mm512_cvtne2ps_pbh(v1, v0));
                _mm512_storeu_ps(tmp.as_mut_ptr(), bf);
            }
            for (t, v) in tmp.iter().enumerate() {
                dst[(t0 + t) * w + lane] = *v;
            }
        }
        for t in full..pairs {
            // SAFETY: as above.
            let (x, y) = unsafe { (*row.wrapping_add(2 * t), *row.wrapping_add(2 * t + 1)) };
            dst[t * w + lane] = bf16_pair(alpha * x, alpha * y);
        }
    }
}

/// Stand-in off x86-64, never called (the callers check `available()` first).
///
/// # Safety
/// Unreachable; the signature matches the x86-64 kernel's.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pairs_across(_: &mut [f32], _: *const f32, _: usize, _: usize, _: usize, _: f32) {
    unreachable!("sgemm: bf16 products exist on x86-64 only")
}

/// Stand-in off x86-64, never called (the callers check `available()` first).
///
/// # Safety
/// Unreachable; the signature matches the x86-64 kernel's.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pairs_along(_: &mut [f32], _: *const f32, _: usize, _: usize, _: usize, _: f32) {
    unreachable!("sgemm: bf16 products exist on x86-64 only")
}

/// `pack_a` for the bf16 kernel: `ap[l/2][i]` holds `alpha · A[i, pc+l]` and `alpha · A[i, pc+l+1]`.
pub(super) fn pack_a_bf16(
    ap: &mut [f32],
    a: Mat,
    ir: usize,
    mr: usize,
    pc: usize,
    kc: usize,
    alpha: f32,
) {
    if mr == MR && kc.is_multiple_of(2) && (a.cs == 1 || a.rs == 1) {
        let at = a.ptr.wrapping_add(ir * a.rs + pc * a.cs);
        // SAFETY: as in `pack_b_bf16`, for the `MR × kc` block of A.
        unsafe {
            if a.rs == 1 {
                pairs_across(ap, at, a.cs, MR, kc / 2, alpha)
            } else {
                pairs_along(ap, at, a.rs, MR, kc / 2, alpha)
            }
        }
        return;
    }
    // SAFETY: row `ir + i` (`i < mr`), column `pc + l` (`l < kc`) lies inside A (the caller's
    // bounds, as for `pack_a`).
    let at = |i: usize, l: usize| alpha * unsafe { *a.ptr.add((ir + i) * a.rs + (pc + l) * a.cs) };
    for (l2, d) in ap.chunks_exact_mut(MR).take(kc.div_ceil(2)).enumerate() {
        let l = 2 * l2;
        for (i, d) in d.iter_mut().enumerate() {
            *d = if i >= mr {
                0.0
            } else {
                bf16_pair(at(i, l), if l + 1 < kc { at(i, l + 1) } else { 0.0 })
            };
        }
    }
}
