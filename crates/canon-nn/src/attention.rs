//! Scaled dot-product attention (Vaswani et al., 2017, paper 1, eq. 1):
//! `Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V`, with an additive mask `M` (−∞ where a query
//! must not look). Grouped-query attention (Ainslie et al., 2023; used by LLaMA-2/SmolLM2) shares each
//! K/V head among `n_heads / n_kv_heads` query heads; multi-query attention (PaLM, paper 19) is the
//! case `n_kv_heads = 1`.
//!
//! Shapes: `q: [b, h, tq, d]`, `k, v: [b, h_kv, tk, d]` → `[b, h, tq, d]`.

use candle_core::{D, DType, Device, Tensor};

/// Which keys each query may attend to.
#[derive(Debug, Clone, Copy)]
pub enum AttnMask<'a> {
    /// Every query sees every key (encoders without padding).
    None,
    /// Query `i` sits at absolute position `offset + i` and sees keys `0 ..= offset + i`
    /// (decoders; `offset` is the number of cached positions).
    Causal { offset: usize },
    /// Causal within a window (sliding-window attention, Gemma's local layers as llama.cpp masks
    /// them): query `i` at position `p = offset + i` sees keys `p + 1 - window ..= p`.
    SlidingCausal { offset: usize, window: usize },
    /// `[b, tk]` with 1 for real tokens and 0 for padding (encoders over padded batches).
    Padding(&'a Tensor),
}

/// Repeats each K/V head `n_rep` times: `[b, h_kv, t, d] → [b, h_kv·n_rep, t, d]`.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> crate::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, hkv, t, d) = x.dims4()?;
    // [b, h_kv, t, d] -> [b, h_kv, n_rep, t, d] -> [b, h_kv·n_rep, t, d]
    x.unsqueeze(2)?
        .broadcast_as((b, hkv, n_rep, t, d))?
        .reshape((b, hkv * n_rep, t, d))
}

/// Additive causal mask `[tq, tk]`: 0 where `j <= offset + i`, −∞ elsewhere.
pub fn causal_mask(tq: usize, tk: usize, offset: usize, device: &Device) -> crate::Result<Tensor> {
    let v: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(v, (tq, tk), device)
}

/// The additive mask of `AttnMask::SlidingCausal`: 0 where a query sees a key, −∞ elsewhere.
pub fn sliding_causal_mask(
    tq: usize,
    tk: usize,
    offset: usize,
    window: usize,
    device: &Device,
) -> crate::Result<Tensor> {
    let v: Vec<f32> = (0..tq)
        .flat_map(|i| {
            let p = offset + i;
            (0..tk).map(move |j| {
                if j <= p && p - j < window {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(v, (tq, tk), device)
}

/// What [`attend`] takes beyond Q, K, V and the mask.
#[derive(Clone, Copy, Default)]
pub struct AttnOpts<'a> {
    /// Added to the scaled scores, `softmax(scale · Q Kᵀ + bias + M)`; any shape that broadcasts
    /// to `[b, h, tq, tk]` (T5's relative bias `[1, h, tq, tk]`, Transformer-XL's position terms
    /// `[b, h, tq, tk]`). Its gradient flows back when it tracks one.
    pub bias: Option<&'a Tensor>,
    /// The factor on `Q Kᵀ`; `1/√d` when `None` (T5 uses 1).
    pub scale: Option<f64>,
    /// Dropout `(p, noise)` on the attention probabilities (GPT-1); forces the composed path,
    /// the only one that holds the probabilities.
    pub dropout: Option<(f64, &'a crate::Noise)>,
}

/// Eq. 1 with the default scale `1/√d` and no bias: [`attend`] with [`AttnOpts::default`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: AttnMask<'_>) -> crate::Result<Tensor> {
    attend(q, k, v, mask, AttnOpts::default())
}

/// The one attention entry point. It picks the path itself:
/// - nothing tracks gradients, no bias, no dropout: loops over the keys for a few queries
///   (decoding), two strided matrix products per K/V head otherwise (prompts), on the cache's
///   views without copies;
/// - f32 on the CPU (training, padded batches, a bias): the tiled op with its own backward
///   ([`crate::train_ops::flash_attention`] / [`crate::train_ops::flash_attention_bias`]), no
///   `[b, h, tq, tk]` matrix kept;
/// - otherwise (a sliding window with gradients, dropout, another dtype or device):
///   [`attention_composed_with`].
///
/// Grouped-query attention never copies K/V heads: the `g = h / h_kv` query heads that share a
/// K/V head are stacked as `g·tq` query rows against that head. K and V may be strided views.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask<'_>,
    opts: AttnOpts<'_>,
) -> crate::Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (_, hkv, tk, _) = k.dims4()?;
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention: {h} query heads cannot share {hkv} key/value heads");
    }
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let bias = match opts.bias {
        Some(bias) => Some(bias_4d(bias, (b, h, tq, tk))?),
        None => None,
    };
    if opts.dropout.is_none() {
        if bias.is_none() && crate::fused::no_grad(&[q, k, v]) {
            let y = if tq <= DIRECT_MAX_QUERIES {
                attention_direct(q, k, v, mask, scale as f32)?
            } else {
                attention_gemm(q, k, v, mask, scale as f32)?
            };
            if let Some(y) = y {
                return Ok(y);
            }
        }
        let cpu_f32 = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        if cpu_f32(q) && cpu_f32(k) && cpu_f32(v) && bias.as_ref().is_none_or(cpu_f32) {
            use crate::train_ops::{
                TrainMask, flash_attention, flash_attention_bias, padding_keep,
            };
            // (A sliding window, used only at inference, takes the composed ops.)
            let m = match mask {
                AttnMask::None => Some(TrainMask::None),
                AttnMask::Causal { offset } => Some(TrainMask::Causal { offset }),
                AttnMask::Padding(keep) => Some(padding_keep(keep)?),
                AttnMask::SlidingCausal { .. } => None,
            };
            if let Some(m) = m {
                return match &bias {
                    None => flash_attention(q, k, v, m, scale),
                    Some(bias) => flash_attention_bias(q, k, v, bias, m, scale),
                };
            }
        }
    }
    let opts = AttnOpts {
        bias: bias.as_ref(),
        scale: Some(scale),
        ..opts
    };
    attention_composed_with(q, k, v, mask, opts)
}

/// A bias that broadcasts to `[b, h, tq, tk]` as a rank-4 tensor `[1 or b, 1 or h, tq, tk]`.
fn bias_4d(bias: &Tensor, (b, h, tq, tk): (usize, usize, usize, usize)) -> crate::Result<Tensor> {
    let dims = bias.dims();
    let fits = |have: usize, full: usize| have == 1 || have == full;
    if dims.len() <= 4 {
        let mut d4 = [1usize; 4];
        d4[4 - dims.len()..].copy_from_slice(dims);
        if fits(d4[0], b) && fits(d4[1], h) && fits(d4[2], tq) && fits(d4[3], tk) {
            let t = bias.reshape(d4.to_vec())?;
            return if d4[2] == tq && d4[3] == tk {
                Ok(t)
            } else {
                t.broadcast_as((d4[0], d4[1], tq, tk))?.contiguous()
            };
        }
    }
    candle_core::bail!(
        "attention: expected a bias that broadcasts to [{b}, {h}, {tq}, {tk}], found {dims:?}"
    )
}

/// Eq. 1 through composed candle ops (any dtype or device): the reference the fused paths are
/// tested against.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask<'_>,
) -> crate::Result<Tensor> {
    attention_composed_with(q, k, v, mask, AttnOpts::default())
}

/// [`attend`] with the `[b, h, tq, tk]` scores and probabilities materialised: scale, bias and
/// mask added to `Q Kᵀ`, a softmax (the fused causal one with its backward for f32 on the CPU,
/// composed ops otherwise), dropout, `P V`. Every mask becomes an additive one here, and only
/// here.
pub fn attention_composed_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask<'_>,
    opts: AttnOpts<'_>,
) -> crate::Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (_, hkv, tk, _) = k.dims4()?;
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention: {h} query heads cannot share {hkv} key/value heads");
    }
    let g = h / hkv;
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let bias = match opts.bias {
        Some(bias) => Some(bias_4d(bias, (b, h, tq, tk))?),
        None => None,
    };
    // [b, h, tq, d] -> [b, h_kv, g·tq, d]; x [b, h_kv, d, tk] -> [b, h_kv, g·tq, tk] -> [b, h, tq, tk]
    let qg = q.contiguous()?.reshape((b, hkv, g * tq, d))?;
    let raw = matmul_strided(&qg, &k.t()?)?.reshape((b, h, tq, tk))?;
    let fused_causal = raw.dtype() == DType::F32 && raw.device().is_cpu();
    let probs = match (mask, bias) {
        // Scale, causal mask and softmax in one pass with its backward.
        (AttnMask::Causal { offset }, None) if fused_causal => {
            crate::train_ops::causal_softmax(&raw, offset, scale)?
        }
        (AttnMask::Causal { offset }, Some(bias)) if fused_causal => {
            crate::train_ops::causal_softmax(&(raw * scale)?.broadcast_add(&bias)?, offset, 1.0)?
        }
        (mask, bias) => {
            let mut scores = (raw * scale)?;
            if let Some(bias) = bias {
                scores = scores.broadcast_add(&bias.to_dtype(scores.dtype())?)?;
            }
            if let Some(add) = additive_mask(mask, b, tq, tk, q.device())? {
                scores = scores.broadcast_add(&add.to_dtype(scores.dtype())?)?;
            }
            candle_nn::ops::softmax(&scores, D::Minus1)?
        }
    };
    let probs = match opts.dropout {
        Some((p, noise)) => crate::dropout(&probs, p, noise)?,
        None => probs,
    };
    // [b, h_kv, g·tq, tk] x [b, h_kv, tk, d] -> [b, h_kv, g·tq, d] -> [b, h, tq, d]
    matmul_strided(&probs.reshape((b, hkv, g * tq, tk))?, v)?.reshape((b, h, tq, d))
}

/// The mask as additive scores broadcasting to `[b, h, tq, tk]` (0 where a query sees a key):
/// `[tq, tk]` of 0/−∞ for the causal masks, `[b, 1, 1, tk]` of 0/−1e30 for padding (finite, so a
/// row of nothing but padding stays a uniform distribution instead of NaN); `None` when every key
/// is visible.
pub fn additive_mask(
    mask: AttnMask<'_>,
    b: usize,
    tq: usize,
    tk: usize,
    device: &Device,
) -> crate::Result<Option<Tensor>> {
    Ok(match mask {
        AttnMask::None => None,
        // A single query at the end of its keys sees them all.
        AttnMask::Causal { offset } if tq == 1 && offset + tq == tk => None,
        AttnMask::Causal { offset } => Some(causal_mask(tq, tk, offset, device)?),
        AttnMask::SlidingCausal { offset, window } => {
            Some(sliding_causal_mask(tq, tk, offset, window, device)?)
        }
        AttnMask::Padding(keep) => {
            let keep = keep.to_dtype(DType::F32)?;
            Some(((keep - 1.0)? * 1e30)?.reshape((b, 1, 1, tk))?)
        }
    })
}

/// Up to this many queries (decoding) attention runs as plain loops over the cached keys: a few
/// thousand multiply-adds per head, where a general matrix product costs more to set up than to run.
const DIRECT_MAX_QUERIES: usize = 4;
/// Query-key products (`b·h·tq·tk·d`) from which the direct loops run their heads on the kernel
/// pool: about 15 µs of work, against a microsecond or two to hand it out.
const DIRECT_PARALLEL_MACS: usize = 1 << 15;

/// Queries per block of the prompt attention (`attention_gemm`): a causal block computes scores
/// only up to its last query's key.
const QB: usize = 64;

/// Strided read access to an f32 CPU tensor of rank 4 whose innermost rows are contiguous.
struct View4<'a> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    stride: [usize; 4],
}

impl View4<'_> {
    /// The positions `i2..` of `[i0, i1]` as strided rows.
    fn strided(&self, i0: usize, i1: usize, i2: usize) -> StridedRows<'_> {
        let data: &[f32] = match &*self.guard {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v,
            _ => &[],
        };
        StridedRows {
            data,
            start: self.start + i0 * self.stride[0] + i1 * self.stride[1] + i2 * self.stride[2],
            stride: self.stride[2],
        }
    }

    /// The innermost row at `[i0, i1, i2, 0..n]`.
    fn row(&self, i0: usize, i1: usize, i2: usize, n: usize) -> &[f32] {
        let at = self.start + i0 * self.stride[0] + i1 * self.stride[1] + i2 * self.stride[2];
        match &*self.guard {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => &v[at..at + n],
            _ => &[],
        }
    }
}

fn view4(t: &Tensor) -> Option<View4<'_>> {
    if t.dtype() != DType::F32 || t.rank() != 4 {
        return None;
    }
    let (guard, layout) = t.storage_and_layout();
    let stride: [usize; 4] = layout.stride().try_into().ok()?;
    let dims = t.dims();
    // The furthest element must lie inside the storage.
    let last = layout.start_offset()
        + (0..4)
            .map(|i| (dims[i].max(1) - 1) * stride[i])
            .sum::<usize>();
    match &*guard {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v))
            if stride[3] == 1 && dims.iter().all(|&n| n > 0) && last < v.len() => {}
        _ => return None,
    }
    Some(View4 {
        start: layout.start_offset(),
        guard,
        stride,
    })
}

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
fn attention_direct(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask<'_>,
    scale: f32,
) -> crate::Result<Option<Tensor>> {
    let (offset, window) = match mask {
        AttnMask::None => (None, None),
        AttnMask::Causal { offset } => (Some(offset), None),
        AttnMask::SlidingCausal { offset, window } => (Some(offset), Some(window)),
        AttnMask::Padding(_) => return Ok(None),
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
            let end = offset.map_or(tk, |o| (o + i + 1).min(tk));
            // A sliding window also drops the keys before `end - window`.
            let lo = window.map_or(0, |w| end.saturating_sub(w));
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

/// Eq. 1 for many queries without gradients (prompt processing): per query head and block of
/// [`QB`] queries (the tasks, on the kernel pool, the largest blocks first), `S = Q Kᵀ` against
/// the keys the block may see (all of them without a mask; up to its last query's under a causal
/// one; from its first query's window start under a sliding window), a softmax that only reads
/// each row's allowed keys (no mask tensor), and `O = P V`, with both products on the `gemm` crate
/// straight from the cache's strided views (grouped-query heads read their shared K/V head in
/// place). The output is written as `[b, tq, h, d]` and returned as its `[b, h, tq, d]` view, so
/// the caller's transpose back to rows of `h·d` costs no copy. `None` in the cases
/// `attention_direct` declines.
fn attention_gemm(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask<'_>,
    scale: f32,
) -> crate::Result<Option<Tensor>> {
    let (offset, window) = match mask {
        AttnMask::None => (None, None),
        AttnMask::Causal { offset } => (Some(offset), None),
        AttnMask::SlidingCausal { offset, window } if window > 0 => (Some(offset), Some(window)),
        AttnMask::Padding(_) | AttnMask::SlidingCausal { .. } => return Ok(None),
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
    // Keys `lo..end` that query `i` may see.
    let allowed = |i: usize| {
        let end = offset.map_or(tk, |o| (o + i + 1).min(tk));
        (window.map_or(0, |w| end.saturating_sub(w)), end)
    };
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
            let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0.0f32;
            for x in live.iter_mut() {
                *x = ((*x - max) * scale).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            live.iter_mut().for_each(|x| *x *= inv);
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

/// A batched matmul that accepts the strided views a cache hands out, copying only when the
/// layout is one the matmul kernel cannot read.
fn matmul_strided(a: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    match a.matmul(b) {
        Ok(y) => Ok(y),
        Err(_) => a.contiguous()?.matmul(&b.contiguous()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::{Tol, assert_close, randn};

    #[test]
    fn gqa_equals_mha_over_explicitly_replicated_heads() {
        let q = randn(&[2, 6, 5, 8], 1);
        let k = randn(&[2, 2, 5, 8], 2);
        let v = randn(&[2, 2, 5, 8], 3);
        let gqa = attention(&q, &k, &v, AttnMask::Causal { offset: 0 }).unwrap();
        // Explicit replication: head j uses kv head j / 3.
        let idx = Tensor::new(&[0u32, 0, 0, 1, 1, 1], &Device::Cpu).unwrap();
        let kr = k.index_select(&idx, 1).unwrap();
        let vr = v.index_select(&idx, 1).unwrap();
        let mha = attention(&q, &kr, &vr, AttnMask::Causal { offset: 0 }).unwrap();
        assert_close(&gqa, &mha, Tol::F32);
        assert_close(&repeat_kv(&k, 3).unwrap(), &kr, Tol::EXACT);
        assert_close(&repeat_kv(&k, 1).unwrap(), &k, Tol::EXACT);
    }

    #[test]
    fn future_keys_do_not_change_past_outputs() {
        let q = randn(&[1, 2, 6, 4], 1);
        let k = randn(&[1, 2, 6, 4], 2);
        let v = randn(&[1, 2, 6, 4], 3);
        let full = attention(&q, &k, &v, AttnMask::Causal { offset: 0 }).unwrap();
        let q3 = q.narrow(2, 0, 3).unwrap();
        let part = attention(
            &q3,
            &k.narrow(2, 0, 3).unwrap(),
            &v.narrow(2, 0, 3).unwrap(),
            AttnMask::Causal { offset: 0 },
        )
        .unwrap();
        assert_close(&full.narrow(2, 0, 3).unwrap(), &part, Tol::F32);
        // A cached query at offset 4 sees keys 0..=4.
        let last = attention(
            &q.narrow(2, 4, 1).unwrap(),
            &k.narrow(2, 0, 5).unwrap(),
            &v.narrow(2, 0, 5).unwrap(),
            AttnMask::Causal { offset: 4 },
        )
        .unwrap();
        assert_close(&full.narrow(2, 4, 1).unwrap(), &last, Tol::F32);
    }

    #[test]
    fn inference_paths_equal_the_composed_path_on_strided_cache_views() {
        // A cache-like buffer with room for 10 positions, of which 7 are used.
        let buf = randn(&[2, 3, 10, 16], 4);
        let (k, v) = (
            buf.narrow(2, 0, 7).unwrap(),
            (buf.narrow(2, 0, 7).unwrap() * 0.5).unwrap(),
        );
        for (tq, mask) in [
            (1, AttnMask::Causal { offset: 6 }),
            (3, AttnMask::Causal { offset: 4 }),
            (2, AttnMask::None),
            (7, AttnMask::Causal { offset: 0 }),
            (5, AttnMask::Causal { offset: 2 }),
            (6, AttnMask::None),
        ] {
            let q = randn(&[2, 6, tq, 16], 5 + tq as u64);
            let direct = attention(&q, &k, &v, mask).unwrap();
            // The matmul path: a tracked query forces it.
            let qv = candle_core::Var::from_tensor(&q).unwrap();
            let general = attention(qv.as_tensor(), &k, &v, mask).unwrap();
            assert_close(&direct, &general.detach(), Tol::F32);
        }
    }

    /// Prompts longer than one block of queries (`QB`): each causal block stops at its own last
    /// key, the unmasked ones read every key; all equal the composed path, on strided cache views
    /// with grouped-query heads, from an empty cache and after a prefix; sliding windows shorter
    /// than a block, longer than one, and longer than the context.
    #[test]
    fn prompt_blocks_equal_the_composed_path() {
        let buf = randn(&[1, 2, 400, 8], 21);
        // (queries, cached keys before them, Some(window) / None for causal, causal at all)
        for (tq, past, window, mask_causal) in [
            (150, 0, None, true),
            (150, 37, None, true),
            (QB, 0, None, true),
            (QB + 1, 5, None, true),
            (130, 0, None, false),
            (150, 0, Some(40), true),
            (150, 37, Some(QB + 3), true),
            (QB + 1, 5, Some(1), true),
            (140, 2, Some(500), true),
        ] {
            let tk = past + tq;
            let k = buf.narrow(2, 0, tk).unwrap();
            let v = (buf.narrow(2, 0, tk).unwrap() * -0.7).unwrap();
            let q = randn(&[1, 6, tq, 8], 40 + tq as u64);
            let mask = match (mask_causal, window) {
                (true, Some(window)) => AttnMask::SlidingCausal {
                    offset: past,
                    window,
                },
                (true, None) => AttnMask::Causal { offset: past },
                (false, _) => AttnMask::None,
            };
            let fast = attention(&q, &k, &v, mask).unwrap();
            let reference = attention_composed(&q, &k, &v, mask).unwrap();
            assert_close(&fast, &reference, Tol::F32);
        }
    }

    /// Decoding against a long cache runs the heads on the kernel pool: the same values as the
    /// composed path, with grouped-query heads, causal and windowed.
    #[test]
    fn long_context_decoding_equals_the_composed_path() {
        let buf = randn(&[1, 2, 700, 64], 31);
        let (k, v) = (
            buf.narrow(2, 0, 650).unwrap(),
            (buf.narrow(2, 50, 650).unwrap() * 0.5).unwrap(),
        );
        let q = randn(&[1, 6, 2, 64], 32);
        const { assert!(6 * 2 * 650 * 64 >= DIRECT_PARALLEL_MACS) };
        for mask in [
            AttnMask::Causal { offset: 648 },
            AttnMask::SlidingCausal {
                offset: 648,
                window: 300,
            },
        ] {
            let fast = attention(&q, &k, &v, mask).unwrap();
            let reference = attention_composed(&q, &k, &v, mask).unwrap();
            assert_close(&fast, &reference, Tol::F32);
        }
    }

    #[test]
    fn a_sliding_window_sees_only_the_last_keys() {
        let buf = randn(&[1, 4, 9, 8], 11);
        let (k, v) = (
            buf.narrow(1, 0, 2).unwrap(),
            buf.narrow(1, 2, 2).unwrap().contiguous().unwrap(),
        );
        let q = randn(&[1, 4, 9, 8], 12);
        let window = 3;
        // Query 7 (offset 0) sees keys 5, 6, 7: the same as plain attention over those keys.
        let want = attention(
            &q.narrow(2, 7, 1).unwrap(),
            &k.narrow(2, 5, 3).unwrap(),
            &v.narrow(2, 5, 3).unwrap(),
            AttnMask::None,
        )
        .unwrap();
        let all = attention(&q, &k, &v, AttnMask::SlidingCausal { offset: 0, window }).unwrap();
        assert_close(&all.narrow(2, 7, 1).unwrap(), &want, Tol::F32);
        // Decoding (direct loops), the masked matmul path and the composed path agree.
        for (tq, offset) in [(1usize, 8usize), (2, 7), (9, 0), (5, 4)] {
            let qi = q.narrow(2, 9 - tq, tq).unwrap();
            let mask = AttnMask::SlidingCausal { offset, window };
            let direct = attention(&qi, &k, &v, mask).unwrap();
            let qv = candle_core::Var::from_tensor(&qi).unwrap();
            let general = attention(qv.as_tensor(), &k, &v, mask).unwrap();
            assert_close(&direct, &general.detach(), Tol::F32);
            // A window as long as the context is plain causal attention.
            let wide = AttnMask::SlidingCausal { offset, window: 9 };
            let causal = attention(&qi, &k, &v, AttnMask::Causal { offset }).unwrap();
            assert_close(&attention(&qi, &k, &v, wide).unwrap(), &causal, Tol::F32);
        }
    }

    #[test]
    fn padding_keys_are_ignored() {
        let q = randn(&[1, 2, 3, 4], 1);
        let k = randn(&[1, 2, 5, 4], 2);
        let v = randn(&[1, 2, 5, 4], 3);
        let keep = Tensor::new(&[[1f32, 1., 1., 0., 0.]], &Device::Cpu).unwrap();
        let padded = attention(&q, &k, &v, AttnMask::Padding(&keep)).unwrap();
        let short = attention(
            &q,
            &k.narrow(2, 0, 3).unwrap(),
            &v.narrow(2, 0, 3).unwrap(),
            AttnMask::None,
        )
        .unwrap();
        assert_close(&padded, &short, Tol::F32);
    }
}
