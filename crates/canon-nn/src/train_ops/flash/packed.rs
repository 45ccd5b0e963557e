//! Causal attention read straight from the fused QKV projection, heads moved in and out of the
//! tiled op's layout inside the op.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use candle_core::{CpuStorage, Layout, Shape, Tensor};

use super::super::{slice, zeros};
use super::{Dims, FlashAttention, KvAt, TrainMask, data};

/// Causal attention read straight from a fused projection: `qkv: [b, t, (h + 2·h_kv)·d]` (each
/// token's queries, then keys, then values, heads side by side) in, `[b, t, h·d]` (heads side by
/// side, ready for the output projection) out, with its own backward. One graph node replaces the
/// split (three narrows, reshapes, transposes and copies), the attention op and the merge of the
/// heads: candle's backprop allocates and adds a gradient for every node's inputs (a narrow's
/// backward pads its gradient with zeros to the full width), and these were a fifth of a training
/// step. The op moves heads in and out of the `[b, h, t, d]` layout itself (plain copies) and runs
/// the same tiles as [`flash_attention`], so it gives the same values and gradients.
struct PackedAttention {
    inner: FlashAttention,
    h: usize,
    hkv: usize,
    d: usize,
}

/// Query, key and value planes `[b, heads, t, d]` of a packed `[b, t, (h + 2·h_kv)·d]` tensor.
fn unpack_qkv(qkv: &[f32], dm: &Dims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims {
        b, h, hkv, tq, d, ..
    } = *dm;
    let w = (h + 2 * hkv) * d;
    let plane = |first: usize, heads: usize| -> Vec<f32> {
        let mut out = zeros(b * heads * tq * d);
        if tq * d > 0 {
            out.par_chunks_mut(tq * d).enumerate().for_each(|(idx, p)| {
                let (bi, hi) = (idx / heads, idx % heads);
                for (i, row) in p.chunks_exact_mut(d).enumerate() {
                    let at = (bi * tq + i) * w + (first + hi) * d;
                    row.copy_from_slice(&qkv[at..at + d]);
                }
            });
        }
        out
    };
    (plane(0, h), plane(h, hkv), plane(h + hkv, hkv))
}

/// `[b, heads, t, d]` planes written into the columns `first·d ..` of rows `w` wide.
fn pack_heads(
    dst: &mut [f32],
    src: &[f32],
    (b, heads, t, d): (usize, usize, usize, usize),
    first: usize,
    w: usize,
) {
    if t * d * heads == 0 {
        return;
    }
    dst.par_chunks_mut(t * w)
        .enumerate()
        .take(b)
        .for_each(|(bi, seq)| {
            for hi in 0..heads {
                let p = &src[(bi * heads + hi) * t * d..(bi * heads + hi + 1) * t * d];
                for (i, row) in p.chunks_exact(d).enumerate() {
                    let at = i * w + (first + hi) * d;
                    seq[at..at + d].copy_from_slice(row);
                }
            }
        });
}

/// `[b, t, heads·d]` rows as `[b, heads, t, d]` planes.
fn unpack_heads(src: &[f32], (b, heads, t, d): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = zeros(b * heads * t * d);
    if t * d > 0 {
        let w = heads * d;
        out.par_chunks_mut(t * d).enumerate().for_each(|(idx, p)| {
            let (bi, hi) = (idx / heads, idx % heads);
            for (i, row) in p.chunks_exact_mut(d).enumerate() {
                let at = (bi * t + i) * w + hi * d;
                row.copy_from_slice(&src[at..at + d]);
            }
        });
    }
    out
}

impl PackedAttention {
    fn dims(&self, l: &Layout) -> candle_core::Result<Dims> {
        let (b, t, w) = l.shape().dims3()?;
        let want = (self.h + 2 * self.hkv) * self.d;
        if w != want || self.hkv == 0 || !self.h.is_multiple_of(self.hkv) || self.d == 0 {
            candle_core::bail!(
                "attention: expected qkv [b, t, {want}] ({} query and {} key/value heads of {}), found {:?}",
                self.h,
                self.hkv,
                self.d,
                l.dims()
            );
        }
        Ok(Dims {
            b,
            h: self.h,
            hkv: self.hkv,
            tq: t,
            tk: t,
            d: self.d,
        })
    }
}

impl candle_core::CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "packed-attention-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::AttentionForward);
        let dm = self.dims(l)?;
        let qkv = slice(s, l, self.name())?;
        let (q, k, v) = unpack_qkv(qkv, &dm);
        let at = KvAt::of(&dm, false);
        let (o, lse) = self.inner.forward(dm, &q, (&k, &v), at, None)?;
        if let Ok(mut slot) = self.inner.lse.lock() {
            *slot = Some(Arc::new(lse));
        }
        let Dims { b, h, tq, d, .. } = dm;
        let mut y = zeros(b * tq * h * d);
        pack_heads(&mut y, &o, (b, h, tq, d), 0, h * d);
        Ok((CpuStorage::F32(y), Shape::from((b, tq, h * d))))
    }

    fn bwd(&self, qkv: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::AttentionBackward);
        let dm = self.dims(qkv.layout())?;
        let g = g.contiguous()?;
        let (xd, yd, gd) = (data(qkv)?, data(y)?, data(&g)?);
        let Dims {
            b, h, hkv, tq, d, ..
        } = dm;
        let (q, k, v) = unpack_qkv(&xd, &dm);
        let o = unpack_heads(&yd, (b, h, tq, d));
        let go = unpack_heads(&gd, (b, h, tq, d));
        let at = KvAt::of(&dm, false);
        let (dq, dk, dv, _) = self
            .inner
            .backward(dm, &q, (&k, &v), at, None, &o, &go, false)?;
        let w = (h + 2 * hkv) * d;
        let mut dx = zeros(b * tq * w);
        pack_heads(&mut dx, &dq, (b, h, tq, d), 0, w);
        pack_heads(&mut dx, &dk, (b, hkv, tq, d), h, w);
        pack_heads(&mut dx, &dv, (b, hkv, tq, d), h + hkv, w);
        Ok(Some(Tensor::from_vec(dx, qkv.shape(), qkv.device())?))
    }
}

/// Causal self-attention on a fused projection `qkv: [b, t, (h + 2·h_kv)·d]` (queries, keys,
/// values; heads side by side), returning `[b, t, h·d]`: the same values and gradients as
/// splitting the heads out, [`flash_attention`] with `TrainMask::Causal { offset }` and merging
/// them back, in one graph node (f32 on the CPU).
pub fn packed_causal_attention(
    qkv: &Tensor,
    (h, hkv, d): (usize, usize, usize),
    offset: usize,
    scale: f64,
) -> crate::Result<Tensor> {
    qkv.contiguous()?.apply_op1(PackedAttention {
        inner: FlashAttention {
            scale: scale as f32,
            mask: TrainMask::Causal { offset },
            bias: None,
            lse: Mutex::new(None),
        },
        h,
        hkv,
        d,
    })
}
