//! The low-rank adapter (`Lora`, paper 13) and its fused training op over a frozen base
//! (`LoraMatmul`: dense f32, GGUF blocks, NF4 or int8).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};

use super::frozen::{bwd_mm, quant_input_grad};
use super::{Weight, f32_data};

#[cfg(test)]
mod tests;

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
    pub(super) fn fusable(&self, w: &Weight, x2: &Tensor) -> bool {
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
    pub(super) fn delta(&self, x2: &Tensor) -> crate::Result<Tensor> {
        let x = match &self.dropout {
            Some((p, noise)) => crate::dropout(x2, *p, noise)?,
            None => x2.clone(),
        };
        x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scale
    }
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

pub(super) fn lora_matmul(w: &Weight, l: &Lora, x2: &Tensor) -> crate::Result<Tensor> {
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
            // With bf16 products on, a base without the packed 8-bit kernel (NF4, int8, ggml
            // formats without a packed form) multiplies in bf16 tile by tile, as its input
            // gradient does; the packed 8-bit kernel is faster than bf16 and stays.
            q if crate::train_ops::bf16_products()
                && !matches!(q, Weight::Ggml(g) if g.packed().is_some()) =>
            {
                let mut y = vec![0f32; n * out];
                super::frozen::quant_forward_tiled(q, x, n, out, in_f, &mut y, par)?;
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
