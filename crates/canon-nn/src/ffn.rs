//! Position-wise feed-forward blocks.
//! - `Mlp`: `W₂ act(W₁ x + b₁) + b₂` (Transformer, GPT, BERT).
//! - `SwiGlu`: `W₂ (SiLU(W₁ x) ⊙ W₃ x)` (Shazeer, 2020; PaLM and LLaMA, papers 19 and 25).
//!
//! Shapes: `[..., d] → [..., d]`.

use candle_core::Tensor;

use crate::{Activation, Linear};

#[derive(Debug, Clone)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub act: Activation,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        // Training: the whole MLP as one op (one node in candle's backprop), or, when the second
        // linear has a bias or an adapter, the first product and GELU.
        if let Activation::Gelu | Activation::GeluTanh = self.act {
            let tanh = self.act == Activation::GeluTanh;
            if let Some(y) = self.fc1.forward_gelu_mlp(&self.fc2, x, tanh)? {
                return Ok(y);
            }
            if let Some(h) = self.fc1.forward_gelu(x, tanh)? {
                return self.fc2.forward(&h);
            }
        }
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
pub struct SwiGlu {
    /// W₁, the gated branch.
    pub gate: Linear,
    /// W₃, the linear branch.
    pub up: Linear,
    /// W₂
    pub down: Linear,
}

impl SwiGlu {
    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        // Repacked quantized weights: `x` rounded once for both products (one kernel job).
        let [g, u] = Linear::forward_shared([&self.gate, &self.up], x)?;
        // Training on f32 CPU tensors: SiLU and the product in one op with its own backward.
        let h = if (g.track_op() || u.track_op())
            && g.dtype() == candle_core::DType::F32
            && u.dtype() == candle_core::DType::F32
            && g.device().is_cpu()
            && g.dims() == u.dims()
        {
            crate::train_ops::silu_mul(&g, &u)?
        } else if let Some(h) = crate::fused::silu_mul(&g, &u)? {
            // Inference: one pass on the kernel pool.
            h
        } else {
            (g.silu()? * u)?
        };
        self.down.forward(&h)
    }
}
