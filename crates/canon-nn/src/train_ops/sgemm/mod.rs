//! An f32 matrix product for the training ops on AVX-512 CPUs: `C = (C if acc) + alpha · A B` with
//! both operands read through arbitrary row/column strides (so `x Wᵀ`, `g W` and `gᵀ x` need no
//! transposed copies), in the layered manner of BLIS (Van Zee & van de Geijn, 2015):
//!
//! - `B` is packed once per block of `KC` rows × `NC` columns into panels of `NR = 32` columns
//!   (`KC × 32`, each `k` step one 128-byte row), shared by every thread;
//! - each thread takes a contiguous range of `C`'s rows, packs `A` by `MR = 14` rows at a time
//!   (`KC × 14`, scaled by `alpha`, small enough for L1) and runs the 14 × 32 micro-kernel
//!   (28 accumulators in `zmm` registers, one broadcast and two FMAs per accumulator pair and
//!   `k`) across all the block's `B` panels, which stream from L2;
//! - edge tiles (fewer than 14 rows or 32 columns) are computed whole on zero-padded panels into
//!   a scratch tile and only their valid part is added to `C`.
//!
//! Every element of `C` is summed in the same order (by `KC` blocks, `k` ascending inside one)
//! whatever the number of threads, so results do not depend on the thread count. Callers check
//! that the CPU has AVX-512F (`available`) and that every index lies inside the slices.

use std::cell::RefCell;

use rayon::prelude::*;

pub(crate) const MR: usize = 14;
pub(crate) const NR: usize = 32;
const KC: usize = 256;
const NC: usize = 1536;

/// A 64-byte aligned block of 16 floats: packed panels start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A reusable aligned buffer of at least `len` floats.
fn lines(buf: &mut Vec<Line>, len: usize) -> &mut [f32] {
    let n = len.div_ceil(16);
    if buf.len() < n {
        buf.resize(n, Line([0.0; 16]));
    }
    // SAFETY: `Line` is `repr(C)` over `[f32; 16]` with no padding (64 bytes, align 64), so `n`
    // lines are `16 n` contiguous, initialised floats.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), n * 16) }
}

thread_local! {
    static PACK_A: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Whether this CPU can run the bf16 product (AVX-512F and AVX512_BF16's `vdpbf16ps`).
pub(crate) fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        available() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU can run the product (AVX-512F; std caches the CPUID answer).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A strided read-only operand: element `(i, j)` at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

/// The output's base pointer, shared by the threads that write disjoint row ranges of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);

impl Out {
    /// The output pointer moved by `off` elements (through a method, so closures capture the
    /// whole `Send` wrapper rather than its raw field).
    ///
    /// # Safety
    /// `off` lies inside the output.
    unsafe fn at(self, off: usize) -> *mut f32 {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.add(off) }
    }
}

// SAFETY: the operands are only read, and each thread writes its own rows of the output.
unsafe impl Send for Mat {}
// SAFETY: as above.
unsafe impl Sync for Mat {}
// SAFETY: as above.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// `c[m×n]` (rows `ldc` apart) `= (c if acc) + alpha · A B` with `A[m×k]` element `(i, l)` at
/// `a[i·ars + l·acs]` and `B[k×n]` element `(l, j)` at `b[l·brs + j·bcs]`, split over `threads`
/// rayon tasks by rows of `C`.
///
/// # Safety
/// The CPU must have AVX-512F (`available()`); every index the shapes and strides name must lie
/// inside its slice; `m, n, k ≥ 1`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    (a, ars, acs): (&[f32], usize, usize),
    (b, brs, bcs): (&[f32], usize, usize),
    alpha: f32,
    threads: usize,
    bf16: bool,
) {
    let am = Mat {
        ptr: a.as_ptr(),
        rs: ars,
        cs: acs,
    };
    let bm = Mat {
        ptr: b.as_ptr(),
        rs: brs,
        cs: bcs,
    };
    let out = Out(c.as_mut_ptr());
    let tiles = m.div_ceil(MR);
    // Below ~2 M multiply-adds a thread per half costs more than it saves.
    let threads = if m * n * k < (1 << 21) {
        1
    } else {
        threads.clamp(1, tiles)
    };
    let per = tiles.div_ceil(threads);
    PACK_B.with_borrow_mut(|bbuf| {
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let panels = nc.div_ceil(NR);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                // Packed `k` steps: bf16 panels hold two `k` values per 32-bit slot.
                let ks = if bf16 { kc.div_ceil(2) } else { kc };
                let bp = &mut lines(bbuf, panels * NR * ks)[..panels * NR * ks];
                let pack = |(p, dst): (usize, &mut [f32])| {
                    if bf16 {
                        pack_b_bf16(dst, p, bm, pc, kc, jc, nc)
                    } else {
                        // SAFETY: the caller keeps every index of B inside `b`.
                        unsafe { pack_b(dst, p, bm, pc, kc, jc, nc) }
                    }
                };
                if threads == 1 {
                    bp.chunks_exact_mut(NR * ks).enumerate().for_each(pack);
                } else {
                    bp.par_chunks_exact_mut(NR * ks).enumerate().for_each(pack);
                }
                let bp: &[f32] = bp;
                let load = acc || pc > 0;
                let body = |t: usize| {
                    let (r0, r1) = (t * per * MR, ((t + 1) * per * MR).min(m));
                    PACK_A.with_borrow_mut(|abuf| {
                        let ap = lines(abuf, MR * ks);
                        for ir in (r0..r1).step_by(MR) {
                            let mr = MR.min(m - ir);
                            if bf16 {
                                pack_a_bf16(ap, am, ir, mr, pc, kc, alpha);
                            } else {
                                // SAFETY: the caller keeps every index of A inside `a`.
                                unsafe { pack_a(ap, am, ir, mr, pc, kc, alpha) };
                            }
                            for (p, jr) in (0..nc).step_by(NR).enumerate() {
                                let nr = NR.min(nc - jr);
                                // SAFETY: AVX-512F checked by the caller; the tile
                                // `[ir, ir + mr) × [jc + jr, jc + jr + nr)` lies inside `c`
                                // (caller's bounds) and belongs to this thread's rows.
                                unsafe {
                                    tile(
                                        ks,
                                        bf16,
                                        ap.as_ptr(),
                                        bp.as_ptr().add(p * NR * ks),
                                        out.at(ir * ldc + jc + jr),
                                        ldc,
                                        mr,
                                        nr,
                                        load,
                                    )
                                };
                            }
                        }
                    });
                };
                if threads == 1 {
                    body(0);
                } else {
                    (0..threads).into_par_iter().for_each(body);
                }
            }
        }
    });
}

/// Packs panel `p` of `B[pc .. pc+kc, jc .. jc+nc]` (columns `jc + p·NR ..`) as `dst[l][j]`, the
/// columns past `nc` zero.
///
/// # Safety
/// Every element named lies inside the operand.
unsafe fn pack_b(dst: &mut [f32], p: usize, b: Mat, pc: usize, kc: usize, jc: usize, nc: usize) {
    let jr = p * NR;
    let nr = NR.min(nc - jr);
    if b.cs == 1 {
        for (l, row) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
            // SAFETY: row `pc + l`, columns `jc + jr ..+ nr` lie inside B (caller).
            let src =
                unsafe { std::slice::from_raw_parts(b.ptr.add((pc + l) * b.rs + jc + jr), nr) };
            row[..nr].copy_from_slice(src);
            row[nr..].fill(0.0);
        }
    } else {
        if nr < NR {
            dst.fill(0.0);
        }
        for j in 0..nr {
            let col = (jc + jr + j) * b.cs;
            for l in 0..kc {
                // SAFETY: as above.
                dst[l * NR + j] = unsafe { *b.ptr.add((pc + l) * b.rs + col) };
            }
        }
    }
}

/// Packs `alpha · A[ir .. ir+mr, pc .. pc+kc]` as `ap[p][i]` (`MR` per `k` step, rows past `mr`
/// zero).
///
/// # Safety
/// Every element named lies inside the operand.
unsafe fn pack_a(ap: &mut [f32], a: Mat, ir: usize, mr: usize, pc: usize, kc: usize, alpha: f32) {
    let ap = &mut ap[..MR * kc];
    if mr < MR {
        ap.fill(0.0);
    }
    if a.rs == 1 {
        for l in 0..kc {
            // SAFETY: column `pc + l`, rows `ir ..+ mr` lie inside A (caller).
            let src = unsafe { std::slice::from_raw_parts(a.ptr.add((pc + l) * a.cs + ir), mr) };
            for (d, s) in ap[l * MR..l * MR + mr].iter_mut().zip(src) {
                *d = alpha * s;
            }
        }
    } else if a.cs == 1 {
        // Row-major A: walk the `mr` rows side by side, so every write is sequential and each
        // row is read as one stream.
        let rows: [*const f32; MR] =
            std::array::from_fn(|i| a.ptr.wrapping_add((ir + i.min(mr - 1)) * a.rs + pc));
        for (l, d) in ap.chunks_exact_mut(MR).enumerate() {
            for (d, r) in d.iter_mut().zip(&rows).take(mr) {
                // SAFETY: each of the first `mr` rows, column `pc + l` (`l < kc`), lies inside A.
                *d = alpha * unsafe { r.wrapping_add(l).read() };
            }
        }
    } else {
        for i in 0..mr {
            let row = (ir + i) * a.rs;
            for l in 0..kc {
                // SAFETY: as above.
                ap[l * MR + i] = alpha * unsafe { *a.ptr.add(row + (pc + l) * a.cs) };
            }
        }
    }
}

mod bf16;
#[cfg(test)]
use bf16::bf16_bits;
use bf16::{pack_a_bf16, pack_b_bf16};

/// One `mr × nr` tile of `C` (`mr ≤ MR`, `nr ≤ NR`): the full micro-kernel straight into `C` when
/// the tile is whole, else into a scratch tile whose valid part is added.
///
/// # Safety
/// AVX-512F; `ap` holds `MR · kc` and `bp` `NR · kc` floats; the tile lies inside `c`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kc: usize,
    bf16: bool,
    ap: *const f32,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    load: bool,
) {
    let run = |c: *mut f32, ldc: usize, load: bool| {
        // SAFETY: forwarded from the caller (bf16 panels only when the CPU has AVX512_BF16).
        unsafe {
            if bf16 {
                kernel_bf16(kc, ap, bp, c, ldc, load)
            } else {
                kernel(kc, ap, bp, c, ldc, load)
            }
        }
    };
    if mr == MR && nr == NR {
        run(c, ldc, load);
        return;
    }
    let mut t = [0f32; MR * NR];
    run(t.as_mut_ptr(), NR, false);
    for i in 0..mr {
        for j in 0..nr {
            // SAFETY: `(i, j)` lies inside the tile, inside `c` (caller).
            unsafe {
                let d = c.add(i * ldc + j);
                *d = if load {
                    *d + t[i * NR + j]
                } else {
                    t[i * NR + j]
                };
            }
        }
    }
}

/// The `MR × NR` micro-kernel: `C = (C if load) + Σ_p ap[p] ⊗ bp[p]`.
///
/// # Safety
/// AVX-512F; `ap` holds `MR · kc` and `bp` `NR · kc` floats; `c` a whole `MR × NR` tile with rows
/// `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, load: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // `wrapping_add` and unaligned reads: the debug profile's pointer checks would otherwise sit
    // in this loop and push accumulators out of registers.
    let (mut a, mut b) = (ap, bp);
    for _ in 0..kc {
        // SAFETY: `a` and `b` stay inside their panels for `kc` steps (caller).
        unsafe {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.wrapping_add(16));
            for (i, r) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(a.wrapping_add(i).read_unaligned());
                r[0] = _mm512_fmadd_ps(ai, b0, r[0]);
                r[1] = _mm512_fmadd_ps(ai, b1, r[1]);
            }
        }
        a = a.wrapping_add(MR);
        b = b.wrapping_add(NR);
    }
    for (i, r) in acc.iter().enumerate() {
        // SAFETY: row `i` of the tile lies inside `c` (caller).
        unsafe {
            let row = c.wrapping_add(i * ldc);
            let (mut v0, mut v1) = (r[0], r[1]);
            if load {
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(row));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(row.wrapping_add(16)));
            }
            _mm512_storeu_ps(row, v0);
            _mm512_storeu_ps(row.wrapping_add(16), v1);
        }
    }
}

/// The bf16 micro-kernel: `ks` packed steps of two `k` values each, `vdpbf16ps` accumulating
/// both products of a pair into f32: `C = (C if load) + Σ ap[p] ⊗ bp[p]`.
///
/// # Safety
/// AVX-512F and AVX512_BF16; `ap` holds `MR · ks` and `bp` `NR · ks` slots; `c` a whole `MR × NR`
/// tile with rows `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_bf16(
    ks: usize,
    ap: *const f32,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (ap.cast::<i32>(), bp);
    for _ in 0..ks {
        // SAFETY: `a` and `b` stay inside their panels for `ks` steps (caller).
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_ps(b));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_ps(b.wrapping_add(16)));
            for (i, r) in acc.iter_mut().enumerate() {
                let ai: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(a.wrapping_add(i).read_unaligned()));
                r[0] = _mm512_dpbf16_ps(r[0], ai, b0);
                r[1] = _mm512_dpbf16_ps(r[1], ai, b1);
            }
        }
        a = a.wrapping_add(MR);
        b = b.wrapping_add(NR);
    }
    for (i, r) in acc.iter().enumerate() {
        // SAFETY: row `i` of the tile lies inside `c` (caller).
        unsafe {
            let row = c.wrapping_add(i * ldc);
            let (mut v0, mut v1) = (r[0], r[1]);
            if load {
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(row));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(row.wrapping_add(16)));
            }
            _mm512_storeu_ps(row, v0);
            _mm512_storeu_ps(row.wrapping_add(16), v1);
        }
    }
}

/// Stand-in off x86-64, never called (the callers check `available()` first).
///
/// # Safety
/// Unreachable; the signature matches the x86-64 kernel's.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_bf16(
    _ks: usize,
    _ap: *const f32,
    _bp: *const f32,
    _c: *mut f32,
    _ldc: usize,
    _load: bool,
) {
    unreachable!("sgemm: bf16 products exist on x86-64 only")
}

/// Stand-in off x86-64, never called (the callers check `available()` first).
///
/// # Safety
/// Unreachable; the signature matches the x86-64 kernel's.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(
    _kc: usize,
    _ap: *const f32,
    _bp: *const f32,
    _c: *mut f32,
    _ldc: usize,
    _load: bool,
) {
    unreachable!("sgemm: `available()` is false off x86-64")
}

#[cfg(test)]
mod tests;
