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

    /// `(dQ, dK, dV, dS)`, the last (`[b, h, tq, tk]`, the bias gradient before broadcasting
    /// is undone) only when `want_ds`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn backward(
        &self,
        dm: Dims,
        q: &[f32],
        (k, v): (&[f32], &[f32]),
        at: KvAt,
        bias: Option<&[f32]>,
        o: &[f32],
        g: &[f32],
        want_ds: bool,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>)> {
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
        // D = rowsum(dO ⊙ O) for every query row.
        let mut dd = vec![0f32; b * h * tq];
        if d > 0 {
            dd.par_chunks_mut(256).enumerate().for_each(|(c, dc)| {
                for (r, x) in dc.iter_mut().enumerate() {
                    let at = (c * 256 + r) * d;
                    *x = dot(&g[at..at + d], &o[at..at + d]);
                }
            });
        }
        let grp = h / hkv;
        let mut dq = super::zeros(b * h * tq * d);
        let mut dk = super::zeros(b * hkv * tk * d);
        let mut dv = super::zeros(b * hkv * tk * d);
        let mut ds = if want_ds {
            super::zeros(b * h * tq * tk)
        } else {
            Vec::new()
        };
        // One chunk of `ds` per task (empty when the bias takes no gradient).
        let ds_chunk = if want_ds { grp * tq * tk } else { 1 };
        let mut no_ds = vec![Vec::<f32>::new(); b * hkv];
        if tq > 0 && tk > 0 && d > 0 {
            let ds_tasks: Vec<&mut [f32]> = if want_ds {
                ds.chunks_mut(ds_chunk).collect()
            } else {
                no_ds.iter_mut().map(|x| x.as_mut_slice()).collect()
            };
            dq.par_chunks_mut(grp * tq * d)
                .zip(dk.par_chunks_mut(tk * d))
                .zip(dv.par_chunks_mut(tk * d))
                .zip(ds_tasks.into_par_iter())
                .enumerate()
                .for_each_init(
                    || (vec![0f32; BQ * tk], vec![0f32; BQ * tk]),
                    |(p, dp), (task, (((dqg, dkh), dvh), dsg))| {
                        let bi = task / hkv;
                        let (kh, vh) = at.head(k, v, task, tk, d);
                        let keep = self.keep_row(bi, tk);
                        for j in 0..grp {
                            let idx = task * grp + j; // = bi·h + head
                            let r0 = idx * tq;
                            let plane = self.bias_plane(bias, bi, idx % h, tq, tk);
                            let qh = &q[r0 * d..(r0 + tq) * d];
                            let gh = &g[r0 * d..(r0 + tq) * d];
                            let dqh = &mut dqg[j * tq * d..(j + 1) * tq * d];
                            for i0 in (0..tq).step_by(BQ) {
                                let i1 = (i0 + BQ).min(tq);
                                let rows = i1 - i0;
                                let (causal0, n) = self.tile_keys(i0, i1, tk);
                                let (pt, dpt) = (&mut p[..rows * n], &mut dp[..rows * n]);
                                let ls = &lse[r0 + i0..r0 + i1];
                                self.scores(pt, (rows, n, d), i0, qh, kh, at.ks, plane, tk);
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
                                    (vh, 1, at.vs),
                                    1.0,
                                );
                                dscores_tile(pt, dpt, n, &dd[r0 + i0..r0 + i1], ls);
                                if want_ds {
                                    // The bias gradient is dS itself (keys past the tile stay 0).
                                    let plane = &mut dsg[j * tq * tk..(j + 1) * tq * tk];
                                    for r in 0..rows {
                                        plane[(i0 + r) * tk..(i0 + r) * tk + n]
                                            .copy_from_slice(&dpt[r * n..(r + 1) * n]);
                                    }
                                }
                                // dQ = scale · dS K
                                mm1(
                                    (rows, d, n),
                                    &mut dqh[i0 * d..i1 * d],
                                    d,
                                    false,
                                    (dpt, n, 1),
                                    (kh, at.ks, 1),
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
        Ok((dq, dk, dv, want_ds.then_some(ds)))
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
        let mut out = super::zeros(b * heads * tq * d);
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
    let mut out = super::zeros(b * heads * t * d);
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
        let qkv = super::slice(s, l, self.name())?;
        let (q, k, v) = unpack_qkv(qkv, &dm);
        let at = KvAt::of(&dm, false);
        let (o, lse) = self.inner.forward(dm, &q, (&k, &v), at, None)?;
        if let Ok(mut slot) = self.inner.lse.lock() {
            *slot = Some(Arc::new(lse));
        }
        let Dims { b, h, tq, d, .. } = dm;
        let mut y = super::zeros(b * tq * h * d);
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
        let mut dx = super::zeros(b * tq * w);
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
