//! Scaled dot-product attention (Vaswani et al., 2017, paper 1, eq. 1):
//! `Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V`, with an additive mask `M` (−∞ where a query
//! must not look). Grouped-query attention (Ainslie et al., 2023; used by LLaMA-2/SmolLM2) shares each
//! K/V head among `n_heads / n_kv_heads` query heads; multi-query attention (PaLM, paper 19) is the
//! case `n_kv_heads = 1`.
//!
//! Shapes: `q: [b, h, tq, d]`, `k, v: [b, h_kv, tk, d]` → `[b, h, tq, d]`.

use candle_core::{D, DType, Device, Tensor};

mod decode;
#[cfg(test)]
mod decode_tests;
mod prompt;
#[cfg(test)]
mod tests;

use decode::attention_direct;
pub use decode::{KvElem, StridedRows, one_query, one_row, one_row_slice, prefetch_head};
use prompt::attention_gemm;

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
/// K/V head are stacked as `g·tq` query rows against that head. K and V may be strided views, and
/// may be f16 (an f16 cache) with f32 queries: the decode loops read them in place, the other
/// paths convert them once.
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
    let direct = opts.dropout.is_none() && bias.is_none() && crate::fused::no_grad(&[q, k, v]);
    // Decoding's loops read f32 or f16 keys and values in place.
    if direct
        && tq <= DIRECT_MAX_QUERIES
        && let Some(y) = attention_direct(q, k, v, mask, scale as f32)?
    {
        return Ok(y);
    }
    // Keys and values in another dtype than the queries (an f16 cache that the loops above did
    // not read in place, a prompt's matrix products): converted once here.
    let (kc, vc);
    let (k, v) = if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        kc = k.to_dtype(q.dtype())?;
        vc = v.to_dtype(q.dtype())?;
        (&kc, &vc)
    } else {
        (k, v)
    };
    if direct
        && tq > DIRECT_MAX_QUERIES
        && let Some(y) = attention_gemm(q, k, v, mask, scale as f32)?
    {
        return Ok(y);
    }
    if opts.dropout.is_none() {
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

/// The loop paths' reading of a mask: `(Some(offset), window)` for causal masks (a window only for
/// a sliding one), `(None, None)` for none; `None` for a padding mask or an empty window, which
/// the loop paths leave to the general one.
fn causal_window(mask: AttnMask<'_>) -> Option<(Option<usize>, Option<usize>)> {
    match mask {
        AttnMask::None => Some((None, None)),
        AttnMask::Causal { offset } => Some((Some(offset), None)),
        AttnMask::SlidingCausal { offset, window } if window > 0 => {
            Some((Some(offset), Some(window)))
        }
        AttnMask::Padding(_) | AttnMask::SlidingCausal { .. } => None,
    }
}

/// Keys `lo..end` of `tk` that query `i` may see: up to itself under a causal mask starting at
/// `offset` (all keys without one), from `end − window` under a sliding window.
fn key_range(offset: Option<usize>, window: Option<usize>, tk: usize, i: usize) -> (usize, usize) {
    let end = offset.map_or(tk, |o| (o + i + 1).min(tk));
    (window.map_or(0, |w| end.saturating_sub(w)), end)
}

/// Strided read access to an f32 (or f16) CPU tensor of rank 4 whose innermost rows are
/// contiguous.
struct View4<'a, T = f32> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    stride: [usize; 4],
    _elem: std::marker::PhantomData<T>,
}

impl<T: KvElem> View4<'_, T> {
    fn data(&self) -> &[T] {
        match &*self.guard {
            candle_core::Storage::Cpu(s) => T::of(s).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The positions `i2..` of `[i0, i1]` as strided rows.
    fn strided(&self, i0: usize, i1: usize, i2: usize) -> StridedRows<'_, T> {
        StridedRows {
            data: self.data(),
            start: self.start + i0 * self.stride[0] + i1 * self.stride[1] + i2 * self.stride[2],
            stride: self.stride[2],
        }
    }

    /// The innermost row at `[i0, i1, i2, 0..n]`.
    fn row(&self, i0: usize, i1: usize, i2: usize, n: usize) -> &[T] {
        let at = self.start + i0 * self.stride[0] + i1 * self.stride[1] + i2 * self.stride[2];
        &self.data()[at..at + n]
    }
}

/// An f32 tensor's [`View4`].
fn view4(t: &Tensor) -> Option<View4<'_>> {
    view4_of::<f32>(t)
}

/// The [`View4`] of a CPU tensor whose elements are `T`, or `None` for another dtype, device,
/// rank or a layout whose rows are not contiguous.
fn view4_of<T: KvElem>(t: &Tensor) -> Option<View4<'_, T>> {
    if t.rank() != 4 {
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
        candle_core::Storage::Cpu(s)
            if stride[3] == 1
                && dims.iter().all(|&n| n > 0)
                && T::of(s).is_some_and(|v| last < v.len()) => {}
        _ => return None,
    }
    Some(View4 {
        start: layout.start_offset(),
        guard,
        stride,
        _elem: std::marker::PhantomData,
    })
}

/// A batched matmul that accepts the strided views a cache hands out, copying only when the
/// layout is one the matmul kernel cannot read.
fn matmul_strided(a: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    match a.matmul(b) {
        Ok(y) => Ok(y),
        Err(_) => a.contiguous()?.matmul(&b.contiguous()?),
    }
}
