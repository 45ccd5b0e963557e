//! Normalisation layers.
//! - `LayerNorm` (Ba et al., 2016): `y = (x − mean) / sqrt(var + eps) · γ + β` over the last dimension,
//!   biased variance; post-LN in the Transformer, BERT and GPT-1, pre-LN in GPT-2.
//! - `RmsNorm` (Zhang & Sennrich, 2019; LLaMA, paper 25): `y = x / sqrt(mean(x²) + eps) · g`, no mean
//!   subtraction and no bias.
//!
//! Shapes: input `[..., d]`, parameters `[d]`.

use candle_core::{D, DType, Tensor};

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        // Inference (nothing tracks gradients) on f32 CPU tensors: one pass per row.
        if crate::fused::no_grad(&[x, &self.weight])
            && let (Some(xs), Some(w)) = (
                crate::fused::F32Data::new(x),
                crate::fused::F32Data::new(&self.weight),
            )
            && !w.is_empty()
            && xs.len() % w.len() == 0
        {
            let (d, eps) = (w.len(), self.eps as f32);
            // Rows in parallel (a prompt's rows), each task about 32 KiB of them.
            let rows = crate::fused::par_rows(d);
            let (xs, w): (&[f32], &[f32]) = (&xs, &w);
            let out = canon_quant::pool::par_vec_f32(xs.len(), rows * d, &|c, out| {
                let xs = &xs[c * rows * d..][..out.len()];
                crate::fused::rms_rows(xs, out, d, w, eps);
            });
            return Tensor::from_vec(out, x.shape(), x.device());
        }
        // Training on f32 CPU tensors: the fused kernel with its own backward.
        if x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && x.device().is_cpu()
            && self.weight.device().is_cpu()
        {
            return crate::train_ops::rms_norm(x, &self.weight, self.eps);
        }
        self.forward_composed(x)
    }

    /// The composed formula (records a backward pass).
    pub fn forward_composed(&self, x: &Tensor) -> crate::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // [..., 1]
        let y = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        y.broadcast_mul(&self.weight)?.to_dtype(dtype)
    }
}

/// One row of the inference RMS norm, `y = x / √(mean(x²) + ε) · g`, in the order the composed
/// formula rounds (a sequential sum of squares).
pub fn rms_row(x: &[f32], y: &mut [f32], g: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let denom = (ms + eps).sqrt();
    for ((y, v), g) in y.iter_mut().zip(x).zip(g) {
        *y = v / denom * g;
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Option<Tensor>, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// Picks the kernel itself: inference (nothing tracks gradients) on f32 CPU tensors takes one
    /// fused pass ([`crate::fused::layer_norm`]); training on f32 CPU tensors the fused op with its
    /// own backward ([`crate::train_ops::layer_norm`]); anything else composed ops that record a
    /// backward pass.
    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        if crate::fused::no_grad(&[x, &self.weight])
            && self.bias.as_ref().is_none_or(|b| !b.track_op())
            && let Some(y) =
                crate::fused::layer_norm(x, &self.weight, self.bias.as_ref(), self.eps)?
        {
            return Ok(y);
        }
        let cpu_f32 = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        if cpu_f32(x) && cpu_f32(&self.weight) && self.bias.as_ref().is_none_or(cpu_f32) {
            return crate::train_ops::layer_norm(x, &self.weight, self.bias.as_ref(), self.eps);
        }
        self.forward_composed(x)
    }

    /// The composed formula (records a backward pass).
    pub fn forward_composed(&self, x: &Tensor) -> crate::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let y = y.broadcast_mul(&self.weight)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.to_dtype(dtype)
    }
}

/// The normalisation a configuration picks: layer norm or RMS norm, each choosing its own kernel.
#[derive(Debug, Clone)]
pub enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use canon_testkit::{Tol, assert_close, randn, to_vec};

    #[test]
    fn rms_and_layer_norm_agree_on_zero_mean_input_and_differ_on_shifted() {
        let d = 16;
        let x = randn(&[3, d], 7);
        let x0 = x
            .broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let ones = Tensor::ones(d, DType::F32, &Device::Cpu).unwrap();
        let rms = RmsNorm::new(ones.clone(), 1e-5);
        let ln = LayerNorm::new(ones, None, 1e-5);
        assert_close(
            &rms.forward(&x0).unwrap(),
            &ln.forward(&x0).unwrap(),
            Tol::F32,
        );
        let shifted = (x0 + 3.0).unwrap();
        let a = to_vec(&rms.forward(&shifted).unwrap());
        let b = to_vec(&ln.forward(&shifted).unwrap());
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff > 0.1,
            "RMSNorm must not subtract the mean (max diff {diff})"
        );
    }

    #[test]
    fn matches_candle_fused_kernels() {
        let x = randn(&[2, 5, 32], 1);
        let g = randn(&[32], 2);
        let b = randn(&[32], 3);
        let ours = RmsNorm::new(g.clone(), 1e-5).forward(&x).unwrap();
        let fused = candle_nn::ops::rms_norm(&x, &g, 1e-5).unwrap();
        assert_close(&ours, &fused, Tol::F32);
        let ours = LayerNorm::new(g.clone(), Some(b.clone()), 1e-12)
            .forward(&x)
            .unwrap();
        let fused = candle_nn::ops::layer_norm(&x, &g, &b, 1e-12).unwrap();
        assert_close(&ours, &fused, Tol::F32);
    }

    #[test]
    fn fused_inference_path_equals_the_composed_path() {
        let x = (randn(&[3, 4, 384], 11) * 2.0).unwrap();
        let g = randn(&[384], 12);
        let b = randn(&[384], 13);
        for bias in [Some(b), None] {
            let ln = LayerNorm::new(g.clone(), bias, 1e-12);
            let fast = ln.forward(&x).unwrap();
            assert!(!fast.track_op());
            assert_close(&fast, &ln.forward_composed(&x).unwrap(), Tol::F32);
        }
        // A non-contiguous input goes through the same kernel.
        let xt = randn(&[384, 5], 14).t().unwrap();
        let ln = LayerNorm::new(g, None, 1e-5);
        assert_close(
            &ln.forward(&xt).unwrap(),
            &ln.forward_composed(&xt).unwrap(),
            Tol::F32,
        );
    }

    #[test]
    fn gradients_flow_through_forward_when_only_the_input_tracks() {
        // Frozen parameters, trainable input: forward must still take the composed path.
        let x = Var::from_tensor(&randn(&[2, 8], 1)).unwrap();
        let ln = LayerNorm::new(randn(&[8], 2), Some(randn(&[8], 3)), 1e-5);
        let loss = ln
            .forward(&(x.as_tensor() * 1.5).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let gr = grads.get(x.as_tensor()).expect("gradient of the input");
        assert!(to_vec(gr).iter().any(|v| v.abs() > 0.0));
    }

    #[test]
    fn gradients_reach_input_and_parameters() {
        let x = Var::from_tensor(&randn(&[2, 8], 1)).unwrap();
        let g = Var::from_tensor(&randn(&[8], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[8], 3)).unwrap();
        let y = LayerNorm::new(g.as_tensor().clone(), Some(b.as_tensor().clone()), 1e-5)
            .forward(x.as_tensor())
            .unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for v in [&x, &g, &b] {
            let gr = grads.get(v.as_tensor()).expect("gradient");
            assert!(to_vec(gr).iter().any(|v| v.abs() > 0.0));
        }
    }
}
