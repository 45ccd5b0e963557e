//! A trainable linear with the residual add folded in: `y = r + a Wᵀ` as one graph node.
//!
//! Separately, candle's backprop sees the linear's output `p = a Wᵀ` and the add `r + p`; the add's
//! backward allocates a zero-filled gradient for `p`, adds the incoming gradient into it (on the
//! calling thread and candle's own pool, while the rayon pool waits) and hands it to the linear.
//! Here the op passes the incoming gradient to the linear's products directly and to `r` as it is.
//! The product is the trainable linear's (`mm` with the same operands and strides), and
//! `r + p` is the same IEEE sum as candle's add, so values and gradients are the same bits.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{ELEMS_PER_TASK, join_products, mm, par, slice, values, zeros};
use crate::profile::{Phase, scope};

struct ResidualLinear;

/// `(n, out, k)` of `r + a Wᵀ` with `a: [..., k]` read as `[n, k]`, `W: [out, k]` and `r` of
/// `a`'s shape with `out` last; errors name the expected and found shapes.
fn dims(r: &[usize], a: &[usize], w: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
    let (Some((&k, lead)), &[out, in_f]) = (a.split_last(), w) else {
        candle_core::bail!(
            "residual linear: expected an input [..., in] and a weight [out, in], found {a:?} and {w:?}"
        );
    };
    if k != in_f {
        candle_core::bail!(
            "residual linear: input rows have {k} values, the weight {in_f} columns"
        );
    }
    let want: Vec<usize> = lead.iter().copied().chain([out]).collect();
    if r != want.as_slice() {
        candle_core::bail!("residual linear: expected a residual of shape {want:?}, found {r:?}");
    }
    Ok((lead.iter().product(), out, k))
}

impl CustomOp3 for ResidualLinear {
    fn name(&self) -> &'static str {
        "canon-train-residual-linear"
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
        let (n, out, k) = dims(l1.dims(), l2.dims(), l3.dims())?;
        let r = slice(s1, l1, self.name())?;
        let a = slice(s2, l2, self.name())?;
        let w = slice(s3, l3, self.name())?;
        let mut y = zeros(n * out);
        {
            let _t = scope(Phase::TrainForward);
            mm(
                (n, out, k),
                &mut y,
                out,
                false,
                (a, k, 1),
                (w, 1, k),
                1.0,
                par(),
            );
        }
        // `p + r`: candle's add computes `r + p`, the same IEEE sum.
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(r.par_chunks(ELEMS_PER_TASK))
            .for_each(|(yc, rc)| yc.iter_mut().zip(rc).for_each(|(p, &r)| *p += r));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        r: &Tensor,
        a: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, out, k) = dims(r.dims(), a.dims(), w.dims())?;
        let g = g.contiguous()?;
        let gd = values(&g)?;
        let (ad, wd) = (values(a)?, values(w)?);
        let _t = scope(Phase::TrainBackward);
        let mut dw = zeros(out * k);
        let dw_product = |dw: &mut [f32], par| {
            mm(
                (out, k, n),
                dw,
                k,
                false,
                (&gd, 1, out),
                (&ad, k, 1),
                1.0,
                par,
            )
        };
        let da = if a.track_op() {
            let mut da = zeros(n * k);
            // `∂L/∂a = g W` and `∂L/∂W = gᵀ a` side by side, as the trainable linear runs them.
            join_products(
                |par| {
                    mm(
                        (n, k, out),
                        &mut da,
                        k,
                        false,
                        (&gd, out, 1),
                        (&wd, k, 1),
                        1.0,
                        par,
                    )
                },
                |par| dw_product(&mut dw, par),
            );
            Some(Tensor::from_vec(da, a.shape(), a.device())?)
        } else {
            dw_product(&mut dw, par());
            None
        };
        let dr = r.track_op().then(|| g.clone());
        Ok((dr, da, Some(Tensor::from_vec(dw, (out, k), w.device())?)))
    }
}

/// `r + a Wᵀ` for a trainable f32 `W: [out, in]`, `a: [..., in]` and `r: [..., out]` on the CPU,
/// as one op: the linear's products and the add, with the add's gradient bookkeeping skipped (see
/// the module's notes). The same values and gradients as `(r + linear(a))`.
pub fn residual_linear(r: &Tensor, a: &Tensor, w: &Tensor) -> crate::Result<Tensor> {
    r.contiguous()?
        .apply_op3(&a.contiguous()?, &w.contiguous()?, ResidualLinear)
}

#[cfg(test)]
mod tests {
    use super::super::tests::wsum;
    use super::*;
    use crate::gradcheck::check_gradients;
    use candle_core::Var;
    use canon_testkit::randn;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The fused op equals the trainable linear followed by candle's add, bit for bit, forward
    /// and every gradient, at 1 and 2 threads, on shapes large enough for the split products and
    /// with a constant residual (no gradient asked for it).
    #[test]
    fn residual_linear_equals_the_linear_and_add_bit_for_bit() {
        for (shape, out, seed) in [
            (vec![2usize, 3, 5], 4usize, 1u64),
            (vec![2, 160, 96], 80, 2),
        ] {
            let k = *shape.last().unwrap();
            let mut rshape = shape.clone();
            *rshape.last_mut().unwrap() = out;
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let r = Var::from_tensor(&randn(&rshape, seed)).unwrap();
                    let a = Var::from_tensor(&randn(&shape, seed + 1)).unwrap();
                    let w = Var::from_tensor(&(randn(&[out, k], seed + 2) * 0.3).unwrap()).unwrap();
                    let lin = crate::Linear::new(crate::Weight::Dense(w.as_tensor().clone()), None);
                    let refr = (r.as_tensor() + lin.forward(a.as_tensor()).unwrap()).unwrap();
                    let ours =
                        residual_linear(r.as_tensor(), a.as_tensor(), w.as_tensor()).unwrap();
                    assert_eq!(ours.dims(), refr.dims());
                    assert_eq!(bits(&ours), bits(&refr));
                    let g1 = wsum(&ours, seed + 7).unwrap().backward().unwrap();
                    let g2 = wsum(&refr, seed + 7).unwrap().backward().unwrap();
                    for v in [&r, &a, &w] {
                        let (x, y) = (
                            g1.get(v.as_tensor()).unwrap(),
                            g2.get(v.as_tensor()).unwrap(),
                        );
                        assert_eq!(bits(x), bits(y));
                    }
                    // A constant residual: no gradient for it, the others unchanged.
                    let rc = r.as_tensor().detach();
                    let y = residual_linear(&rc, a.as_tensor(), w.as_tensor()).unwrap();
                    let g3 = wsum(&y, seed + 7).unwrap().backward().unwrap();
                    assert!(g3.get(&rc).is_none());
                    assert_eq!(
                        bits(g3.get(w.as_tensor()).unwrap()),
                        bits(g2.get(w.as_tensor()).unwrap())
                    );
                });
            }
        }
    }

    #[test]
    fn finite_differences_through_the_residual_linear() {
        let r = Var::from_tensor(&randn(&[2, 3, 4], 11)).unwrap();
        let a = Var::from_tensor(&randn(&[2, 3, 5], 12)).unwrap();
        let w = Var::from_tensor(&randn(&[4, 5], 13)).unwrap();
        check_gradients(
            &[r, a, w],
            |t| wsum(&residual_linear(&t[0], &t[1], &t[2])?, 5),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_them() {
        let r = randn(&[2, 3, 4], 1);
        let a = randn(&[2, 3, 5], 2);
        let e = residual_linear(&r, &a, &randn(&[4, 6], 3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("5 values") && e.contains("6 columns"), "{e}");
        let e = residual_linear(&randn(&[2, 3, 5], 4), &a, &randn(&[4, 5], 3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[2, 3, 4]") && e.contains("[2, 3, 5]"), "{e}");
    }
}
