//! Products over a frozen weight whose backward is the input gradient only: a dense f32 weight
//! ([`FrozenMatmulT`]), a ggml-quantized one ([`FrozenQuantMatmulT`]), and the row-tiled input
//! gradient `g W` of any quantized weight ([`quant_input_grad`]) that LoRA's fused op shares.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{Weight, f32_data, quant_err};

/// `x Wᵀ` for a frozen dense `W: [out, in]` as a candle op whose backward is the input gradient
/// only, `∂L/∂x = ∂L/∂y · W`: a LoRA base costs one product in the backward, not two, and never
/// materialises a weight gradient.
struct FrozenMatmulT {
    /// `[out, in]`, contiguous f32.
    w: Tensor,
}

pub(super) fn frozen_matmul_t(w: &Tensor, x2: &Tensor) -> crate::Result<Tensor> {
    let w = w.contiguous()?;
    x2.contiguous()?.apply_op1(FrozenMatmulT { w })
}

impl CustomOp1 for FrozenMatmulT {
    fn name(&self) -> &'static str {
        "canon-frozen-matmul-t"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(xs) = storage else {
            candle_core::bail!("frozen matmul: expected an f32 input");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen matmul: the input must be contiguous");
        };
        let (n, k) = layout.shape().dims2()?;
        let (out, in_f) = self.w.dims2()?;
        if k != in_f {
            candle_core::bail!(
                "frozen matmul: input rows have {k} values, the weight {in_f} columns"
            );
        }
        let _t = crate::profile::scope(crate::profile::Phase::FrozenForward);
        // An untracked view of the input: this product records nothing.
        let x = Tensor::from_slice(&xs[start..end], (n, k), &Device::Cpu)?;
        let y = x.matmul(&self.w.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::FrozenInputGrad);
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// `x Wᵀ` for a frozen ggml-quantized `W: [out, in]` (the output head over a GGUF table): the
/// forward runs the quantized kernels (as inference does), the backward only `∂L/∂x = g W`, from
/// `BASE_TILE` rows of `W` dequantized at a time into a reused buffer, split over the threads
/// ([`quant_input_grad`]): no f32 copy of the whole table is made per step.
struct FrozenQuantMatmulT {
    w: Weight,
}

pub(super) fn frozen_quant_matmul_t(w: &Weight, x2: &Tensor) -> crate::Result<Tensor> {
    x2.contiguous()?
        .apply_op1(FrozenQuantMatmulT { w: w.clone() })
}

impl CustomOp1 for FrozenQuantMatmulT {
    fn name(&self) -> &'static str {
        "canon-frozen-quant-matmul-t"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::FrozenForward);
        let x = crate::train_ops::slice(storage, layout, self.name())?;
        let (n, k) = layout.shape().dims2()?;
        let Weight::Ggml(q) = &self.w else {
            candle_core::bail!("frozen quantized matmul: expected ggml blocks");
        };
        let xt = Tensor::from_slice(x, (n, k), &Device::Cpu)?;
        let y = q.matmul(&xt).map_err(quant_err)?.to_dtype(DType::F32)?;
        let out = y.dim(1)?;
        Ok((
            CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?),
            Shape::from((n, out)),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::FrozenInputGrad);
        let (n, in_f) = x.dims2()?;
        let g = g.contiguous()?;
        let out = g.dim(1)?;
        let gd = f32_data(&g, self.name())?;
        let mut dx = crate::train_ops::zeros(n * in_f);
        quant_input_grad(&self.w, &gd, n, out, in_f, &mut dx, crate::train_ops::par())?;
        Ok(Some(Tensor::from_vec(dx, (n, in_f), x.device())?))
    }
}

thread_local! {
    /// The dequantized tile of [`quant_input_grad`], kept between calls (a fresh buffer per tile
    /// would fault its pages in again each time).
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows `r0..r0 + buf.len() / in_f` of a quantized weight dequantized into `buf`, split over
/// rayon's threads: ggml blocks from the packed copy where it has them (the same bits as the
/// file's blocks), NF4 by its row kernel, other formats through `Weight::rows`.
fn dequantize_tile(w: &Weight, r0: usize, in_f: usize, buf: &mut [f32]) -> candle_core::Result<()> {
    use rayon::prelude::*;
    match w {
        Weight::Ggml(q) if q.has_kernel() => {
            let packed = q.packed();
            let Some(m) = q.as_matrix() else {
                candle_core::bail!("quantized input gradient: no row kernel for {:?}", q.dtype);
            };
            // 16-row chunks: the packed copy dequantizes whole panels at once (panel-aligned
            // when `r0` is a multiple of 16, as every tile start is).
            const CHUNK: usize = 16;
            let chunk = |(c, rows): (usize, &mut [f32])| {
                let first = r0 + c * CHUNK;
                if !packed.is_some_and(|p| p.dequantize_rows(first, rows)) {
                    for (i, row) in rows.chunks_mut(in_f).enumerate() {
                        canon_quant::kernels::dequantize_row(m, first + i, row);
                    }
                }
            };
            // One thread: on the caller (a hand-off to rayon's worker per tile costs a wake-up).
            if rayon::current_num_threads() > 1 {
                buf.par_chunks_mut(CHUNK * in_f).enumerate().for_each(chunk);
            } else {
                buf.chunks_mut(CHUNK * in_f).enumerate().for_each(chunk);
            }
        }
        Weight::Nf4(q) => {
            let isa = canon_quant::Isa::best();
            let row = |(i, row): (usize, &mut [f32])| q.dequantize_row(isa, r0 + i, row);
            if rayon::current_num_threads() > 1 {
                buf.par_chunks_mut(in_f).enumerate().for_each(row);
            } else {
                buf.chunks_mut(in_f).enumerate().for_each(row);
            }
        }
        other => {
            let rows = buf.len() / in_f.max(1);
            let ids: Vec<u32> = (r0 as u32..(r0 + rows) as u32).collect();
            let t = other.rows(&Tensor::new(ids.as_slice(), &Device::Cpu)?)?;
            let t = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if t.len() != buf.len() {
                candle_core::bail!(
                    "quantized input gradient: expected {} dequantized values, found {}",
                    buf.len(),
                    t.len()
                );
            }
            buf.copy_from_slice(&t);
        }
    }
    Ok(())
}

/// Calls `f(o0, o1, tile)` for each tile of `BASE_TILE` rows `o0..o1` of a quantized
/// `W: [out, in_f]`, dequantized alone ([`dequantize_tile`]) into a per-thread buffer reused
/// across calls: no f32 copy of the whole weight is ever held.
fn for_each_tile(
    w: &Weight,
    out: usize,
    in_f: usize,
    mut f: impl FnMut(usize, usize, &[f32]),
) -> candle_core::Result<()> {
    TILE.with(|cell| {
        let mut own = Vec::new();
        let mut guard = cell.try_borrow_mut();
        let buf: &mut Vec<f32> = match guard.as_mut() {
            Ok(b) => b,
            Err(_) => &mut own,
        };
        for o0 in (0..out).step_by(BASE_TILE) {
            let o1 = (o0 + BASE_TILE).min(out);
            let len = (o1 - o0) * in_f;
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            let deq = crate::profile::scope(crate::profile::Phase::Dequantize);
            dequantize_tile(w, o0, in_f, &mut buf[..len])?;
            drop(deq);
            f(o0, o1, &buf[..len]);
        }
        Ok(())
    })
}

/// `dx = g W` for a quantized `W: [out, in]` and `g: [n, out]`, as the sum over row tiles of
/// `g[:, tile] W[tile, :]` ([`for_each_tile`]).
pub(super) fn quant_input_grad(
    w: &Weight,
    g: &[f32],
    n: usize,
    out: usize,
    in_f: usize,
    dx: &mut [f32],
    par: gemm::Parallelism,
) -> candle_core::Result<()> {
    for_each_tile(w, out, in_f, |o0, o1, tile| {
        bwd_mm(
            (n, in_f, o1 - o0),
            dx,
            in_f,
            o0 > 0,
            (&g[o0..], out, 1),
            (tile, in_f, 1),
            1.0,
            par,
        );
    })
}

/// `y = x Wᵀ` (`x: [n, in_f]`, `y: [n, out]`) for a quantized `W`, tile by tile as the input
/// gradient takes it ([`for_each_tile`]), on the training product (`train_ops::mm`): with bf16
/// products on (`set_bf16_products`), the tiles and `x` are rounded to bfloat16 there and
/// accumulated in f32, QLoRA's own arithmetic (NF4 storage, bf16 compute), instead of the
/// weight's own f32 product.
pub(super) fn quant_forward_tiled(
    w: &Weight,
    x: &[f32],
    n: usize,
    out: usize,
    in_f: usize,
    y: &mut [f32],
    par: gemm::Parallelism,
) -> candle_core::Result<()> {
    for_each_tile(w, out, in_f, |o0, o1, tile| {
        crate::train_ops::mm(
            (n, o1 - o0, in_f),
            &mut y[o0..],
            out,
            false,
            (x, in_f, 1),
            (tile, 1, in_f),
            1.0,
            par,
        );
    })
}

/// `crate::train_ops::mm` for the backward products of this module and of LoRA's op (tests
/// record their shapes).
#[allow(clippy::too_many_arguments)]
pub(super) fn bwd_mm(
    mnk: (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    alpha: f32,
    par: gemm::Parallelism,
) {
    #[cfg(test)]
    BWD_PRODUCTS.with(|p| p.borrow_mut().push([mnk.0, mnk.1]));
    crate::train_ops::mm(mnk, c, ldc, acc, a, b, alpha, par)
}

/// Rows of a quantized base dequantized at once for the input gradient.
pub(super) const BASE_TILE: usize = 256;

#[cfg(test)]
thread_local! {
    /// The output shape `[rows, cols]` of every product `LoraMatmul`'s backward runs on this
    /// thread (tests count them).
    pub(super) static BWD_PRODUCTS: std::cell::RefCell<Vec<[usize; 2]>> = const { std::cell::RefCell::new(Vec::new()) };
}
