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

/// `log Σ_j exp(z_j)` over the last dimension: f32 on the CPU through the fused kernel
/// [`crate::train_ops::logsumexp`] (one pass per row forward and backward), else the composed ops.
pub fn logsumexp(logits: &Tensor) -> crate::Result<Tensor> {
    if logits.dtype() == DType::F32 && logits.device().is_cpu() {
        return crate::train_ops::logsumexp(logits);
    }
    logsumexp_composed(logits)
}

/// `log Σ_j exp(z_j)` with composed candle ops, stabilised by the (detached) row maximum.
pub fn logsumexp_composed(logits: &Tensor) -> crate::Result<Tensor> {
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
    if z_coef == 0.0 && logits.dtype() == DType::F32 && logits.device().is_cpu() {
        // One op forward and backward, the same bits as the composed ops below.
        let t: Vec<u32> = targets.to_dtype(DType::U32)?.to_vec1()?;
        let cross_entropy = crate::train_ops::cross_entropy_rows(&logits, &t)?.mean_all()?;
        return Ok(LmLoss {
            cross_entropy,
            z_loss: Tensor::zeros((), logits.dtype(), logits.device())?,
        });
    }
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

/// Label of a row that is not predicted (padding, unmasked positions).
pub const IGNORE_INDEX: i64 = -100;

/// Cross-entropy over the rows whose label is not `IGNORE_INDEX`, averaged over those rows, with
/// label smoothing `eps` (the Transformer's ε_ls = 0.1): the target distribution is
/// `(1 − ε)·onehot(y) + ε/V`, so the loss per row is `(1 − ε)(log Z − z_y) + ε(log Z − mean_j z_j)`.
/// Returns the scalar loss and the number of predicted rows (the loss is 0 when there are none).
pub fn masked_cross_entropy(
    logits: &Tensor,
    labels: &[i64],
    eps: f64,
) -> crate::Result<(Tensor, usize)> {
    let (n, v) = logits.dims2()?;
    if labels.len() != n {
        candle_core::bail!(
            "masked_cross_entropy: expected {n} labels for {n} rows of logits, found {}",
            labels.len()
        );
    }
    if !(0.0..1.0).contains(&eps) {
        candle_core::bail!("label smoothing must be in [0, 1), found {eps}");
    }
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        if l == IGNORE_INDEX {
            continue;
        }
        if l < 0 || l as usize >= v {
            candle_core::bail!("label {l} at row {i} is outside the vocabulary of {v}");
        }
        rows.push(i as u32);
        targets.push(l as u32);
    }
    let dev = logits.device();
    if rows.is_empty() {
        return Ok((Tensor::zeros((), DType::F32, dev)?, 0));
    }
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits.clone(),
        _ => logits.to_dtype(DType::F32)?,
    };
    let k = rows.len();
    let sel = if k == n {
        logits
    } else {
        logits.index_select(&Tensor::from_vec(rows, k, dev)?, 0)?
    };
    let lse = logsumexp(&sel)?; // [k]
    let t = Tensor::from_vec(targets, (k, 1), dev)?;
    let picked = sel.gather(&t, 1)?.squeeze(1)?; // [k]
    let nll = (&lse - picked)?;
    let per_row = if eps == 0.0 {
        nll
    } else {
        let smooth = (&lse - sel.mean_keepdim(D::Minus1)?.squeeze(D::Minus1)?)?;
        ((nll * (1.0 - eps))? + (smooth * eps)?)?
    };
    Ok((per_row.mean_all()?, k))
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

    #[test]
    fn masked_cross_entropy_skips_ignored_rows_and_smooths_labels() {
        let logits = Tensor::new(
            &[[1.0f32, 2.0, 0.5], [0.0, 0.0, 0.0], [3.0, -1.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let ln = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
        let (l, k) = masked_cross_entropy(&logits, &[1, IGNORE_INDEX, 0], 0.0).unwrap();
        assert_eq!(k, 2);
        let want = ((ln([1.0, 2.0, 0.5]) - 2.0) + (ln([3.0, -1.0, 0.0]) - 3.0)) / 2.0;
        assert!((l.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
        // ε = 0.1 over V = 3: q = (0.9 + 0.1/3) on the label and 0.1/3 elsewhere.
        let (l, _) = masked_cross_entropy(&logits, &[1, IGNORE_INDEX, IGNORE_INDEX], 0.1).unwrap();
        let lz = ln([1.0, 2.0, 0.5]);
        let q = [0.1 / 3.0, 0.9 + 0.1 / 3.0, 0.1 / 3.0];
        let want: f64 = [1.0, 2.0, 0.5]
            .iter()
            .zip(q)
            .map(|(z, q)| -q * (z - lz))
            .sum();
        assert!((l.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
        // Nothing predicted: zero loss; out-of-range labels are refused.
        let (l, k) = masked_cross_entropy(&logits, &[IGNORE_INDEX; 3], 0.1).unwrap();
        assert_eq!((l.to_scalar::<f32>().unwrap(), k), (0.0, 0));
        assert!(masked_cross_entropy(&logits, &[0, 3, 0], 0.0).is_err());
        assert!(masked_cross_entropy(&logits, &[0, 1], 0.0).is_err());
    }
}
