//! The tiled attention's backward: each tile's probabilities recomputed from the forward's
//! log-sum-exps, one rayon task per (sequence, K/V head).

use rayon::prelude::*;

use super::super::zeros;
use super::tiles::{dscores_tile, mm1, probs_tile};
use super::{BQ, Dims, FlashAttention, KvAt, dot};

impl FlashAttention {
    /// `(dQ, dK, dV, dS)`, the last (`[b, h, tq, tk]`, the bias gradient before broadcasting
    /// is undone) only when `want_ds`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub(super) fn backward(
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
        let mut dq = zeros(b * h * tq * d);
        let mut dk = zeros(b * hkv * tk * d);
        let mut dv = zeros(b * hkv * tk * d);
        let mut ds = if want_ds {
            zeros(b * h * tq * tk)
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
