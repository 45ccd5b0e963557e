//! Layer norm and RMS norm with their backward, one pass per row each way. The row kernels are
//! compiled for AVX-512 and AVX2 + FMA beside the baseline and picked per call (`simd_fn!`); their
//! sums run in eight lanes, so every copy gives the same bits on a given input (FMA aside).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{ROWS_PER_TASK, last_dim, slice, values, zeros};
use crate::fused::{dot8, fma, sum_sq_dev8, sum8};

// ------------------------------------------------------------------ lane sums

/// Mean and `1/√(var + eps)` of a row.
#[inline(always)]
fn row_stats<const F: bool>(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum8(x) / n;
    let var = sum_sq_dev8::<F>(x, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

// ------------------------------------------------------------------ layer norm

struct LayerNormOp {
    eps: f32,
}

#[inline(always)]
fn ln_fwd_rows_impl<const F: bool>(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let d = w.len();
    for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let (mean, rstd) = row_stats::<F>(xr, eps);
        for (((o, &v), &g), &bb) in yr.iter_mut().zip(xr).zip(w).zip(b) {
            *o = fma::<F>((v - mean) * rstd, g, bb);
        }
    }
}

crate::simd::simd_fn! {
    /// Layer norm of each `w.len()`-wide row of `x` into `y`.
    fn ln_fwd_rows => ln_fwd_rows_impl(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32)
}

/// The backward of a block of rows: `dx` rows, and `dw`, `db` accumulated; `xhat` is a row of
/// scratch.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ln_bwd_rows_impl<const F: bool>(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f32,
    dw: &mut [f32],
    db: &mut [f32],
    xhat: &mut [f32],
) {
    let d = w.len();
    let n = d as f32;
    let rows = dx
        .chunks_exact_mut(d)
        .zip(x.chunks_exact(d))
        .zip(g.chunks_exact(d));
    for ((dr, xr), gr) in rows {
        let (mean, rstd) = row_stats::<F>(xr, eps);
        // x̂ = (x − μ) r and g ⊙ w (held in the dx row until the end).
        for ((h, &v), ((o, &gv), &wv)) in xhat.iter_mut().zip(xr).zip(dr.iter_mut().zip(gr).zip(w))
        {
            *h = (v - mean) * rstd;
            *o = gv * wv;
        }
        let m1 = sum8(dr) / n;
        let m2 = dot8::<F>(dr, xhat) / n;
        for (((a, c), &gv), &h) in dw.iter_mut().zip(db.iter_mut()).zip(gr).zip(xhat.iter()) {
            *a = fma::<F>(gv, h, *a);
            *c += gv;
        }
        for (o, &h) in dr.iter_mut().zip(xhat.iter()) {
            *o = rstd * (*o - m1 - h * m2);
        }
    }
}

crate::simd::simd_fn! {
    fn ln_bwd_rows => ln_bwd_rows_impl(
        dx: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32,
        dw: &mut [f32], db: &mut [f32], xhat: &mut [f32]
    )
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-train"
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
        let _t = crate::profile::scope(crate::profile::Phase::Norms);
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let b = slice(s3, l3, self.name())?;
        let d = last_dim(l1);
        if w.len() != d || b.len() != d {
            candle_core::bail!("layer norm: parameters of {} for rows of {d}", w.len());
        }
        let mut y = zeros(x.len());
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(yc, xc)| ln_fwd_rows(yc, xc, w, b, self.eps));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _t = crate::profile::scope(crate::profile::Phase::Norms);
        let d = w.elem_count();
        let g = g.contiguous()?;
        let (xv, wv, gv) = (values(x)?, values(w)?, values(&g)?);
        let mut dx = zeros(xv.len());
        // Per task: dx rows, and partial sums of dγ and dβ.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(
                xv.par_chunks(d * ROWS_PER_TASK)
                    .zip(gv.par_chunks(d * ROWS_PER_TASK)),
            )
            .map(|(dc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                let mut db = vec![0f32; d];
                let mut xhat = vec![0f32; d];
                ln_bwd_rows(dc, xc, gc, &wv, self.eps, &mut dw, &mut db, &mut xhat);
                (dw, db)
            })
            .collect();
        let mut dw = vec![0f32; d];
        let mut db = vec![0f32; d];
        for (pw, pb) in partial {
            dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

/// Layer norm over the last dimension with a backward pass (no bias: β = 0, not trained).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> crate::Result<Tensor> {
    let zeros;
    let b = match b {
        Some(b) => b,
        None => {
            zeros = w.zeros_like()?;
            &zeros
        }
    };
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}

// ------------------------------------------------------------------ RMS norm

struct RmsNormOp {
    eps: f32,
}

#[inline(always)]
fn rms_rstd<const F: bool>(x: &[f32], eps: f32) -> f32 {
    let ms = dot8::<F>(x, x) / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

#[inline(always)]
fn rms_fwd_rows_impl<const F: bool>(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let r = rms_rstd::<F>(xr, eps);
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * r * g;
        }
    }
}

crate::simd::simd_fn! {
    /// RMS norm of each `w.len()`-wide row of `x` into `y`.
    fn rms_fwd_rows => rms_fwd_rows_impl(y: &mut [f32], x: &[f32], w: &[f32], eps: f32)
}

/// `x̂ = x r; dx = r (g w − x̂ · mean(g w x̂)); dw += Σ_rows g x̂` for a block of rows.
#[inline(always)]
fn rms_bwd_rows_impl<const F: bool>(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f32,
    dw: &mut [f32],
) {
    let d = w.len();
    let rows = dx
        .chunks_exact_mut(d)
        .zip(x.chunks_exact(d))
        .zip(g.chunks_exact(d));
    for ((dr, xr), gr) in rows {
        let r = rms_rstd::<F>(xr, eps);
        // g ⊙ w, held in the dx row until the end.
        for ((o, &gv), &wv) in dr.iter_mut().zip(gr).zip(w) {
            *o = gv * wv;
        }
        let m = dot8::<F>(dr, xr) * r / d as f32;
        for ((a, &gv), &v) in dw.iter_mut().zip(gr).zip(xr) {
            *a = fma::<F>(gv, v * r, *a);
        }
        for (o, &v) in dr.iter_mut().zip(xr) {
            *o = r * (*o - v * r * m);
        }
    }
}

crate::simd::simd_fn! {
    fn rms_bwd_rows => rms_bwd_rows_impl(
        dx: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32, dw: &mut [f32]
    )
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::Norms);
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let d = last_dim(l1);
        if w.len() != d {
            candle_core::bail!("rms norm: a weight of {} for rows of {d}", w.len());
        }
        let mut y = zeros(x.len());
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(yc, xc)| rms_fwd_rows(yc, xc, w, self.eps));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let _t = crate::profile::scope(crate::profile::Phase::Norms);
        let d = w.elem_count();
        let g = g.contiguous()?;
        let (xv, wv, gv) = (values(x)?, values(w)?, values(&g)?);
        let mut dx = zeros(xv.len());
        // x̂ = x r; dx = r (g w − x̂ · mean(g w x̂)); dw = Σ_rows g x̂.
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(
                xv.par_chunks(d * ROWS_PER_TASK)
                    .zip(gv.par_chunks(d * ROWS_PER_TASK)),
            )
            .map(|(dc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                rms_bwd_rows(dc, xc, gc, &wv, self.eps, &mut dw);
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for p in partial {
            dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}

/// RMS norm `x / √(mean(x²) + eps) · w` over the last dimension (f32) with a backward pass for
/// both the input and the weight.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })
}

#[cfg(test)]
mod tests {
    use super::super::tests::wsum;
    use super::*;
    use crate::LayerNorm;
    use crate::gradcheck::check_gradients;
    use crate::train_ops::causal_softmax;
    use candle_core::Var;
    use canon_testkit::{Tol, assert_close, randn};

    /// Our layer norm (with and without a bias) against candle's composed `LayerNorm` on an `x` of
    /// `shape`: values, and the gradients of a weighted sum.
    fn layer_norm_against_composed(shape: &[usize], seed: u64) {
        let d = shape[shape.len() - 1];
        let x = Var::from_tensor(&randn(shape, seed)).unwrap();
        let w = Var::from_tensor(&randn(&[d], seed + 1)).unwrap();
        let b = Var::from_tensor(&randn(&[d], seed + 2)).unwrap();
        let ours = layer_norm(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 1e-5).unwrap();
        let refr = LayerNorm::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), 1e-5)
            .forward(x.as_tensor())
            .unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 9).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 9).unwrap().backward().unwrap();
        for t in [&x, &w, &b] {
            assert_close(
                g1.get(t.as_tensor()).unwrap(),
                g2.get(t.as_tensor()).unwrap(),
                Tol::new(1e-4, 1e-4),
            );
        }
        let nb = layer_norm(x.as_tensor(), w.as_tensor(), None, 1e-5).unwrap();
        let nr = LayerNorm::new(w.as_tensor().clone(), None, 1e-5)
            .forward(x.as_tensor())
            .unwrap();
        assert_close(&nb, &nr, Tol::F32);
    }

    /// Our RMS norm against the composed `RmsNorm`, as above.
    fn rms_norm_against_composed(shape: &[usize], seed: u64) {
        let d = shape[shape.len() - 1];
        let x = Var::from_tensor(&randn(shape, seed)).unwrap();
        let w = Var::from_tensor(&randn(&[d], seed + 1)).unwrap();
        let ours = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let refr = crate::RmsNorm::new(w.as_tensor().clone(), 1e-5)
            .forward_composed(x.as_tensor())
            .unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 9).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 9).unwrap().backward().unwrap();
        for t in [&x, &w] {
            assert_close(
                g1.get(t.as_tensor()).unwrap(),
                g2.get(t.as_tensor()).unwrap(),
                Tol::new(1e-4, 1e-4),
            );
        }
    }

    #[test]
    fn layer_norm_matches_the_composed_layer_forward_and_backward() {
        layer_norm_against_composed(&[3, 5, 16], 1);
    }

    #[test]
    fn finite_differences_through_fused_softmax_and_layer_norm() {
        let s = Var::from_tensor(&randn(&[2, 3, 4], 1)).unwrap();
        check_gradients(
            &[s],
            |t| wsum(&causal_softmax(&t[0], 1, 0.7)?, 3),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        let x = Var::from_tensor(&randn(&[3, 6], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[6], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[6], 3)).unwrap();
        check_gradients(
            &[x, w, b],
            |t| wsum(&layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5)?, 4),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }

    #[test]
    fn rms_norm_matches_the_composed_layer_and_finite_differences() {
        rms_norm_against_composed(&[3, 5, 16], 1);
        let x = Var::from_tensor(&randn(&[3, 6], 4)).unwrap();
        let w = Var::from_tensor(&randn(&[6], 5)).unwrap();
        check_gradients(
            &[x, w],
            |t| wsum(&rms_norm(&t[0], &t[1], 1e-5)?, 6),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }

    /// Widths with a tail past the eight lanes and the nanoGPT width, over more rows than one
    /// rayon task takes.
    #[test]
    fn norms_match_the_composed_ops_at_lane_tails_and_over_many_tasks() {
        for (d, seed) in [(13usize, 11u64), (384, 21)] {
            layer_norm_against_composed(&[2, 37, d], seed);
            rms_norm_against_composed(&[2, 37, d], seed);
        }
    }
}
