//! Attention for training as one op with its own backward, tiled in the manner of FlashAttention
//! (Dao et al., 2022): `O = softmax(scale · Q Kᵀ + M) V` per (sequence, head), 64 query rows at a
//! time, the scores of a tile living only in a per-thread scratch buffer. The forward keeps the
//! output and one log-sum-exp per query row; the backward recomputes each tile's probabilities
//! from them (`P = exp(scale · Q Kᵀ − lse)`) instead of reading a stored `[b, h, t, t]` matrix:
//!
//! `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`, `dQ = scale · dS K`,
//! `dK += scale · dSᵀ Q`.
//!
//! Masks: causal with an offset (query `i` sees keys `0 ..= offset + i`; the tile stops at its
//! last visible key, so the masked half is never multiplied), key padding (`[b, tk]` of 1/0), or
//! none. A query row whose keys are all padding averages every value uniformly, as the composed
//! ops' `−1e30` additive mask does, and passes no gradient to the scores. Grouped K/V heads are
//! read in place (no `repeat_kv` copy); their gradients are summed over the group.
//!
//! Additive bias (`flash_attention_bias`): `S = scale · Q Kᵀ + B` with `B` broadcast over
//! sequences and/or heads; each tile starts from its rows of `B` and the product accumulates onto
//! them, forward and in the backward's recomputation. The bias gradient is `dS` (`[b, h, tq, tk]`,
//! written tile by tile, zero where a key is hidden), summed over the broadcast dimensions. K and V
//! then travel as one `[b, h_kv, tk, 2d]` tensor (three inputs per op) and are read with a row
//! stride of `2d`.
//!
//! Products run on the `gemm` crate, single-threaded inside one rayon task per (sequence, head)
//! forward and per (sequence, K/V head) backward; every output element is written by one task
//! in a fixed order, so results do not depend on the thread count.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

mod backward;
mod packed;
#[cfg(test)]
mod tests;
mod tiles;

use crate::fused::F32Data;
pub use packed::packed_causal_attention;
use tiles::{mm1, softmax_tile};

/// Query rows per tile.
const BQ: usize = 64;

/// Which keys a query row sees.
#[derive(Clone, Debug)]
pub enum TrainMask {
    /// Every key.
    None,
    /// Keys `0 ..= offset + i` for query row `i`.
    Causal { offset: usize },
    /// `[b, tk]` with 1 for real tokens, 0 for padding (row-major, as f32).
    Padding(Arc<Vec<f32>>),
}

struct FlashAttention {
    scale: f32,
    mask: TrainMask,
    /// `Some((bb, bh))` for the biased form: the op's inputs are `(q, [k | v], bias)` with keys
    /// and values side by side in one `[b, h_kv, tk, 2d]` tensor and the bias `[bb, bh, tq, tk]`
    /// (`bb ∈ {1, b}`, `bh ∈ {1, h}`) added to the scaled scores.
    bias: Option<(usize, usize)>,
    /// Log-sum-exp of each query row's visible scores, `[b·h·tq]`, from the forward for the
    /// backward; `+∞` marks a row without a visible key.
    lse: Mutex<Option<Arc<Vec<f32>>>>,
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn from_layouts(q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<Self> {
        let (b, h, tq, d) = q.shape().dims4()?;
        let (bk, hkv, tk, dk) = k.shape().dims4()?;
        if v.dims() != k.dims() || bk != b || dk != d || hkv == 0 || h % hkv != 0 {
            candle_core::bail!(
                "attention: expected q [b, h, tq, d] and k, v [b, h_kv, tk, d] with h a multiple of h_kv, found q {:?}, k {:?}, v {:?}",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        Ok(Self {
            b,
            h,
            hkv,
            tq,
            tk,
            d,
        })
    }
}

impl FlashAttention {
    /// Keys the tile's first row may see through the causal limit, and the keys the tile reads.
    fn tile_keys(&self, i0: usize, i1: usize, tk: usize) -> (Option<usize>, usize) {
        match self.mask {
            TrainMask::Causal { offset } => (Some(offset + i0), (offset + i1).min(tk)),
            _ => (None, tk),
        }
    }

    fn keep_row(&self, bi: usize, tk: usize) -> Option<&[f32]> {
        match &self.mask {
            TrainMask::Padding(k) => k.get(bi * tk..(bi + 1) * tk),
            _ => None,
        }
    }
}

/// Where the keys and values of one op live: `k` rows `ks` apart, `v` rows `vs` apart (the
/// biased form keeps them side by side in one tensor).
#[derive(Clone, Copy)]
struct KvAt {
    ks: usize,
    vs: usize,
    /// Offset of the first value row from the first key row of a head.
    v_off: usize,
    /// Elements per K/V head.
    head: usize,
}

impl KvAt {
    fn of(dm: &Dims, packed: bool) -> Self {
        let (tk, d) = (dm.tk, dm.d);
        if packed {
            Self {
                ks: 2 * d,
                vs: 2 * d,
                v_off: d,
                head: tk * 2 * d,
            }
        } else {
            Self {
                ks: d,
                vs: d,
                v_off: 0,
                head: tk * d,
            }
        }
    }

    /// The keys and values of K/V head `kv` (`b·h_kv` numbering).
    fn head<'a>(
        &self,
        k: &'a [f32],
        v: &'a [f32],
        kv: usize,
        tk: usize,
        d: usize,
    ) -> (&'a [f32], &'a [f32]) {
        if tk == 0 || d == 0 {
            return (&[], &[]);
        }
        let k0 = kv * self.head;
        let v0 = k0 + self.v_off;
        (
            &k[k0..k0 + (tk - 1) * self.ks + d],
            &v[v0..v0 + (tk - 1) * self.vs + d],
        )
    }
}

impl FlashAttention {
    fn dims(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> candle_core::Result<Dims> {
        let Some((bb, bh)) = self.bias else {
            return Dims::from_layouts(l1, l2, l3);
        };
        let (b, h, tq, d) = l1.shape().dims4()?;
        let (bk, hkv, tk, d2) = l2.shape().dims4()?;
        let want = [bb, bh, tq, tk];
        if bk != b
            || d2 != 2 * d
            || hkv == 0
            || h % hkv != 0
            || l3.dims() != want
            || (bb != 1 && bb != b)
            || (bh != 1 && bh != h)
        {
            candle_core::bail!(
                "attention: expected q [b, h, tq, d], [k | v] [b, h_kv, tk, 2d] and a bias [1 or b, 1 or h, tq, tk], found q {:?}, k|v {:?}, bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        Ok(Dims {
            b,
            h,
            hkv,
            tq,
            tk,
            d,
        })
    }

    /// The bias plane of (sequence `bi`, head `hi`), `[tq, tk]`.
    fn bias_plane<'a>(
        &self,
        bias: Option<&'a [f32]>,
        bi: usize,
        hi: usize,
        tq: usize,
        tk: usize,
    ) -> Option<&'a [f32]> {
        let (bb, bh) = self.bias?;
        let p = (if bb == 1 { 0 } else { bi }) * bh + if bh == 1 { 0 } else { hi };
        bias.and_then(|b| b.get(p * tq * tk..(p + 1) * tq * tk))
    }

    /// `S = scale · Q Kᵀ (+ B)` for tile rows `i0..i0 + rows` over the first `n` keys.
    #[allow(clippy::too_many_arguments)]
    fn scores(
        &self,
        st: &mut [f32],
        (rows, n, d): (usize, usize, usize),
        i0: usize,
        qh: &[f32],
        kh: &[f32],
        ks: usize,
        plane: Option<&[f32]>,
        tk: usize,
    ) {
        if let Some(bp) = plane {
            for r in 0..rows {
                st[r * n..(r + 1) * n].copy_from_slice(&bp[(i0 + r) * tk..(i0 + r) * tk + n]);
            }
        }
        mm1(
            (rows, n, d),
            st,
            n,
            plane.is_some(),
            (&qh[i0 * d..], d, 1),
            (kh, 1, ks),
            self.scale,
        );
    }

    fn forward(
        &self,
        dm: Dims,
        q: &[f32],
        (k, v): (&[f32], &[f32]),
        at: KvAt,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        if dm.tk == 0 {
            candle_core::bail!("attention: expected at least one key, found none");
        }
        if let TrainMask::Padding(keep) = &self.mask
            && keep.len() != dm.b * dm.tk
        {
            candle_core::bail!(
                "attention: a padding mask of {} values for {} sequences of {} keys",
                keep.len(),
                dm.b,
                dm.tk
            );
        }
        let Dims {
            h, hkv, tq, tk, d, ..
        } = dm;
        let g = h / hkv;
        let mut out = super::zeros(q.len());
        let mut lse = vec![0f32; dm.b * h * tq];
        if tq > 0 && d > 0 {
            out.par_chunks_mut(tq * d)
                .zip(lse.par_chunks_mut(tq))
                .enumerate()
                .for_each_init(
                    || vec![0f32; BQ * tk],
                    |s, (idx, (o, l))| {
                        let (bi, hi) = (idx / h, idx % h);
                        let (kh, vh) = at.head(k, v, bi * hkv + hi / g, tk, d);
                        let qh = &q[idx * tq * d..(idx + 1) * tq * d];
                        let keep = self.keep_row(bi, tk);
                        let plane = self.bias_plane(bias, bi, hi, tq, tk);
                        for i0 in (0..tq).step_by(BQ) {
                            let i1 = (i0 + BQ).min(tq);
                            let rows = i1 - i0;
                            let (causal0, n) = self.tile_keys(i0, i1, tk);
                            let st = &mut s[..rows * n];
                            self.scores(st, (rows, n, d), i0, qh, kh, at.ks, plane, tk);
                            softmax_tile(st, n, causal0, keep, &mut l[i0..i1]);
                            // O = P V.
                            mm1(
                                (rows, d, n),
                                &mut o[i0 * d..i1 * d],
                                d,
                                false,
                                (st, n, 1),
                                (vh, at.vs, 1),
                                1.0,
                            );
                        }
                    },
                );
        }
        Ok((out, lse))
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::AttentionForward);
        let dm = self.dims(l1, l2, l3)?;
        let q = super::slice(s1, l1, self.name())?;
        let s2 = super::slice(s2, l2, self.name())?;
        let s3 = super::slice(s3, l3, self.name())?;
        let (kv, bias) = match self.bias {
            None => ((s2, s3), None),
            Some(_) => ((s2, s2), Some(s3)),
        };
        let at = KvAt::of(&dm, self.bias.is_some());
        let (out, lse) = self.forward(dm, q, kv, at, bias)?;
        if let Ok(mut slot) = self.lse.lock() {
            *slot = Some(Arc::new(lse));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        o: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _t = crate::profile::scope(crate::profile::Phase::AttentionBackward);
        let dm = self.dims(q.layout(), a2.layout(), a3.layout())?;
        let g = g.contiguous()?;
        let (qd, d2, d3, od, gd) = (data(q)?, data(a2)?, data(a3)?, data(o)?, data(&g)?);
        let (qd, d2, d3): (&[f32], &[f32], &[f32]) = (&qd, &d2, &d3);
        let (od, gd): (&[f32], &[f32]) = (&od, &gd);
        let at = KvAt::of(&dm, self.bias.is_some());
        let dev = q.device();
        let Some((bb, bh)) = self.bias else {
            let (dq, dk, dv, _) = self.backward(dm, qd, (d2, d3), at, None, od, gd, false)?;
            return Ok((
                Some(Tensor::from_vec(dq, q.shape(), dev)?),
                Some(Tensor::from_vec(dk, a2.shape(), dev)?),
                Some(Tensor::from_vec(dv, a3.shape(), dev)?),
            ));
        };
        let want_ds = a3.track_op();
        let (dq, dk, dv, ds) = self.backward(dm, qd, (d2, d2), at, Some(d3), od, gd, want_ds)?;
        let Dims {
            b,
            h,
            hkv,
            tq,
            tk,
            d,
        } = dm;
        let dk = Tensor::from_vec(dk, (b, hkv, tk, d), dev)?;
        let dv = Tensor::from_vec(dv, (b, hkv, tk, d), dev)?;
        let dkv = Tensor::cat(&[&dk, &dv], 3)?;
        let dbias = match ds {
            Some(ds) => {
                let mut t = Tensor::from_vec(ds, (b, h, tq, tk), dev)?;
                if bb == 1 && b != 1 {
                    t = t.sum_keepdim(0)?;
                }
                if bh == 1 && h != 1 {
                    t = t.sum_keepdim(1)?;
                }
                Some(t)
            }
            None => None,
        };
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(dkv),
            dbias,
        ))
    }
}

fn data(t: &Tensor) -> candle_core::Result<F32Data<'_>> {
    F32Data::new(t).ok_or_else(|| {
        candle_core::Error::Msg("attention backward: expected contiguous f32 tensors".into())
    })
}

use crate::fused::dot;

/// Attention `softmax(scale · Q Kᵀ + mask) V` with a backward pass, as one tiled op (`q: [b, h,
/// tq, d]`, `k, v: [b, h_kv, tk, d]`, f32 on the CPU; `h` a multiple of `h_kv`).
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: TrainMask,
    scale: f64,
) -> crate::Result<Tensor> {
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        FlashAttention {
            scale: scale as f32,
            mask,
            bias: None,
            lse: Mutex::new(None),
        },
    )
}

/// [`flash_attention`] with an additive bias on the scaled scores,
/// `softmax(scale · Q Kᵀ + B + mask) V`, its gradient flowing into `B` (T5's relative position
/// bias, Transformer-XL's position terms). `bias: [bb, bh, tq, tk]` with `bb` 1 or `b` and `bh` 1
/// or `h`; broadcast dimensions receive the sum of their gradients.
pub fn flash_attention_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    mask: TrainMask,
    scale: f64,
) -> crate::Result<Tensor> {
    let (bb, bh, _, _) = bias.dims4()?;
    // Keys and values side by side, `[b, h_kv, tk, 2d]`: the op takes three inputs.
    let kv = Tensor::cat(&[&k.contiguous()?, &v.contiguous()?], 3)?.contiguous()?;
    q.contiguous()?.apply_op3(
        &kv,
        &bias.contiguous()?,
        FlashAttention {
            scale: scale as f32,
            mask,
            bias: Some((bb, bh)),
            lse: Mutex::new(None),
        },
    )
}

/// A `[b, tk]` keep mask (any dtype; nonzero keeps) as the op's f32 1/0 values.
pub fn padding_keep(keep: &Tensor) -> crate::Result<TrainMask> {
    let v: Vec<f32> = keep
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    Ok(TrainMask::Padding(Arc::new(
        v.into_iter()
            .map(|x| if x != 0.0 { 1.0 } else { 0.0 })
            .collect(),
    )))
}
