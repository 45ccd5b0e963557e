//! `Linear`: `y = x Wᵀ + b (+ LoRA)`. It owns the weight's storage format (`Weight`) and the adapter
//! slot, so LoRA (paper 13), LLM.int8() (paper 22) and NF4/QLoRA (paper 27) plug in here and nowhere
//! else.
//!
//! Shapes: weight `[out, in]`, input `[..., in]`, output `[..., out]`.

mod frozen;
mod lora;
#[cfg(test)]
mod tests;
mod train;

use std::sync::Arc;

use candle_core::{D, DType, Tensor};
use canon_quant::{GgmlTensor, Int8Tensor, Nf4Tensor};

use frozen::{frozen_matmul_t, frozen_quant_matmul_t};
pub use lora::Lora;
use lora::lora_matmul;
use train::{TrainMatmulT, TrainMatmulTGelu, TrainMlpGelu};

/// How a weight matrix is stored.
#[derive(Debug, Clone)]
pub enum Weight {
    /// A plain float tensor `[out, in]`.
    Dense(Tensor),
    /// ggml blocks as read from a GGUF file. Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 multiply on canon-quant's
    /// block kernels (activations rounded to 8 bits per block, as llama.cpp does); other formats
    /// are dequantized for each product.
    Ggml(Arc<GgmlTensor>),
    /// LLM.int8() (paper 22): vector-wise int8 with outlier features in floating point.
    Int8(Arc<Int8Tensor>),
    /// NF4 with double-quantized block constants (paper 27), dequantized block by block.
    Nf4(Arc<Nf4Tensor>),
}

impl Weight {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Ggml(q) => q.shape.clone(),
            Weight::Int8(q) => q.shape(),
            Weight::Nf4(q) => q.shape(),
        }
    }

    /// The weight as a float tensor `[out, in]`.
    pub fn to_dense(&self) -> crate::Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Ggml(q) => q.dequantize().map_err(quant_err),
            Weight::Int8(q) => q.to_tensor().map_err(quant_err),
            Weight::Nf4(q) => q.to_tensor().map_err(quant_err),
        }
    }

    /// `x Wᵀ` for `x: [n, in]`.
    ///
    /// A frozen dense weight (a plain tensor, not a variable) under a tracked input goes through
    /// `FrozenMatmulT`, whose backward computes only `∂L/∂x`: candle's own matmul backward would
    /// also compute and accumulate `∂L/∂W` (a full `[out, in]` product per layer and step) for a
    /// weight nobody updates.
    pub fn matmul_t(&self, x2: &Tensor) -> crate::Result<Tensor> {
        match self {
            Weight::Dense(w)
                if x2.track_op()
                    && !w.track_op()
                    && w.dtype() == DType::F32
                    && x2.dtype() == DType::F32 =>
            {
                frozen_matmul_t(w, x2)
            }
            Weight::Dense(w)
                if w.track_op()
                    && w.dtype() == DType::F32
                    && x2.dtype() == DType::F32
                    && w.device().is_cpu()
                    && x2.device().is_cpu() =>
            {
                x2.contiguous()?.apply_op2(&w.contiguous()?, TrainMatmulT)
            }
            Weight::Dense(w) => x2.matmul(&w.t()?),
            Weight::Ggml(q) if q.has_kernel() && x2.track_op() && x2.dtype() == DType::F32 => {
                frozen_quant_matmul_t(self, x2)
            }
            Weight::Ggml(q) if q.has_kernel() => q.matmul(x2).map_err(quant_err),
            Weight::Ggml(q) => {
                let w = q.dequantize().map_err(quant_err)?;
                if x2.track_op() && w.dtype() == DType::F32 && x2.dtype() == DType::F32 {
                    frozen_matmul_t(&w, x2)
                } else {
                    x2.matmul(&w.t()?)
                }
            }
            Weight::Int8(q) => q.forward(x2).map_err(quant_err),
            Weight::Nf4(q) => q.forward(x2).map_err(quant_err),
        }
    }

    /// Rows `ids` of the matrix as floats, `[ids.len(), in]`: an embedding lookup in any format.
    pub fn rows(&self, ids: &Tensor) -> crate::Result<Tensor> {
        match self {
            Weight::Dense(w) => w.index_select(&ids.flatten_all()?, 0),
            Weight::Ggml(q) => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                q.dequantize_rows(&ids).map_err(quant_err)
            }
            Weight::Int8(q) => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                q.dequantize_rows(&ids).map_err(quant_err)
            }
            Weight::Nf4(q) => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                q.dequantize_rows(&ids).map_err(quant_err)
            }
        }
    }
}

/// The contiguous f32 data of a tensor, or an error naming `what`.
fn f32_data<'a>(t: &'a Tensor, what: &str) -> candle_core::Result<crate::fused::F32Data<'a>> {
    crate::fused::F32Data::new(t)
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected contiguous f32 tensors")))
}

fn quant_err(e: canon_quant::QuantError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    /// Attaches an adapter after checking `A: [r, in]`, `B: [out, r]`, `r > 0` (errors name the
    /// expected and found shapes).
    pub fn set_lora(&mut self, lora: Lora) -> crate::Result<()> {
        let (out, inp) = (self.out_features(), self.in_features());
        let (ra, ia) = lora.a.dims2()?;
        let (ob, rb) = lora.b.dims2()?;
        if ra == 0 || ra != rb || ia != inp || ob != out {
            candle_core::bail!(
                "LoRA: expected A [r, {inp}] and B [{out}, r] with r > 0, found A {:?} and B {:?}",
                lora.a.dims(),
                lora.b.dims()
            );
        }
        self.lora = Some(lora);
        Ok(())
    }

    /// The same layer with its adapter folded in: `W' = W + (α/r)·B A` as a dense f32 weight
    /// (paper 13, §4.1: no extra inference latency). Without an adapter, a clone.
    pub fn merged(&self) -> crate::Result<Linear> {
        let Some(l) = &self.lora else {
            return Ok(self.clone());
        };
        let w = (self.weight.to_dense()?.to_dtype(candle_core::DType::F32)? + l.delta_weight()?)?;
        Ok(Linear::new(Weight::Dense(w), self.bias.clone()))
    }

    /// Whether each row of `forward`'s output has the same bits however many rows the input
    /// has: quantized weights repacked for the tile or panel kernels (each activation row is
    /// rounded and accumulated on its own), without an adapter. Dense weights go through a GEMM
    /// whose blocking, hence rounding, can depend on the number of rows.
    pub fn rows_independent(&self) -> bool {
        self.lora.is_none() && matches!(&self.weight, Weight::Ggml(q) if q.packed().is_some())
    }

    /// `forward` of several layers of one input width on the same `x: [..., in]` (a block's query,
    /// key and value projections; a feed-forward's gate and up): where every layer is
    /// [`Linear::rows_independent`] and `x` records no backward pass, `x` is rounded once and one
    /// kernel job runs all the products (the bits of each layer's own `forward`); otherwise each
    /// layer's `forward` in turn.
    pub fn forward_shared<const N: usize>(
        layers: [&Linear; N],
        x: &Tensor,
    ) -> crate::Result<[Tensor; N]> {
        Self::forward_shared_vec(&layers, x)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("linear: one output per layer expected".into()))
    }

    fn forward_shared_vec(layers: &[&Linear], x: &Tensor) -> crate::Result<Vec<Tensor>> {
        let packed: Option<Vec<&canon_quant::kernels::tile::packed::Packed>> = layers
            .iter()
            .map(|l| match (&l.weight, &l.lora) {
                (Weight::Ggml(q), None) => q.packed(),
                _ => None,
            })
            .collect();
        let fits = x.rank() >= 2
            && x.dtype() == DType::F32
            && x.device().is_cpu()
            && !x.track_op()
            && layers.len() > 1;
        let (Some(ws), true) = (packed, fits) else {
            return layers.iter().map(|l| l.forward(x)).collect();
        };
        let dims = x.dims().to_vec();
        let k = dims[dims.len() - 1];
        let n = x.elem_count() / k.max(1);
        if ws.iter().any(|w| w.cols != k) {
            return layers.iter().map(|l| l.forward(x)).collect();
        }
        let x = x.contiguous()?;
        let data = f32_data(&x, "linear")?;
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(n * w.rows)).collect();
        {
            let mut ys: Vec<&mut [std::mem::MaybeUninit<f32>]> = outs
                .iter_mut()
                .zip(&ws)
                .map(|(o, w)| &mut o.spare_capacity_mut()[..n * w.rows])
                .collect();
            canon_quant::kernels::tile::packed::matmul_shared_uninit(&ws, &data, n, &mut ys);
        }
        outs.into_iter()
            .zip(ws.iter().zip(layers))
            .map(|(mut o, (w, l))| {
                // SAFETY: `matmul_shared_uninit` wrote all n·rows values of each output.
                unsafe { o.set_len(n * w.rows) };
                let mut shape = dims.clone();
                shape[dims.len() - 1] = w.rows;
                let y = Tensor::from_vec(o, shape, x.device())?;
                match &l.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            })
            .collect()
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape().last().copied().unwrap_or(0)
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape().first().copied().unwrap_or(0)
    }

    /// A trainable dense f32 weight on the CPU without bias or adapter.
    fn plain_trainable(&self) -> Option<&Tensor> {
        match (&self.weight, &self.lora, &self.bias) {
            (Weight::Dense(w), None, None)
                if w.track_op() && w.dtype() == DType::F32 && w.device().is_cpu() =>
            {
                Some(w)
            }
            _ => None,
        }
    }

    /// The GELU MLP `GELU(x W₁ᵀ) W₂ᵀ` of `self` then `second` as one op with its own backward
    /// when it can be (training: both weights trainable dense f32 on the CPU, no biases or
    /// adapters; `x: [..., in]` f32 with at least two dimensions); `None` otherwise.
    pub fn forward_gelu_mlp(
        &self,
        second: &Linear,
        x: &Tensor,
        tanh: bool,
    ) -> crate::Result<Option<Tensor>> {
        let (Some(w1), Some(w2)) = (self.plain_trainable(), second.plain_trainable()) else {
            return Ok(None);
        };
        if x.dtype() != DType::F32 || !x.device().is_cpu() || x.rank() < 2 {
            return Ok(None);
        }
        let op = TrainMlpGelu {
            tanh,
            saved: std::sync::Mutex::new(None),
        };
        Ok(Some(x.contiguous()?.apply_op3(
            &w1.contiguous()?,
            &w2.contiguous()?,
            op,
        )?))
    }

    /// `GELU(x Wᵀ)` as one op with its own backward when it can be (training: a trainable dense
    /// f32 weight on the CPU, no bias, no adapter; `x: [..., in]` with at least two dimensions);
    /// `None` otherwise (take `forward` and the activation).
    pub fn forward_gelu(&self, x: &Tensor, tanh: bool) -> crate::Result<Option<Tensor>> {
        let Weight::Dense(w) = &self.weight else {
            return Ok(None);
        };
        let fits = self.lora.is_none()
            && self.bias.is_none()
            && w.track_op()
            && w.dtype() == DType::F32
            && x.dtype() == DType::F32
            && w.device().is_cpu()
            && x.device().is_cpu()
            && x.rank() > 1;
        if !fits {
            return Ok(None);
        }
        let op = TrainMatmulTGelu {
            tanh,
            z: std::sync::Mutex::new(None),
        };
        Ok(Some(x.contiguous()?.apply_op2(&w.contiguous()?, op)?))
    }

    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("linear: scalar input".into()))?;
        // A trainable dense weight without an adapter reads `[..., in]` as it is: the reshapes to
        // and from `[n, in]` would be two more graph nodes, each with a gradient to allocate and
        // add in candle's backprop.
        if let (Weight::Dense(w), None) = (&self.weight, &self.lora)
            && w.track_op()
            && w.dtype() == DType::F32
            && x.dtype() == DType::F32
            && w.device().is_cpu()
            && x.device().is_cpu()
            && dims.len() > 1
        {
            let y = x.contiguous()?.apply_op2(&w.contiguous()?, TrainMatmulT)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            };
        }
        let n = x.elem_count() / in_f.max(1);
        // [..., in] -> [n, in]
        let x2 = x.reshape((n, in_f))?;
        let mut y = match (&self.weight, &self.lora) {
            (w, Some(l)) if l.fusable(w, &x2) => lora_matmul(w, l, &x2)?,
            (_, lora) => {
                let y = self.weight.matmul_t(&x2)?; // [n, out]
                match lora {
                    Some(l) => (y + l.delta(&x2)?)?,
                    None => y,
                }
            }
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap_or(&mut 0) = y.dim(D::Minus1)?;
        y.reshape(out_dims)
    }
}
