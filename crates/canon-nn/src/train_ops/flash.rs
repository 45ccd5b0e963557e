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
//! Products run on the `gemm` crate, single-threaded inside one rayon task per (sequence, head)
//! forward and per (sequence, K/V head) backward; every output element is written by one task
//! in a fixed order, so results do not depend on the thread count.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::mm;
use crate::fused::{F32Data, exp, sum8};
use crate::simd::simd_fn;

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

/// [`mm`] on the calling thread (one rayon task runs one tile).
#[allow(clippy::too_many_arguments)]
fn mm1(
    mnk: (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    alpha: f32,
) {
    mm(mnk, c, ldc, acc, a, b, alpha, gemm::Parallelism::None)
}

/// Visible keys of tile row `r`: `0..nv` through the causal limit, all `n` otherwise.
#[inline(always)]
fn visible(causal0: Option<usize>, r: usize, n: usize) -> usize {
    causal0.map_or(n, |c| (c + r + 1).min(n))
}

#[inline(always)]
fn softmax_tile_impl<const F: bool>(
    s: &mut [f32],
    n: usize,
    causal0: Option<usize>,
    keep: Option<&[f32]>,
    lse: &mut [f32],
) {
    for (r, row) in s.chunks_exact_mut(n).enumerate() {
        let nv = visible(causal0, r, n);
        let (vis, hid) = row.split_at_mut(nv);
        hid.fill(0.0);
        let mut m = f32::NEG_INFINITY;
        match keep {
            None => vis.iter().for_each(|&x| m = m.max(x)),
            Some(kp) => vis.iter().zip(kp).for_each(|(&x, &k)| {
                if k != 0.0 {
                    m = m.max(x)
                }
            }),
        }
        if m == f32::NEG_INFINITY {
            // No visible key: the composed ops' all-equal masked scores average uniformly.
            vis.fill(1.0 / n as f32);
            lse[r] = f32::INFINITY;
            continue;
        }
        match keep {
            None => vis.iter_mut().for_each(|x| *x = exp::<F>(*x - m)),
            Some(kp) => vis
                .iter_mut()
                .zip(kp)
                .for_each(|(x, &k)| *x = exp::<F>(*x - m) * k),
        }
        let sum = sum8(vis);
        let inv = 1.0 / sum;
        vis.iter_mut().for_each(|x| *x *= inv);
        lse[r] = m + sum.ln();
    }
}

simd_fn! {
    /// Softmax of each `n`-wide tile row in place over its visible keys (the rest set to 0);
    /// writes each row's log-sum-exp.
    fn softmax_tile => softmax_tile_impl(
        s: &mut [f32], n: usize, causal0: Option<usize>, keep: Option<&[f32]>, lse: &mut [f32]
    )
}

#[inline(always)]
fn probs_tile_impl<const F: bool>(
    s: &mut [f32],
    n: usize,
    causal0: Option<usize>,
    keep: Option<&[f32]>,
    lse: &[f32],
) {
    for (r, row) in s.chunks_exact_mut(n).enumerate() {
        let l = lse[r];
        let nv = visible(causal0, r, n);
        let (vis, hid) = row.split_at_mut(nv);
        hid.fill(0.0);
        if l == f32::INFINITY {
            vis.fill(1.0 / n as f32);
            continue;
        }
        match keep {
            None => vis.iter_mut().for_each(|x| *x = exp::<F>(*x - l)),
            Some(kp) => vis
                .iter_mut()
                .zip(kp)
                .for_each(|(x, &k)| *x = exp::<F>(*x - l) * k),
        }
    }
}

simd_fn! {
    /// Recomputes a tile's probabilities from its scores and the forward's log-sum-exps.
    fn probs_tile => probs_tile_impl(
        s: &mut [f32], n: usize, causal0: Option<usize>, keep: Option<&[f32]>, lse: &[f32]
    )
}

#[inline(always)]
fn dscores_tile_impl<const F: bool>(p: &[f32], dp: &mut [f32], n: usize, dd: &[f32], lse: &[f32]) {
    for (r, (pr, dr)) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)).enumerate() {
        if lse[r] == f32::INFINITY {
            dr.fill(0.0);
            continue;
        }
        let c = dd[r];
        dr.iter_mut()
            .zip(pr)
            .for_each(|(g, &pv)| *g = pv * (*g - c));
    }
}

simd_fn! {
    /// `dS = P ⊙ (dP − D)` in place in `dp` (zero for rows without a visible key).
    fn dscores_tile => dscores_tile_impl(p: &[f32], dp: &mut [f32], n: usize, dd: &[f32], lse: &[f32])
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
        let dm = Dims::from_layouts(l1, l2, l3)?;
        if dm.tk == 0 {
            candle_core::bail!(
                "attention: expected at least one key, found k {:?}",
                l2.dims()
            );
        }
        let q = super::slice(s1, l1, self.name())?;
        let k = super::slice(s2, l2, self.name())?;
        let v = super::slice(s3, l3, self.name())?;
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
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; dm.b * h * tq];
        if tq > 0 && d > 0 {
            out.par_chunks_mut(tq * d)
                .zip(lse.par_chunks_mut(tq))
                .enumerate()
                .for_each_init(
                    || vec![0f32; BQ * tk],
                    |s, (idx, (o, l))| {
                        let (bi, hi) = (idx / h, idx % h);
                        let kv0 = (bi * hkv + hi / g) * tk * d;
                        let (kh, vh) = (&k[kv0..kv0 + tk * d], &v[kv0..kv0 + tk * d]);
                        let qh = &q[idx * tq * d..(idx + 1) * tq * d];
                        let keep = self.keep_row(bi, tk);
                        for i0 in (0..tq).step_by(BQ) {
                            let i1 = (i0 + BQ).min(tq);
                            let rows = i1 - i0;
                            let (causal0, n) = self.tile_keys(i0, i1, tk);
                            let st = &mut s[..rows * n];
                            // S = scale · Q Kᵀ over the tile's keys.
                            mm1(
                                (rows, n, d),
                                st,
                                n,
                                false,
                                (&qh[i0 * d..], d, 1),
                                (kh, 1, d),
                                self.scale,
                            );
                            softmax_tile(st, n, causal0, keep, &mut l[i0..i1]);
                            // O = P V.
                            mm1(
                                (rows, d, n),
                                &mut o[i0 * d..i1 * d],
                                d,
                                false,
                                (st, n, 1),
                                (vh, d, 1),
                                1.0,
                            );
                        }
                    },
                );
        }
        if let Ok(mut slot) = self.lse.lock() {
            *slot = Some(Arc::new(lse));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::from_layouts(q.layout(), k.layout(), v.layout())?;
        let Dims {
            b,
            h,
            hkv,
            tq,
            tk,
            d,
        } = dm;
        let lse = match self.lse.lock() {
            Ok(slot) => slot.clone(),
            Err(_) => None,
        };
        let Some(lse) = lse else {
            candle_core::bail!("attention backward: the forward's row statistics are missing");
        };
        let g = g.contiguous()?;
        let (qd, kd, vd, od, gd) = (data(q)?, data(k)?, data(v)?, data(o)?, data(&g)?);
        let (qd, kd, vd): (&[f32], &[f32], &[f32]) = (&qd, &kd, &vd);
        let (od, gd): (&[f32], &[f32]) = (&od, &gd);
        // D = rowsum(dO ⊙ O) for every query row.
        let mut dd = vec![0f32; b * h * tq];
        if d > 0 {
            dd.par_chunks_mut(256).enumerate().for_each(|(c, dc)| {
                for (r, x) in dc.iter_mut().enumerate() {
                    let at = (c * 256 + r) * d;
                    *x = dot(&gd[at..at + d], &od[at..at + d]);
                }
            });
        }
        let grp = h / hkv;
        let mut dq = vec![0f32; qd.len()];
        let mut dk = vec![0f32; kd.len()];
        let mut dv = vec![0f32; vd.len()];
        if tq > 0 && tk > 0 && d > 0 {
            dq.par_chunks_mut(grp * tq * d)
                .zip(dk.par_chunks_mut(tk * d))
                .zip(dv.par_chunks_mut(tk * d))
                .enumerate()
                .for_each_init(
                    || (vec![0f32; BQ * tk], vec![0f32; BQ * tk]),
                    |(p, dp), (task, ((dqg, dkh), dvh))| {
                        let bi = task / hkv;
                        let kv0 = task * tk * d;
                        let (kh, vh) = (&kd[kv0..kv0 + tk * d], &vd[kv0..kv0 + tk * d]);
                        let keep = self.keep_row(bi, tk);
                        for j in 0..grp {
                            let idx = task * grp + j; // = bi·h + head
                            let r0 = idx * tq;
                            let qh = &qd[r0 * d..(r0 + tq) * d];
                            let gh = &gd[r0 * d..(r0 + tq) * d];
                            let dqh = &mut dqg[j * tq * d..(j + 1) * tq * d];
                            for i0 in (0..tq).step_by(BQ) {
                                let i1 = (i0 + BQ).min(tq);
                                let rows = i1 - i0;
                                let (causal0, n) = self.tile_keys(i0, i1, tk);
                                let (pt, dpt) = (&mut p[..rows * n], &mut dp[..rows * n]);
                                let ls = &lse[r0 + i0..r0 + i1];
                                mm1(
                                    (rows, n, d),
                                    pt,
                                    n,
                                    false,
                                    (&qh[i0 * d..], d, 1),
                                    (kh, 1, d),
                                    self.scale,
                                );
                                probs_tile(pt, n, causal0, keep, ls);
                                // dV += Pᵀ dO
                                mm1(
                                    (n, d, rows),
                                    dvh,
                                    d,
                                    true,
                                    (pt, 1, n),
                                    (&gh[i0 * d..], d, 1),
                                    1.0,
                                );
                                // dP = dO Vᵀ, then dS = P ⊙ (dP − D)
                                mm1(
                                    (rows, n, d),
                                    dpt,
                                    n,
                                    false,
                                    (&gh[i0 * d..], d, 1),
                                    (vh, 1, d),
                                    1.0,
                                );
                                dscores_tile(pt, dpt, n, &dd[r0 + i0..r0 + i1], ls);
                                // dQ = scale · dS K
                                mm1(
                                    (rows, d, n),
                                    &mut dqh[i0 * d..i1 * d],
                                    d,
                                    false,
                                    (dpt, n, 1),
                                    (kh, d, 1),
                                    self.scale,
                                );
                                // dK += scale · dSᵀ Q
                                mm1(
                                    (n, d, rows),
                                    dkh,
                                    d,
                                    true,
                                    (dpt, 1, n),
                                    (&qh[i0 * d..], d, 1),
                                    self.scale,
                                );
                            }
                        }
                    },
                );
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

fn data(t: &Tensor) -> candle_core::Result<F32Data<'_>> {
    F32Data::new(t).ok_or_else(|| {
        candle_core::Error::Msg("attention backward: expected contiguous f32 tensors".into())
    })
}

/// `a · b` in eight lanes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    sum8(&acc) + tail
}

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
