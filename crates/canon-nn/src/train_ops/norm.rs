//! Layer norm and RMS norm with their backward, one pass per row each way.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{ROWS_PER_TASK, last_dim, slice, values, zeros};

// ------------------------------------------------------------------ layer norm

struct LayerNormOp {
    eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
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
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    for j in 0..d {
                        yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
                    }
                }
            });
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
                for ((dr, xr), gr) in dc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for j in 0..d {
                        xhat[j] = (xr[j] - mean) * rstd;
                        let gh = gr[j] * wv[j];
                        m1 += gh;
                        m2 += gh * xhat[j];
                        dw[j] += gr[j] * xhat[j];
                        db[j] += gr[j];
                    }
                    let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                    for j in 0..d {
                        dr[j] = rstd * (gr[j] * wv[j] - m1 - xhat[j] * m2);
                    }
                }
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

fn rms_rstd(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
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
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let r = rms_rstd(xr, self.eps);
                    for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                        *o = v * r * g;
                    }
                }
            });
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
                for ((dr, xr), gr) in dc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let r = rms_rstd(xr, self.eps);
                    let mut m = 0f32;
                    for j in 0..d {
                        let xh = xr[j] * r;
                        m += gr[j] * wv[j] * xh;
                        dw[j] += gr[j] * xh;
                    }
                    let m = m / d as f32;
                    for j in 0..d {
                        dr[j] = r * (gr[j] * wv[j] - xr[j] * r * m);
                    }
                }
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

    #[test]
    fn layer_norm_matches_the_composed_layer_forward_and_backward() {
        let x = Var::from_tensor(&randn(&[3, 5, 16], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[16], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[16], 3)).unwrap();
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
        // Without a bias.
        let nb = layer_norm(x.as_tensor(), w.as_tensor(), None, 1e-5).unwrap();
        let nr = LayerNorm::new(w.as_tensor().clone(), None, 1e-5)
            .forward(x.as_tensor())
            .unwrap();
        assert_close(&nb, &nr, Tol::F32);
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
        let x = Var::from_tensor(&randn(&[3, 5, 16], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[16], 2)).unwrap();
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
}
