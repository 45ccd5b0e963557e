//! Decoding's attention: a few query rows against the cached keys, as plain loops (`one_query`,
//! shared with the batched decode step of `canon-models`), heads on the kernel pool for a long
//! cache.

use candle_core::Tensor;

use super::{AttnMask, DIRECT_PARALLEL_MACS, causal_window, key_range, view4};

/// Rows `j = 0, 1, …` of a strided matrix: row `j` is `data[start + j·stride ..][..d]`
/// (a K/V cache head's positions, read in place).
#[derive(Clone, Copy)]
pub struct StridedRows<'a> {
    pub data: &'a [f32],
    pub start: usize,
    pub stride: usize,
}

impl StridedRows<'_> {
    /// Whether rows `0..n` of width `d` lie inside `data`.
    fn holds(&self, n: usize, d: usize) -> bool {
        n == 0
            || (n - 1)
                .checked_mul(self.stride)
                .and_then(|x| x.checked_add(self.start + d))
                .is_some_and(|end| end <= self.data.len())
    }
}

/// One query row against `n` keys: `o += softmax(scale · q·K) V` (`o` usually starts at zero),
/// with `p` (at least `n` values) as scratch; `keys` and `vals` hold key and value rows `0..n`.
/// The one decode-attention kernel: the single-sequence path and the batched decode step of
/// `canon-models` both call it, so their values are the same bits. Panics if a row of `0..n`
/// lies outside its slice (callers check their views).
pub fn one_query(
    q: &[f32],
    keys: StridedRows<'_>,
    vals: StridedRows<'_>,
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
    #[cfg(target_arch = "x86_64")]
    if crate::fused::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA; the rows were checked above.
        return unsafe { one_query_avx2(q, keys, vals, n, scale, p, o) };
    }
    // SAFETY: the rows were checked above.
    unsafe { one_query_body::<false>(q, keys, vals, n, scale, p, o) }
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
    unsafe { one_query_body::<true>(q, keys, vals, n, scale, p, o) }
}

/// Compiled twice: for the baseline target and, inlined into `one_query_avx2`, with AVX2. The
/// scores in eight-lane dot products, the softmax's exponentials by the vectorisable
/// [`crate::fused::exp`] (about one ulp), the values accumulated row by row.
///
/// # Safety
/// Key rows `0..n` of width `q.len()` and value rows `0..n` of width `o.len()` lie inside their
/// slices, and `p.len() ≥ n`.
#[inline(always)]
unsafe fn one_query_body<const F: bool>(
    q: &[f32],
    keys: StridedRows<'_>,
    vals: StridedRows<'_>,
    n: usize,
    scale: f32,
    p: &mut [f32],
    o: &mut [f32],
) {
    let (d, dv) = (q.len(), o.len());
    #[inline(always)]
    fn row<'a>(m: &StridedRows<'a>, j: usize, w: usize) -> &'a [f32] {
        let at = m.start + j * m.stride;
        // SAFETY: j < n, and the caller checked rows 0..n of width w.
        unsafe { m.data.get_unchecked(at..at + w) }
    }
    let p = &mut p[..n];
    let mut max = f32::NEG_INFINITY;
    for (j, pj) in p.iter_mut().enumerate() {
        *pj = dot(q, row(&keys, j, d)) * scale;
        max = max.max(*pj);
    }
    for pj in p.iter_mut() {
        *pj = crate::fused::exp::<F>(*pj - max);
    }
    let inv = 1.0 / crate::fused::sum8(p);
    for (j, pj) in p.iter().enumerate() {
        let w = pj * inv;
        for (ov, vv) in o.iter_mut().zip(row(&vals, j, dv)) {
            *ov = crate::fused::fma::<F>(w, *vv, *ov);
        }
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

/// Eq. 1 with explicit loops, for few queries and no gradients. `None` when a tensor is not an f32
/// CPU tensor with contiguous rows or the mask is a padding mask (callers use the matmul path).
pub(super) fn attention_direct(
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
    let g = h / hkv;
    let qc = q.contiguous()?;
    let (Some(qv), Some(kv), Some(vv)) = (view4(&qc), view4(k), view4(v)) else {
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
