//! `x Wᵀ` for a ggml-quantized `W` as a candle op: the forward runs the block kernels; the backward
//! returns only the input gradient `∂L/∂x = ∂L/∂y · W`, with `W` dequantized on the fly (the frozen
//! base of QLoRA, paper 27, gets no gradient and no gradient memory).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::{GgmlTensor, QuantError, kernels};

struct QMatMul(Arc<GgmlTensor>);

impl CustomOp1 for QMatMul {
    fn name(&self) -> &'static str {
        "canon-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = self
            .0
            .as_matrix()
            .ok_or_else(|| candle_core::Error::Msg(format!("no kernel for {:?}", self.0.dtype)))?;
        let x = match storage {
            CpuStorage::F32(v) => v,
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "quantized matmul: expected f32 input, found {:?}",
                    other.dtype()
                )));
            }
        };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("quantized matmul: input must be contiguous".into())
        })?;
        let x = &x[start..end];
        let dims = layout.shape().dims();
        let k = dims.last().copied().unwrap_or(0);
        if k != w.cols {
            return Err(candle_core::Error::Msg(format!(
                "quantized matmul: input rows have {k} values, the weight {} columns",
                w.cols
            )));
        }
        let m = x.len() / k.max(1);
        let len = m * w.rows;
        let y = match self.0.packed() {
            Some(p) => {
                // The packed kernels write every output: no zero-fill of a new buffer first.
                let mut y: Vec<f32> = Vec::with_capacity(len);
                p.matmul_uninit(x, m, &mut y.spare_capacity_mut()[..len]);
                // SAFETY: `matmul_uninit` wrote all `len` values.
                unsafe { y.set_len(len) };
                y
            }
            None => {
                let mut y = vec![0.0f32; len];
                kernels::matmul(kernels::Isa::best(), w, x, m, &mut y);
                y
            }
        };
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = w.rows;
        }
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let w = self
            .0
            .dequantize()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?; // [n, k]
        let n = w.dim(0)?;
        let g2 = grad_res.reshape(((), n))?; // [m, n]
        Ok(Some(g2.matmul(&w)?.reshape(arg.shape())?)) // [m, k] → [..., k]
    }
}

impl GgmlTensor {
    /// `x Wᵀ` on the quantized kernels: `x: [..., k]` f32 → `[..., rows]`. Errors when the format
    /// has no kernel (`has_kernel`) or the shapes disagree.
    pub fn matmul(self: &Arc<Self>, x: &Tensor) -> Result<Tensor, QuantError> {
        let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
        Ok(x.apply_op1(QMatMul(self.clone()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GgmlType, kernels::scalar};
    use candle_core::{Device, Var};

    fn q8_matrix(n: usize, k: usize) -> Arc<GgmlTensor> {
        let vals: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 60.0)
            .collect();
        let mut bytes = Vec::new();
        scalar::quantize_row(kernels::Kind::Q8_0, &vals, &mut bytes);
        Arc::new(GgmlTensor::from_bytes(GgmlType::Q8_0, &[n, k], &bytes).unwrap())
    }

    #[test]
    fn forward_keeps_leading_dims_and_backward_gives_only_the_input_gradient() {
        let w = q8_matrix(5, 64);
        let xs: Vec<f32> = (0..2 * 3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Var::from_vec(xs, (2, 3, 64), &Device::Cpu).unwrap();
        let y = w.matmul(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[2, 3, 5]);
        // Against the dense product.
        let wd = w.dequantize().unwrap();
        let dense = x.as_tensor().broadcast_matmul(&wd.t().unwrap()).unwrap();
        let diff = (&y - &dense)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.05, "{diff}");
        // d(sum y)/dx = column sums of W for every row.
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let want = wd.sum(0).unwrap().to_vec1::<f32>().unwrap();
        let got = gx.reshape((6, 64)).unwrap().to_vec2::<f32>().unwrap();
        for row in got {
            for (a, b) in row.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn a_mismatched_input_is_an_error() {
        let w = q8_matrix(4, 32);
        let x = Tensor::zeros((2, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = w.matmul(&x).unwrap_err().to_string();
        assert!(e.contains("64") && e.contains("32"), "{e}");
    }
}
