//! `x Wᵀ` for an NF4 (paper 27) or LLM.int8() (paper 22) weight as a candle op. The forward runs the
//! format's kernel; the backward returns only the input gradient `∂L/∂x = ∂L/∂y · dequant(W)`, so a
//! frozen quantized base (QLoRA) gets no gradient and no gradient memory.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use crate::{Int8Tensor, Isa, Nf4Tensor, QuantError};

/// A weight format with a product kernel.
trait Kernel: Send + Sync {
    const NAME: &'static str;
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), QuantError>;
    fn dense(&self) -> Vec<f32>;
}

impl Kernel for Nf4Tensor {
    const NAME: &'static str = "canon-nf4-matmul";
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), QuantError> {
        self.matmul(Isa::best(), x, m, y)
    }
    fn dense(&self) -> Vec<f32> {
        self.dequantize()
    }
}

impl Kernel for Int8Tensor {
    const NAME: &'static str = "canon-int8-matmul";
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), QuantError> {
        self.matmul(Isa::best(), x, m, y).map(|_| ())
    }
    fn dense(&self) -> Vec<f32> {
        match &self.dense {
            Some(d) => d.clone(),
            None => self.dequantize(),
        }
    }
}

struct Op<K>(Arc<K>);

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl<K: Kernel> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = match storage {
            CpuStorage::F32(v) => v,
            other => {
                return Err(msg(format!(
                    "{}: expected f32 input, found {:?}",
                    K::NAME,
                    other.dtype()
                )));
            }
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| msg(format!("{}: input must be contiguous", K::NAME)))?;
        let x = &x[start..end];
        let dims = layout.shape().dims();
        let k = dims.last().copied().unwrap_or(0);
        if k != self.0.cols() {
            return Err(msg(format!(
                "{}: input rows have {k} values, the weight {} columns",
                K::NAME,
                self.0.cols()
            )));
        }
        let m = x.len() / k.max(1);
        let mut y = vec![0.0f32; m * self.0.rows()];
        self.0.forward(x, m, &mut y).map_err(msg)?;
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = self.0.rows();
        }
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, k) = (self.0.rows(), self.0.cols());
        let w = Tensor::from_vec(self.0.dense(), (n, k), &Device::Cpu)?; // [n, k]
        let g2 = grad_res.reshape(((), n))?; // [m, n]
        Ok(Some(g2.matmul(&w)?.reshape(arg.shape())?)) // [m, k] → [..., k]
    }
}

fn apply<K: Kernel + 'static>(w: &Arc<K>, x: &Tensor) -> Result<Tensor, QuantError> {
    let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
    Ok(x.apply_op1(Op(w.clone()))?)
}

/// Rows `ids` of a `[rows, cols]` matrix through `row(r, out)`: `[ids.len(), cols]`.
fn gather_rows(
    rows: usize,
    cols: usize,
    ids: &[u32],
    row: &dyn Fn(usize, &mut [f32]),
) -> Result<Tensor, QuantError> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
        return Err(QuantError::Index { index: bad, rows });
    }
    let mut out = vec![0.0f32; ids.len() * cols];
    for (&i, o) in ids.iter().zip(out.chunks_mut(cols.max(1))) {
        row(i as usize, o);
    }
    Ok(Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?)
}

impl Nf4Tensor {
    /// Rows `ids`, dequantized (an embedding lookup): `[ids.len(), cols]`.
    pub fn dequantize_rows(&self, ids: &[u32]) -> Result<Tensor, QuantError> {
        let isa = Isa::best();
        gather_rows(self.rows, self.cols, ids, &|r, o| {
            self.dequantize_row(isa, r, o)
        })
    }

    /// `x Wᵀ` on the NF4 kernel: `x: [..., cols]` → `[..., rows]`; backward gives only `∂L/∂x`.
    pub fn forward(self: &Arc<Self>, x: &Tensor) -> Result<Tensor, QuantError> {
        apply(self, x)
    }

    /// The dequantized weight `[rows, cols]`.
    pub fn to_tensor(&self) -> Result<Tensor, QuantError> {
        Ok(Tensor::from_vec(
            self.dequantize(),
            (self.rows, self.cols),
            &Device::Cpu,
        )?)
    }
}

impl Int8Tensor {
    /// Rows `ids`, dequantized (`W8 · c_w / 127`): `[ids.len(), cols]`.
    pub fn dequantize_rows(&self, ids: &[u32]) -> Result<Tensor, QuantError> {
        let (k, q) = (self.cols, self.q8());
        gather_rows(self.rows, k, ids, &|r, o| {
            let s = self.scale[r] / 127.0;
            for (v, &w) in o.iter_mut().zip(&q[r * k..(r + 1) * k]) {
                *v = w as f32 * s;
            }
        })
    }

    /// `x Wᵀ` with LLM.int8(): `x: [..., cols]` → `[..., rows]`; backward gives only `∂L/∂x`.
    pub fn forward(self: &Arc<Self>, x: &Tensor) -> Result<Tensor, QuantError> {
        apply(self, x)
    }

    /// The dequantized weight `[rows, cols]` (`W8 · c_w / 127`).
    pub fn to_tensor(&self) -> Result<Tensor, QuantError> {
        Ok(Tensor::from_vec(
            self.dequantize(),
            (self.rows, self.cols),
            &Device::Cpu,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nf4::tests::normals;
    use candle_core::Var;

    fn check<F>(forward: F, wd: &Tensor, tol: f32)
    where
        F: Fn(&Tensor) -> Tensor,
    {
        let x = Var::from_vec(normals(2 * 3 * 128, 1, 1.0), (2, 3, 128), &Device::Cpu).unwrap();
        let y = forward(x.as_tensor());
        assert_eq!(y.dims(), &[2, 3, 24]);
        let dense = x.as_tensor().broadcast_matmul(&wd.t().unwrap()).unwrap();
        let diff = (&y - &dense).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < tol);
        // d(sum y)/dx = column sums of the dequantized W for every row.
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let want = wd.sum(0).unwrap().to_vec1::<f32>().unwrap();
        for row in gx.reshape((6, 128)).unwrap().to_vec2::<f32>().unwrap() {
            for (a, b) in row.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn nf4_op_matches_dense_and_returns_the_input_gradient() {
        let w = normals(24 * 128, 2, 0.05);
        let q = Arc::new(Nf4Tensor::quantize(&w, 24, 128, true).unwrap());
        let wd = q.to_tensor().unwrap();
        check(|x| q.forward(x).unwrap(), &wd, 1e-4);
    }

    #[test]
    fn int8_op_matches_dense_and_returns_the_input_gradient() {
        let w = normals(24 * 128, 3, 0.05);
        let q = Arc::new(Int8Tensor::quantize(&w, 24, 128, 6.0, false).unwrap());
        let wd = q.to_tensor().unwrap();
        // Activations are rounded to 8 bits as well: a looser bound than NF4's exact product.
        check(|x| q.forward(x).unwrap(), &wd, 0.05);
    }
}
