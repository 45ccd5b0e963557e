//! Decoding's attention: a few query rows against the cached keys, as plain loops (`one_query`,
//! shared with the batched decode step of `canon-models`), heads on the kernel pool for a long
//! cache. Keys and values may be f32 or f16 (an f16 cache, llama.cpp's default cache type): f16
//! rows are read in place and widened to f32 in registers (F16C's `vcvtph2ps` where the CPU has
//! it), exactly, so an f16 cache gives bit for bit what the same cache converted to f32 gives,
//! while the loops read half the bytes.

use candle_core::{CpuStorage, DType, Tensor};
use half::f16;

use super::{AttnMask, DIRECT_PARALLEL_MACS, causal_window, key_range, view4, view4_of};

#[cfg(target_arch = "x86_64")]
mod blocks;
#[cfg(target_arch = "x86_64")]
pub(super) use blocks::{lanes_max, scores8, weighted8};

/// Rows `j = 0, 1, …` of a strided matrix: row `j` is `data[start + j·stride ..][..d]`
/// (a K/V cache head's positions, read in place), of f32 or f16 elements.
#[derive(Clone, Copy)]
pub struct StridedRows<'a, T = f32> {
    pub data: &'a [T],
    pub start: usize,
    pub stride: usize,
}

impl<T> StridedRows<'_, T> {
    /// Whether rows `0..n` of width `d` lie inside `data`.
    fn holds(&self, n: usize, d: usize) -> bool {
        n == 0
            || (n - 1)
                .checked_mul(self.stride)
                .and_then(|x| x.checked_add(self.start + d))
                .is_some_and(|end| end <= self.data.len())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// The element types a cache holds keys and values in, f32 and f16: how the decode loops read a
/// row of them as f32.
pub trait KvElem: Copy + Send + Sync + sealed::Sealed + 'static {
    /// The elements of a CPU storage of this type.
    #[doc(hidden)]
    fn of(s: &CpuStorage) -> Option<&[Self]>;

    /// `q · k` in eight independent lanes, then the lanes in order, then the tail: the same
    /// arithmetic for either type (f16 widens exactly).
    ///
    /// # Safety
    /// `F = true` only inside a function compiled with this type's fast target features
    /// ([`KvElem::one_query_unchecked`] arranges it).
    #[doc(hidden)]
    unsafe fn dot<const F: bool>(q: &[f32], k: &[Self]) -> f32;

    /// `o[i] = w·v[i] + o[i]` (fused when `F`).
    ///
    /// # Safety
    /// As for [`KvElem::dot`].
    #[doc(hidden)]
    unsafe fn axpy<const F: bool>(w: f32, v: &[Self], o: &mut [f32]);

    /// Eight elements at `p` as f32 lanes.
    ///
    /// # Safety
    /// 8 readable elements at `p`; only inside a function compiled with this type's fast target
    /// features (AVX2, and F16C for f16).
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// [`one_query`] without its checks, on the fastest body this CPU runs.
    ///
    /// # Safety
    /// Key rows `0..n` of width `q.len()` and value rows `0..n` of width `o.len()` lie inside
    /// their slices, and `p.len() ≥ n`.
    #[doc(hidden)]
    unsafe fn one_query_unchecked(
        q: &[f32],
        keys: StridedRows<'_, Self>,
        vals: StridedRows<'_, Self>,
        n: usize,
        scale: f32,
        p: &mut [f32],
        o: &mut [f32],
    );
}

impl KvElem for f32 {
    fn of(s: &CpuStorage) -> Option<&[f32]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }

    #[inline(always)]
    unsafe fn dot<const F: bool>(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }

    #[inline(always)]
    unsafe fn axpy<const F: bool>(w: f32, v: &[f32], o: &mut [f32]) {
        for (ov, vv) in o.iter_mut().zip(v) {
            *ov = crate::fused::fma::<F>(w, *vv, *ov);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: 8 readable floats (caller), unaligned load.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    unsafe fn one_query_unchecked(
        q: &[f32],
        keys: StridedRows<'_, f32>,
        vals: StridedRows<'_, f32>,
        n: usize,
        scale: f32,
        p: &mut [f32],
        o: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if crate::fused::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA; the rows are the caller's to check.
            return unsafe { one_query_avx2(q, keys, vals, n, scale, p, o) };
        }
        // SAFETY: forwarded from the caller.
        unsafe { one_query_body::<false, f32>(q, keys, vals, n, scale, p, o) }
    }
}

/// Eight f16 widened to f32: `vcvtph2ps` when `F` (the caller is compiled with F16C), the
/// scalar conversion otherwise; both exact.
#[inline(always)]
unsafe fn widen8<const F: bool>(s: &[f16]) -> [f32; 8] {
    #[cfg(target_arch = "x86_64")]
    if F {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
        let mut out = [0.0f32; 8];
        debug_assert!(s.len() >= 8);
        // SAFETY: `s` holds at least 8 f16 (16 bytes), read unaligned; the caller guarantees
        // F16C (`F` is only set inside `one_query_avx2_f16c`).
        unsafe {
            let h = _mm_loadu_si128(s.as_ptr().cast::<__m128i>());
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
        return out;
    }
    std::array::from_fn(|i| s[i].to_f32())
}

impl KvElem for f16 {
    fn of(s: &CpuStorage) -> Option<&[f16]> {
        match s {
            CpuStorage::F16(v) => Some(v),
            _ => None,
        }
    }

    /// [`dot`] with the keys widened as they are read.
    #[inline(always)]
    unsafe fn dot<const F: bool>(q: &[f32], k: &[f16]) -> f32 {
        let mut acc = [0.0f32; 8];
        let (qc, kc) = (q.chunks_exact(8), k.chunks_exact(8));
        let (qr, kr) = (qc.remainder(), kc.remainder());
        for (x, y) in qc.zip(kc) {
            // SAFETY: forwarded from the caller.
            let y = unsafe { widen8::<F>(y) };
            for l in 0..8 {
                acc[l] += x[l] * y[l];
            }
        }
        let tail: f32 = qr.iter().zip(kr).map(|(x, y)| x * y.to_f32()).sum();
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    unsafe fn axpy<const F: bool>(w: f32, v: &[f16], o: &mut [f32]) {
        let n = o.len().min(v.len());
        let (o, v) = (&mut o[..n], &v[..n]);
        let mut oc = o.chunks_exact_mut(8);
        let mut vc = v.chunks_exact(8);
        for (o8, v8) in (&mut oc).zip(&mut vc) {
            // SAFETY: forwarded from the caller.
            let v8 = unsafe { widen8::<F>(v8) };
            for l in 0..8 {
                o8[l] = crate::fused::fma::<F>(w, v8[l], o8[l]);
            }
        }
        for (ov, vv) in oc.into_remainder().iter_mut().zip(vc.remainder()) {
            *ov = crate::fused::fma::<F>(w, vv.to_f32(), *ov);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps};
        // SAFETY: 8 readable f16 (16 bytes, caller), unaligned; F16C (caller).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())) }
    }

    unsafe fn one_query_unchecked(
        q: &[f32],
        keys: StridedRows<'_, f16>,
        vals: StridedRows<'_, f16>,
        n: usize,
        scale: f32,
        p: &mut [f32],
        o: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if crate::fused::has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has AVX2, FMA and F16C; the rows are the caller's to check.
            return unsafe { one_query_avx2_f16c(q, keys, vals, n, scale, p, o) };
        }
        // SAFETY: forwarded from the caller.
        unsafe { one_query_body::<false, f16>(q, keys, vals, n, scale, p, o) }
    }
}

/// One query row against `n` keys: `o += softmax(scale · q·K) V` (`o` usually starts at zero),
/// with `p` (at least `n` values) as scratch; `keys` and `vals` hold key and value rows `0..n`.
/// The one decode-attention kernel: the single-sequence path and the batched decode step of
/// `canon-models` both call it, so their values are the same bits. Panics if a row of `0..n`
/// lies outside its slice (callers check their views).
pub fn one_query<T: KvElem>(
    q: &[f32],
    keys: StridedRows<'_, T>,
    vals: StridedRows<'_, T>,
    n: usize,
    scale: f32,
    p: &mut [f32],
    o: &mut [f32],
) {
    let d = q.len();
    assert!(
        keys.holds(n, d) && vals.holds(n, o.len()) && p.len() >= n && o.len() == d,
        "one_query: {n} rows of width {d} do not fit the given views"
    );
    // SAFETY: the rows were checked above.
    unsafe { T::one_query_unchecked(q, keys, vals, n, scale, p, o) }
}

/// `one_query_body` compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the rows must be checked as `one_query` does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_query_avx2(
    q: &[f32],
    keys: StridedRows<'_>,
    vals: StridedRows<'_>,
    n: usize,
    scale: f32,
    p: &mut [f32],
    o: &mut [f32],
) {
    // SAFETY: forwarded from the caller.
    unsafe { one_query_body::<true, f32>(q, keys, vals, n, scale, p, o) }
}

/// `one_query_body` over f16 rows compiled with AVX2, FMA and F16C.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C, and the rows must be checked as `one_query` does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn one_query_avx2_f16c(
    q: &[f32],
    keys: StridedRows<'_, f16>,
    vals: StridedRows<'_, f16>,
    n: usize,
    scale: f32,
    p: &mut [f32],
    o: &mut [f32],
) {
    // SAFETY: forwarded from the caller.
    unsafe { one_query_body::<true, f16>(q, keys, vals, n, scale, p, o) }
}

/// Compiled per element type twice: for the baseline target and, inlined into `one_query_avx2`
/// (`one_query_avx2_f16c` for f16), with AVX2. The
/// scores in eight-lane dot products, the softmax's exponentials by the vectorisable
/// [`crate::fused::exp`] (about one ulp), the values accumulated row by row.
///
/// # Safety
/// Key rows `0..n` of width `q.len()` and value rows `0..n` of width `o.len()` lie inside their
/// slices, and `p.len() ≥ n`.
#[inline(always)]
unsafe fn one_query_body<const F: bool, T: KvElem>(
    q: &[f32],
    keys: StridedRows<'_, T>,
    vals: StridedRows<'_, T>,
    n: usize,
    scale: f32,
    p: &mut [f32],
    o: &mut [f32],
) {
    let (d, dv) = (q.len(), o.len());
    #[inline(always)]
    fn row<'a, T>(m: &StridedRows<'a, T>, j: usize, w: usize) -> &'a [T] {
        let at = m.start + j * m.stride;
        // SAFETY: j < n, and the caller checked rows 0..n of width w.
        unsafe { m.data.get_unchecked(at..at + w) }
    }
    let p = &mut p[..n];
    let mut max = f32::NEG_INFINITY;
    // Compiled with AVX2: whole blocks of eight keys at once (`scores8`, the same bits).
    let mut from = 0;
    #[cfg(target_arch = "x86_64")]
    if F && d % 8 == 0 && n >= 8 {
        // SAFETY: F: AVX2 is enabled in the function this body is inlined into.
        let mut vmax = unsafe { std::arch::x86_64::_mm256_set1_ps(f32::NEG_INFINITY) };
        while from + 8 <= n {
            // SAFETY: keys from..from + 8 < n of width d (caller); F: AVX2 and the type's
            // features are enabled in the function this body is inlined into.
            vmax = unsafe {
                let sc = scores8(q, &keys, from, scale, p.as_mut_ptr().add(from));
                std::arch::x86_64::_mm256_max_ps(vmax, sc)
            };
            from += 8;
        }
        // SAFETY: as above.
        max = unsafe { lanes_max(vmax) };
    }
    for (j, pj) in p.iter_mut().enumerate().skip(from) {
        // SAFETY: `F` only inside the wrappers compiled with the type's target features.
        *pj = unsafe { T::dot::<F>(q, row(&keys, j, d)) } * scale;
        max = max.max(*pj);
    }
    for pj in p.iter_mut() {
        *pj = crate::fused::exp::<F>(*pj - max);
    }
    let inv = 1.0 / crate::fused::sum8(p);
    // Compiled with AVX2 and FMA: the output kept in registers over all values (`weighted8`,
    // the same bits as the row-by-row `axpy`, which reads and writes `o` once per value row).
    #[cfg(target_arch = "x86_64")]
    if F && dv % 8 == 0 {
        // SAFETY: value rows 0..n of width dv (caller); F: AVX2, FMA and the type's features
        // are enabled in the function this body is inlined into.
        unsafe { weighted8(p, inv, &vals, o) };
        return;
    }
    for (j, pj) in p.iter().enumerate() {
        // SAFETY: as for the scores.
        unsafe { T::axpy::<F>(pj * inv, row(&vals, j, dv), o) };
    }
}

/// `q · k` over equal-length rows, in eight independent lanes (vectorisable without reassociation).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Eq. 1 with explicit loops, for few queries and no gradients. `None` when Q is not an f32 CPU
/// tensor, K and V not both f32 or both f16 CPU tensors, one has rows that are not contiguous, or
/// the mask is a padding mask (callers use the matmul path).
pub(super) fn attention_direct(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask<'_>,
    scale: f32,
) -> crate::Result<Option<Tensor>> {
    match (k.dtype(), v.dtype()) {
        (DType::F32, DType::F32) => direct::<f32>(q, k, v, mask, scale),
        (DType::F16, DType::F16) => direct::<f16>(q, k, v, mask, scale),
        _ => Ok(None),
    }
}

/// [`attention_direct`] over keys and values of type `T`.
fn direct<T: KvElem>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask<'_>,
    scale: f32,
) -> crate::Result<Option<Tensor>> {
    let Some((offset, window)) = causal_window(mask) else {
        return Ok(None);
    };
    let (b, h, tq, d) = q.dims4()?;
    let (_, hkv, tk, _) = k.dims4()?;
    if v.dims4()? != k.dims4()? || k.dim(3)? != d {
        return Ok(None);
    }
    let g = h / hkv;
    let qc = q.contiguous()?;
    let (Some(qv), Some(kv), Some(vv)) = (view4(&qc), view4_of::<T>(k), view4_of::<T>(v)) else {
        return Ok(None);
    };
    let mut out = vec![0.0f32; b * h * tq * d];
    // One (batch, head) per task; on the kernel pool once the keys are many enough to pay for
    // it (a long context), on the calling thread otherwise. Each head's arithmetic is the same
    // either way.
    let head = |bh: usize, o_head: &mut [f32]| {
        let (bi, hi) = (bh / h, bh % h);
        let kh = hi / g;
        let mut p = vec![0.0f32; tk];
        for (i, o) in o_head.chunks_exact_mut(d).enumerate() {
            // Keys 0 ..= offset + i for a causal query, all keys otherwise.
            let (lo, end) = key_range(offset, window, tk, i);
            let n = end - lo;
            let qr = qv.row(bi, hi, i, d);
            let keys = kv.strided(bi, kh, lo);
            let vals = vv.strided(bi, kh, lo);
            one_query(qr, keys, vals, n, scale, &mut p[..n], o);
        }
    };
    if b * h * tq * tk * d >= DIRECT_PARALLEL_MACS {
        canon_quant::pool::par_chunks_mut(&mut out, tq * d, &head);
    } else {
        out.chunks_exact_mut(tq * d)
            .enumerate()
            .for_each(|(bh, o)| head(bh, o));
    }
    Ok(Some(Tensor::from_vec(out, (b, h, tq, d), q.device())?))
}

thread_local! {
    /// The scores of [`one_row`], kept per thread across calls.
    static SCORES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `out[h·d..] = softmax(scale · q_h · K) V` for each query head `h` of one query row (a decode
/// step of one sequence), with the `h / hkv` query heads of a K/V head sharing it, over keys
/// `lo..tk` (`lo > 0` for a sliding window), on the calling thread: the batched decode step of
/// `canon-models` runs one sequence per pool task with it. `q` is an f32 `[1, h, 1, d]`, `k` and
/// `v` `[1, hkv, tk, d]`, both f32 or both f16 (an f16 cache read in place; strided views
/// allowed). Per head the arithmetic is [`attention`](super::attention)'s, so the values are the
/// same bits. Returns `false`, touching nothing, when a tensor is not a CPU tensor of that form;
/// the caller then takes the general path.
pub fn one_row(q: &Tensor, k: &Tensor, v: &Tensor, lo: usize, scale: f32, out: &mut [f32]) -> bool {
    let (Ok((1, h, 1, d)), Ok((1, _, tk, _))) = (q.dims4(), k.dims4()) else {
        return false;
    };
    let Some(qv) = view4(q) else {
        return false;
    };
    // The heads back to back (a strided query view is gathered).
    let qs: Vec<f32> = (0..h).flat_map(|hi| qv.row(0, hi, 0, d)).copied().collect();
    one_row_slice(&qs, h, k, v, tk, lo, scale, out)
}

/// [`one_row`] with the query row as a slice (`h` heads of the cache's width, back to back) and
/// the keys `lo..tk` of `k` and `v` (`[1, hkv, ≥ tk, d]`: a cache's whole buffers, of which the
/// first `tk` positions are filled), as [`crate::KvCache::attend_row`] calls it. The same
/// arithmetic as [`one_row`]; `false`, touching nothing, when the shapes do not fit.
#[allow(clippy::too_many_arguments)]
pub fn one_row_slice(
    q: &[f32],
    h: usize,
    k: &Tensor,
    v: &Tensor,
    tk: usize,
    lo: usize,
    scale: f32,
    out: &mut [f32],
) -> bool {
    match (k.dtype(), v.dtype()) {
        (DType::F32, DType::F32) => one_row_of::<f32>(q, h, k, v, tk, lo, scale, out),
        (DType::F16, DType::F16) => one_row_of::<f16>(q, h, k, v, tk, lo, scale, out),
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn one_row_of<T: KvElem>(
    q: &[f32],
    h: usize,
    k: &Tensor,
    v: &Tensor,
    tk: usize,
    lo: usize,
    scale: f32,
    out: &mut [f32],
) -> bool {
    let Ok((1, hkv, cap, d)) = k.dims4() else {
        return false;
    };
    if v.dims4().ok() != Some((1, hkv, cap, d))
        || tk > cap
        || hkv == 0
        || !h.is_multiple_of(hkv)
        || lo >= tk
        || q.len() != h * d
        || out.len() != h * d
    {
        return false;
    }
    let (Some(kv), Some(vv)) = (view4_of::<T>(k), view4_of::<T>(v)) else {
        return false;
    };
    let g = h / hkv;
    let n = tk - lo;
    let mut p = SCORES.take();
    p.clear();
    p.resize(n, 0.0);
    for (hi, (o, qr)) in out.chunks_exact_mut(d).zip(q.chunks_exact(d)).enumerate() {
        let kh = hi / g;
        if hi % g == 0 && kh + 1 < hkv {
            // The next K/V head's rows towards the core while this head's queries run: the
            // cache was last touched a step ago and is usually out of the caches by now.
            prefetch_rows(&kv.strided(0, kh + 1, lo), n, d);
            prefetch_rows(&vv.strided(0, kh + 1, lo), n, d);
        }
        o.fill(0.0);
        let (keys, vals) = (kv.strided(0, kh, lo), vv.strided(0, kh, lo));
        one_query(qr, keys, vals, n, scale, &mut p, o);
    }
    SCORES.set(p);
    true
}

/// Asks for rows `0..n` of head `h` of a `[1, heads, positions, d]` key and value pair (an f32
/// or f16 CPU cache buffer) to be brought into the second-level cache: a hint for a decode step
/// that will read them shortly (nothing is read; anything else is ignored).
pub fn prefetch_head(k: &Tensor, v: &Tensor, h: usize, n: usize) {
    fn of<T: KvElem>(t: &Tensor, h: usize, n: usize) {
        let Ok((1, heads, tk, d)) = t.dims4() else {
            return;
        };
        if h >= heads {
            return;
        }
        if let Some(view) = view4_of::<T>(t) {
            prefetch_rows(&view.strided(0, h, 0), n.min(tk), d);
        }
    }
    for t in [k, v] {
        match t.dtype() {
            DType::F32 => of::<f32>(t, h, n),
            DType::F16 => of::<f16>(t, h, n),
            _ => {}
        }
    }
}

/// Asks for rows `0..n` of width `d` of `m` to be brought into the second-level cache (a hint:
/// nothing is read, and rows outside the slice are skipped).
fn prefetch_rows<T>(m: &StridedRows<'_, T>, n: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        let bytes = d * std::mem::size_of::<T>();
        for j in 0..n {
            let at = m.start + j * m.stride;
            let Some(row) = m.data.get(at..at + d) else {
                return;
            };
            let p = row.as_ptr() as *const i8;
            for off in (0..bytes).step_by(64) {
                // SAFETY: a prefetch is only a hint; `p + off` lies inside the row.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(off)) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, n, d);
}
