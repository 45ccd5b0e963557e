//! Activation functions, chosen by configuration.

use candle_core::Tensor;
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
    pub fn forward(self, x: &Tensor) -> crate::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}
