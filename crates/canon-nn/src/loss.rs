//! Language-model losses, written with composed candle ops so that they record a backward pass.
//!
//! - Cross-entropy `mean_i (log Z_i − z_{i, y_i})` with `log Z = logsumexp(z)` (GPT-1 eq. 1 negated).
//! - PaLM's auxiliary z-loss (paper 19, §5): `c · mean_i (log Z_i)²`, which keeps the softmax
//!   normaliser close to 1 (PaLM uses `c = 1e-4`).
//!
//! Shapes: logits `[n, vocab]`, targets `[n]` (u32).

use candle_core::{D, DType, Tensor};

/// The two terms, each a scalar tensor with a backward pass.
#[derive(Debug, Clone)]
pub struct LmLoss {
    pub cross_entropy: Tensor,
    /// `coef · mean (log Z)²`; zero when `coef == 0`.
    pub z_loss: Tensor,
}

/// `log Σ_j exp(z_j)` over the last dimension, stabilised by the (detached) row maximum.
pub fn logsumexp(logits: &Tensor) -> crate::Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach(); // [n, 1]
    let s = logits.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?; // [n, 1]
    (s.log()? + m)?.squeeze(D::Minus1) // [n]
}

pub fn lm_loss(logits: &Tensor, targets: &Tensor, z_coef: f64) -> crate::Result<LmLoss> {
    let (n, _v) = logits.dims2()?;
    if targets.dims() != [n] {
        candle_core::bail!(
            "lm_loss: expected {n} targets for {n} rows of logits, found shape {:?}",
            targets.dims()
        );
    }
    // Half-precision logits are widened; f32 and f64 keep their precision.
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits.clone(),
        _ => logits.to_dtype(DType::F32)?,
    };
    let lse = logsumexp(&logits)?; // [n]
    let picked = logits
        .gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?; // [n]
    let cross_entropy = (&lse - picked)?.mean_all()?;
    let z_loss = if z_coef == 0.0 {
        Tensor::zeros((), logits.dtype(), logits.device())?
    } else {
        (lse.sqr()?.mean_all()? * z_coef)?
    };
    Ok(LmLoss {
        cross_entropy,
        z_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use canon_testkit::{randn, to_vec};

    #[test]
    fn z_loss_of_zero_logits_over_four_classes_is_the_papers_number() {
        // PaLM acceptance: zero logits over V = 4 give 1e-4 · (ln 4)² = 1.921812e-4.
        let z = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::new(&[2u32], &Device::Cpu).unwrap();
        let l = lm_loss(&z, &t, 1e-4).unwrap();
        let zl = l.z_loss.to_scalar::<f32>().unwrap();
        assert!((zl - 1.921812e-4).abs() < 1e-9, "{zl}");
        let ce = l.cross_entropy.to_scalar::<f32>().unwrap();
        assert!((ce - 4f32.ln()).abs() < 1e-6, "{ce}");
    }

    #[test]
    fn matches_candle_cross_entropy_and_gradient_is_softmax_minus_onehot() {
        let logits = Var::from_tensor(&randn(&[5, 7], 3)).unwrap();
        let t = Tensor::new(&[0u32, 6, 3, 3, 1], &Device::Cpu).unwrap();
        let ours = lm_loss(logits.as_tensor(), &t, 0.0).unwrap();
        let reference = candle_nn::loss::cross_entropy(logits.as_tensor(), &t).unwrap();
        let a = ours.cross_entropy.to_scalar::<f32>().unwrap();
        let b = reference.to_scalar::<f32>().unwrap();
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        let g = ours.cross_entropy.backward().unwrap();
        let g = to_vec(g.get(logits.as_tensor()).unwrap());
        let p = to_vec(&candle_nn::ops::softmax(logits.as_tensor(), 1).unwrap());
        let tv = [0usize, 6, 3, 3, 1];
        for i in 0..5 {
            for j in 0..7 {
                let want = (p[i * 7 + j] - if tv[i] == j { 1.0 } else { 0.0 }) / 5.0;
                assert!((g[i * 7 + j] - want).abs() < 1e-6);
            }
        }
    }
}
