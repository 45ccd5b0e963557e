use std::arch::x86_64::*;

use super::NF4_CODE;

/// One block of 64 values from 32 packed bytes: `out[e] = NF4[idx_e] · absmax`.
/// Codes are looked up with two 8-entry permutes and a blend on bit 3 of the index.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `bytes` holds at least 32 bytes and `out` at least 64 values.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dequantize_block(bytes: &[u8], absmax: f32, out: &mut [f32]) {
    debug_assert!(bytes.len() == 32 && out.len() == 64);
    // SAFETY: NF4_CODE has 16 entries (two loads of 8); reads cover bytes[0..32] and writes
    // out[0..64], inside the lengths the caller guarantees; all accesses are unaligned.
    unsafe {
        let t0 = _mm256_loadu_ps(NF4_CODE.as_ptr());
        let t1 = _mm256_loadu_ps(NF4_CODE.as_ptr().add(8));
        let s = _mm256_set1_ps(absmax);
        let seven = _mm256_set1_epi32(7);
        let mask = _mm_set1_epi8(0x0F);
        for c in 0..4 {
            // 8 bytes → 16 indices in element order (high nibble first).
            let b = _mm_loadl_epi64(bytes.as_ptr().add(8 * c) as *const __m128i);
            let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
            let lo = _mm_and_si128(b, mask);
            let idx = _mm_unpacklo_epi8(hi, lo);
            for h in 0..2 {
                let part = if h == 0 { idx } else { _mm_srli_si128(idx, 8) };
                let i = _mm256_cvtepu8_epi32(part);
                let v0 = _mm256_permutevar8x32_ps(t0, i);
                let v1 = _mm256_permutevar8x32_ps(t1, i);
                let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, seven));
                let v = _mm256_mul_ps(_mm256_blendv_ps(v0, v1, upper), s);
                _mm256_storeu_ps(out.as_mut_ptr().add(16 * c + 8 * h), v);
            }
        }
    }
}

/// `Σ_e NF4[idx_e]·absmax_{e/64}·x_e` over one row: codes are looked up as in
/// `dequantize_block` and multiplied with `x` in registers; each block's sum is scaled once.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `codes.len() ≥ 32·scales.len()` and
/// `x.len() ≥ 64·scales.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn row_dot(codes: &[u8], scales: &[f32], x: &[f32]) -> f32 {
    debug_assert!(codes.len() * 2 == x.len() && scales.len() * 64 == x.len());
    // SAFETY: block j reads codes[32j..32j+32] and x[64j..64j+64], inside the lengths the caller
    // guarantees for j < scales.len(); NF4_CODE has 16 entries; all accesses are unaligned.
    unsafe {
        let t0 = _mm256_loadu_ps(NF4_CODE.as_ptr());
        let t1 = _mm256_loadu_ps(NF4_CODE.as_ptr().add(8));
        let seven = _mm256_set1_epi32(7);
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        for (j, &s) in scales.iter().enumerate() {
            let mut blk = _mm256_setzero_ps();
            for c in 0..4 {
                let b = _mm_loadl_epi64(codes.as_ptr().add(32 * j + 8 * c) as *const __m128i);
                let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
                let lo = _mm_and_si128(b, mask);
                let idx = _mm_unpacklo_epi8(hi, lo);
                for h in 0..2 {
                    let part = if h == 0 { idx } else { _mm_srli_si128(idx, 8) };
                    let i = _mm256_cvtepu8_epi32(part);
                    let v0 = _mm256_permutevar8x32_ps(t0, i);
                    let v1 = _mm256_permutevar8x32_ps(t1, i);
                    let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, seven));
                    let w = _mm256_blendv_ps(v0, v1, upper);
                    let xv = _mm256_loadu_ps(x.as_ptr().add(64 * j + 16 * c + 8 * h));
                    blk = _mm256_fmadd_ps(w, xv, blk);
                }
            }
            acc = _mm256_fmadd_ps(blk, _mm256_set1_ps(s), acc);
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// `Σ a_i·b_i` over the shorter length.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: every load reads 8 values below n ≤ both lengths; the tail is indexed safely.
    unsafe {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc0,
            );
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                acc1,
            );
            i += 16;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut total = _mm_cvtss_f32(s);
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }
}
