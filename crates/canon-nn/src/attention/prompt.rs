//! A prompt's attention: blocks of queries through two strided matrix products per head, the
//! masked part of a causal (or windowed) block never computed.

use candle_core::Tensor;

use super::{AttnMask, QB, causal_window, key_range, view4};

/// Eq. 1 for many queries without gradients (prompt processing): per query head and block of
/// [`QB`] queries (the tasks, on the kernel pool, the largest blocks first), `S = Q Kᵀ` against
/// the keys the block may see (all of them without a mask; up to its last query's under a causal
/// one; from its first query's window start under a sliding window), a softmax that only reads
/// each row's allowed keys (no mask tensor), and `O = P V`, with both products on the `gemm` crate
/// straight from the cache's strided views (grouped-query heads read their shared K/V head in
/// place). The output is written as `[b, tq, h, d]` and returned as its `[b, h, tq, d]` view, so
/// the caller's transpose back to rows of `h·d` costs no copy. `None` in the cases
/// `attention_direct` declines.
pub(super) fn attention_gemm(
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
    let mut out = vec![0.0f32; b * tq * h * d];
    let (ks, vs) = (kv.stride[2] as isize, vv.stride[2] as isize);
    let allowed = |i: usize| key_range(offset, window, tk, i);
    // One task per (batch, query head, block of QB queries); under a causal mask a block needs
    // only the keys up to its last query, so its products stop there (a fresh prompt's masked upper
    // triangle, about half of both products, is never computed), and under a sliding window they
    // start at its first query's window.
    let blocks = tq.div_ceil(QB);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let row_stride = h * d;
    canon_quant::pool::parallel_for(b * h * blocks, &|task| {
        let (bh, blk) = (task / blocks, blocks - 1 - task % blocks);
        let (bi, hh) = (bh / h, bh % h);
        let kh = hh / g;
        let i0 = blk * QB;
        let m = QB.min(tq - i0);
        let (klo, _) = allowed(i0);
        let (_, kend) = allowed(i0 + m - 1);
        let kw = kend - klo;
        let krow = kv.row(bi, kh, klo, d).as_ptr();
        let vrow = vv.row(bi, kh, klo, d).as_ptr();
        let qrows = qv.row(bi, hh, i0, m * d);
        let mut s = vec![0.0f32; m * kw];
        // S [m, kw] = Q [m, d] · Kᵀ [d, kw]
        // SAFETY: Q's m rows of this head are a contiguous [m, d] block; K rows klo + j for
        // j < kw (so below tk) start at krow + j·ks and hold d values inside the storage (view4
        // checked the furthest element); S has m·kw elements.
        unsafe {
            gemm::gemm(
                m,
                kw,
                d,
                s.as_mut_ptr(),
                1,
                kw as isize,
                false,
                qrows.as_ptr(),
                1,
                d as isize,
                krow,
                ks,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        // Row r is query i0 + r: softmax over its allowed keys, zero elsewhere.
        for (r, row) in s.chunks_mut(kw).enumerate() {
            let (lo, end) = allowed(i0 + r);
            let (before, rest) = row.split_at_mut(lo - klo);
            let (live, after) = rest.split_at_mut(end - lo);
            crate::fused::scaled_softmax_inplace(live, scale);
            before.fill(0.0);
            after.fill(0.0);
        }
        // O [m, d] = P [m, kw] · V [kw, d]: rows i0.. of this head in the [b, tq, h, d] output.
        let o = out_ptr;
        // SAFETY: as above, V rows klo + j start at vrow + j·vs; the output rows
        // ((bi·tq + i0 + r)·h + hh)·d .. + d for r < m lie in `out` and belong to this task only
        // (tasks differ in batch, head or query block).
        unsafe {
            gemm::gemm(
                m,
                d,
                kw,
                o.0.add(((bi * tq + i0) * h + hh) * d),
                1,
                row_stride as isize,
                false,
                s.as_ptr(),
                1,
                kw as isize,
                vrow,
                1,
                vs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    Ok(Some(
        Tensor::from_vec(out, (b, tq, h, d), q.device())?.transpose(1, 2)?,
    ))
}

/// The output of [`attention_gemm`], written by its tasks at disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint rows, and `parallel_for` returns only after all of them.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for OutPtr {}
