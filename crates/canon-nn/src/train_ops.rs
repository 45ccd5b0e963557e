//! Fused CPU kernels **with a backward pass**, for training. candle's fused `softmax_last_dim`,
//! `layer_norm` and friends record no backward, and the composed equivalents run a chain of
//! tensor-sized ops forward and a longer one backward; these do one pass each way per row.
//!
//! - `causal_softmax(x, offset, scale)`: `y = softmax(scale·x + M)` over the last dimension with the
//!   causal mask `M` (query row `i` sees keys `j ≤ offset + i`); backward
//!   `dx = scale · y ⊙ (g − Σ_j g_j y_j)`.
//! - `layer_norm(x, γ, β, eps)` (Ba et al., 2016): `y = x̂ γ + β`, `x̂ = (x − μ)/√(σ² + eps)`;
//!   backward `dx = (1/√(σ²+eps)) · (ĝ − mean(ĝ) − x̂ · mean(ĝ x̂))` with `ĝ = g γ`,
//!   `dγ = Σ_rows g x̂`, `dβ = Σ_rows g`.
//! - `gelu(x, tanh)`: exact GELU `x Φ(x)` (erf by Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7)
//!   or the tanh form; backward the analytic derivative.
//!
//! Every kernel takes contiguous f32 on the CPU (inputs are made contiguous first); each submodule's
//! tests check its kernels against the composed ops and by finite differences.
//!
//! Submodules: `products` (the matrix products and their thread split), `norm` (layer norm, RMS
//! norm), `activation` (GELU, SiLU·mul), `softmax` (causal softmax, log-sum-exp, cross-entropy),
//! `flash` (the tiled attention), `residual` (a trainable linear with the residual add folded in),
//! `sgemm` (the own AVX-512 f32/bf16 kernel).

use candle_core::{CpuStorage, Layout, Tensor};
use rayon::prelude::*;

mod activation;
mod flash;
mod norm;
mod products;
mod residual;
mod sgemm;
mod softmax;

pub use activation::{gelu, silu_mul};
pub(crate) use activation::{gelu_bwd, gelu_fwd};
pub use flash::{
    TrainMask, flash_attention, flash_attention_bias, packed_causal_attention, padding_keep,
};
pub use norm::{layer_norm, rms_norm};
pub use products::{Bf16Unsupported, bench_mm, bf16_products, set_bf16_products};
pub(crate) use products::{join_products, mm, par};
pub use residual::residual_linear;
pub use softmax::{causal_softmax, cross_entropy_rows, logsumexp};

pub(crate) fn slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor");
    };
    Ok(&v[a..b])
}

/// A tensor's f32 values for a backward: read in place when the tensor is contiguous f32 on the
/// CPU (no copy on the calling thread), else copied out.
pub(crate) enum Values<'a> {
    InPlace(crate::fused::F32Data<'a>),
    Copied(Vec<f32>),
}

impl std::ops::Deref for Values<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Values::InPlace(d) => d,
            Values::Copied(v) => v,
        }
    }
}

pub(crate) fn values(t: &Tensor) -> candle_core::Result<Values<'_>> {
    Ok(match crate::fused::F32Data::new(t) {
        Some(d) => Values::InPlace(d),
        None => Values::Copied(t.flatten_all()?.to_vec1()?),
    })
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

pub(crate) const ELEMS_PER_TASK: usize = 1 << 14;
const ROWS_PER_TASK: usize = 16;

/// Below this many elements [`zeros`] fills on the calling thread (512 KiB).
const PAR_ZERO_MIN: usize = 1 << 17;
/// Elements each rayon task of [`zeros`] fills (128 KiB).
const ZERO_CHUNK: usize = 1 << 15;

/// `vec![0f32; n]`, zero-filled on the rayon pool when `n` is large. `vec!` fills on the calling
/// thread, and since the allocator keeps freed memory (`canon_train::alloc`) a big buffer costs a
/// `memset`, not fresh zero pages: the training ops' outputs and gradients come to about a
/// gigabyte of such fills per nanoGPT step, run while the pool's other threads wait. The values
/// are the same zeros.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    if n < PAR_ZERO_MIN || rayon::current_num_threads() < 2 {
        return vec![0f32; n];
    }
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(ZERO_CHUNK)
        .for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: the capacity is at least `n` and the fill above initialised elements `0..n`.
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::randn;

    /// `zeros` gives `n` zeros on the calling thread and on a pool, below and above the size
    /// where it fills in parallel, including a length that is not a multiple of its chunk, into
    /// memory that held other values before (the allocator reuses freed blocks).
    #[test]
    fn parallel_zero_fill_gives_zeros() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for n in [
            0,
            1,
            1000,
            PAR_ZERO_MIN - 1,
            PAR_ZERO_MIN,
            3 * ZERO_CHUNK + 17 + PAR_ZERO_MIN,
        ] {
            drop(vec![7.5f32; n]);
            for z in [zeros(n), pool.install(|| zeros(n))] {
                assert_eq!(z.len(), n);
                assert!(z.iter().all(|v| v.to_bits() == 0));
            }
        }
    }

    pub(super) fn wsum(y: &Tensor, seed: u64) -> crate::Result<Tensor> {
        (y * randn(y.dims(), seed))?.sum_all()
    }
}
