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
//! Every kernel takes contiguous f32 on the CPU (inputs are made contiguous first); they are checked
//! against the composed ops and by finite differences below.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

mod flash;
mod sgemm;
pub use flash::{
    TrainMask, flash_attention, flash_attention_bias, packed_causal_attention, padding_keep,
};

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

/// `c[m×n]` (rows `ldc` apart) `= (c if acc) + alpha · A B` with `A[m×k]` element `(i, l)` at
/// `a[i·ars + l·acs]` and `B[k×n]` element `(l, j)` at `b[l·brs + j·bcs]`, on the `gemm` crate.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    (a, ars, acs): (&[f32], usize, usize),
    (b, brs, bcs): (&[f32], usize, usize),
    alpha: f32,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    // The furthest element each operand touches must lie inside its slice: the callers' shapes
    // guarantee it, and the raw-pointer product below relies on it.
    let inside = (m - 1) * ldc + n <= c.len()
        && (m - 1) * ars + (k - 1) * acs < a.len()
        && (k - 1) * brs + (n - 1) * bcs < b.len();
    assert!(inside, "mm: a product out of bounds");
    // Skinny products (a LoRA adapter's rank-8 side) would fill a fraction of the 14 × 32 tile:
    // they stay on the crate, in f32.
    let bf16 = BF16.load(Ordering::Relaxed);
    if (bf16 || own_kernel()) && m >= sgemm::MR && n >= sgemm::NR {
        let threads = match par {
            gemm::Parallelism::Rayon(n) => n.max(1),
            _ => 1,
        };
        // SAFETY: AVX-512F (and AVX512_BF16 when `bf16`: `set_bf16_products` checked it) is
        // present, every index lies inside its slice (checked above) and `m, n, k ≥ 1`.
        unsafe {
            sgemm::sgemm(
                (m, n, k),
                c,
                ldc,
                acc,
                (a, ars, acs),
                (b, brs, bcs),
                alpha,
                threads,
                bf16,
            )
        };
        return;
    }
    let threads = match par {
        gemm::Parallelism::Rayon(t) => t,
        _ => 1,
    };
    if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= SPLIT_MIN_WORK {
        split_mm(
            (m, n, k),
            c,
            ldc,
            acc,
            (a, ars, acs),
            (b, brs, bcs),
            alpha,
            threads,
        );
        return;
    }
    // SAFETY: every element read or written lies inside its slice (checked above); `c` does not
    // alias `a` or `b` (a unique borrow).
    unsafe {
        crate_mm(
            (m, n, k),
            c.as_mut_ptr(),
            ldc,
            acc,
            (a, ars, acs),
            (b, brs, bcs),
            alpha,
            par,
        )
    }
}

/// Below this many multiply-adds a product stays on the crate's own thread split.
const SPLIT_MIN_WORK: usize = 1 << 22;
/// Block edges of [`split_mm`]: a multiple of the crate's register tiles (16 × 6 with AVX2 + FMA,
/// 48 × 8 with AVX-512 in either orientation), so no part ends on a partial tile it need not have.
const SPLIT_ALIGN: usize = 48;

/// `mm` over `threads` rayon tasks, each a single-threaded crate product on its own block of
/// `C`: the larger of `C`'s two sides is cut into equal tile-aligned parts, so each task reads a
/// `threads`-th of the larger operand and all of the smaller one, packs its own panels, and meets
/// the others once, at the end. The crate's own split synchronises its threads at every depth
/// block and panel packing; on the nanoGPT step at 2 threads (AVX2 Zen 2) this split takes the
/// products from 1.14 to 1.01 s per step (`canon-train`'s `examples/step_profile.rs`). Each
/// element of `C` is summed over `k` by the crate's single-threaded kernel, so a given thread
/// count always gives the same bits; its depth blocking depends on the part's shape, so another
/// thread count may round differently.
#[allow(clippy::too_many_arguments)]
fn split_mm(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    (a, ars, acs): (&[f32], usize, usize),
    (b, brs, bcs): (&[f32], usize, usize),
    alpha: f32,
    threads: usize,
) {
    /// `C`'s base pointer, shared by the tasks that write disjoint blocks of it.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: the tasks write disjoint blocks of `C` (below) and the caller's unique borrow of
    // `c` outlives the scope that runs them.
    unsafe impl Send for Out {}
    // SAFETY: as above: shared only to hand each task the base of its own block.
    unsafe impl Sync for Out {}
    impl Out {
        // A method, so that the closure below captures the whole `Out` (Send + Sync), not its
        // raw-pointer field.
        fn at(self, i: usize) -> *mut f32 {
            self.0.wrapping_add(i)
        }
    }
    let rows = m >= n;
    let side = if rows { m } else { n };
    let part = side.div_ceil(threads).div_ceil(SPLIT_ALIGN) * SPLIT_ALIGN;
    let parts: Vec<(usize, usize)> = (0..side)
        .step_by(part.max(1))
        .map(|s| (s, (s + part).min(side)))
        .collect();
    let out = Out(c.as_mut_ptr());
    parts.par_iter().for_each(|&(s, e)| {
        // SAFETY: `mm` checked that every index of the whole product lies inside its slice; a
        // block `[s, e)` of rows (columns) of `C` reads rows `[s, e)` of `A` (columns of `B`) and
        // writes only its own rows (columns) of `C`, which no other task writes.
        unsafe {
            if rows {
                crate_mm(
                    (e - s, n, k),
                    out.at(s * ldc),
                    ldc,
                    acc,
                    (&a[s * ars..], ars, acs),
                    (b, brs, bcs),
                    alpha,
                    gemm::Parallelism::None,
                )
            } else {
                crate_mm(
                    (m, e - s, k),
                    out.at(s),
                    ldc,
                    acc,
                    (a, ars, acs),
                    (&b[s * bcs..], brs, bcs),
                    alpha,
                    gemm::Parallelism::None,
                )
            }
        }
    });
}

/// One `gemm` crate call: `c[m×n] (rows ldc apart) = (c if acc) + alpha · A B`.
///
/// # Safety
/// `m, n, k ≥ 1`; every element `(i, j)` of `C` at `c + i·ldc + j` is valid for writes and
/// written by no one else during the call; `A` and `B` hold every index their strides name
/// (`(m−1)·ars + (k−1)·acs` and `(k−1)·brs + (n−1)·bcs`) and do not overlap `C`.
#[allow(clippy::too_many_arguments)]
unsafe fn crate_mm(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    acc: bool,
    (a, ars, acs): (&[f32], usize, usize),
    (b, brs, bcs): (&[f32], usize, usize),
    alpha: f32,
    par: gemm::Parallelism,
) {
    // SAFETY: the caller's contract above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            acc,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            bcs as isize,
            brs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

/// Whether `mm` runs the own AVX-512 f32 product (`sgemm`) instead of the `gemm` crate: only when
/// the environment sets `CANON_GEMM=own` on a CPU with AVX-512F. Measured on the training step's
/// products (`examples/gemm_roofline.rs`), the crate is as fast in a release build, so it stays
/// the default; the own kernel is the base of the bf16 products.
fn own_kernel() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| sgemm::available() && std::env::var("CANON_GEMM").is_ok_and(|v| v == "own"))
}

static BF16: AtomicBool = AtomicBool::new(false);

/// Mixed precision for training: when on, every product of the training ops with at least 14 rows
/// and 32 columns (the linears forward and backward, the tiled attention, LoRA's base) rounds its
/// operands to bfloat16 and accumulates in f32 with AVX512_BF16's `vdpbf16ps`; outputs, weights,
/// gradients and the optimizer stay f32. Process-wide. Refused on CPUs without AVX512_BF16.
pub fn set_bf16_products(on: bool) -> std::result::Result<(), Bf16Unsupported> {
    if on && !sgemm::bf16_available() {
        return Err(Bf16Unsupported);
    }
    BF16.store(on, Ordering::Relaxed);
    Ok(())
}

/// Whether the training products run in bf16 (`set_bf16_products`).
pub fn bf16_products() -> bool {
    BF16.load(Ordering::Relaxed)
}

/// `set_bf16_products(true)` on a CPU without the instructions.
#[derive(Debug, thiserror::Error)]
#[error(
    "bf16 products need a CPU with AVX-512F and AVX512_BF16 (vdpbf16ps); this one lacks them: train in f32"
)]
pub struct Bf16Unsupported;

/// `mm` for benches: `c[m×n] = (c if acc) + alpha · A B` over strided row-major operands, on the
/// product the training ops use, split over `threads` rayon tasks. Panics if an operand is too
/// short for its shape and strides.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn bench_mm(
    mnk: (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    alpha: f32,
    threads: usize,
) {
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    mm(mnk, c, ldc, acc, a, b, alpha, par)
}

/// The `gemm` crate's thread setting for one large product: rayon's pool when it has threads.
pub(crate) fn par() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// Two independent products side by side on the rayon pool, each given half of its threads (one
/// each at 2 threads); one after the other, each on all of them, when the pool has one thread.
/// The backward's `∂L/∂x = g W` and `∂L/∂W = gᵀ x` have the same number of multiply-adds, so
/// neither side waits long for the other, and each packs its operands once, where a product split
/// over the threads (`split_mm`) packs its shared operand in every part — `gᵀ x` shares the whole
/// `[n, in]` activation. A product's bits do not depend on its thread count (the crate's depth
/// blocking depends on the depth only: `split_mm`), so the results are those of the two products
/// run one after the other.
pub(crate) fn join_products<A, B>(a: A, b: B)
where
    A: FnOnce(gemm::Parallelism) + Send,
    B: FnOnce(gemm::Parallelism) + Send,
{
    let t = rayon::current_num_threads();
    if t < 2 {
        let p = par();
        a(p);
        b(p);
        return;
    }
    let on = |n: usize| {
        if n > 1 {
            gemm::Parallelism::Rayon(n)
        } else {
            gemm::Parallelism::None
        }
    };
    let (pa, pb) = (on(t / 2), on(t - t / 2));
    rayon::join(|| a(pa), || b(pb));
}

// ------------------------------------------------------------------ causal softmax

struct CausalSoftmax {
    offset: usize,
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let dims = l.dims();
        let tk = last_dim(l);
        let tq = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        let mut y = zeros(x.len());
        y.par_chunks_mut(tk * ROWS_PER_TASK)
            .zip(x.par_chunks(tk * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(c, (yc, xc))| {
                for (r, (yr, xr)) in yc.chunks_mut(tk).zip(xc.chunks(tk)).enumerate() {
                    let i = (c * ROWS_PER_TASK + r) % tq;
                    let n = (self.offset + i + 1).min(tk);
                    let m = xr[..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let mut sum = 0f32;
                    for j in 0..n {
                        let e = (self.scale * (xr[j] - m)).exp();
                        yr[j] = e;
                        sum += e;
                    }
                    let inv = 1.0 / sum;
                    yr[..n].iter_mut().for_each(|v| *v *= inv);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(
            y.apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?,
        ))
    }
}

struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let tk = last_dim(l1);
        let mut dx = zeros(y.len());
        dx.par_chunks_mut(tk * ROWS_PER_TASK)
            .zip(
                y.par_chunks(tk * ROWS_PER_TASK)
                    .zip(g.par_chunks(tk * ROWS_PER_TASK)),
            )
            .for_each(|(dc, (yc, gc))| {
                for ((dr, yr), gr) in dc.chunks_mut(tk).zip(yc.chunks(tk)).zip(gc.chunks(tk)) {
                    let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    for j in 0..tk {
                        dr[j] = self.scale * yr[j] * (gr[j] - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `softmax(scale · x + causal mask)` over the last dimension of `x: [..., tq, tk]`, with backward.
pub fn causal_softmax(x: &Tensor, offset: usize, scale: f64) -> crate::Result<Tensor> {
    x.contiguous()?.apply_op1(CausalSoftmax {
        offset,
        scale: scale as f32,
    })
}

// ------------------------------------------------------------------ layer norm

struct LayerNormOp {
    eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-train"
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
        let _t = crate::profile::scope(crate::profile::Phase::Norms);
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let b = slice(s3, l3, self.name())?;
        let d = last_dim(l1);
        if w.len() != d || b.len() != d {
            candle_core::bail!("layer norm: parameters of {} for rows of {d}", w.len());
        }
        let mut y = zeros(x.len());
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    for j in 0..d {
                        yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _t = crate::profile::scope(crate::profile::Phase::Norms);
        let d = w.elem_count();
        let g = g.contiguous()?;
        let (xv, wv, gv) = (values(x)?, values(w)?, values(&g)?);
        let mut dx = zeros(xv.len());
        // Per task: dx rows, and partial sums of dγ and dβ.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(
                xv.par_chunks(d * ROWS_PER_TASK)
                    .zip(gv.par_chunks(d * ROWS_PER_TASK)),
            )
            .map(|(dc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                let mut db = vec![0f32; d];
                let mut xhat = vec![0f32; d];
                for ((dr, xr), gr) in dc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for j in 0..d {
                        xhat[j] = (xr[j] - mean) * rstd;
                        let gh = gr[j] * wv[j];
                        m1 += gh;
                        m2 += gh * xhat[j];
                        dw[j] += gr[j] * xhat[j];
                        db[j] += gr[j];
                    }
                    let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                    for j in 0..d {
                        dr[j] = rstd * (gr[j] * wv[j] - m1 - xhat[j] * m2);
                    }
                }
                (dw, db)
            })
            .collect();
        let mut dw = vec![0f32; d];
        let mut db = vec![0f32; d];
        for (pw, pb) in partial {
            dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

/// Layer norm over the last dimension with a backward pass (no bias: β = 0, not trained).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> crate::Result<Tensor> {
    let zeros;
    let b = match b {
        Some(b) => b,
        None => {
            zeros = w.zeros_like()?;
            &zeros
        }
    };
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}

// ------------------------------------------------------------------ GELU

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `tanh z = 1 − 2 / (e^{2z} + 1)` on the branch-free exponential (saturates to ±1 where the
/// exponential clamps).
#[inline(always)]
fn tanh_fast<const F: bool>(z: f32) -> f32 {
    1.0 - 2.0 / (crate::fused::exp::<F>(2.0 * z) + 1.0)
}

#[inline(always)]
fn gelu_fwd_impl<const F: bool>(x: &[f32], y: &mut [f32], tanh: bool) {
    if tanh {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + tanh_fast::<F>(SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v)));
        }
    } else {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + crate::fused::erf::<F>(v * INV_SQRT_2));
        }
    }
}

crate::simd::simd_fn! {
    /// GELU of `x` into `y` (exact erf form, or the tanh form).
    pub(crate) fn gelu_fwd => gelu_fwd_impl(x: &[f32], y: &mut [f32], tanh: bool)
}

#[inline(always)]
fn gelu_bwd_impl<const F: bool>(x: &[f32], g: &[f32], dx: &mut [f32], tanh: bool) {
    if tanh {
        for ((o, &v), &gr) in dx.iter_mut().zip(x).zip(g) {
            let t = tanh_fast::<F>(SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v));
            let d = 0.5 * (1.0 + t)
                + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 0.134_145 * v * v);
            *o = gr * d;
        }
    } else {
        for ((o, &v), &gr) in dx.iter_mut().zip(x).zip(g) {
            let d = 0.5 * (1.0 + crate::fused::erf::<F>(v * INV_SQRT_2))
                + v * INV_SQRT_2PI * crate::fused::exp::<F>(-0.5 * v * v);
            *o = gr * d;
        }
    }
}

crate::simd::simd_fn! {
    /// `dx = g · GELU'(x)`.
    pub(crate) fn gelu_bwd => gelu_bwd_impl(x: &[f32], g: &[f32], dx: &mut [f32], tanh: bool)
}

struct Gelu {
    tanh: bool,
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-train"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        let x = slice(s, l, self.name())?;
        let mut y = zeros(x.len());
        let tanh = self.tanh;
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK))
            .for_each(|(yc, xc)| gelu_fwd(xc, yc, tanh));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        Ok(Some(x.apply_op2_no_bwd(
            &g.contiguous()?,
            &GeluBwd { tanh: self.tanh },
        )?))
    }
}

struct GeluBwd {
    tanh: bool,
}

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "gelu-train-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let mut dx = zeros(x.len());
        let tanh = self.tanh;
        dx.par_chunks_mut(ELEMS_PER_TASK)
            .zip(
                x.par_chunks(ELEMS_PER_TASK)
                    .zip(g.par_chunks(ELEMS_PER_TASK)),
            )
            .for_each(|(dc, (xc, gc))| gelu_bwd(xc, gc, dc, tanh));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// GELU (exact when `tanh` is false, the tanh approximation otherwise) with a backward pass.
pub fn gelu(x: &Tensor, tanh: bool) -> crate::Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu { tanh })
}

// ------------------------------------------------------------------ RMS norm

struct RmsNormOp {
    eps: f32,
}

fn rms_rstd(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::Norms);
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let d = last_dim(l1);
        if w.len() != d {
            candle_core::bail!("rms norm: a weight of {} for rows of {d}", w.len());
        }
        let mut y = zeros(x.len());
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let r = rms_rstd(xr, self.eps);
                    for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                        *o = v * r * g;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let _t = crate::profile::scope(crate::profile::Phase::Norms);
        let d = w.elem_count();
        let g = g.contiguous()?;
        let (xv, wv, gv) = (values(x)?, values(w)?, values(&g)?);
        let mut dx = zeros(xv.len());
        // x̂ = x r; dx = r (g w − x̂ · mean(g w x̂)); dw = Σ_rows g x̂.
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(
                xv.par_chunks(d * ROWS_PER_TASK)
                    .zip(gv.par_chunks(d * ROWS_PER_TASK)),
            )
            .map(|(dc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                for ((dr, xr), gr) in dc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let r = rms_rstd(xr, self.eps);
                    let mut m = 0f32;
                    for j in 0..d {
                        let xh = xr[j] * r;
                        m += gr[j] * wv[j] * xh;
                        dw[j] += gr[j] * xh;
                    }
                    let m = m / d as f32;
                    for j in 0..d {
                        dr[j] = r * (gr[j] * wv[j] - xr[j] * r * m);
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for p in partial {
            dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}

/// RMS norm `x / √(mean(x²) + eps) · w` over the last dimension (f32) with a backward pass for
/// both the input and the weight.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })
}

// ------------------------------------------------------------------ SiLU(a) ⊙ b (SwiGLU)

struct SiluMul;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

pub(crate) const ELEMS_PER_TASK: usize = 1 << 14;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        let a = slice(s1, l1, self.name())?;
        let b = slice(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "silu-mul: the gate is {:?} but the linear branch {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let mut y = zeros(a.len());
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(
                a.par_chunks(ELEMS_PER_TASK)
                    .zip(b.par_chunks(ELEMS_PER_TASK)),
            )
            .for_each(|(yc, (ac, bc))| {
                for ((o, &u), &v) in yc.iter_mut().zip(ac).zip(bc) {
                    *o = u * sigmoid(u) * v;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let _t = crate::profile::scope(crate::profile::Phase::Activations);
        let g = g.contiguous()?;
        let (av, bv, gv) = (values(a)?, values(b)?, values(&g)?);
        let mut da = zeros(av.len());
        let mut db = zeros(av.len());
        // d silu(a)/da = σ(a) (1 + a (1 − σ(a))).
        da.par_chunks_mut(ELEMS_PER_TASK)
            .zip(db.par_chunks_mut(ELEMS_PER_TASK))
            .zip(
                av.par_chunks(ELEMS_PER_TASK).zip(
                    bv.par_chunks(ELEMS_PER_TASK)
                        .zip(gv.par_chunks(ELEMS_PER_TASK)),
                ),
            )
            .for_each(|((dac, dbc), (ac, (bc, gc)))| {
                for i in 0..ac.len() {
                    let (u, v, gr) = (ac[i], bc[i], gc[i]);
                    let s = sigmoid(u);
                    dac[i] = gr * v * s * (1.0 + u * (1.0 - s));
                    dbc[i] = gr * u * s;
                }
            });
        let dev = a.device();
        Ok((
            Some(Tensor::from_vec(da, a.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

/// SwiGLU's gating `SiLU(a) ⊙ b` (f32, same shapes) in one pass with a backward pass for both.
pub fn silu_mul(a: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, SiluMul)
}

// ------------------------------------------------------------------ log-sum-exp

struct LogSumExp;

impl CustomOp1 for LogSumExp {
    fn name(&self) -> &'static str {
        "logsumexp-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::CrossEntropy);
        let x = slice(s, l, self.name())?;
        let v = last_dim(l);
        let n = x.len() / v;
        let mut out = vec![0f32; n];
        out.par_iter_mut()
            .zip(x.par_chunks(v))
            .for_each(|(o, xr)| *o = row_lse(xr));
        let dims = l.dims();
        let shape: Shape = dims[..dims.len().saturating_sub(1)].to_vec().into();
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::CrossEntropy);
        // d lse / dx_j = softmax(x)_j = exp(x_j − lse).
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let lse: Vec<f32> = y.flatten_all()?.to_vec1()?;
        let gv: Vec<f32> = g.flatten_all()?.to_vec1()?;
        let v = x.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = zeros(xv.len());
        dx.par_chunks_mut(v)
            .zip(xv.par_chunks(v))
            .enumerate()
            .for_each(|(i, (dr, xr))| {
                let (m, gi) = (lse[i], gv[i]);
                for (o, &z) in dr.iter_mut().zip(xr) {
                    *o = gi * (z - m).exp();
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

fn row_lse(x: &[f32]) -> f32 {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if m == f32::NEG_INFINITY {
        return m;
    }
    let s: f32 = x.iter().map(|&z| (z - m).exp()).sum();
    s.ln() + m
}

/// `log Σ_j exp(x_j)` over the last dimension of f32 `x: [..., v]` → `[...]`, one pass per row each
/// way (the backward writes `g · softmax(x)` directly).
pub fn logsumexp(x: &Tensor) -> crate::Result<Tensor> {
    x.contiguous()?.apply_op1(LogSumExp)
}

// ------------------------------------------------------------------ cross-entropy

/// Per-row cross-entropy `log Σ_j exp(z_j) − z_y` over the last dimension; the row log-sum-exps
/// are kept for the backward, which writes `g · (softmax(z) − onehot(y))` into one buffer.
struct CrossEntropyOp {
    targets: Vec<u32>,
    lse: std::sync::Mutex<Vec<f32>>,
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "cross-entropy-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::CrossEntropy);
        let x = slice(s, l, self.name())?;
        let v = last_dim(l).max(1);
        let n = x.len() / v;
        if n != self.targets.len() {
            candle_core::bail!(
                "cross_entropy: expected {n} targets for {n} rows of logits, found {}",
                self.targets.len()
            );
        }
        let mut lse = vec![0f32; n];
        lse.par_iter_mut()
            .zip(x.par_chunks(v))
            .for_each(|(o, xr)| *o = row_lse(xr));
        // The same subtraction as `lse − gather(z, y)`: the same bits as the composed ops.
        let out: Vec<f32> = lse
            .iter()
            .zip(&self.targets)
            .enumerate()
            .map(|(i, (&m, &t))| m - x[i * v + t as usize])
            .collect();
        match self.lse.lock() {
            Ok(mut kept) => *kept = lse,
            Err(_) => candle_core::bail!("cross_entropy: the kept row log-sum-exps were poisoned"),
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::CrossEntropy);
        let lse = match self.lse.lock() {
            Ok(kept) => kept.clone(),
            Err(_) => candle_core::bail!("cross_entropy: the kept row log-sum-exps were poisoned"),
        };
        let gv: Vec<f32> = g.flatten_all()?.to_vec1()?;
        if gv.len() != lse.len() {
            candle_core::bail!(
                "cross_entropy backward: expected {} row gradients, found {}",
                lse.len(),
                gv.len()
            );
        }
        // Rows of (lse, g) beside the logits, read in place by the backward kernel.
        let aux: Vec<f32> = lse.iter().zip(&gv).flat_map(|(&m, &gi)| [m, gi]).collect();
        let aux = Tensor::from_vec(aux, (lse.len(), 2), x.device())?;
        Ok(Some(x.apply_op2_no_bwd(
            &aux,
            &CrossEntropyBwd {
                targets: self.targets.clone(),
            },
        )?))
    }
}

struct CrossEntropyBwd {
    targets: Vec<u32>,
}

impl CustomOp2 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "cross-entropy-train-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let aux = slice(s2, l2, self.name())?;
        let v = last_dim(l1).max(1);
        let mut dx = zeros(x.len());
        dx.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(aux.par_chunks(2).zip(self.targets.par_iter()))
            .for_each(|((dr, xr), (mg, &t))| {
                let (m, gi) = (mg[0], mg[1]);
                for (o, &z) in dr.iter_mut().zip(xr) {
                    *o = gi * (z - m).exp();
                }
                // The composed ops add the gather's −g to the log-sum-exp's gradient.
                dr[t as usize] += -gi;
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Per-row cross-entropy `log Σ_j exp(z_j) − z_{y_i}` of f32 logits `[n, v]` with targets `[n]`
/// → `[n]`, as one op: one pass per row forward, and a backward that writes
/// `g · (softmax(z) − onehot(y))` directly (the composed `logsumexp − gather` keeps a
/// zero-filled scatter buffer and a sum beside the softmax gradient). Values and gradients are
/// the same bits as the composed ops.
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32]) -> crate::Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!(
            "cross_entropy: expected {n} targets for {n} rows of logits, found {}",
            targets.len()
        );
    }
    if let Some((i, &t)) = targets.iter().enumerate().find(|&(_, &t)| t as usize >= v) {
        candle_core::bail!("cross_entropy: target {t} at row {i} is outside the vocabulary of {v}");
    }
    logits.contiguous()?.apply_op1(CrossEntropyOp {
        targets: targets.to_vec(),
        lse: std::sync::Mutex::new(Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_gradients;
    use crate::{AttnMask, LayerNorm, attention};
    use candle_core::{D, Var};
    use canon_testkit::{Tol, assert_close, randn};

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

    /// `mm`'s split over rayon tasks (a large product at 2 and 3 threads: rows cut when `C` is
    /// taller, columns when wider, strided and transposed operands, accumulation with `alpha`)
    /// equals an f64 reference and the crate's single-threaded product, and gives the same bits
    /// when repeated.
    #[test]
    fn split_product_equals_the_single_threaded_one() {
        let mut seed = 7u64;
        let mut rnd = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        };
        // (m, n, k): taller, wider, and an odd shape that leaves a short last part.
        for &(m, n, k) in &[
            (200usize, 100usize, 300usize),
            (70, 250, 260),
            (161, 149, 190),
        ] {
            assert!(
                m * n * k >= SPLIT_MIN_WORK,
                "{m}x{n}x{k} must take the split"
            );
            for (ta, tb, acc) in [
                (false, false, false),
                (true, false, true),
                (false, true, true),
            ] {
                let a = rnd(m * k);
                let b = rnd(k * n);
                let (ars, acs) = if ta { (1, m) } else { (k, 1) };
                let (brs, bcs) = if tb { (1, k) } else { (n, 1) };
                let ldc = n + 5;
                let c0 = rnd((m - 1) * ldc + n);
                let alpha = if acc { 0.5 } else { 1.0 };
                let mut want = c0.clone();
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0f64;
                        for l in 0..k {
                            s += a[i * ars + l * acs] as f64 * b[l * brs + j * bcs] as f64;
                        }
                        let base = if acc { c0[i * ldc + j] as f64 } else { 0.0 };
                        want[i * ldc + j] = (base + alpha as f64 * s) as f32;
                    }
                }
                let mut single = c0.clone();
                mm(
                    (m, n, k),
                    &mut single,
                    ldc,
                    acc,
                    (&a, ars, acs),
                    (&b, brs, bcs),
                    alpha,
                    gemm::Parallelism::None,
                );
                let at = |c: &[f32]| -> Vec<f32> {
                    (0..m)
                        .flat_map(|i| c[i * ldc..i * ldc + n].to_vec())
                        .collect()
                };
                let mut first = None;
                for threads in [2, 3, 3] {
                    let mut c = c0.clone();
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("a rayon pool");
                    pool.install(|| {
                        mm(
                            (m, n, k),
                            &mut c,
                            ldc,
                            acc,
                            (&a, ars, acs),
                            (&b, brs, bcs),
                            alpha,
                            par(),
                        )
                    });
                    // The gaps between rows (ldc > n) are never written.
                    for i in 0..m - 1 {
                        assert_eq!(
                            &c[i * ldc + n..(i + 1) * ldc],
                            &c0[i * ldc + n..(i + 1) * ldc]
                        );
                    }
                    canon_testkit::assert_close_f32(&at(&c), &at(&want), Tol::F32);
                    canon_testkit::assert_close_f32(&at(&c), &at(&single), Tol::F32);
                    if threads == 3 {
                        match &first {
                            None => first = Some(c),
                            Some(f) => assert_eq!(f, &c, "{m}x{n}x{k}: a repeat changed the bits"),
                        }
                    }
                }
            }
        }
    }

    fn wsum(y: &Tensor, seed: u64) -> crate::Result<Tensor> {
        (y * randn(y.dims(), seed))?.sum_all()
    }

    #[test]
    fn causal_attention_matches_the_composed_layer_forward_and_backward() {
        let q = Var::from_tensor(&randn(&[2, 4, 5, 8], 1)).unwrap();
        let k = Var::from_tensor(&randn(&[2, 2, 5, 8], 2)).unwrap();
        let v = Var::from_tensor(&randn(&[2, 2, 5, 8], 3)).unwrap();
        let ours = attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            AttnMask::Causal { offset: 0 },
        )
        .unwrap();
        let refr = crate::attention::attention_composed(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            AttnMask::Causal { offset: 0 },
        )
        .unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 7).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 7).unwrap().backward().unwrap();
        for x in [&q, &k, &v] {
            assert_close(
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
                Tol::new(1e-5, 1e-4),
            );
        }
    }

    /// The tiled op against the composed ops, forward and all three gradients, for every mask
    /// it serves: shapes span several 64-row tiles, grouped K/V heads, a causal offset with
    /// fewer queries than keys, and a padded batch (a sequence with three real keys).
    #[test]
    fn flash_attention_equals_the_composed_ops_for_every_mask() {
        let keep = Tensor::from_vec(
            (0..2 * 70)
                .map(|i| match i / 70 {
                    0 => u32::from(i % 70 < 50),
                    _ => u32::from([0, 10, 69].contains(&(i % 70))),
                })
                .collect::<Vec<u32>>(),
            (2, 70),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let cases: Vec<(usize, usize, usize, AttnMask)> = vec![
            (130, 130, 4, AttnMask::Causal { offset: 0 }),
            (70, 150, 2, AttnMask::Causal { offset: 80 }),
            (70, 70, 1, AttnMask::None),
            (70, 70, 2, AttnMask::Padding(&keep)),
        ];
        for (case, (tq, tk, hkv, mask)) in cases.into_iter().enumerate() {
            let seed = 10 * case as u64;
            let q = Var::from_tensor(&randn(&[2, 4, tq, 16], seed + 1)).unwrap();
            let k = Var::from_tensor(&randn(&[2, hkv, tk, 16], seed + 2)).unwrap();
            let v = Var::from_tensor(&randn(&[2, hkv, tk, 16], seed + 3)).unwrap();
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let ours = attention(qt, kt, vt, mask).unwrap();
            let refr = crate::attention::attention_composed(qt, kt, vt, mask).unwrap();
            assert_close(&ours, &refr, Tol::new(1e-5, 1e-4));
            let g1 = wsum(&ours, seed + 7).unwrap().backward().unwrap();
            let g2 = wsum(&refr, seed + 7).unwrap().backward().unwrap();
            for x in [&q, &k, &v] {
                assert_close(
                    g1.get(x.as_tensor()).unwrap(),
                    g2.get(x.as_tensor()).unwrap(),
                    Tol::new(1e-4, 1e-4),
                );
            }
        }
    }

    /// A sequence that is all padding: the output averages the values uniformly, as the
    /// composed ops' `−1e30` mask gives, and the scores get no gradient (the output does not
    /// depend on them; the composed ops' backward reports a spurious one through the rounded-away
    /// scores, so only the value gradient is compared with them).
    #[test]
    fn flash_attention_over_an_all_padding_sequence() {
        let keep = Tensor::new(&[[0u32, 0, 0, 0]], &candle_core::Device::Cpu).unwrap();
        let q = Var::from_tensor(&randn(&[1, 2, 3, 4], 1)).unwrap();
        let k = Var::from_tensor(&randn(&[1, 2, 4, 4], 2)).unwrap();
        let v = Var::from_tensor(&randn(&[1, 2, 4, 4], 3)).unwrap();
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let ours = attention(qt, kt, vt, AttnMask::Padding(&keep)).unwrap();
        let refr =
            crate::attention::attention_composed(qt, kt, vt, AttnMask::Padding(&keep)).unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let mean = vt
            .mean_keepdim(2)
            .unwrap()
            .broadcast_as((1, 2, 3, 4))
            .unwrap();
        assert_close(&ours, &mean, Tol::F32);
        let g1 = wsum(&ours, 4).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 4).unwrap().backward().unwrap();
        assert_close(g1.get(vt).unwrap(), g2.get(vt).unwrap(), Tol::F32);
        for x in [qt, kt] {
            let zero = x.zeros_like().unwrap();
            assert_close(g1.get(x).unwrap(), &zero, Tol::EXACT);
        }
    }

    #[test]
    fn flash_attention_refuses_bad_shapes_with_an_error() {
        let q = randn(&[1, 2, 3, 4], 1);
        let none = randn(&[1, 1, 0, 4], 2);
        let e = flash_attention(&q, &none, &none, TrainMask::None, 0.5).unwrap_err();
        assert!(e.to_string().contains("at least one key"), "{e}");
        let k = randn(&[1, 3, 5, 4], 2);
        let e = flash_attention(&q, &k, &k, TrainMask::None, 0.5).unwrap_err();
        assert!(e.to_string().contains("multiple of h_kv"), "{e}");
        let k = randn(&[1, 1, 5, 4], 2);
        let short = padding_keep(&Tensor::new(&[[1u32, 1]], q.device()).unwrap()).unwrap();
        let e = flash_attention(&q, &k, &k, short, 0.5).unwrap_err();
        assert!(e.to_string().contains("padding mask of 2 values"), "{e}");
    }

    /// The split heads of a packed `[b, t, (h + 2·h_kv)·d]` tensor, attended with
    /// `flash_attention` and merged back: what `packed_causal_attention` replaces.
    fn composed_packed(
        qkv: &Tensor,
        (h, hkv, d): (usize, usize, usize),
        offset: usize,
        scale: f64,
    ) -> crate::Result<Tensor> {
        let (b, t, _) = qkv.dims3()?;
        let split = |first: usize, heads: usize| -> crate::Result<Tensor> {
            qkv.narrow(2, first * d, heads * d)?
                .reshape((b, t, heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0, h)?, split(h, hkv)?, split(h + hkv, hkv)?);
        let o = flash_attention(&q, &k, &v, TrainMask::Causal { offset }, scale)?;
        o.transpose(1, 2)?.reshape((b, t, h * d))
    }

    /// The packed op equals the split + flash attention + merge it replaces, forward and
    /// backward, bit for bit (same tiles, plain copies around them), with grouped K/V heads,
    /// several 64-row tiles and an offset; and finite differences agree with its gradient.
    #[test]
    fn packed_attention_equals_the_split_heads_and_finite_differences() {
        for &((b, t), (h, hkv, d), offset) in &[
            ((2usize, 5usize), (2usize, 2usize, 4usize), 0usize),
            ((1, 70), (4, 2, 8), 0),
            ((2, 9), (3, 1, 4), 2),
        ] {
            let w = (h + 2 * hkv) * d;
            let x = Var::from_tensor(&randn(&[b, t, w], 11)).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let y = packed_causal_attention(&x, (h, hkv, d), offset, scale).unwrap();
            let want = composed_packed(&x, (h, hkv, d), offset, scale).unwrap();
            assert_eq!(y.dims(), &[b, t, h * d]);
            let bits = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            assert_eq!(bits(&y), bits(&want), "forward, {b}x{t}, heads {h}/{hkv}");
            let g1 = wsum(&y, 3).unwrap().backward().unwrap();
            let g2 = wsum(&want, 3).unwrap().backward().unwrap();
            let (d1, d2) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
            assert_eq!(bits(d1), bits(d2), "gradient, {b}x{t}, heads {h}/{hkv}");
            assert_close(d1, d2, Tol::F32);
        }
        let x = Var::from_tensor(&randn(&[1, 4, 4 * 3], 5)).unwrap();
        check_gradients(
            &[x],
            |t| wsum(&packed_causal_attention(&t[0], (2, 1, 3), 1, 0.6)?, 5),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        let bad = randn(&[1, 4, 10], 1);
        let e = packed_causal_attention(&bad, (2, 1, 3), 0, 0.6).unwrap_err();
        assert!(e.to_string().contains("expected qkv [b, t, 12]"), "{e}");
    }

    #[test]
    fn finite_differences_through_flash_attention() {
        let keep = Tensor::new(&[[1u32, 1, 0, 1, 1]], &candle_core::Device::Cpu).unwrap();
        for mask in [
            TrainMask::Causal { offset: 1 },
            TrainMask::None,
            padding_keep(&keep).unwrap(),
        ] {
            let q = Var::from_tensor(&randn(&[1, 2, 4, 3], 1)).unwrap();
            let k = Var::from_tensor(&randn(&[1, 1, 5, 3], 2)).unwrap();
            let v = Var::from_tensor(&randn(&[1, 1, 5, 3], 3)).unwrap();
            check_gradients(
                &[q, k, v],
                |t| wsum(&flash_attention(&t[0], &t[1], &t[2], mask.clone(), 0.6)?, 5),
                1e-2,
                2e-3,
                2e-2,
            )
            .unwrap();
        }
    }

    /// The biased op against the composed ops (scores materialised, bias and mask added),
    /// forward and the gradients of Q, K, V and the bias, for biases broadcast over sequences
    /// and heads (T5), full ones (Transformer-XL), lower-rank ones, with every mask, grouped
    /// K/V heads and several 64-row tiles.
    #[test]
    fn biased_attention_equals_the_composed_ops() {
        use crate::attention::{AttnOpts, attend, attention_composed_with};
        let keep = Tensor::from_vec(
            (0..2 * 70)
                .map(|i| match i / 70 {
                    0 => u32::from(i % 70 < 50),
                    _ => u32::from([0, 10, 69].contains(&(i % 70))),
                })
                .collect::<Vec<u32>>(),
            (2, 70),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        type Case<'a> = (usize, usize, usize, Vec<usize>, AttnMask<'a>, Option<f64>);
        let cases: Vec<Case> = vec![
            (
                130,
                130,
                4,
                vec![1, 4, 130, 130],
                AttnMask::Causal { offset: 0 },
                Some(1.0),
            ),
            (
                70,
                150,
                2,
                vec![2, 4, 70, 150],
                AttnMask::Causal { offset: 80 },
                None,
            ),
            (70, 70, 1, vec![2, 1, 70, 70], AttnMask::None, Some(0.3)),
            (
                70,
                70,
                2,
                vec![1, 4, 70, 70],
                AttnMask::Padding(&keep),
                Some(1.0),
            ),
            (33, 70, 4, vec![70], AttnMask::Padding(&keep), None),
            (
                20,
                20,
                2,
                vec![4, 1, 1],
                AttnMask::Causal { offset: 0 },
                None,
            ),
        ];
        for (case, (tq, tk, hkv, bshape, mask, scale)) in cases.into_iter().enumerate() {
            let seed = 100 + 10 * case as u64;
            let q = Var::from_tensor(&randn(&[2, 4, tq, 16], seed + 1)).unwrap();
            let k = Var::from_tensor(&randn(&[2, hkv, tk, 16], seed + 2)).unwrap();
            let v = Var::from_tensor(&randn(&[2, hkv, tk, 16], seed + 3)).unwrap();
            let bias = Var::from_tensor(&randn(&bshape, seed + 4)).unwrap();
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let opts = AttnOpts {
                bias: Some(bias.as_tensor()),
                scale,
                dropout: None,
            };
            let ours = attend(qt, kt, vt, mask, opts).unwrap();
            let refr = attention_composed_with(qt, kt, vt, mask, opts).unwrap();
            assert_close(&ours, &refr, Tol::new(1e-5, 1e-4));
            let g1 = wsum(&ours, seed + 7).unwrap().backward().unwrap();
            let g2 = wsum(&refr, seed + 7).unwrap().backward().unwrap();
            for x in [&q, &k, &v, &bias] {
                let (a, b) = (
                    g1.get(x.as_tensor()).unwrap(),
                    g2.get(x.as_tensor()).unwrap(),
                );
                assert_eq!(a.dims(), x.dims(), "case {case}");
                assert_close(a, b, Tol::new(1e-4, 1e-4));
            }
            // Without gradients (inference) the biased op serves too, with the same result.
            let plain = attend(
                &qt.detach(),
                &kt.detach(),
                &vt.detach(),
                mask,
                AttnOpts {
                    bias: Some(&bias.as_tensor().detach()),
                    ..opts
                },
            )
            .unwrap();
            assert_close(&plain, &ours.detach(), Tol::EXACT);
        }
    }

    #[test]
    fn finite_differences_through_biased_flash_attention() {
        let keep = Tensor::new(&[[1u32, 1, 0, 1, 1]], &candle_core::Device::Cpu).unwrap();
        for (mask, bshape) in [
            (TrainMask::Causal { offset: 1 }, [1, 2, 4, 5]),
            (TrainMask::None, [1, 1, 4, 5]),
            (padding_keep(&keep).unwrap(), [1, 2, 4, 5]),
        ] {
            let q = Var::from_tensor(&randn(&[1, 2, 4, 3], 1)).unwrap();
            let k = Var::from_tensor(&randn(&[1, 1, 5, 3], 2)).unwrap();
            let v = Var::from_tensor(&randn(&[1, 1, 5, 3], 3)).unwrap();
            let bias = Var::from_tensor(&randn(&bshape, 4)).unwrap();
            check_gradients(
                &[q, k, v, bias],
                |t| {
                    let y = flash_attention_bias(&t[0], &t[1], &t[2], &t[3], mask.clone(), 0.6)?;
                    wsum(&y, 5)
                },
                1e-2,
                2e-3,
                2e-2,
            )
            .unwrap();
        }
    }

    #[test]
    fn a_bias_of_the_wrong_shape_is_an_error() {
        use crate::attention::{AttnOpts, attend};
        let q = randn(&[2, 2, 3, 4], 1);
        let k = randn(&[2, 2, 5, 4], 2);
        let bias = randn(&[3, 2, 3, 5], 3);
        let opts = AttnOpts {
            bias: Some(&bias),
            ..AttnOpts::default()
        };
        let e = attend(&q, &k, &k, AttnMask::None, opts).unwrap_err();
        assert!(e.to_string().contains("broadcasts to [2, 2, 3, 5]"), "{e}");
    }

    #[test]
    fn causal_softmax_with_an_offset_matches_masked_softmax() {
        let x = randn(&[3, 4, 7], 5);
        let ours = causal_softmax(&x, 3, 0.5).unwrap();
        let m = crate::attention::causal_mask(4, 7, 3, x.device()).unwrap();
        let refr =
            candle_nn::ops::softmax(&(x * 0.5).unwrap().broadcast_add(&m).unwrap(), D::Minus1)
                .unwrap();
        assert_close(&ours, &refr, Tol::F32);
    }

    #[test]
    fn layer_norm_matches_the_composed_layer_forward_and_backward() {
        let x = Var::from_tensor(&randn(&[3, 5, 16], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[16], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[16], 3)).unwrap();
        let ours = layer_norm(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 1e-5).unwrap();
        let refr = LayerNorm::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), 1e-5)
            .forward(x.as_tensor())
            .unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 9).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 9).unwrap().backward().unwrap();
        for t in [&x, &w, &b] {
            assert_close(
                g1.get(t.as_tensor()).unwrap(),
                g2.get(t.as_tensor()).unwrap(),
                Tol::new(1e-4, 1e-4),
            );
        }
        // Without a bias.
        let nb = layer_norm(x.as_tensor(), w.as_tensor(), None, 1e-5).unwrap();
        let nr = LayerNorm::new(w.as_tensor().clone(), None, 1e-5)
            .forward(x.as_tensor())
            .unwrap();
        assert_close(&nb, &nr, Tol::F32);
    }

    #[test]
    fn gelu_forms_match_candle_and_finite_differences() {
        let x = randn(&[4, 33], 4);
        assert_close(
            &gelu(&x, false).unwrap(),
            &x.gelu_erf().unwrap(),
            Tol::new(1e-6, 1e-6),
        );
        assert_close(
            &gelu(&x, true).unwrap(),
            &x.gelu().unwrap(),
            Tol::new(1e-6, 1e-5),
        );
        for tanh in [false, true] {
            let v = Var::from_tensor(&randn(&[3, 5], 6)).unwrap();
            check_gradients(&[v], |t| wsum(&gelu(&t[0], tanh)?, 2), 1e-2, 2e-3, 2e-2).unwrap();
        }
    }

    #[test]
    fn finite_differences_through_fused_softmax_and_layer_norm() {
        let s = Var::from_tensor(&randn(&[2, 3, 4], 1)).unwrap();
        check_gradients(
            &[s],
            |t| wsum(&causal_softmax(&t[0], 1, 0.7)?, 3),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        let x = Var::from_tensor(&randn(&[3, 6], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[6], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[6], 3)).unwrap();
        check_gradients(
            &[x, w, b],
            |t| wsum(&layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5)?, 4),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }

    #[test]
    fn rms_norm_matches_the_composed_layer_and_finite_differences() {
        let x = Var::from_tensor(&randn(&[3, 5, 16], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[16], 2)).unwrap();
        let ours = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let refr = crate::RmsNorm::new(w.as_tensor().clone(), 1e-5)
            .forward_composed(x.as_tensor())
            .unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 9).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 9).unwrap().backward().unwrap();
        for t in [&x, &w] {
            assert_close(
                g1.get(t.as_tensor()).unwrap(),
                g2.get(t.as_tensor()).unwrap(),
                Tol::new(1e-4, 1e-4),
            );
        }
        let x = Var::from_tensor(&randn(&[3, 6], 4)).unwrap();
        let w = Var::from_tensor(&randn(&[6], 5)).unwrap();
        check_gradients(
            &[x, w],
            |t| wsum(&rms_norm(&t[0], &t[1], 1e-5)?, 6),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }

    #[test]
    fn silu_mul_matches_the_composed_ops_and_finite_differences() {
        let a = Var::from_tensor(&(randn(&[4, 37], 1) * 3.0).unwrap()).unwrap();
        let b = Var::from_tensor(&randn(&[4, 37], 2)).unwrap();
        let ours = silu_mul(a.as_tensor(), b.as_tensor()).unwrap();
        let refr = (a.as_tensor().silu().unwrap() * b.as_tensor()).unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 3).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 3).unwrap().backward().unwrap();
        for t in [&a, &b] {
            assert_close(
                g1.get(t.as_tensor()).unwrap(),
                g2.get(t.as_tensor()).unwrap(),
                Tol::new(1e-5, 1e-4),
            );
        }
        let a = Var::from_tensor(&randn(&[3, 5], 7)).unwrap();
        let b = Var::from_tensor(&randn(&[3, 5], 8)).unwrap();
        check_gradients(
            &[a, b],
            |t| wsum(&silu_mul(&t[0], &t[1])?, 9),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        // Shapes must agree.
        assert!(silu_mul(&randn(&[2, 3], 1), &randn(&[3, 2], 1)).is_err());
    }

    #[test]
    fn logsumexp_matches_the_composed_ops_and_finite_differences() {
        let x = Var::from_tensor(&(randn(&[6, 50], 1) * 5.0).unwrap()).unwrap();
        let ours = logsumexp(x.as_tensor()).unwrap();
        let refr = crate::loss::logsumexp_composed(x.as_tensor()).unwrap();
        assert_eq!(ours.dims(), &[6]);
        assert_close(&ours, &refr, Tol::F32);
        let g1 = wsum(&ours, 2).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 2).unwrap().backward().unwrap();
        assert_close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            Tol::new(1e-6, 1e-4),
        );
        let x = Var::from_tensor(&randn(&[3, 7], 4)).unwrap();
        check_gradients(&[x], |t| wsum(&logsumexp(&t[0])?, 5), 1e-2, 2e-3, 2e-2).unwrap();
    }

    /// The fused cross-entropy gives the composed ops' values and gradients bit for bit, and
    /// passes finite differences.
    #[test]
    fn cross_entropy_rows_equals_the_composed_ops_and_finite_differences() {
        let x = Var::from_tensor(&(randn(&[6, 50], 3) * 5.0).unwrap()).unwrap();
        let y: Vec<u32> = vec![0, 49, 7, 7, 20, 33];
        let ours = cross_entropy_rows(x.as_tensor(), &y).unwrap();
        let yt = Tensor::from_vec(y.clone(), (6, 1), &candle_core::Device::Cpu).unwrap();
        let picked = x.as_tensor().gather(&yt, 1).unwrap().squeeze(1).unwrap();
        let refr = (logsumexp(x.as_tensor()).unwrap() - picked).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&ours), bits(&refr));
        let g1 = ours.mean_all().unwrap().backward().unwrap();
        let g2 = refr.mean_all().unwrap().backward().unwrap();
        let (g1, g2) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert_eq!(bits(g1), bits(g2));
        assert_close(g1, g2, Tol::F32);
        let g1 = wsum(&ours, 2).unwrap().backward().unwrap();
        let g2 = wsum(&refr, 2).unwrap().backward().unwrap();
        assert_close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            Tol::F32,
        );
        let x = Var::from_tensor(&randn(&[3, 7], 4)).unwrap();
        check_gradients(
            &[x],
            |t| wsum(&cross_entropy_rows(&t[0], &[1, 6, 0])?, 5),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
        // Wrong target count and an out-of-vocabulary target are errors.
        assert!(cross_entropy_rows(&randn(&[2, 3], 1), &[0]).is_err());
        assert!(cross_entropy_rows(&randn(&[2, 3], 1), &[0, 3]).is_err());
    }
}
