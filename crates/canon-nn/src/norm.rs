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
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // [..., 1]
        let y = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        y.broadcast_mul(&self.weight)?.to_dtype(dtype)
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

    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
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
