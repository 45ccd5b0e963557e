//! Decoding's attention loops in blocks for AVX2 (`one_query_body` inlines them where it is
//! compiled with AVX2): eight keys' scores at a time, and the weighted value rows summed with the
//! output held in registers, each value by the operations and order of the per-key loops.

use super::{KvElem, StridedRows};

/// The scores of keys `j0..j0 + 8`, `(T::dot(q, k_j)) · scale` each with `dot`'s operations in
/// its order (per key eight lanes summed over the groups of eight, then the lanes in order from
/// the empty sum, then the empty tail), written to `out[0..8]` and returned as a vector (the
/// caller keeps a running lane-wise maximum over the blocks and reduces it once, instead of a
/// chain of eight scalar maxima per block). The eight
/// keys' lanes run side by side and are summed after an 8×8 transpose, instead of one key's lane
/// sum (a chain of eight dependent adds) at a time. `q.len()` must be a multiple of 8.
///
/// # Safety
/// Keys `j0..j0 + 8` of width `q.len()` lie inside `keys`; `out` has 8 writable floats; only
/// inlined into a function compiled with AVX2 and the type's features.
#[inline(always)]
pub(in crate::attention) unsafe fn scores8<T: KvElem>(
    q: &[f32],
    keys: &StridedRows<'_, T>,
    j0: usize,
    scale: f32,
    out: *mut f32,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let d = q.len();
    // SAFETY: the caller's contract: rows j0..j0 + 8 of width d, AVX2.
    unsafe {
        let base = keys.data.as_ptr().add(keys.start + j0 * keys.stride);
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..d).step_by(8) {
            let x = _mm256_loadu_ps(q.as_ptr().add(c));
            for (k, a) in acc.iter_mut().enumerate() {
                let y = T::load8(base.add(k * keys.stride + c));
                *a = _mm256_add_ps(*a, _mm256_mul_ps(x, y));
            }
        }
        // Transpose: t[l] holds lane l of the eight keys.
        let t = crate::fused::transpose8(acc);
        // `dot`'s lane sum starts from the empty sum and adds the empty tail: the same value
        // as `Iterator::sum` gives for no floats.
        let empty: f32 = [0.0f32; 0].iter().sum();
        let z = _mm256_set1_ps(empty);
        let mut sum = z;
        for tl in t {
            sum = _mm256_add_ps(sum, tl);
        }
        let sc = _mm256_mul_ps(_mm256_add_ps(sum, z), _mm256_set1_ps(scale));
        _mm256_storeu_ps(out, sc);
        sc
    }
}

/// The largest of the eight lanes of `m` (a running maximum of [`scores8`]'s vectors); where a
/// lane is NaN the result may be NaN or another lane (`vmaxps` returns its second operand when
/// either is NaN), which changes nothing downstream: a NaN score makes every weight of the
/// softmax NaN whatever the maximum.
///
/// # Safety
/// Only inlined into a function compiled with AVX2.
#[inline(always)]
pub(in crate::attention) unsafe fn lanes_max(m: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: register-only operations; AVX2 (caller).
    unsafe {
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_max_ss(h, _mm_shuffle_ps::<1>(h, h));
        _mm_cvtss_f32(h)
    }
}

/// `o += Σ_j (p_j · inv) v_j` over value rows `0..p.len()`, each output element by the fused
/// multiply-adds of `axpy` in the same order (value row by value row), with columns in blocks of
/// up to 64 held in eight registers across all the rows instead of loaded and stored for each.
/// `o.len()` must be a multiple of 8.
///
/// # Safety
/// Value rows `0..p.len()` of width `o.len()` lie inside `vals`; only inlined into a function
/// compiled with AVX2, FMA and the type's features.
#[inline(always)]
pub(in crate::attention) unsafe fn weighted8<T: KvElem>(
    p: &[f32],
    inv: f32,
    vals: &StridedRows<'_, T>,
    o: &mut [f32],
) {
    /// Columns `c0..c0 + 8·W`.
    #[inline(always)]
    unsafe fn block<T: KvElem, const W: usize>(
        p: &[f32],
        inv: f32,
        vals: &StridedRows<'_, T>,
        o: &mut [f32],
        c0: usize,
    ) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract: columns c0..c0 + 8W inside `o` and every value row.
        unsafe {
            let op = o.as_mut_ptr().add(c0);
            let mut acc: [__m256; W] = std::array::from_fn(|i| _mm256_loadu_ps(op.add(8 * i)));
            let base = vals.data.as_ptr().add(vals.start + c0);
            for (j, &pj) in p.iter().enumerate() {
                let w = _mm256_set1_ps(pj * inv);
                let v = base.add(j * vals.stride);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, T::load8(v.add(8 * i)), *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(op.add(8 * i), *a);
            }
        }
    }
    let dv = o.len();
    let mut c0 = 0;
    // SAFETY: each block covers columns c0..c0 + 8W ≤ dv, inside the caller's rows of width dv.
    unsafe {
        while c0 + 64 <= dv {
            block::<T, 8>(p, inv, vals, o, c0);
            c0 += 64;
        }
        match (dv - c0) / 8 {
            7 => block::<T, 7>(p, inv, vals, o, c0),
            6 => block::<T, 6>(p, inv, vals, o, c0),
            5 => block::<T, 5>(p, inv, vals, o, c0),
            4 => block::<T, 4>(p, inv, vals, o, c0),
            3 => block::<T, 3>(p, inv, vals, o, c0),
            2 => block::<T, 2>(p, inv, vals, o, c0),
            1 => block::<T, 1>(p, inv, vals, o, c0),
            _ => {}
        }
    }
}
