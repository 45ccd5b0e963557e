//! The training ops' matrix products: `mm` on the `gemm` crate (split over rayon tasks when large),
//! the own AVX-512 kernel and bf16 products behind it, and two products side by side on the pool.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::sgemm;

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

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::Tol;

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
}
