//! Element-wise activations with their backward: GELU (exact or tanh form) and SiLU(a) ⊙ b.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{ELEMS_PER_TASK, slice, values, zeros};

// ------------------------------------------------------------------ GELU

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `tanh z = 1 − 2 / (e^{2z} + 1)` on the branch-free exponential (saturates to ±1 where the
/// exponential clamps).
#[inline(always)]
fn tanh_fast<const F: bool>(z: f32) -> f32 {
    1.0 - 2.0 / (crate::fused::exp::<F>(2.0 * z) + 1.0)
}

#[inline(always)]
fn gelu_fwd_impl<const F: bool>(x: &[f32], y: &mut [f32], tanh: bool) {
    if tanh {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + tanh_fast::<F>(SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v)));
        }
    } else {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + crate::fused::erf::<F>(v * INV_SQRT_2));
        }
    }
}

crate::simd::simd_fn! {
    /// GELU of `x` into `y` (exact erf form, or the tanh form).
    pub(crate) fn gelu_fwd => gelu_fwd_impl(x: &[f32], y: &mut [f32], tanh: bool)
}

#[inline(always)]
fn gelu_bwd_impl<const F: bool>(x: &[f32], g: &[f32], dx: &mut [f32], tanh: bool) {
    if tanh {
        for ((o, &v), &gr) in dx.iter_mut().zip(x).zip(g) {
            let t = tanh_fast::<F>(SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v));
            let d = 0.5 * (1.0 + t)
                + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 0.134_145 * v * v);
            *o = gr * d;
        }
    } else {
        for ((o, &v), &gr) in dx.iter_mut().zip(x).zip(g) {
            let d = 0.5 * (1.0 + crate::fused::erf::<F>(v * INV_SQRT_2))
                + v * INV_SQRT_2PI * crate::fused::exp::<F>(-0.5 * v * v);
            *o = gr * d;
        }
    }
}

crate::simd::simd_fn! {
    /// `dx = g · GELU'(x)`.
    pub(crate) fn gelu_bwd => gelu_bwd_impl(x: &[f32], g: &[f32], dx: &mut [f32], tanh: bool)
}

struct Gelu {
    tanh: bool,
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-train"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        let x = slice(s, l, self.name())?;
        let mut y = zeros(x.len());
        let tanh = self.tanh;
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK))
            .for_each(|(yc, xc)| gelu_fwd(xc, yc, tanh));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        Ok(Some(x.apply_op2_no_bwd(
            &g.contiguous()?,
            &GeluBwd { tanh: self.tanh },
        )?))
    }
}

struct GeluBwd {
    tanh: bool,
}

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "gelu-train-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let mut dx = zeros(x.len());
        let tanh = self.tanh;
        dx.par_chunks_mut(ELEMS_PER_TASK)
            .zip(
                x.par_chunks(ELEMS_PER_TASK)
                    .zip(g.par_chunks(ELEMS_PER_TASK)),
            )
            .for_each(|(dc, (xc, gc))| gelu_bwd(xc, gc, dc, tanh));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// GELU (exact when `tanh` is false, the tanh approximation otherwise) with a backward pass.
pub fn gelu(x: &Tensor, tanh: bool) -> crate::Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu { tanh })
}

// ------------------------------------------------------------------ SiLU(a) ⊙ b (SwiGLU)

struct SiluMul;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        let a = slice(s1, l1, self.name())?;
        let b = slice(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "silu-mul: the gate is {:?} but the linear branch {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let mut y = zeros(a.len());
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(
                a.par_chunks(ELEMS_PER_TASK)
                    .zip(b.par_chunks(ELEMS_PER_TASK)),
            )
            .for_each(|(yc, (ac, bc))| {
                for ((o, &u), &v) in yc.iter_mut().zip(ac).zip(bc) {
                    *o = u * sigmoid(u) * v;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        let g = g.contiguous()?;
        let (av, bv, gv) = (values(a)?, values(b)?, values(&g)?);
        let mut da = zeros(av.len());
        let mut db = zeros(av.len());
        // d silu(a)/da = σ(a) (1 + a (1 − σ(a))).
        da.par_chunks_mut(ELEMS_PER_TASK)
            .zip(db.par_chunks_mut(ELEMS_PER_TASK))
            .zip(
                av.par_chunks(ELEMS_PER_TASK).zip(
                    bv.par_chunks(ELEMS_PER_TASK)
                        .zip(gv.par_chunks(ELEMS_PER_TASK)),
                ),
            )
            .for_each(|((dac, dbc), (ac, (bc, gc)))| {
                for i in 0..ac.len() {
                    let (u, v, gr) = (ac[i], bc[i], gc[i]);
                    let s = sigmoid(u);
                    dac[i] = gr * v * s * (1.0 + u * (1.0 - s));
                    dbc[i] = gr * u * s;
                }
            });
        let dev = a.device();
        Ok((
            Some(Tensor::from_vec(da, a.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

/// SwiGLU's gating `SiLU(a) ⊙ b` (f32, same shapes) in one pass with a backward pass for both.
pub fn silu_mul(a: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, SiluMul)
}

#[cfg(test)]
mod tests {
    use super::super::tests::wsum;
    use super::*;
    use crate::gradcheck::check_gradients;
    use candle_core::Var;
    use canon_testkit::{Tol, assert_close, randn};

    #[test]
    fn gelu_forms_match_candle_and_finite_differences() {
        let x = randn(&[4, 33], 4);
        assert_close(
            &gelu(&x, false).unwrap(),
            &x.gelu_erf().unwrap(),
            Tol::new(1e-6, 1e-6),
        );
        assert_close(
            &gelu(&x, true).unwrap(),
            &x.gelu().unwrap(),
            Tol::new(1e-6, 1e-5),
        );
        for tanh in [false, true] {
            let v = Var::from_tensor(&randn(&[3, 5], 6)).unwrap();
            check_gradients(&[v], |t| wsum(&gelu(&t[0], tanh)?, 2), 1e-2, 2e-3, 2e-2).unwrap();
        }
    }

    #[test]
    fn silu_mul_matches_the_composed_ops_and_finite_differences() {
        let a = Var::from_tensor(&(randn(&[4, 37], 1) * 3.0).unwrap()).unwrap();
        let b = Var::from_tensor(&randn(&[4, 37], 2)).unwrap();
        let ours = silu_mul(a.as_tensor(), b.as_tensor()).unwrap();
        let refr = (a.as_tensor().silu().unwrap() * b.as_tensor()).unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 3).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 3).unwrap().backward().unwrap();
        for t in [&a, &b] {
            assert_close(
                g1.get(t.as_tensor()).unwrap(),
                g2.get(t.as_tensor()).unwrap(),
                Tol::new(1e-5, 1e-4),
            );
        }
        let a = Var::from_tensor(&randn(&[3, 5], 7)).unwrap();
        let b = Var::from_tensor(&randn(&[3, 5], 8)).unwrap();
        check_gradients(
            &[a, b],
            |t| wsum(&silu_mul(&t[0], &t[1])?, 9),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        // Shapes must agree.
        assert!(silu_mul(&randn(&[2, 3], 1), &randn(&[3, 2], 1)).is_err());
    }
}
