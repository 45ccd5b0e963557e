//! The per-tile kernels of the tiled attention: one tile's product on the calling thread, its
//! softmax, its probabilities recomputed from the log-sum-exps, and its score gradient.

use super::super::mm;
use crate::fused::{exp, sum8};
use crate::simd::simd_fn;

/// [`mm`] on the calling thread (one rayon task runs one tile).
#[allow(clippy::too_many_arguments)]
pub(super) fn mm1(
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
    pub(super) fn softmax_tile => softmax_tile_impl(
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
    pub(super) fn probs_tile => probs_tile_impl(
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
    pub(super) fn dscores_tile => dscores_tile_impl(p: &[f32], dp: &mut [f32], n: usize, dd: &[f32], lse: &[f32])
}
