//! Finite-difference gradient checks (central differences) for layers used in training: the
//! backward pass candle records must agree with `(f(x + ε) − f(x − ε)) / 2ε` at every coordinate.
//! A fused op that silently records no backward fails here (its analytic gradient is missing).

use candle_core::{DType, Tensor, Var};

/// Checks the gradient of the scalar `f(inputs)` with respect to every element of every input.
/// Returns the largest absolute difference, or a message naming the input and element that fails.
pub fn check_gradients<F>(
    inputs: &[Var],
    f: F,
    eps: f64,
    atol: f64,
    rtol: f64,
) -> Result<f64, String>
where
    F: Fn(&[Tensor]) -> crate::Result<Tensor>,
{
    let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = f(&tensors).map_err(|e| e.to_string())?;
    let grads = loss.backward().map_err(|e| e.to_string())?;
    let mut worst = 0f64;
    for (i, var) in inputs.iter().enumerate() {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| format!("input {i}: no gradient recorded"))?;
        let g: Vec<f64> = flat(g)?;
        let x0: Vec<f64> = flat(var.as_tensor())?;
        let shape = var.dims().to_vec();
        let dtype = var.dtype();
        for j in 0..x0.len() {
            let eval = |delta: f64| -> Result<f64, String> {
                let mut x = x0.clone();
                x[j] += delta;
                let t = Tensor::from_vec(x, shape.as_slice(), var.device())
                    .and_then(|t| t.to_dtype(dtype))
                    .map_err(|e| e.to_string())?;
                let mut ts = tensors.clone();
                ts[i] = t;
                let l = f(&ts).map_err(|e| e.to_string())?;
                l.to_dtype(DType::F64)
                    .and_then(|l| l.to_scalar::<f64>())
                    .map_err(|e| e.to_string())
            };
            let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            let d = (numeric - g[j]).abs();
            if d.is_nan() || d > atol + rtol * numeric.abs() {
                return Err(format!(
                    "input {i} element {j}: analytic {} vs numeric {numeric}",
                    g[j]
                ));
            }
            worst = worst.max(d);
        }
    }
    Ok(worst)
}

fn flat(t: &Tensor) -> Result<Vec<f64>, String> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    //! Finite-difference checks of every layer the training paths use (f64 where the layer keeps the
    //! input dtype; norms compute in f32, so they are checked in f32 with a wider step).
    use super::*;
    use crate::attention::{AttnMask, attention};
    use crate::{LayerNorm, RmsNorm, Rope, RopeLayout};
    use candle_core::Device;
    use canon_testkit::randn;

    fn var64(shape: &[usize], seed: u64) -> Var {
        Var::from_tensor(&randn(shape, seed).to_dtype(DType::F64).unwrap()).unwrap()
    }

    fn weighted_sum(y: &Tensor, seed: u64) -> crate::Result<Tensor> {
        // A fixed random projection, so that every output element matters differently.
        let w = randn(y.dims(), seed).to_dtype(y.dtype())?;
        (y * w)?.sum_all()
    }

    #[test]
    fn causal_multi_head_attention() {
        let vs = [
            var64(&[1, 2, 4, 3], 1),
            var64(&[1, 2, 4, 3], 2),
            var64(&[1, 2, 4, 3], 3),
        ];
        let worst = check_gradients(
            &vs,
            |t| {
                weighted_sum(
                    &attention(&t[0], &t[1], &t[2], AttnMask::Causal { offset: 0 })?,
                    9,
                )
            },
            1e-5,
            1e-7,
            1e-5,
        )
        .unwrap();
        assert!(worst < 1e-6);
    }

    #[test]
    fn multi_query_attention_with_a_cached_offset() {
        let vs = [
            var64(&[1, 4, 2, 3], 1),
            var64(&[1, 1, 5, 3], 2),
            var64(&[1, 1, 5, 3], 3),
        ];
        check_gradients(
            &vs,
            |t| {
                weighted_sum(
                    &attention(&t[0], &t[1], &t[2], AttnMask::Causal { offset: 3 })?,
                    9,
                )
            },
            1e-5,
            1e-7,
            1e-5,
        )
        .unwrap();
    }

    #[test]
    fn rotary_embedding_both_layouts() {
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let rope = Rope::new(4, 16, 10000.0, layout, &Device::Cpu).unwrap();
            let vs = [var64(&[1, 2, 3, 4], 5)];
            check_gradients(
                &vs,
                |t| weighted_sum(&rope.apply(&t[0], 2)?, 3),
                1e-5,
                1e-7,
                1e-5,
            )
            .unwrap();
        }
    }

    #[test]
    fn layer_norm_and_rms_norm_in_f32() {
        let x = Var::from_tensor(&randn(&[3, 6], 1)).unwrap();
        let g = Var::from_tensor(&randn(&[6], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[6], 3)).unwrap();
        check_gradients(
            &[x.clone(), g.clone(), b],
            |t| {
                let ln = LayerNorm::new(t[1].clone(), Some(t[2].clone()), 1e-5);
                weighted_sum(&ln.forward(&t[0])?, 7)
            },
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        check_gradients(
            &[x, g],
            |t| weighted_sum(&RmsNorm::new(t[1].clone(), 1e-5).forward(&t[0])?, 7),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }

    #[test]
    fn a_fused_op_without_backward_is_caught() {
        // candle's fused softmax records no backward: the check must report a missing gradient.
        let x = var64(&[2, 5], 1);
        let r = check_gradients(
            &[x],
            |t| weighted_sum(&candle_nn::ops::softmax_last_dim(&t[0])?, 2),
            1e-5,
            1e-7,
            1e-5,
        );
        assert!(r.is_err());
    }

    #[test]
    fn cross_entropy_with_z_loss() {
        let x = var64(&[4, 5], 1);
        let t = Tensor::new(&[0u32, 4, 2, 2], &Device::Cpu).unwrap();
        check_gradients(
            &[x],
            |v| {
                let l = crate::lm_loss(&v[0], &t, 1e-2)?;
                l.cross_entropy + l.z_loss
            },
            1e-5,
            1e-7,
            1e-5,
        )
        .unwrap();
    }
}
