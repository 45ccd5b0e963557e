//! Products over a trainable dense f32 weight as single ops with their own backward: `x Wᵀ`
//! ([`TrainMatmulT`]), `GELU(x Wᵀ)` ([`TrainMatmulTGelu`]) and the GELU MLP ([`TrainMlpGelu`]).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::f32_data;

#[cfg(test)]
mod tests;

/// `x Wᵀ` for a trainable f32 `W: [out, in]` as one op whose backward writes `∂L/∂W = gᵀ x`
/// straight in `W`'s `[out, in]` layout (candle's matmul of `x` by the view `Wᵀ` forms `xᵀ g`,
/// `[in, out]`, and adds its transpose through a strided pass) and skips `∂L/∂x = g W` when `x` is
/// a constant.
pub(super) struct TrainMatmulT;

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
pub(super) struct TrainMatmulTGelu {
    pub(super) tanh: bool,
    pub(super) z: std::sync::Mutex<Option<Vec<f32>>>,
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
pub(super) struct TrainMlpGelu {
    pub(super) tanh: bool,
    pub(super) saved: std::sync::Mutex<Option<MlpSaved>>,
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
