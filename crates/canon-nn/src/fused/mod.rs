//! Fused CPU kernels for inference: one pass over contiguous f32 rows instead of a chain of candle
//! ops, each of which allocates, writes and re-reads a whole tensor.
//!
//! These kernels record **no backward pass**. Layers call them only when no input or parameter
//! tracks an op (`Tensor::track_op()` is false for all of them: inference); training keeps the
//! composed ops. The formulas are the ones the composed layers implement:
//! - layer norm (Ba et al., 2016): `y = (x − mean) / sqrt(var + eps) · γ + β`, biased variance,
//!   optionally of `x + residual` (the post-LN residual line of BERT and the Transformer);
//! - exact GELU: `x · ½ (1 + erf(x / √2))`, erf by Abramowitz & Stegun 7.1.26
//!   (`|error| ≤ 1.5e-7`, about 3e-7 after f32 rounding; the approximation PyTorch's vectorised
//!   CPU erf uses);
//! - softmax with the max subtracted;
//! - `y = x Wᵀ + b` through `gemm`, the bias written first and accumulated into;
//! - self-attention per (sequence, head) over a packed `[rows, 3·d]` QKV buffer, padded keys
//!   skipped instead of masked with a materialised `[b, h, t, t]` bias.
//!
//! The element-wise kernels are written so that the compiler vectorises them; on x86-64 CPUs with
//! AVX2 and FMA a copy compiled for those features is chosen at run time.

use std::ops::Deref;

use candle_core::{CpuStorage, DType, Device, Storage, StorageRef, Tensor};
pub use gemm::Parallelism;
use rayon::prelude::*;

/// True when no tensor records an op, i.e. nothing downstream can ask for gradients.
pub fn no_grad(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| !t.track_op())
}

/// Read access to the data of a contiguous f32 CPU tensor, without copying.
pub struct F32Data<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
}

impl<'a> F32Data<'a> {
    /// `None` unless `t` is f32, on the CPU and contiguous.
    pub fn new(t: &'a Tensor) -> Option<Self> {
        if t.dtype() != DType::F32 || !matches!(t.device(), Device::Cpu) {
            return None;
        }
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        match &*guard {
            Storage::Cpu(CpuStorage::F32(v)) if end <= v.len() => {}
            _ => return None,
        }
        Some(Self {
            guard,
            start,
            len: end - start,
        })
    }
}

impl Deref for F32Data<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => &[],
        }
    }
}

// ------------------------------------------------------------------ run-time dispatch

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    // std caches the CPUID answer; this is a load and a test.
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Defines `pub fn $name(args)` that runs `$imp::<true>` compiled with AVX2+FMA when the CPU has
/// them and `$imp::<false>` (baseline target features, no fused multiply-add) otherwise.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident / $avx:ident => $imp:ident ($($a:ident : $t:ty),*)) => {
        /// The generic body compiled with AVX2 and FMA.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx($($a: $t),*) {
            $imp::<true>($($a),*)
        }
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU supports the features `$avx` was compiled for.
                return unsafe { $avx($($a),*) };
            }
            $imp::<false>($($a),*)
        }
    };
}

/// `a·b + c`, fused only where the hardware fuses it (a software fma would be slow).
#[inline(always)]
pub(crate) fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

// ------------------------------------------------------------------ eight-lane reductions

mod lanes;
pub use lanes::{dot, max8};

mod draw;
pub use draw::tempered_softmax_blocks;
pub(crate) use lanes::{dot8, sum_sq_dev8, sum8};

// ------------------------------------------------------------------ exp, erf, GELU

/// `eˣ` to about one ulp for `x ∈ [−87, 88]` (inputs are clamped there): `x = n·ln2 + r`,
/// `|r| ≤ ln2/2`, `eʳ` by its Taylor series to r⁷ (truncation < 5e-9), `2ⁿ` through the exponent
/// bits. Branch-free so that loops over it vectorise.
#[inline(always)]
pub(crate) fn exp<const F: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| ≤ 2⁸.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = fma::<F>(x, LOG2E, MAGIC);
    let n_bits = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let n = t - MAGIC;
    let r = fma::<F>(-n, LN2_LO, fma::<F>(-n, LN2_HI, x));
    let mut p = 1.0 / 5040.0;
    p = fma::<F>(p, r, 1.0 / 720.0);
    p = fma::<F>(p, r, 1.0 / 120.0);
    p = fma::<F>(p, r, 1.0 / 24.0);
    p = fma::<F>(p, r, 1.0 / 6.0);
    p = fma::<F>(p, r, 0.5);
    p = fma::<F>(p, r, 1.0);
    p = fma::<F>(p, r, 1.0);
    let scale = f32::from_bits((n_bits.wrapping_add(127) << 23) as u32);
    p * scale
}

/// erf by Abramowitz & Stegun 7.1.26: `erf(z) = 1 − t(a₁ + a₂t + … + a₅t⁴) e^{−z²}`,
/// `t = 1/(1 + p·z)` for `z ≥ 0`, odd symmetry for `z < 0`; `|error| ≤ 1.5e-7`.
#[inline(always)]
pub(crate) fn erf<const F: bool>(z: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = z.abs();
    let t = 1.0 / fma::<F>(P, a, 1.0);
    let mut q = A5;
    q = fma::<F>(q, t, A4);
    q = fma::<F>(q, t, A3);
    q = fma::<F>(q, t, A2);
    q = fma::<F>(q, t, A1);
    let y = 1.0 - q * t * exp::<F>(-a * a);
    y.copysign(z)
}

#[inline(always)]
fn gelu_erf_impl<const F: bool>(x: &mut [f32]) {
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + erf::<F>(u * std::f32::consts::FRAC_1_SQRT_2));
    }
}

dispatch! {
    /// Exact (erf) GELU in place: `x · ½ (1 + erf(x / √2))`.
    pub fn gelu_erf_inplace / gelu_erf_avx2 => gelu_erf_impl(x: &mut [f32])
}

#[inline(always)]
fn bias_gelu_erf_impl<const F: bool>(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            let u = *v + b;
            *v = 0.5 * u * (1.0 + erf::<F>(u * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

dispatch! {
    /// `GELU(x + bias)` in place for each `bias.len()`-wide row of `x` (a linear layer's bias
    /// added in the activation's pass instead of its own).
    pub fn bias_gelu_erf_rows / bias_gelu_erf_avx2 => bias_gelu_erf_impl(x: &mut [f32], bias: &[f32])
}

/// `tanh z` through `exp`: `1 − 2 / (e^{2z} + 1)`, which saturates to ±1 without a branch (the
/// clamp inside `exp` keeps `e^{2z}` finite). Absolute error a few 1e-7 (relative error is larger
/// only where `|tanh z|` is itself below ~1e-6, which GELU multiplies by `x` again).
#[inline(always)]
pub(crate) fn tanh<const F: bool>(z: f32) -> f32 {
    1.0 - 2.0 / (exp::<F>(2.0 * z) + 1.0)
}

/// GELU, tanh approximation (`gelu_pytorch_tanh`, candle's `gelu`):
/// `½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
#[inline(always)]
pub(crate) fn gelu_tanh<const F: bool>(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    let z = C * fma::<F>(0.044_715 * x, x * x, x);
    0.5 * x * (1.0 + tanh::<F>(z))
}

#[inline(always)]
fn geglu_tanh_impl<const F: bool>(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh::<F>(*g) * u;
    }
}

dispatch! {
    /// GeGLU in place: `gate ← GELU_tanh(gate) · up` (Gemma's feed-forward), one pass.
    pub fn geglu_tanh_inplace / geglu_tanh_avx2 => geglu_tanh_impl(gate: &mut [f32], up: &[f32])
}

#[inline(always)]
fn silu_mul_impl<const F: bool>(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp::<F>(-*g)) * u;
    }
}

dispatch! {
    /// SwiGLU's product in place: `gate ← SiLU(gate) · up = gate / (1 + e^(−gate)) · up`, one pass.
    pub fn silu_mul_inplace / silu_mul_avx2 => silu_mul_impl(gate: &mut [f32], up: &[f32])
}

// ------------------------------------------------------------------ softmax, layer norm

#[inline(always)]
fn scaled_softmax_impl<const F: bool>(x: &mut [f32], scale: f32) {
    // The shift's sign of zero cannot show: `exp(±0)` is 1.
    let m = max8(x);
    for v in x.iter_mut() {
        *v = exp::<F>((*v - m) * scale);
    }
    let inv = 1.0 / sum8(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

dispatch! {
    /// `softmax(scale · x)` of one row in place, as `exp((x − max x) · scale)` normalised (the
    /// attention scores' softmax with the 1/√d scale folded in; `scale > 0`).
    pub fn scaled_softmax_inplace / scaled_softmax_avx2 => scaled_softmax_impl(x: &mut [f32], scale: f32)
}

#[inline(always)]
fn softmax_impl<const F: bool>(x: &mut [f32]) {
    let m = max8(x);
    for v in x.iter_mut() {
        *v = exp::<F>(*v - m);
    }
    let inv = 1.0 / sum8(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

dispatch! {
    /// Softmax of one row in place.
    pub fn softmax_inplace / softmax_avx2 => softmax_impl(x: &mut [f32])
}

#[inline(always)]
fn layer_norm_impl<const F: bool>(
    x: &mut [f32],
    residual: Option<&[f32]>,
    residual_bias: Option<&[f32]>,
    d: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
) {
    let gamma = &gamma[..d];
    for (i, row) in x.chunks_exact_mut(d).enumerate() {
        match (residual, residual_bias) {
            (Some(r), Some(rb)) => {
                for ((v, r), b) in row.iter_mut().zip(&r[i * d..(i + 1) * d]).zip(&rb[..d]) {
                    *v += r + b;
                }
            }
            (Some(r), None) => {
                for (v, r) in row.iter_mut().zip(&r[i * d..(i + 1) * d]) {
                    *v += r;
                }
            }
            _ => {}
        }
        let mean = sum8(row) / d as f32;
        let var = sum_sq_dev8::<F>(row, mean) / d as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        match beta {
            Some(b) => {
                for ((v, g), b) in row.iter_mut().zip(gamma).zip(&b[..d]) {
                    *v = fma::<F>((*v - mean) * rstd, *g, *b);
                }
            }
            None => {
                for (v, g) in row.iter_mut().zip(gamma) {
                    *v = (*v - mean) * rstd * g;
                }
            }
        }
    }
}

dispatch! {
    /// Layer norm of each `d`-wide row of `x` in place; with `residual` (same shape as `x`), of
    /// `x + (residual + residual_bias)` (the bias `[d]` of the linear layer that produced
    /// `residual`). `gamma`, `beta`: `[d]`.
    pub fn layer_norm_rows / layer_norm_avx2 => layer_norm_impl(
        x: &mut [f32],
        residual: Option<&[f32]>,
        residual_bias: Option<&[f32]>,
        d: usize,
        gamma: &[f32],
        beta: Option<&[f32]>,
        eps: f32
    )
}

// ------------------------------------------------------------------ linear

/// `out[r, ..n] = x[r, ..k] · Wᵀ + bias` for `rows` rows; `x: [rows, k]` and `w: [n, k]` row-major,
/// `out` rows `out_stride` apart (so one call can fill a column block of a wider buffer).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    par: Parallelism,
) {
    if rows == 0 || n == 0 {
        return;
    }
    assert!(
        x.len() >= rows * k,
        "linear: x holds {} < {rows}×{k}",
        x.len()
    );
    assert!(w.len() >= n * k, "linear: w holds {} < {n}×{k}", w.len());
    assert!(
        out_stride >= n && out.len() >= (rows - 1) * out_stride + n,
        "linear: output too small"
    );
    match bias {
        Some(b) => {
            for r in 0..rows {
                out[r * out_stride..r * out_stride + n].copy_from_slice(&b[..n]);
            }
        }
        None if k == 0 => {
            for r in 0..rows {
                out[r * out_stride..r * out_stride + n].fill(0.0);
            }
        }
        None => {}
    }
    if k == 0 {
        return;
    }
    // gemm: dst = alpha·dst + beta·lhs·rhs with lhs = x [rows, k] and rhs = Wᵀ [k, n]
    // (element (i, j) of Wᵀ is w[j·k + i]: row stride 1, column stride k).
    // SAFETY: the asserts above keep every index that gemm touches inside the slices.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

mod attention;
pub use attention::*;
mod rms;
pub use rms::rms_rows;
#[cfg(target_arch = "x86_64")]
pub(crate) use rms::transpose8;

// ------------------------------------------------------------------ tensor-level entry points

/// Rows of width `d` per task of the inference row kernels on the kernel pool
/// (`canon_quant::pool`): about 32 KiB of f32 each, so a decoded token's one row runs inline and
/// a prompt's rows spread over the threads.
pub fn par_rows(d: usize) -> usize {
    (8192 / d.max(1)).max(1)
}

/// Rows per parallel task of the tensor-level kernels: enough work to pay for a task.
fn rows_per_task(rows: usize, d: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    if rows * d < 1 << 15 || threads == 1 {
        rows.max(1)
    } else {
        rows.div_ceil(threads).max(1)
    }
}

/// Layer norm over the last dimension of a tensor with no gradient tracking; `None` when the
/// fused kernel does not apply (not f32 on the CPU, or parameters of the wrong size), so the caller
/// falls back to composed ops.
pub fn layer_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    let d = match x.dims().last() {
        Some(&d) if d > 0 => d,
        _ => return Ok(None),
    };
    if x.dtype() != DType::F32 || !matches!(x.device(), Device::Cpu) {
        return Ok(None);
    }
    let Some(g) = F32Data::new(gamma) else {
        return Ok(None);
    };
    let b = match beta {
        Some(b) => match F32Data::new(b) {
            Some(b) => Some(b),
            None => return Ok(None),
        },
        None => None,
    };
    if g.len() != d || b.as_ref().is_some_and(|b| b.len() != d) {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let mut out: Vec<f32> = match F32Data::new(&x) {
        Some(v) => v.to_vec(),
        None => return Ok(None),
    };
    let rows = out.len() / d;
    let b = b.as_deref();
    out.par_chunks_mut(rows_per_task(rows, d) * d)
        .for_each(|c| layer_norm_rows(c, None, None, d, &g, b, eps as f32));
    Ok(Some(Tensor::from_vec(out, x.shape(), &Device::Cpu)?))
}

/// Exact GELU of a tensor with no gradient tracking; `None` when not f32 on the CPU.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if x.dtype() != DType::F32 || !matches!(x.device(), Device::Cpu) {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let mut out: Vec<f32> = match F32Data::new(&x) {
        Some(v) => v.to_vec(),
        None => return Ok(None),
    };
    let n = out.len();
    out.par_chunks_mut(rows_per_task(n, 1).max(4096))
        .for_each(gelu_erf_inplace);
    Ok(Some(Tensor::from_vec(out, x.shape(), &Device::Cpu)?))
}

/// `GELU_tanh(gate) · up` of two tensors of one shape with no gradient tracking (the feed-forward
/// of Gemma: one pass instead of candle's `gelu` and a product, each a whole tensor written and
/// read again); `None` when either is not f32 on the CPU or the shapes differ.
pub fn geglu_tanh(gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    gated(gate, up, geglu_tanh_inplace)
}

/// `SiLU(gate) · up` (SwiGLU's product: LLaMA, SmolLM2, Qwen) for tensors with no gradient
/// tracking, as [`geglu_tanh`] does for GeGLU; `None` when the fused kernel does not apply.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    gated(gate, up, silu_mul_inplace)
}

/// `f(gate, up)` in place on a copy of the gate, on the kernel pool; `None` unless both are f32
/// CPU tensors of one shape with no gradient tracking.
fn gated(
    gate: &Tensor,
    up: &Tensor,
    f: fn(&mut [f32], &[f32]),
) -> candle_core::Result<Option<Tensor>> {
    if gate.shape() != up.shape() || !no_grad(&[gate, up]) {
        return Ok(None);
    }
    for t in [gate, up] {
        if t.dtype() != DType::F32 || !matches!(t.device(), Device::Cpu) {
            return Ok(None);
        }
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let (Some(g), Some(u)) = (F32Data::new(&gate), F32Data::new(&up)) else {
        return Ok(None);
    };
    // On the kernel pool in chunks of 32 KiB, each task copying its part of the gate first.
    const CHUNK: usize = 8192;
    let (g, u): (&[f32], &[f32]) = (&g, &u);
    let out = canon_quant::pool::par_vec_f32(g.len(), CHUNK, &|c, o| {
        let at = c * CHUNK;
        o.copy_from_slice(&g[at..at + o.len()]);
        f(o, &u[at..at + o.len()]);
    });
    Ok(Some(Tensor::from_vec(out, gate.shape(), &Device::Cpu)?))
}

#[cfg(test)]
mod tests;
