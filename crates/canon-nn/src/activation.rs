//! Activation functions, chosen by configuration.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with the error function (BERT in HF, MiniLM).
    Gelu,
    /// The tanh approximation of GELU (GPT-2, the original BERT code).
    GeluTanh,
    Relu,
    /// `x·σ(x)` (SwiGLU's gate).
    Silu,
}

impl Activation {
    /// Picks the kernel itself: exact GELU in inference (no gradient tracking, f32 on the CPU)
    /// takes the vectorised kernel [`crate::fused::gelu_erf`]; GELU (either form) in training on
    /// f32 CPU tensors the fused op with its own backward ([`crate::train_ops::gelu`]); everything
    /// else candle's element-wise ops, which record a backward pass.
    pub fn forward(self, x: &Tensor) -> crate::Result<Tensor> {
        let gelu = matches!(self, Activation::Gelu | Activation::GeluTanh);
        if self == Activation::Gelu
            && !x.track_op()
            && let Some(y) = crate::fused::gelu_erf(x)?
        {
            return Ok(y);
        }
        if gelu && x.track_op() && x.dtype() == DType::F32 && x.device().is_cpu() {
            return crate::train_ops::gelu(x, self == Activation::GeluTanh);
        }
        self.forward_composed(x)
    }

    /// The candle ops (record a backward pass).
    pub fn forward_composed(self, x: &Tensor) -> crate::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use canon_testkit::{Tol, assert_close, randn, to_vec};

    #[test]
    fn fused_gelu_equals_candle_gelu_erf() {
        let x = (randn(&[7, 1536], 3) * 4.0).unwrap();
        let fast = Activation::Gelu.forward(&x).unwrap();
        // A&S erf: |Δ| ≤ ½|x|·3e-7.
        assert_close(
            &fast,
            &Activation::Gelu.forward_composed(&x).unwrap(),
            Tol::new(3e-6, 1e-6),
        );
        // The tanh form is a different function: a mix-up would show.
        let tanh = to_vec(&Activation::GeluTanh.forward(&x).unwrap());
        let max = to_vec(&fast)
            .iter()
            .zip(&tanh)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max > 1e-4, "erf and tanh GELU differ by only {max}");
    }

    #[test]
    fn gelu_gradient_flows_when_the_input_tracks() {
        let x = Var::from_tensor(&randn(&[3, 5], 1)).unwrap();
        let y = Activation::Gelu.forward(x.as_tensor()).unwrap();
        assert!(y.track_op());
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = to_vec(grads.get(x.as_tensor()).expect("gradient"));
        // d/dx gelu(x) = Φ(x) + x φ(x) ∈ (−0.17, 1.13).
        assert!(g.iter().all(|v| *v > -0.2 && *v < 1.2) && g.iter().any(|v| *v != 0.0));
    }
}
