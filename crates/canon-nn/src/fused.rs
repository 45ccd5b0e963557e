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
fn has_avx2_fma() -> bool {
    // std caches the CPUID answer; this is a load and a test.
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Defines `pub fn $name(args)` that runs `$imp::<true>` compiled with AVX2+FMA when the CPU has
/// them and `$imp::<false>` (baseline target features, no fused multiply-add) otherwise.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident / $avx:ident => $imp:ident ($($a:ident : $t:ty),*)) => {
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
fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// Sum with eight independent lanes (vectorises; pairwise at the end).
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let tail: f32 = it.remainder().iter().sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `Σ (x − m)²` with eight lanes.
#[inline(always)]
fn sum_sq_dev8<const F: bool>(x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            let d = c[i] - m;
            acc[i] = fma::<F>(d, d, acc[i]);
        }
    }
    let tail: f32 = it.remainder().iter().map(|v| (v - m) * (v - m)).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

// ------------------------------------------------------------------ exp, erf, GELU

/// `eˣ` to about one ulp for `x ∈ [−87, 88]` (inputs are clamped there): `x = n·ln2 + r`,
/// `|r| ≤ ln2/2`, `eʳ` by its Taylor series to r⁷ (truncation < 5e-9), `2ⁿ` through the exponent
/// bits. Branch-free so that loops over it vectorise.
#[inline(always)]
fn exp<const F: bool>(x: f32) -> f32 {
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
fn erf<const F: bool>(z: f32) -> f32 {
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

// ------------------------------------------------------------------ softmax, layer norm

#[inline(always)]
fn softmax_impl<const F: bool>(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
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

// ------------------------------------------------------------------ attention

/// Sizes of a packed self-attention problem.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence (padded length).
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Scratch buffers of the attention kernel, reused across heads.
#[derive(Default)]
struct AttnScratch {
    kept: Vec<usize>,
    /// One query with its bias added.
    q: Vec<f32>,
    /// `Kᵀ` of every head over the kept keys, `[heads, head_dim, nk_padded]` (padding columns
    /// zero).
    kt: Vec<f32>,
    /// `V` of every head over the kept keys, `[heads, nk, head_dim]`.
    v: Vec<f32>,
    scores: Vec<f32>,
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn self_attention_impl<const F: bool>(
    qkv: &[f32],
    stride: usize,
    bias: Option<&[f32]>,
    keep: &[f32],
    dims: AttnDims,
    out: &mut [f32],
    out_stride: usize,
    sc: &mut AttnScratch,
) {
    let AttnDims {
        batch,
        seq: t,
        heads,
        head_dim: hd,
    } = dims;
    let d = heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    for s in 0..batch {
        sc.kept.clear();
        sc.kept.extend((0..t).filter(|&j| keep[s * t + j] != 0.0));
        // A row with no real key: every score gets the same huge negative bias in the composed
        // path, i.e. uniform weights over all keys.
        let uniform = sc.kept.is_empty();
        if uniform {
            sc.kept.extend(0..t);
        }
        let nk = sc.kept.len();
        // Scores are computed for 32 keys at a time (four 8-lane accumulators held in registers):
        // the key axis of the Kᵀ tile is padded with zeros to a multiple of 32.
        let nkp = nk.div_ceil(32) * 32;
        sc.kt.clear();
        sc.kt.resize(heads * hd * nkp, 0.0);
        sc.v.resize(heads * nk * hd, 0.0);
        sc.scores.resize(nkp, 0.0);
        sc.q.resize(hd, 0.0);
        // One sequential pass over the sequence's rows gathers every head's keys (transposed,
        // `[h][c][j]`) and values (`[h][j][c]`) into small tiles, biases added; reading whole rows
        // in order is what the prefetchers follow, and leaves the rows in cache for the queries.
        for (jj, &j) in sc.kept.iter().enumerate() {
            let row = &qkv[(s * t + j) * stride..][..3 * d];
            for h in 0..heads {
                let (ko, vo) = (d + h * hd, 2 * d + h * hd);
                let kt = &mut sc.kt[h * hd * nkp..(h + 1) * hd * nkp];
                let vdst = &mut sc.v[(h * nk + jj) * hd..(h * nk + jj + 1) * hd];
                match bias {
                    Some(b) => {
                        for (c, (&k, bk)) in row[ko..ko + hd].iter().zip(&b[ko..]).enumerate() {
                            kt[c * nkp + jj] = k + bk;
                        }
                        for ((dst, &v), bv) in vdst.iter_mut().zip(&row[vo..vo + hd]).zip(&b[vo..])
                        {
                            *dst = v + bv;
                        }
                    }
                    None => {
                        for (c, &k) in row[ko..ko + hd].iter().enumerate() {
                            kt[c * nkp + jj] = k;
                        }
                        vdst.copy_from_slice(&row[vo..vo + hd]);
                    }
                }
            }
        }
        for h in 0..heads {
            let qo = h * hd;
            let kt = &sc.kt[h * hd * nkp..(h + 1) * hd * nkp];
            let vt = &sc.v[h * nk * hd..(h + 1) * nk * hd];
            for i in 0..t {
                let q = &qkv[(s * t + i) * stride + qo..][..hd];
                let q = match bias {
                    Some(b) => {
                        for ((dst, &x), bq) in sc.q.iter_mut().zip(q).zip(&b[qo..]) {
                            *dst = x + bq;
                        }
                        &sc.q[..]
                    }
                    None => q,
                };
                if uniform {
                    sc.scores[..nk].fill(1.0 / nk as f32);
                } else {
                    // s_j = (q · k_j) / √d_k: Σ_c q_c · Kᵀ[c, j..j+32].
                    for g in (0..nkp).step_by(32) {
                        let mut acc = [[0f32; 8]; 4];
                        for (c, &qc) in q.iter().enumerate() {
                            let k = &kt[c * nkp + g..][..32];
                            for (a, k8) in acc.iter_mut().zip(k.chunks_exact(8)) {
                                for l in 0..8 {
                                    a[l] = fma::<F>(qc, k8[l], a[l]);
                                }
                            }
                        }
                        for (dst, a) in sc.scores[g..g + 32].chunks_exact_mut(8).zip(&acc) {
                            dst.copy_from_slice(a);
                        }
                    }
                    let p = &mut sc.scores[..nk];
                    p.iter_mut().for_each(|v| *v *= scale);
                    softmax_impl::<F>(p);
                }
                // o = Σ_j p_j v_j, 32 output columns at a time in registers.
                let o = &mut out[(s * t + i) * out_stride + h * hd..][..hd];
                let p = &sc.scores[..nk];
                let mut c0 = 0;
                while c0 + 32 <= hd {
                    let mut acc = [[0f32; 8]; 4];
                    for (&pj, vrow) in p.iter().zip(vt.chunks_exact(hd)) {
                        for (a, v8) in acc.iter_mut().zip(vrow[c0..c0 + 32].chunks_exact(8)) {
                            for l in 0..8 {
                                a[l] = fma::<F>(pj, v8[l], a[l]);
                            }
                        }
                    }
                    for (dst, a) in o[c0..c0 + 32].chunks_exact_mut(8).zip(&acc) {
                        dst.copy_from_slice(a);
                    }
                    c0 += 32;
                }
                if c0 < hd {
                    let o = &mut o[c0..];
                    o.fill(0.0);
                    for (&pj, vrow) in p.iter().zip(vt.chunks_exact(hd)) {
                        for (o, &v) in o.iter_mut().zip(&vrow[c0..]) {
                            *o = fma::<F>(pj, v, *o);
                        }
                    }
                }
            }
        }
    }
}

dispatch! {
    fn self_attention_dispatch / self_attention_avx2 => self_attention_impl(
        qkv: &[f32],
        stride: usize,
        bias: Option<&[f32]>,
        keep: &[f32],
        dims: AttnDims,
        out: &mut [f32],
        out_stride: usize,
        sc: &mut AttnScratch
    )
}

/// Bidirectional multi-head self-attention (Vaswani et al., 2017, eq. 1) for inference:
/// `softmax(Q Kᵀ/√d_k) V` per (sequence, head), keys with `keep == 0` left out (the same result as
/// an additive −∞ mask, without building one).
///
/// `qkv: [batch·seq, stride]` holds Q in columns `0..d`, K in `d..2d`, V in `2d..3d`
/// (`d = heads·head_dim`, head `h` in columns `h·head_dim..` of each), to which `bias` (`[3d]`, the
/// projections' biases) is added on the fly; `keep: [batch·seq]` is 1 for real tokens and 0 for
/// padding; `out: [batch·seq, out_stride]` receives the heads concatenated.
#[allow(clippy::too_many_arguments)]
pub fn self_attention(
    qkv: &[f32],
    stride: usize,
    bias: Option<&[f32]>,
    keep: &[f32],
    dims: AttnDims,
    out: &mut [f32],
    out_stride: usize,
) {
    let rows = dims.batch * dims.seq;
    let d = dims.heads * dims.head_dim;
    if rows == 0 || d == 0 {
        return;
    }
    assert!(stride >= 3 * d && qkv.len() >= (rows - 1) * stride + 3 * d);
    assert!(out_stride >= d && out.len() >= (rows - 1) * out_stride + d);
    assert!(keep.len() >= rows);
    assert!(bias.is_none_or(|b| b.len() >= 3 * d));
    let mut scratch = AttnScratch::default();
    self_attention_dispatch(qkv, stride, bias, keep, dims, out, out_stride, &mut scratch);
}

// ------------------------------------------------------------------ tensor-level entry points

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

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::{Tol, assert_close_f32, randn, to_vec};

    // Both instantiations are checked on every CPU: `mul_add` is exact fused multiply-add
    // everywhere (in software where the CPU lacks it), so `::<true>` is correct, only slower, there.

    #[test]
    fn exp_is_accurate_over_its_range() {
        let (mut w_fma, mut w_plain) = (0.0f64, 0.0f64);
        let mut x = -87.0f32;
        while x < 88.0 {
            let r = (x as f64).exp();
            w_fma = w_fma.max(((exp::<true>(x) as f64 - r) / r).abs());
            w_plain = w_plain.max(((exp::<false>(x) as f64 - r) / r).abs());
            x += 0.0137;
        }
        assert!(
            w_fma < 4e-7 && w_plain < 4e-7,
            "exp relative error {w_fma:e} / {w_plain:e}"
        );
    }

    #[test]
    fn erf_error_is_within_the_handbook_bound() {
        // erf to 10 digits.
        for (z, r) in [
            (1.0f32, 0.842_700_792_9f64),
            (0.5, 0.520_499_877_8),
            (-1.0, -0.842_700_792_9),
            (2.5, 0.999_593_047_98),
            (0.01, 0.011_283_415_6),
        ] {
            // The formula's 1.5e-7 plus f32 rounding (cancellation in 1 − …).
            for e in [erf::<true>(z), erf::<false>(z)] {
                assert!((e as f64 - r).abs() < 5e-7, "erf({z}) = {e}, expected {r}");
            }
        }
    }

    #[test]
    fn gelu_matches_candle_erf_gelu() {
        let x = (randn(&[4096], 5) * 3.0).unwrap();
        let reference = to_vec(&x.gelu_erf().unwrap());
        for simd in [true, false] {
            let mut v = to_vec(&x);
            if simd {
                gelu_erf_inplace(&mut v);
            } else {
                gelu_erf_impl::<false>(&mut v);
            }
            // A&S 7.1.26: |Δerf| ≤ 1.5e-7, so |Δgelu| ≤ ½|x|·1.5e-7 plus rounding.
            assert_close_f32(&v, &reference, Tol::new(2e-6, 1e-6));
        }
        // Extremes saturate to x and 0, and the odd case 0 stays 0.
        let mut v = vec![-30.0, 0.0, 30.0, f32::MIN_POSITIVE];
        gelu_erf_inplace(&mut v);
        assert_eq!(&v[..3], &[-0.0, 0.0, 30.0]);
    }

    #[test]
    fn layer_norm_rows_with_residual_matches_candle() {
        let (rows, d) = (7, 37);
        let x = randn(&[rows, d], 1);
        let r = randn(&[rows, d], 2);
        let g = randn(&[d], 3);
        let b = randn(&[d], 4);
        let sum = (&x + &r).unwrap();
        let reference = to_vec(&candle_nn::ops::layer_norm(&sum, &g, &b, 1e-12).unwrap());
        let mut v = to_vec(&x);
        layer_norm_rows(
            &mut v,
            Some(&to_vec(&r)),
            None,
            d,
            &to_vec(&g),
            Some(&to_vec(&b)),
            1e-12,
        );
        assert_close_f32(&v, &reference, Tol::F32);
        let mut v = to_vec(&sum);
        layer_norm_impl::<false>(&mut v, None, None, d, &to_vec(&g), Some(&to_vec(&b)), 1e-12);
        assert_close_f32(&v, &reference, Tol::F32);
        // The residual's own bias folded in: LN(x + (r + rb)).
        let rb = randn(&[d], 5);
        let sum = (&x + r.broadcast_add(&rb).unwrap()).unwrap();
        let reference = to_vec(&candle_nn::ops::layer_norm(&sum, &g, &b, 1e-12).unwrap());
        let mut v = to_vec(&x);
        layer_norm_rows(
            &mut v,
            Some(&to_vec(&r)),
            Some(&to_vec(&rb)),
            d,
            &to_vec(&g),
            Some(&to_vec(&b)),
            1e-12,
        );
        assert_close_f32(&v, &reference, Tol::F32);
    }

    #[test]
    fn bias_gelu_equals_gelu_of_the_sum() {
        let x = (randn(&[5, 24], 6) * 2.0).unwrap();
        let b = randn(&[24], 7);
        let reference = to_vec(&x.broadcast_add(&b).unwrap().gelu_erf().unwrap());
        let mut v = to_vec(&x);
        bias_gelu_erf_rows(&mut v, &to_vec(&b));
        assert_close_f32(&v, &reference, Tol::new(2e-6, 1e-6));
    }

    #[test]
    fn linear_matches_matmul_and_fills_a_column_block() {
        let (rows, k, n) = (9, 13, 6);
        let x = randn(&[rows, k], 1);
        let w = randn(&[n, k], 2);
        let b = randn(&[n], 3);
        let reference = to_vec(
            &x.matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap(),
        );
        // Write into columns 2..2+n of a [rows, n + 3] buffer; the other columns stay untouched.
        let stride = n + 3;
        let mut out = vec![7.0f32; rows * stride];
        linear(
            &to_vec(&x),
            rows,
            k,
            &to_vec(&w),
            n,
            Some(&to_vec(&b)),
            &mut out[2..],
            stride,
            Parallelism::None,
        );
        let block: Vec<f32> = (0..rows)
            .flat_map(|r| out[r * stride + 2..r * stride + 2 + n].to_vec())
            .collect();
        assert_close_f32(&block, &reference, Tol::F32);
        assert!((0..rows).all(|r| out[r * stride] == 7.0 && out[r * stride + 1] == 7.0));
    }

    fn check_self_attention(b: usize, t: usize, h: usize, hd: usize, seed: u64, with_bias: bool) {
        let d = h * hd;
        let raw = (randn(&[b * t, 3 * d], seed) * 2.0).unwrap();
        let bias = randn(&[3 * d], seed + 100);
        // The composed reference sees the biases added; the kernel adds them itself.
        let qkv = if with_bias {
            raw.broadcast_add(&bias).unwrap()
        } else {
            raw.clone()
        };
        // Sequence 0 full, sequence 1 with its last keys padded, sequence 2 without any real key
        // (uniform weights, as the composed additive mask gives).
        let keep_v: Vec<f32> = (0..b * t)
            .map(|r| match r / t {
                0 => 1.0,
                1 => f32::from(u8::from(r % t < t / 2 + 1)),
                _ => 0.0,
            })
            .collect();
        let keep = Tensor::from_vec(keep_v.clone(), (b, t), &Device::Cpu).unwrap();
        // Composed reference: [b·t, 3d] -> three [b, h, t, hd].
        let split = |i: usize| {
            qkv.narrow(1, i * d, d)
                .unwrap()
                .reshape((b, t, h, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let reference = crate::attention(
            &split(0),
            &split(1),
            &split(2),
            crate::AttnMask::Padding(&keep),
        )
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b * t, d))
        .unwrap();
        let mut out = vec![0f32; b * t * d];
        let bias_v = to_vec(&bias);
        self_attention(
            &to_vec(&raw),
            3 * d,
            with_bias.then_some(&bias_v[..]),
            &keep_v,
            AttnDims {
                batch: b,
                seq: t,
                heads: h,
                head_dim: hd,
            },
            &mut out,
            d,
        );
        assert_close_f32(&out, &to_vec(&reference), Tol::F32);
    }

    #[test]
    fn self_attention_matches_composed_attention_with_padding() {
        // Head sizes below, at and above the 32-wide register block; key counts below and above
        // the 32-key score block.
        check_self_attention(3, 5, 2, 4, 9, false);
        check_self_attention(3, 22, 3, 32, 10, true);
        check_self_attention(3, 37, 2, 40, 11, false);
        check_self_attention(3, 70, 2, 64, 12, true);
    }

    #[test]
    fn tensor_entry_points_refuse_what_they_cannot_do() {
        let x = randn(&[2, 8], 1).to_dtype(DType::F64).unwrap();
        let g = randn(&[8], 2);
        assert!(layer_norm(&x, &g, None, 1e-5).unwrap().is_none());
        assert!(gelu_erf(&x).unwrap().is_none());
        // Wrong parameter size.
        let x = randn(&[2, 8], 1);
        assert!(
            layer_norm(&x, &randn(&[7], 2), None, 1e-5)
                .unwrap()
                .is_none()
        );
        // A transposed (non-contiguous) input still works.
        let xt = randn(&[8, 2], 3).t().unwrap();
        let y = layer_norm(&xt, &g, None, 1e-5).unwrap().unwrap();
        assert_eq!(y.dims(), &[2, 8]);
    }
}
