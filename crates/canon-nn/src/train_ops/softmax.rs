//! Softmax-shaped ops over the last dimension: the causal softmax, log-sum-exp and the
//! cross-entropy of rows of logits against integer targets.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{ROWS_PER_TASK, last_dim, slice, zeros};

// ------------------------------------------------------------------ causal softmax

struct CausalSoftmax {
    offset: usize,
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let dims = l.dims();
        let tk = last_dim(l);
        let tq = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        let mut y = zeros(x.len());
        y.par_chunks_mut(tk * ROWS_PER_TASK)
            .zip(x.par_chunks(tk * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(c, (yc, xc))| {
                for (r, (yr, xr)) in yc.chunks_mut(tk).zip(xc.chunks(tk)).enumerate() {
                    let i = (c * ROWS_PER_TASK + r) % tq;
                    let n = (self.offset + i + 1).min(tk);
                    let m = xr[..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let mut sum = 0f32;
                    for j in 0..n {
                        let e = (self.scale * (xr[j] - m)).exp();
                        yr[j] = e;
                        sum += e;
                    }
                    let inv = 1.0 / sum;
                    yr[..n].iter_mut().for_each(|v| *v *= inv);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(
            y.apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?,
        ))
    }
}

struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let tk = last_dim(l1);
        let mut dx = zeros(y.len());
        dx.par_chunks_mut(tk * ROWS_PER_TASK)
            .zip(
                y.par_chunks(tk * ROWS_PER_TASK)
                    .zip(g.par_chunks(tk * ROWS_PER_TASK)),
            )
            .for_each(|(dc, (yc, gc))| {
                for ((dr, yr), gr) in dc.chunks_mut(tk).zip(yc.chunks(tk)).zip(gc.chunks(tk)) {
                    let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    for j in 0..tk {
                        dr[j] = self.scale * yr[j] * (gr[j] - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `softmax(scale · x + causal mask)` over the last dimension of `x: [..., tq, tk]`, with backward.
pub fn causal_softmax(x: &Tensor, offset: usize, scale: f64) -> crate::Result<Tensor> {
    x.contiguous()?.apply_op1(CausalSoftmax {
        offset,
        scale: scale as f32,
    })
}

// ------------------------------------------------------------------ log-sum-exp

struct LogSumExp;

impl CustomOp1 for LogSumExp {
    fn name(&self) -> &'static str {
        "logsumexp-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::CrossEntropy);
        let x = slice(s, l, self.name())?;
        let v = last_dim(l);
        let n = x.len() / v;
        let mut out = vec![0f32; n];
        out.par_iter_mut()
            .zip(x.par_chunks(v))
            .for_each(|(o, xr)| *o = row_lse(xr));
        let dims = l.dims();
        let shape: Shape = dims[..dims.len().saturating_sub(1)].to_vec().into();
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::CrossEntropy);
        // d lse / dx_j = softmax(x)_j = exp(x_j − lse).
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let lse: Vec<f32> = y.flatten_all()?.to_vec1()?;
        let gv: Vec<f32> = g.flatten_all()?.to_vec1()?;
        let v = x.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = zeros(xv.len());
        dx.par_chunks_mut(v)
            .zip(xv.par_chunks(v))
            .enumerate()
            .for_each(|(i, (dr, xr))| {
                let (m, gi) = (lse[i], gv[i]);
                for (o, &z) in dr.iter_mut().zip(xr) {
                    *o = gi * (z - m).exp();
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

fn row_lse(x: &[f32]) -> f32 {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if m == f32::NEG_INFINITY {
        return m;
    }
    let s: f32 = x.iter().map(|&z| (z - m).exp()).sum();
    s.ln() + m
}

/// `log Σ_j exp(x_j)` over the last dimension of f32 `x: [..., v]` → `[...]`, one pass per row each
/// way (the backward writes `g · softmax(x)` directly).
pub fn logsumexp(x: &Tensor) -> crate::Result<Tensor> {
    x.contiguous()?.apply_op1(LogSumExp)
}

// ------------------------------------------------------------------ cross-entropy

/// Per-row cross-entropy `log Σ_j exp(z_j) − z_y` over the last dimension; the row log-sum-exps
/// are kept for the backward, which writes `g · (softmax(z) − onehot(y))` into one buffer.
struct CrossEntropyOp {
    targets: Vec<u32>,
    lse: std::sync::Mutex<Vec<f32>>,
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "cross-entropy-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::CrossEntropy);
        let x = slice(s, l, self.name())?;
        let v = last_dim(l).max(1);
        let n = x.len() / v;
        if n != self.targets.len() {
            candle_core::bail!(
                "cross_entropy: expected {n} targets for {n} rows of logits, found {}",
                self.targets.len()
            );
        }
        let mut lse = vec![0f32; n];
        lse.par_iter_mut()
            .zip(x.par_chunks(v))
            .for_each(|(o, xr)| *o = row_lse(xr));
        // The same subtraction as `lse − gather(z, y)`: the same bits as the composed ops.
        let out: Vec<f32> = lse
            .iter()
            .zip(&self.targets)
            .enumerate()
            .map(|(i, (&m, &t))| m - x[i * v + t as usize])
            .collect();
        match self.lse.lock() {
            Ok(mut kept) => *kept = lse,
            Err(_) => candle_core::bail!("cross_entropy: the kept row log-sum-exps were poisoned"),
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::CrossEntropy);
        let lse = match self.lse.lock() {
            Ok(kept) => kept.clone(),
            Err(_) => candle_core::bail!("cross_entropy: the kept row log-sum-exps were poisoned"),
        };
        let gv: Vec<f32> = g.flatten_all()?.to_vec1()?;
        if gv.len() != lse.len() {
            candle_core::bail!(
                "cross_entropy backward: expected {} row gradients, found {}",
                lse.len(),
                gv.len()
            );
        }
        // Rows of (lse, g) beside the logits, read in place by the backward kernel.
        let aux: Vec<f32> = lse.iter().zip(&gv).flat_map(|(&m, &gi)| [m, gi]).collect();
        let aux = Tensor::from_vec(aux, (lse.len(), 2), x.device())?;
        Ok(Some(x.apply_op2_no_bwd(
            &aux,
            &CrossEntropyBwd {
                targets: self.targets.clone(),
            },
        )?))
    }
}

struct CrossEntropyBwd {
    targets: Vec<u32>,
}

impl CustomOp2 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "cross-entropy-train-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let aux = slice(s2, l2, self.name())?;
        let v = last_dim(l1).max(1);
        let mut dx = zeros(x.len());
        dx.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(aux.par_chunks(2).zip(self.targets.par_iter()))
            .for_each(|((dr, xr), (mg, &t))| {
                let (m, gi) = (mg[0], mg[1]);
                for (o, &z) in dr.iter_mut().zip(xr) {
                    *o = gi * (z - m).exp();
                }
                // The composed ops add the gather's −g to the log-sum-exp's gradient.
                dr[t as usize] += -gi;
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Per-row cross-entropy `log Σ_j exp(z_j) − z_{y_i}` of f32 logits `[n, v]` with targets `[n]`
/// → `[n]`, as one op: one pass per row forward, and a backward that writes
/// `g · (softmax(z) − onehot(y))` directly (the composed `logsumexp − gather` keeps a
/// zero-filled scatter buffer and a sum beside the softmax gradient). Values and gradients are
/// the same bits as the composed ops.
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32]) -> crate::Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!(
            "cross_entropy: expected {n} targets for {n} rows of logits, found {}",
            targets.len()
        );
    }
    if let Some((i, &t)) = targets.iter().enumerate().find(|&(_, &t)| t as usize >= v) {
        candle_core::bail!("cross_entropy: target {t} at row {i} is outside the vocabulary of {v}");
    }
    logits.contiguous()?.apply_op1(CrossEntropyOp {
        targets: targets.to_vec(),
        lse: std::sync::Mutex::new(Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::wsum;
    use super::*;
    use crate::gradcheck::check_gradients;
    use candle_core::{D, Var};
    use canon_testkit::{Tol, assert_close, randn};

    #[test]
    fn causal_softmax_with_an_offset_matches_masked_softmax() {
        let x = randn(&[3, 4, 7], 5);
        let ours = causal_softmax(&x, 3, 0.5).unwrap();
        let m = crate::attention::causal_mask(4, 7, 3, x.device()).unwrap();
        let refr =
            candle_nn::ops::softmax(&(x * 0.5).unwrap().broadcast_add(&m).unwrap(), D::Minus1)
                .unwrap();
        assert_close(&ours, &refr, Tol::F32);
    }

    #[test]
    fn logsumexp_matches_the_composed_ops_and_finite_differences() {
        let x = Var::from_tensor(&(randn(&[6, 50], 1) * 5.0).unwrap()).unwrap();
        let ours = logsumexp(x.as_tensor()).unwrap();
        let refr = crate::loss::logsumexp_composed(x.as_tensor()).unwrap();
        assert_eq!(ours.dims(), &[6]);
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 2).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 2).unwrap().backward().unwrap();
        assert_close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            Tol::new(1e-6, 1e-4),
        );
        let x = Var::from_tensor(&randn(&[3, 7], 4)).unwrap();
        check_gradients(&[x], |t| wsum(&logsumexp(&t[0])?, 5), 1e-2, 2e-3, 2e-2).unwrap();
    }

    /// The fused cross-entropy gives the composed ops' values and gradients bit for bit, and
    /// passes finite differences.
    #[test]
    fn cross_entropy_rows_equals_the_composed_ops_and_finite_differences() {
        let x = Var::from_tensor(&(randn(&[6, 50], 3) * 5.0).unwrap()).unwrap();
        let y: Vec<u32> = vec![0, 49, 7, 7, 20, 33];
        let ours = cross_entropy_rows(x.as_tensor(), &y).unwrap();
        let yt = Tensor::from_vec(y.clone(), (6, 1), &candle_core::Device::Cpu).unwrap();
        let picked = x.as_tensor().gather(&yt, 1).unwrap().squeeze(1).unwrap();
        let refr = (logsumexp(x.as_tensor()).unwrap() - picked).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&ours), bits(&refr));
        let g1 = ours.mean_all().unwrap().backward().unwrap();
        let g2 = refr.mean_all().unwrap().backward().unwrap();
        let (g1, g2) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert_eq!(bits(g1), bits(g2));
        assert_close(g1, g2, Tol::F32);
        let g1 = wsum(&ours, 2).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 2).unwrap().backward().unwrap();
        assert_close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            Tol::F32,
        );
        let x = Var::from_tensor(&randn(&[3, 7], 4)).unwrap();
        check_gradients(
            &[x],
            |t| wsum(&cross_entropy_rows(&t[0], &[1, 6, 0])?, 5),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        // Wrong target count and an out-of-vocabulary target are errors.
        assert!(cross_entropy_rows(&randn(&[2, 3], 1), &[0]).is_err());
        assert!(cross_entropy_rows(&randn(&[2, 3], 1), &[0, 3]).is_err());
    }
}
