//! Gradient checkpointing (Chen et al., 2016, "Training Deep Nets with Sublinear Memory Cost"):
//! a segment of the network `y = f(x; θ)` runs forward without keeping its activations, and its
//! backward runs `f` again from the kept input before differentiating it.
//!
//! [`checkpoint`] records one op in the graph whose inputs are `x` and the segment's trainable
//! parameters `θ` (flattened and concatenated, so that candle routes each parameter's gradient
//! back to it through the concatenation's own backward). Its forward evaluates `f` and keeps only
//! the output; the graph `f` records is dropped with it. Its backward evaluates `f` again on a
//! fresh variable holding `x`, back-propagates `Σ y ⊙ g` through that second graph, and returns
//! `∂L/∂x` and `∂L/∂θ`. Memory held per segment between forward and backward: its input, output
//! and the flat parameters; the segment's activations live only while its backward runs.
//!
//! `f` must be deterministic (same output both times): it may not draw fresh randomness
//! (dropout) per call.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, Var};

/// A segment `y = f(x)` whose trainable parameters `f` reads itself.
pub type Segment = Arc<dyn Fn(&Tensor) -> crate::Result<Tensor> + Send + Sync>;

struct Checkpoint {
    f: Segment,
    /// The parameters, in the order of the flat input.
    params: Vec<Tensor>,
}

impl Checkpoint {
    fn input(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
        let x = crate::train_ops::slice(s, l, "checkpoint")?;
        Tensor::from_vec(x.to_vec(), l.shape(), &candle_core::Device::Cpu)
    }
}

impl CustomOp2 for Checkpoint {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = (self.f)(&Self::input(s1, l1)?)?;
        if y.dtype() != candle_core::DType::F32 {
            candle_core::bail!(
                "checkpoint: expected the segment to return f32, found {:?}",
                y.dtype()
            );
        }
        let shape = y.shape().clone();
        let v: Vec<f32> = y.detach().flatten_all()?.to_vec1()?;
        Ok((CpuStorage::F32(v), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        flat: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let xv = Var::from_tensor(&x.detach())?;
        let y = (self.f)(xv.as_tensor())?;
        let grads = (y * g)?.sum_all()?.backward()?;
        let dx = match grads.get(xv.as_tensor()) {
            Some(d) => d.clone(),
            None => x.zeros_like()?,
        };
        let mut parts = Vec::with_capacity(self.params.len());
        for p in &self.params {
            parts.push(match grads.get(p) {
                Some(d) => d.flatten_all()?,
                None => Tensor::zeros(p.elem_count(), p.dtype(), p.device())?,
            });
        }
        let dflat = if parts.is_empty() {
            flat.zeros_like()?
        } else {
            Tensor::cat(&parts, 0)?
        };
        Ok((Some(dx), Some(dflat)))
    }
}

/// `f(x)` with its activations recomputed in the backward instead of kept (see the module
/// header). `params` are the trainable tensors `f` reads (variables); their gradients, and
/// `x`'s, reach the caller's graph. When nothing tracks a gradient (inference, evaluation), or on
/// tensors other than f32 on the CPU, `f(x)` runs plainly.
pub fn checkpoint(x: &Tensor, params: &[Tensor], f: Segment) -> crate::Result<Tensor> {
    let tracked = x.track_op() || params.iter().any(Tensor::track_op);
    let cpu_f32 = |t: &Tensor| t.dtype() == candle_core::DType::F32 && t.device().is_cpu();
    if !tracked || !cpu_f32(x) || !params.iter().all(cpu_f32) {
        return f(x);
    }
    let flat = if params.is_empty() {
        // A placeholder second input: the op takes two.
        Tensor::zeros(1, candle_core::DType::F32, x.device())?
    } else {
        let parts = params
            .iter()
            .map(|p| p.flatten_all())
            .collect::<crate::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)?
    };
    x.contiguous()?.apply_op2(
        &flat,
        Checkpoint {
            f,
            params: params.to_vec(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::{Tol, assert_close, randn};

    /// A two-layer segment with a nonlinearity: `tanh(x W₁) W₂ + x`.
    fn segment(w1: &Tensor, w2: &Tensor) -> Segment {
        let (w1, w2) = (w1.clone(), w2.clone());
        Arc::new(move |x: &Tensor| {
            let h = x.broadcast_matmul(&w1)?.tanh()?;
            h.broadcast_matmul(&w2)? + x
        })
    }

    #[test]
    fn checkpointed_segments_give_the_same_output_and_gradients() {
        let x = Var::from_tensor(&randn(&[2, 3, 4], 1)).unwrap();
        let w1 = Var::from_tensor(&randn(&[4, 6], 2)).unwrap();
        let w2 = Var::from_tensor(&randn(&[6, 4], 3)).unwrap();
        let w3 = Var::from_tensor(&randn(&[4, 6], 4)).unwrap();
        let w4 = Var::from_tensor(&randn(&[6, 4], 5)).unwrap();
        let ws = [&w1, &w2, &w3, &w4].map(|v| v.as_tensor().clone());
        let weights = randn(&[2, 3, 4], 9);
        let plain = {
            let h = segment(&ws[0], &ws[1])(x.as_tensor()).unwrap();
            segment(&ws[2], &ws[3])(&h).unwrap()
        };
        let ckpt = {
            let h = checkpoint(x.as_tensor(), &ws[..2], segment(&ws[0], &ws[1])).unwrap();
            checkpoint(&h, &ws[2..], segment(&ws[2], &ws[3])).unwrap()
        };
        assert!(ckpt.track_op());
        assert_close(&plain, &ckpt, Tol::EXACT);
        let g1 = (&plain * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&ckpt * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w1, &w2, &w3, &w4] {
            let (a, b) = (
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert_close(a, b, Tol::F32);
        }
    }

    #[test]
    fn without_gradients_the_segment_runs_plainly() {
        let x = randn(&[2, 4], 1);
        let w1 = randn(&[4, 6], 2);
        let w2 = randn(&[6, 4], 3);
        let y = checkpoint(&x, &[w1.clone(), w2.clone()], segment(&w1, &w2)).unwrap();
        assert!(!y.track_op());
        assert_close(&y, &segment(&w1, &w2)(&x).unwrap(), Tol::EXACT);
    }
}
