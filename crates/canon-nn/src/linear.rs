//! `Linear`: `y = x Wᵀ + b (+ LoRA)`. It owns the weight's storage format (`Weight`) and the adapter
//! slot, so LoRA (paper 13), LLM.int8() (paper 22) and NF4/QLoRA (paper 27) plug in here and nowhere
//! else.
//!
//! Shapes: weight `[out, in]`, input `[..., in]`, output `[..., out]`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, D, DType, Device, Layout, Shape, Tensor};
use canon_quant::{GgmlTensor, Int8Tensor, Nf4Tensor};

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

/// `x Wᵀ` for a frozen dense `W: [out, in]` as a candle op whose backward is the input gradient
/// only, `∂L/∂x = ∂L/∂y · W`: a LoRA base costs one product in the backward, not two, and never
/// materialises a weight gradient.
struct FrozenMatmulT {
    /// `[out, in]`, contiguous f32.
    w: Tensor,
}

fn frozen_matmul_t(w: &Tensor, x2: &Tensor) -> crate::Result<Tensor> {
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

fn frozen_quant_matmul_t(w: &Weight, x2: &Tensor) -> crate::Result<Tensor> {
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

/// `dx = g W` for a quantized `W: [out, in]` and `g: [n, out]`, as the sum over row tiles of
/// `g[:, tile] W[tile, :]`, each tile of `BASE_TILE` rows dequantized alone ([`dequantize_tile`])
/// into a per-thread buffer reused across calls.
fn quant_input_grad(
    w: &Weight,
    g: &[f32],
    n: usize,
    out: usize,
    in_f: usize,
    dx: &mut [f32],
    par: gemm::Parallelism,
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
            bwd_mm(
                (n, in_f, o1 - o0),
                dx,
                in_f,
                o0 > 0,
                (&g[o0..], out, 1),
                (&buf[..len], in_f, 1),
                1.0,
                par,
            );
        }
        Ok(())
    })
}

/// `crate::train_ops::mm` for the backward products of this file (tests record their shapes).
#[allow(clippy::too_many_arguments)]
fn bwd_mm(
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

/// `y = x Wᵀ + s · (x Aᵀ) Bᵀ` over a frozen `W: [out, in]` as one op over `(x, A, B)` (LoRA and
/// QLoRA training): the three products write into one output buffer, and the backward computes
/// only what a frozen base needs,
///
/// `g_B = g B`, `∂L/∂x = g W + s · g_B A` (skipped when `x` is a constant), `∂L/∂A = s · g_Bᵀ x`,
/// `∂L/∂B = s · gᵀ (x Aᵀ)`,
///
/// with `x Aᵀ` recomputed (`n × r`, cheap) rather than kept. No product of the weight's shape is
/// ever formed. A dense f32 base multiplies on the `gemm` crate both ways; a quantized base
/// (GGUF blocks, NF4, int8) multiplies forward on its own kernels (the weight stays quantized) and
/// forms `g W` in the backward from `BASE_TILE` rows dequantized at a time, so no f32 copy of the
/// whole weight is ever held.
struct LoraMatmul {
    /// `[out, in]`: contiguous f32 when dense.
    w: Weight,
    scale: f32,
}

/// Rows of a quantized base dequantized at once for the input gradient.
const BASE_TILE: usize = 256;

fn lora_matmul(w: &Weight, l: &Lora, x2: &Tensor) -> crate::Result<Tensor> {
    let w = match w {
        Weight::Dense(t) => Weight::Dense(t.contiguous()?),
        q => q.clone(),
    };
    x2.contiguous()?.apply_op3(
        &l.a.contiguous()?,
        &l.b.contiguous()?,
        LoraMatmul {
            w,
            scale: l.scale as f32,
        },
    )
}

/// The contiguous f32 data of a tensor, or an error naming `what`.
fn f32_data<'a>(t: &'a Tensor, what: &str) -> candle_core::Result<crate::fused::F32Data<'a>> {
    crate::fused::F32Data::new(t)
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected contiguous f32 tensors")))
}

impl LoraMatmul {
    fn dims(&self, x: &Layout, a: &Layout, b: &Layout) -> candle_core::Result<[usize; 4]> {
        let (n, k) = x.shape().dims2()?;
        let [out, in_f]: [usize; 2] =
            self.w.shape().try_into().map_err(|_| {
                candle_core::Error::Msg("LoRA matmul: expected a matrix weight".into())
            })?;
        let (r, ia) = a.shape().dims2()?;
        let (ob, rb) = b.shape().dims2()?;
        if k != in_f || ia != in_f || ob != out || rb != r {
            candle_core::bail!(
                "LoRA matmul: expected x [n, {in_f}], A [r, {in_f}], B [{out}, r], found x {:?}, A {:?}, B {:?}",
                x.dims(),
                a.dims(),
                b.dims()
            );
        }
        Ok([n, in_f, out, r])
    }
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "canon-lora-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [n, in_f, out, r] = self.dims(l1, l2, l3)?;
        let x = crate::train_ops::slice(s1, l1, self.name())?;
        let a = crate::train_ops::slice(s2, l2, self.name())?;
        let b = crate::train_ops::slice(s3, l3, self.name())?;
        let par = crate::train_ops::par();
        let mm = crate::train_ops::mm;
        let base = crate::profile::scope(crate::profile::Phase::BaseForward);
        let mut y = match &self.w {
            Weight::Dense(w) => {
                let wd = f32_data(w, self.name())?;
                let mut y = vec![0f32; n * out];
                mm(
                    (n, out, in_f),
                    &mut y,
                    out,
                    false,
                    (x, in_f, 1),
                    (&wd, 1, in_f),
                    1.0,
                    par,
                );
                y
            }
            // The quantized kernels on an untracked copy of the input (records nothing).
            q => {
                let xt = Tensor::from_slice(x, (n, in_f), &Device::Cpu)?;
                let y = q.matmul_t(&xt)?.to_dtype(DType::F32)?;
                y.flatten_all()?.to_vec1::<f32>()?
            }
        };
        drop(base);
        let _t = crate::profile::scope(crate::profile::Phase::AdapterForward);
        let mut u = vec![0f32; n * r];
        mm(
            (n, r, in_f),
            &mut u,
            r,
            false,
            (x, in_f, 1),
            (a, 1, in_f),
            1.0,
            par,
        );
        mm(
            (n, out, r),
            &mut y,
            out,
            true,
            (&u, r, 1),
            (b, 1, r),
            self.scale,
            par,
        );
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [n, in_f, out, r] = self.dims(x.layout(), a.layout(), b.layout())?;
        let g = g.contiguous()?;
        let what = self.name();
        let (xd, ad, bd) = (f32_data(x, what)?, f32_data(a, what)?, f32_data(b, what)?);
        let gd = f32_data(&g, what)?;
        let par = crate::train_ops::par();
        let mm = bwd_mm;
        let adapters = crate::profile::scope(crate::profile::Phase::AdapterBackward);
        let s = self.scale;
        let mut gb = vec![0f32; n * r];
        mm(
            (n, r, out),
            &mut gb,
            r,
            false,
            (&gd, out, 1),
            (&bd, r, 1),
            1.0,
            par,
        );
        drop(adapters);
        let dx = if x.track_op() {
            let mut dx = crate::train_ops::zeros(n * in_f);
            let base = crate::profile::scope(crate::profile::Phase::BaseInputGrad);
            match &self.w {
                Weight::Dense(w) => {
                    let wd = f32_data(w, what)?;
                    mm(
                        (n, in_f, out),
                        &mut dx,
                        in_f,
                        false,
                        (&gd, out, 1),
                        (&wd, in_f, 1),
                        1.0,
                        par,
                    );
                }
                // g W as Σ over row tiles of g[:, tile] W[tile, :], each tile dequantized alone.
                q => quant_input_grad(q, &gd, n, out, in_f, &mut dx, par)?,
            }
            drop(base);
            let _t = crate::profile::scope(crate::profile::Phase::AdapterBackward);
            mm(
                (n, in_f, r),
                &mut dx,
                in_f,
                true,
                (&gb, r, 1),
                (&ad, in_f, 1),
                s,
                par,
            );
            Some(Tensor::from_vec(dx, (n, in_f), x.device())?)
        } else {
            None
        };
        let _t = crate::profile::scope(crate::profile::Phase::AdapterBackward);
        let mut da = vec![0f32; r * in_f];
        mm(
            (r, in_f, n),
            &mut da,
            in_f,
            false,
            (&gb, 1, r),
            (&xd, in_f, 1),
            s,
            par,
        );
        let mut u = vec![0f32; n * r];
        mm(
            (n, r, in_f),
            &mut u,
            r,
            false,
            (&xd, in_f, 1),
            (&ad, 1, in_f),
            1.0,
            par,
        );
        let mut db = vec![0f32; out * r];
        mm(
            (out, r, n),
            &mut db,
            r,
            false,
            (&gd, 1, out),
            (&u, r, 1),
            s,
            par,
        );
        Ok((
            dx,
            Some(Tensor::from_vec(da, (r, in_f), a.device())?),
            Some(Tensor::from_vec(db, (out, r), b.device())?),
        ))
    }
}

/// `x Wᵀ` for a trainable f32 `W: [out, in]` as one op whose backward writes `∂L/∂W = gᵀ x`
/// straight in `W`'s `[out, in]` layout (candle's matmul of `x` by the view `Wᵀ` forms `xᵀ g`,
/// `[in, out]`, and adds its transpose through a strided pass) and skips `∂L/∂x = g W` when `x` is
/// a constant.
struct TrainMatmulT;

impl candle_core::CustomOp2 for TrainMatmulT {
    fn name(&self) -> &'static str {
        "canon-train-matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, out_dims) = train_mm_fwd((s1, l1), (s2, l2), self.name())?;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let _t = crate::profile::scope(crate::profile::Phase::TrainBackward);
        let gd = f32_data(&g, self.name())?;
        train_mm_bwd(x, w, &gd, self.name())
    }
}

/// `x Wᵀ` for `x: [..., k]` read as `[n, k]` rows and `W: [out, k]`, with the output's dimensions
/// (the input's, the last one `out`).
fn train_mm_fwd(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    what: &str,
) -> candle_core::Result<(Vec<f32>, Vec<usize>)> {
    let dims = l1.dims();
    let Some(&k) = dims.last() else {
        candle_core::bail!("linear: expected an input with at least one dimension, found a scalar");
    };
    let n = dims[..dims.len() - 1].iter().product::<usize>();
    let (out, in_f) = l2.shape().dims2()?;
    if k != in_f {
        candle_core::bail!("linear: input rows have {k} values, the weight {in_f} columns");
    }
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out;
    }
    let x = crate::train_ops::slice(s1, l1, what)?;
    let w = crate::train_ops::slice(s2, l2, what)?;
    let _t = crate::profile::scope(crate::profile::Phase::TrainForward);
    let mut y = crate::train_ops::zeros(n * out);
    crate::train_ops::mm(
        (n, out, k),
        &mut y,
        out,
        false,
        (x, k, 1),
        (w, 1, k),
        1.0,
        crate::train_ops::par(),
    );
    Ok((y, out_dims))
}

/// `GELU(x Wᵀ)` for a trainable f32 `W` as one op: the activation runs on the product's output
/// while it is in cache-sized chunks of the result, and candle's backprop sees one node instead of
/// two (no separate gradient for the `[n, out]` pre-activation to allocate and add). The
/// pre-activation is kept in the op for the backward, as the separate GELU op kept its input.
struct TrainMatmulTGelu {
    tanh: bool,
    z: std::sync::Mutex<Option<Vec<f32>>>,
}

impl candle_core::CustomOp2 for TrainMatmulTGelu {
    fn name(&self) -> &'static str {
        "canon-train-matmul-t-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (z, out_dims) = train_mm_fwd((s1, l1), (s2, l2), self.name())?;
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        let mut y = crate::train_ops::zeros(z.len());
        let (tanh, chunk) = (self.tanh, crate::train_ops::ELEMS_PER_TASK);
        y.par_chunks_mut(chunk)
            .zip(z.par_chunks(chunk))
            .for_each(|(yc, zc)| crate::train_ops::gelu_fwd(zc, yc, tanh));
        if let Ok(mut slot) = self.z.lock() {
            *slot = Some(z);
        }
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let g = g.contiguous()?;
        let gd = f32_data(&g, self.name())?;
        // The backward takes the pre-activation out of the op (it is freed as soon as this
        // node's backward is done, not when the whole graph goes); a second backward over the
        // same graph recomputes it (the same product, the same bits).
        let z = match self.z.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let z = match z {
            Some(z) => z,
            None => pre_activation(x, w, self.name())?,
        };
        if z.len() != gd.len() {
            candle_core::bail!(
                "linear + GELU backward: expected a gradient of {} values, found {}",
                z.len(),
                gd.len()
            );
        }
        let mut dz = crate::train_ops::zeros(z.len());
        {
            let _t = crate::profile::scope(crate::profile::Phase::Activations);
            let (tanh, chunk) = (self.tanh, crate::train_ops::ELEMS_PER_TASK);
            dz.par_chunks_mut(chunk)
                .zip(z.par_chunks(chunk).zip(gd.par_chunks(chunk)))
                .for_each(|(dc, (zc, gc))| crate::train_ops::gelu_bwd(zc, gc, dc, tanh));
        }
        drop(z);
        let _t = crate::profile::scope(crate::profile::Phase::TrainBackward);
        train_mm_bwd(x, w, &dz, self.name())
    }
}

/// The MLP's pre-activation and activation, `[n, d_ff]` each.
type MlpSaved = (Vec<f32>, Vec<f32>);

/// `x Wᵀ` for the backward of an op that did not keep it (the forward's product, the same bits).
fn pre_activation(x: &Tensor, w: &Tensor, what: &str) -> candle_core::Result<Vec<f32>> {
    let k = x.dim(candle_core::D::Minus1)?;
    let n = x.elem_count() / k.max(1);
    let (out, in_f) = w.dims2()?;
    if in_f != k {
        candle_core::bail!("{what}: input rows have {k} values, the weight {in_f} columns");
    }
    let (xd, wd) = (f32_data(x, what)?, f32_data(w, what)?);
    let mut z = crate::train_ops::zeros(n * out);
    let _t = crate::profile::scope(crate::profile::Phase::TrainForward);
    crate::train_ops::mm(
        (n, out, k),
        &mut z,
        out,
        false,
        (&xd, k, 1),
        (&wd, 1, k),
        1.0,
        crate::train_ops::par(),
    );
    Ok(z)
}

/// The GELU MLP `GELU(x W₁ᵀ) W₂ᵀ` with trainable f32 weights as one op: candle's backprop sees
/// one node with the input and the two weights, not three with the `[n, d_ff]` activations as
/// inputs (each such input costs a zero-filled gradient and an add). The pre-activation and the
/// activation are kept in the op for the backward, as the separate ops kept them; the products
/// are the ones the separate ops ran, so values and gradients are the same.
struct TrainMlpGelu {
    tanh: bool,
    saved: std::sync::Mutex<Option<MlpSaved>>,
}

impl CustomOp3 for TrainMlpGelu {
    fn name(&self) -> &'static str {
        "canon-train-mlp-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (z, mut out_dims) = train_mm_fwd((s1, l1), (s2, l2), self.name())?;
        let (d_out, d_ff) = l3.shape().dims2()?;
        let hidden = out_dims.last().copied().unwrap_or(0);
        if d_ff != hidden {
            candle_core::bail!(
                "MLP: the first weight gives {hidden} hidden features, the second takes {d_ff}"
            );
        }
        let n = z.len() / d_ff.max(1);
        let mut h = crate::train_ops::zeros(z.len());
        {
            let _t = crate::profile::scope(crate::profile::Phase::Activations);
            let (tanh, chunk) = (self.tanh, crate::train_ops::ELEMS_PER_TASK);
            h.par_chunks_mut(chunk)
                .zip(z.par_chunks(chunk))
                .for_each(|(hc, zc)| crate::train_ops::gelu_fwd(zc, hc, tanh));
        }
        let w2 = crate::train_ops::slice(s3, l3, self.name())?;
        let mut y = crate::train_ops::zeros(n * d_out);
        {
            let _t = crate::profile::scope(crate::profile::Phase::TrainForward);
            crate::train_ops::mm(
                (n, d_out, d_ff),
                &mut y,
                d_out,
                false,
                (&h, d_ff, 1),
                (w2, 1, d_ff),
                1.0,
                crate::train_ops::par(),
            );
        }
        if let Some(last) = out_dims.last_mut() {
            *last = d_out;
        }
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some((z, h));
        }
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w1: &Tensor,
        w2: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let what = self.name();
        let g = g.contiguous()?;
        let gd = f32_data(&g, what)?;
        // The backward takes the activations out of the op: each is freed as soon as its last
        // use here is done, not when the whole graph goes (PyTorch frees a node's saved tensors
        // after its backward too). A second backward over the same graph recomputes them.
        let saved = match self.saved.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let (z, h) = match saved {
            Some(s) => s,
            None => {
                let z = pre_activation(x, w1, what)?;
                let mut h = crate::train_ops::zeros(z.len());
                let _t = crate::profile::scope(crate::profile::Phase::Activations);
                let (tanh, chunk) = (self.tanh, crate::train_ops::ELEMS_PER_TASK);
                h.par_chunks_mut(chunk)
                    .zip(z.par_chunks(chunk))
                    .for_each(|(hc, zc)| crate::train_ops::gelu_fwd(zc, hc, tanh));
                (z, h)
            }
        };
        let (d_out, d_ff) = w2.dims2()?;
        let n = z.len() / d_ff.max(1);
        if gd.len() != n * d_out {
            candle_core::bail!(
                "MLP backward: expected a gradient of {} values, found {}",
                n * d_out,
                gd.len()
            );
        }
        let w2d = f32_data(w2, what)?;
        let mut dh = crate::train_ops::zeros(n * d_ff);
        let mut dw2 = crate::train_ops::zeros(d_out * d_ff);
        {
            let _t = crate::profile::scope(crate::profile::Phase::TrainBackward);
            // ∂L/∂h = g W₂, ∂L/∂W₂ = gᵀ h, side by side (the same bits as one after the other).
            crate::train_ops::join_products(
                |par| {
                    crate::train_ops::mm(
                        (n, d_ff, d_out),
                        &mut dh,
                        d_ff,
                        false,
                        (&gd, d_out, 1),
                        (&w2d, d_ff, 1),
                        1.0,
                        par,
                    )
                },
                |par| {
                    crate::train_ops::mm(
                        (d_out, d_ff, n),
                        &mut dw2,
                        d_ff,
                        false,
                        (&gd, 1, d_out),
                        (&h, d_ff, 1),
                        1.0,
                        par,
                    )
                },
            );
        }
        drop(h);
        let mut dz = crate::train_ops::zeros(n * d_ff);
        {
            let _t = crate::profile::scope(crate::profile::Phase::Activations);
            let (tanh, chunk) = (self.tanh, crate::train_ops::ELEMS_PER_TASK);
            dz.par_chunks_mut(chunk)
                .zip(z.par_chunks(chunk).zip(dh.par_chunks(chunk)))
                .for_each(|(dc, (zc, gc))| crate::train_ops::gelu_bwd(zc, gc, dc, tanh));
        }
        drop(dh);
        drop(z);
        let _t = crate::profile::scope(crate::profile::Phase::TrainBackward);
        let (dx, dw1) = train_mm_bwd(x, w1, &dz, what)?;
        Ok((
            dx,
            dw1,
            Some(Tensor::from_vec(dw2, (d_out, d_ff), w2.device())?),
        ))
    }
}

/// `(∂L/∂x, ∂L/∂W)` of `y = x Wᵀ` from `∂L/∂y` (`g: [n, out]`); no input gradient when `x` is a
/// constant.
fn train_mm_bwd(
    x: &Tensor,
    w: &Tensor,
    gd: &[f32],
    what: &str,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let k = x.dim(candle_core::D::Minus1)?;
    let n = x.elem_count() / k.max(1);
    let (out, _) = w.dims2()?;
    let (xd, wd) = (f32_data(x, what)?, f32_data(w, what)?);
    let mut dw = crate::train_ops::zeros(out * k);
    let dw_product = |dw: &mut [f32], par| {
        crate::train_ops::mm(
            (out, k, n),
            dw,
            k,
            false,
            (gd, 1, out),
            (&xd, k, 1),
            1.0,
            par,
        )
    };
    let dx = if x.track_op() {
        let mut dx = crate::train_ops::zeros(n * k);
        // `∂L/∂x = g W` and `∂L/∂W` side by side (the same bits as one after the other).
        crate::train_ops::join_products(
            |par| {
                crate::train_ops::mm(
                    (n, k, out),
                    &mut dx,
                    k,
                    false,
                    (gd, out, 1),
                    (&wd, k, 1),
                    1.0,
                    par,
                )
            },
            |par| dw_product(&mut dw, par),
        );
        Some(Tensor::from_vec(dx, x.shape(), x.device())?)
    } else {
        dw_product(&mut dw, crate::train_ops::par());
        None
    };
    Ok((dx, Some(Tensor::from_vec(dw, (out, k), w.device())?)))
}

#[cfg(test)]
thread_local! {
    /// The output shape `[rows, cols]` of every product `LoraMatmul`'s backward runs on this
    /// thread (tests count them).
    static BWD_PRODUCTS: std::cell::RefCell<Vec<[usize; 2]>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn quant_err(e: canon_quant::QuantError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Low-rank adapter `ΔW = (α/r)·B A` with `A: [r, in]`, `B: [out, r]` (Hu et al., 2021, eq. 3).
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    /// `α / r`.
    pub scale: f64,
    /// LoRA dropout on the adapter's input `(p, noise)` (training only: inactive noise is the
    /// identity); the frozen path `W₀ x` never sees it, as in PEFT.
    pub dropout: Option<(f64, std::sync::Arc<crate::Noise>)>,
}

impl Lora {
    /// `ΔW = scale · B A`, `[out, in]`.
    pub fn delta_weight(&self) -> crate::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }

    /// Whether `x Wᵀ + delta(x)` can run as one [`LoraMatmul`]: training (something tracks
    /// gradients) over a frozen dense f32 base on the CPU, with no active adapter dropout.
    fn fusable(&self, w: &Weight, x2: &Tensor) -> bool {
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        let dropout_on = self
            .dropout
            .as_ref()
            .is_some_and(|(p, noise)| *p > 0.0 && noise.is_active());
        // A dense base must be frozen f32; quantized bases are never variables.
        let base_ok = match w {
            Weight::Dense(w) => !w.track_op() && f32_cpu(w),
            _ => true,
        };
        base_ok
            && (x2.track_op() || self.a.track_op() || self.b.track_op())
            && [x2, &self.a, &self.b].into_iter().all(f32_cpu)
            && !dropout_on
    }

    /// `(α/r) · x Aᵀ Bᵀ` for `x: [n, in]`.
    fn delta(&self, x2: &Tensor) -> crate::Result<Tensor> {
        let x = match &self.dropout {
            Some((p, noise)) => crate::dropout(x2, *p, noise)?,
            None => x2.clone(),
        };
        x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scale
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::{Tol, assert_close, randn};

    #[test]
    fn dense_matches_manual_product_and_keeps_leading_dims() {
        let w = randn(&[5, 3], 1);
        let b = randn(&[5], 2);
        let x = randn(&[2, 4, 3], 3);
        let l = Linear::new(Weight::Dense(w.clone()), Some(b.clone()));
        let y = l.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 4, 5]);
        let manual = x
            .reshape((8, 3))
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .reshape((2, 4, 5))
            .unwrap();
        assert_close(&y, &manual, Tol::F32);
    }

    /// The frozen-base path gives the same output and the same input and adapter gradients as the
    /// composed ops over a trainable copy of the weight, and never materialises a gradient of the
    /// weight's shape (no `[out, in]` or `[in, out]` tensor in the gradient store).
    #[test]
    fn frozen_dense_base_backward_gives_input_and_adapter_gradients_only() {
        use candle_core::Var;
        let (out, inp, r) = (7, 6, 2);
        let w = randn(&[out, inp], 11);
        let x = Var::from_tensor(&randn(&[2, 3, inp], 12)).unwrap();
        let a = Var::from_tensor(&randn(&[r, inp], 13)).unwrap();
        let b = Var::from_tensor(&randn(&[out, r], 14)).unwrap();
        let run = |weight: Weight| {
            let mut l = Linear::new(weight, None);
            l.set_lora(Lora {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 0.5,
                dropout: None,
            })
            .unwrap();
            let y = l.forward(x.as_tensor()).unwrap();
            let loss = (y.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            (y, loss.backward().unwrap())
        };
        let (y_frozen, g_frozen) = run(Weight::Dense(w.clone()));
        let w_var = Var::from_tensor(&w).unwrap();
        let (y_ref, g_ref) = run(Weight::Dense(w_var.as_tensor().clone()));
        assert_close(&y_frozen, &y_ref, Tol::F32);
        for t in [x.as_tensor(), a.as_tensor(), b.as_tensor()] {
            assert_close(g_frozen.get(t).unwrap(), g_ref.get(t).unwrap(), Tol::F32);
        }
        assert!(g_ref.get(w_var.as_tensor()).is_some());
        let weight_shaped = g_frozen
            .get_ids()
            .filter_map(|id| g_frozen.get_id(*id))
            .filter(|g| g.dims() == [out, inp] || g.dims() == [inp, out])
            .count();
        assert_eq!(
            weight_shaped, 0,
            "a frozen weight's gradient was materialised"
        );
    }

    /// The products the fused LoRA backward runs, counted: none has the frozen weight's shape
    /// `[out, in]`, and the input gradient's two are skipped when the input is a constant.
    #[test]
    fn lora_backward_never_forms_a_weight_gradient_product() {
        use candle_core::Var;
        let (n, out, inp, r) = (6, 7, 5, 2);
        let w = randn(&[out, inp], 1);
        let a = Var::from_tensor(&randn(&[r, inp], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[out, r], 3)).unwrap();
        let mut l = Linear::new(Weight::Dense(w), None);
        l.set_lora(Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 2.0,
            dropout: None,
        })
        .unwrap();
        let x_var = Var::from_tensor(&randn(&[n, inp], 4)).unwrap();
        for (x, tracked) in [
            (x_var.as_tensor().clone(), true),
            (randn(&[n, inp], 4), false),
        ] {
            BWD_PRODUCTS.with(|p| p.borrow_mut().clear());
            let y = l.forward(&x).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let shapes = BWD_PRODUCTS.with(|p| p.borrow().clone());
            let mut want = vec![[n, r], [r, inp], [n, r], [out, r]];
            if tracked {
                want.extend([[n, inp], [n, inp]]);
            }
            let (mut got, mut want) = (shapes.clone(), want);
            got.sort();
            want.sort();
            assert_eq!(got, want, "backward products {shapes:?}");
            assert!(!shapes.contains(&[out, inp]) && !shapes.contains(&[inp, out]));
            assert_eq!(grads.get(&x).is_some(), tracked);
        }
    }

    /// LoRA over a quantized base (GGUF Q8_0 and Q4_0 blocks, NF4) as the one fused op: the
    /// output and the input and adapter gradients equal those over the same weight dequantized
    /// to a frozen dense f32 tensor (the row-tiled input gradient spans several tiles), and no
    /// backward product has the weight's shape.
    #[test]
    fn lora_over_a_quantized_base_equals_lora_over_its_dequantized_weight() {
        use candle_core::Var;
        use canon_quant::{GgmlTensor, GgmlType, Kind, Nf4Tensor};
        let (n, out, inp, r) = (20, 600, 64, 3);
        let w = randn(&[out, inp], 21);
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let ggml = |kind: Kind, dtype: GgmlType| {
            let mut bytes = Vec::new();
            for row in wv.chunks(inp) {
                canon_quant::kernels::scalar::quantize_row(kind, row, &mut bytes);
            }
            Weight::Ggml(Arc::new(
                GgmlTensor::from_bytes(dtype, &[out, inp], &bytes).unwrap(),
            ))
        };
        let nf4 = Weight::Nf4(Arc::new(Nf4Tensor::quantize(&wv, out, inp, true).unwrap()));
        let x = Var::from_tensor(&randn(&[n, inp], 22)).unwrap();
        let a = Var::from_tensor(&randn(&[r, inp], 23)).unwrap();
        let b = Var::from_tensor(&randn(&[out, r], 24)).unwrap();
        let run = |weight: Weight| {
            let mut l = Linear::new(weight, None);
            l.set_lora(Lora {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 0.5,
                dropout: None,
            })
            .unwrap();
            BWD_PRODUCTS.with(|p| p.borrow_mut().clear());
            let y = l.forward(x.as_tensor()).unwrap();
            let g = (y.sqr().unwrap().sum_all().unwrap() * 0.5)
                .unwrap()
                .backward()
                .unwrap();
            (y, g, BWD_PRODUCTS.with(|p| p.borrow().clone()))
        };
        for q in [
            ggml(Kind::Q8_0, GgmlType::Q8_0),
            ggml(Kind::Q4_0, GgmlType::Q4_0),
            nf4,
        ] {
            let dense = Weight::Dense(q.to_dense().unwrap());
            let (yq, gq, shapes) = run(q.clone());
            // The fused op ran: its backward recorded its products, input gradient in tiles.
            assert!(
                shapes.iter().filter(|s| **s == [n, inp]).count() >= 3,
                "{shapes:?}"
            );
            assert!(!shapes.contains(&[out, inp]) && !shapes.contains(&[inp, out]));
            // The reference: the same quantized product, unfused (the kernels may round the
            // activations to 8 bits for prompt-sized products; both paths then round alike), plus
            // the adapter product composed from candle's ops.
            let composed = {
                let base = Linear::new(q.clone(), None).forward(x.as_tensor()).unwrap();
                let delta = (x
                    .as_tensor()
                    .matmul(&a.as_tensor().t().unwrap())
                    .unwrap()
                    .matmul(&b.as_tensor().t().unwrap())
                    .unwrap()
                    * 0.5)
                    .unwrap();
                (base + delta).unwrap()
            };
            let gc = (composed.sqr().unwrap().sum_all().unwrap() * 0.5)
                .unwrap()
                .backward()
                .unwrap();
            assert_close(&yq, &composed, Tol::new(1e-4, 1e-4));
            for t in [x.as_tensor(), a.as_tensor(), b.as_tensor()] {
                // Gradients reach 2e4 here while some elements are a few units after cancelling:
                // the absolute part of the tolerance follows the tensor's scale (f32 sums in
                // another order differ by ~1e-7 of the largest terms).
                let reference = gc.get(t).unwrap();
                let scale = reference
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64;
                assert_close(gq.get(t).unwrap(), reference, Tol::new(1e-6 * scale, 1e-4));
            }
            // Against the dequantized weight in f32: within the 8-bit activation rounding.
            let (yd, _, _) = run(dense);
            let diff = (&yq - &yd)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 0.5, "max |quantized - dequantized| {diff}");
        }
    }

    /// A trainable weight's product: output and both gradients equal candle's matmul by `Wᵀ`.
    #[test]
    fn trainable_dense_weight_matches_candles_matmul_forward_and_backward() {
        use candle_core::Var;
        let w = Var::from_tensor(&randn(&[7, 5], 1)).unwrap();
        let x = Var::from_tensor(&randn(&[2, 3, 5], 2)).unwrap();
        let l = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
        let y = l.forward(x.as_tensor()).unwrap();
        let r = x
            .as_tensor()
            .reshape((6, 5))
            .unwrap()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .reshape((2, 3, 7))
            .unwrap();
        assert_close(&y, &r, Tol::F32);
        let wt = randn(&[2, 3, 7], 3);
        let g1 = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&r * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [w.as_tensor(), x.as_tensor()] {
            assert_close(g1.get(t).unwrap(), g2.get(t).unwrap(), Tol::F32);
        }
        crate::gradcheck::check_gradients(
            &[w.clone(), x.clone()],
            |t| {
                let l = Linear::new(Weight::Dense(t[0].clone()), None);
                (l.forward(&t[1])? * &wt)?.sum_all()
            },
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        // With a trainable bias, on a 3-D input read in place (no reshape nodes).
        let b = Var::from_tensor(&randn(&[7], 4)).unwrap();
        let lb = Linear::new(
            Weight::Dense(w.as_tensor().clone()),
            Some(b.as_tensor().clone()),
        );
        let yb = lb.forward(x.as_tensor()).unwrap();
        let rb = r.broadcast_add(b.as_tensor()).unwrap();
        assert_close(&yb, &rb, Tol::F32);
        let g1 = (&yb * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&rb * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [w.as_tensor(), x.as_tensor(), b.as_tensor()] {
            assert_close(g1.get(t).unwrap(), g2.get(t).unwrap(), Tol::F32);
        }
    }

    /// The product and GELU as one op equal the two ops (`forward` then the activation), forward
    /// and backward, in both GELU forms; finite differences agree; other layers decline it.
    #[test]
    fn linear_gelu_equals_the_product_then_the_activation() {
        use crate::Activation;
        use candle_core::Var;
        for act in [Activation::Gelu, Activation::GeluTanh] {
            let tanh = act == Activation::GeluTanh;
            let w = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
            let x = Var::from_tensor(&(randn(&[2, 3, 5], 2) * 2.0).unwrap()).unwrap();
            let l = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
            let y = l.forward_gelu(x.as_tensor(), tanh).unwrap().expect("fused");
            let r = act.forward(&l.forward(x.as_tensor()).unwrap()).unwrap();
            assert_eq!(y.dims(), &[2, 3, 9]);
            assert_close(&y, &r, Tol::F32);
            let wt = randn(&[2, 3, 9], 3);
            let g1 = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&r * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [w.as_tensor(), x.as_tensor()] {
                assert_close(g1.get(t).unwrap(), g2.get(t).unwrap(), Tol::F32);
            }
            crate::gradcheck::check_gradients(
                &[w.clone(), x.clone()],
                |t| {
                    let l = Linear::new(Weight::Dense(t[0].clone()), None);
                    // The perturbed evaluations run on constants (the two ops).
                    let y = match l.forward_gelu(&t[1], tanh)? {
                        Some(y) => y,
                        None => act.forward(&l.forward(&t[1])?)?,
                    };
                    (y * &wt)?.sum_all()
                },
                1e-2,
                2e-3,
                2e-2,
            )
            .unwrap();
        }
        // A bias, a frozen weight or a 1-D input keep the two ops.
        let w = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
        let x = randn(&[2, 5], 2);
        let biased = Linear::new(Weight::Dense(w.as_tensor().clone()), Some(randn(&[9], 4)));
        assert!(biased.forward_gelu(&x, false).unwrap().is_none());
        let frozen = Linear::new(Weight::Dense(randn(&[9, 5], 1)), None);
        assert!(frozen.forward_gelu(&x, false).unwrap().is_none());
        let dense = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
        assert!(
            dense
                .forward_gelu(&randn(&[5], 2), false)
                .unwrap()
                .is_none()
        );
    }

    /// The fused GELU ops hand their saved activations to the backward (freed there, not with
    /// the graph); a second backward over the same graph recomputes them and gives the same bits.
    #[test]
    fn a_second_backward_recomputes_the_saved_activations() {
        use candle_core::Var;
        let bits = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let w1 = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
        let w2 = Var::from_tensor(&randn(&[4, 9], 5)).unwrap();
        let x = Var::from_tensor(&(randn(&[2, 3, 5], 2) * 2.0).unwrap()).unwrap();
        let l1 = Linear::new(Weight::Dense(w1.as_tensor().clone()), None);
        let l2 = Linear::new(Weight::Dense(w2.as_tensor().clone()), None);
        let mlp = l1
            .forward_gelu_mlp(&l2, x.as_tensor(), false)
            .unwrap()
            .unwrap();
        let h = l1.forward_gelu(x.as_tensor(), false).unwrap().unwrap();
        let wt = randn(&[2, 3, 4], 3);
        let wh = randn(&[2, 3, 9], 4);
        let loss = ((&mlp * &wt).unwrap().sum_all().unwrap()
            + (&h * &wh).unwrap().sum_all().unwrap())
        .unwrap();
        let g1 = loss.backward().unwrap();
        let g2 = loss.backward().unwrap();
        for t in [w1.as_tensor(), w2.as_tensor(), x.as_tensor()] {
            assert_eq!(bits(g1.get(t).unwrap()), bits(g2.get(t).unwrap()));
        }
    }

    /// The GELU MLP as one op equals the three ops (product, activation, product), forward and
    /// backward, bit for bit, in both GELU forms; finite differences agree; a bias keeps the
    /// separate ops.
    #[test]
    fn gelu_mlp_equals_the_separate_ops() {
        use crate::Activation;
        use candle_core::Var;
        for act in [Activation::Gelu, Activation::GeluTanh] {
            let tanh = act == Activation::GeluTanh;
            let w1 = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
            let w2 = Var::from_tensor(&randn(&[4, 9], 5)).unwrap();
            let x = Var::from_tensor(&(randn(&[2, 3, 5], 2) * 2.0).unwrap()).unwrap();
            let l1 = Linear::new(Weight::Dense(w1.as_tensor().clone()), None);
            let l2 = Linear::new(Weight::Dense(w2.as_tensor().clone()), None);
            let y = l1
                .forward_gelu_mlp(&l2, x.as_tensor(), tanh)
                .unwrap()
                .expect("fused");
            let h = l1
                .forward_gelu(x.as_tensor(), tanh)
                .unwrap()
                .expect("fused");
            let r = l2.forward(&h).unwrap();
            assert_eq!(y.dims(), &[2, 3, 4]);
            let bits = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            assert_eq!(bits(&y), bits(&r));
            let composed = l2.forward(&act.forward(&l1.forward(x.as_tensor()).unwrap()).unwrap());
            assert_close(&y, &composed.unwrap(), Tol::F32);
            let wt = randn(&[2, 3, 4], 3);
            let g1 = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&r * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [w1.as_tensor(), w2.as_tensor(), x.as_tensor()] {
                assert_eq!(bits(g1.get(t).unwrap()), bits(g2.get(t).unwrap()));
            }
            crate::gradcheck::check_gradients(
                &[w1.clone(), w2.clone(), x.clone()],
                |t| {
                    let l1 = Linear::new(Weight::Dense(t[0].clone()), None);
                    let l2 = Linear::new(Weight::Dense(t[1].clone()), None);
                    // The perturbed evaluations run on constants (the separate ops).
                    let y = match l1.forward_gelu_mlp(&l2, &t[2], tanh)? {
                        Some(y) => y,
                        None => l2.forward(&act.forward(&l1.forward(&t[2])?)?)?,
                    };
                    (y * &wt)?.sum_all()
                },
                1e-2,
                2e-3,
                2e-2,
            )
            .unwrap();
        }
        let w1 = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
        let l1 = Linear::new(Weight::Dense(w1.as_tensor().clone()), None);
        let biased = Linear::new(Weight::Dense(randn(&[4, 9], 5)), Some(randn(&[4], 6)));
        let x = randn(&[2, 5], 2);
        assert!(l1.forward_gelu_mlp(&biased, &x, false).unwrap().is_none());
    }

    /// The backward's two products of a trainable linear (and of the GELU MLP) run side by side
    /// on a pool of 2 or 3 threads (`train_ops::join_products`), on shapes large enough for a
    /// product to be split over threads: every gradient has the bits of a 1-thread pool, where
    /// they run one after the other.
    #[test]
    fn backward_products_side_by_side_give_the_one_thread_bits() {
        use candle_core::Var;
        let w = Var::from_tensor(&(randn(&[160, 128], 1) * 0.1).unwrap()).unwrap();
        let w2 = Var::from_tensor(&(randn(&[128, 160], 4) * 0.1).unwrap()).unwrap();
        let x = Var::from_tensor(&randn(&[2, 160, 128], 2)).unwrap();
        let wt = randn(&[2, 160, 128], 3);
        let grads = |threads: usize| -> Vec<Vec<u32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let l1 = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
                let l2 = Linear::new(Weight::Dense(w2.as_tensor().clone()), None);
                let y = l2.forward(&l1.forward(x.as_tensor()).unwrap()).unwrap();
                let m = l1
                    .forward_gelu_mlp(&l2, x.as_tensor(), false)
                    .unwrap()
                    .expect("fused");
                let loss = ((&y * &wt).unwrap().sum_all().unwrap()
                    + (&m * &wt).unwrap().sum_all().unwrap())
                .unwrap();
                let g = loss.backward().unwrap();
                [w.as_tensor(), w2.as_tensor(), x.as_tensor()]
                    .iter()
                    .map(|t| {
                        let v: Vec<f32> =
                            g.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                        v.iter().map(|f| f.to_bits()).collect()
                    })
                    .collect()
            })
        };
        let one = grads(1);
        assert_eq!(grads(2), one);
        assert_eq!(grads(3), one);
    }

    #[test]
    fn merged_equals_the_adapter_applied_on_the_side() {
        let mut l = Linear::new(Weight::Dense(randn(&[4, 6], 1)), Some(randn(&[4], 9)));
        l.set_lora(Lora {
            a: randn(&[2, 6], 3),
            b: randn(&[4, 2], 4),
            scale: 0.5,
            dropout: None,
        })
        .unwrap();
        let x = randn(&[3, 6], 2);
        let merged = l.merged().unwrap();
        assert!(merged.lora.is_none());
        assert_close(
            &merged.forward(&x).unwrap(),
            &l.forward(&x).unwrap(),
            Tol::F32,
        );
        // Shapes are checked, and rank 0 is refused.
        let bad = Lora {
            a: randn(&[2, 5], 3),
            b: randn(&[4, 2], 4),
            scale: 1.0,
            dropout: None,
        };
        let e = l.set_lora(bad).unwrap_err().to_string();
        assert!(e.contains("[2, 5]") && e.contains("[r, 6]"), "{e}");
        let zero = Lora {
            a: Tensor::zeros((0, 6), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
            b: Tensor::zeros((4, 0), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
            scale: 1.0,
            dropout: None,
        };
        assert!(l.set_lora(zero).is_err());
    }

    #[test]
    fn lora_with_zero_b_is_the_identity() {
        let w = randn(&[4, 6], 1);
        let x = randn(&[3, 6], 2);
        let mut l = Linear::new(Weight::Dense(w), None);
        let base = l.forward(&x).unwrap();
        l.lora = Some(Lora {
            a: randn(&[2, 6], 3),
            b: Tensor::zeros((4, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
            scale: 8.0,
            dropout: None,
        });
        assert_close(&l.forward(&x).unwrap(), &base, Tol::EXACT);
    }

    #[test]
    fn lora_dropout_acts_on_the_adapter_input_only_while_training() {
        let w = randn(&[4, 6], 1);
        let x = randn(&[3, 6], 2);
        let noise = std::sync::Arc::new(crate::Noise::default());
        let lora = |dropout| Lora {
            a: randn(&[2, 6], 3),
            b: randn(&[4, 2], 4),
            scale: 2.0,
            dropout,
        };
        let mut plain = Linear::new(Weight::Dense(w.clone()), None);
        plain.set_lora(lora(None)).unwrap();
        let mut dropped = Linear::new(Weight::Dense(w.clone()), None);
        dropped.set_lora(lora(Some((0.5, noise.clone())))).unwrap();
        // Inactive noise (evaluation, inference): exactly the plain adapter.
        let want = plain.forward(&x).unwrap();
        assert_close(&dropped.forward(&x).unwrap(), &want, Tol::EXACT);
        // Seeded: the adapter sees a dropped-out input, the frozen path the whole input.
        noise.set(Some(5));
        let got = dropped.forward(&x).unwrap();
        assert!(
            (&got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 1e-3
        );
        noise.set(Some(5));
        let masked = crate::dropout(&x, 0.5, &noise).unwrap();
        let frozen = Linear::new(Weight::Dense(w), None).forward(&x).unwrap();
        let adapter = (masked
            .matmul(&randn(&[2, 6], 3).t().unwrap())
            .unwrap()
            .matmul(&randn(&[4, 2], 4).t().unwrap())
            .unwrap()
            * 2.0)
            .unwrap();
        assert_close(&got, &(frozen + adapter).unwrap(), Tol::F32);
    }

    /// A frozen ggml weight without an adapter (the output head over a GGUF table) under a
    /// tracked input: the forward is the quantized kernels' product, the backward the input
    /// gradient only, `g W` from 256-row dequantized tiles (never the whole table, never a
    /// weight-shaped product), equal to the product with the dequantized matrix.
    #[test]
    fn frozen_quantized_head_backward_is_the_input_gradient_from_tiles() {
        use candle_core::Var;
        use canon_quant::{GgmlTensor, GgmlType, Kind};
        let (n, out, inp) = (18, 700, 64);
        let wv: Vec<f32> = randn(&[out, inp], 31)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let x = Var::from_tensor(&randn(&[n, inp], 32)).unwrap();
        for (kind, dtype) in [(Kind::Q8_0, GgmlType::Q8_0), (Kind::Q4_1, GgmlType::Q4_1)] {
            let mut bytes = Vec::new();
            for row in wv.chunks(inp) {
                canon_quant::kernels::scalar::quantize_row(kind, row, &mut bytes);
            }
            let q = Arc::new(GgmlTensor::from_bytes(dtype, &[out, inp], &bytes).unwrap());
            let lin = Linear::new(Weight::Ggml(q.clone()), None);
            BWD_PRODUCTS.with(|p| p.borrow_mut().clear());
            let y = lin.forward(x.as_tensor()).unwrap();
            // The forward is the inference product.
            assert_close(
                &y,
                &q.matmul(&x.as_tensor().detach()).unwrap(),
                Tol::new(0.0, 0.0),
            );
            let gy = randn(&[n, out], 33);
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let shapes = BWD_PRODUCTS.with(|p| p.borrow().clone());
            assert_eq!(shapes, vec![[n, inp]; out.div_ceil(BASE_TILE)], "{dtype:?}");
            let want = gy.matmul(&q.dequantize().unwrap()).unwrap();
            let dx = g.get(x.as_tensor()).unwrap();
            assert_close(dx, &want, Tol::new(1e-4, 1e-4));
        }
    }

    #[test]
    fn nf4_and_int8_weights_multiply_like_their_dequantized_matrices() {
        let w = randn(&[6, 128], 4);
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let x = randn(&[2, 3, 128], 5);
        let nf4 = Weight::Nf4(Arc::new(Nf4Tensor::quantize(&wv, 6, 128, true).unwrap()));
        let int8 = Weight::Int8(Arc::new(
            Int8Tensor::quantize(&wv, 6, 128, canon_quant::int8::THRESHOLD, true).unwrap(),
        ));
        for (weight, tol) in [(nf4, Tol::new(1e-3, 1e-4)), (int8, Tol::new(0.5, 0.05))] {
            assert_eq!(weight.shape(), vec![6, 128]);
            let dense = Linear::new(Weight::Dense(weight.to_dense().unwrap()), None);
            let l = Linear::new(weight, None);
            let y = l.forward(&x).unwrap();
            assert_eq!(y.dims(), &[2, 3, 6]);
            assert_close(&y, &dense.forward(&x).unwrap(), tol);
            let ids = Tensor::new(&[5u32, 0], &candle_core::Device::Cpu).unwrap();
            assert_close(
                &l.weight.rows(&ids).unwrap(),
                &dense.weight.rows(&ids).unwrap(),
                Tol::EXACT,
            );
        }
    }
}
