//! Integer GEMM for many activation rows (prompt chunks, from `MIN_ROWS`): tiles of 16 weight
//! rows × up to 8 activation rows, on AVX-512 VNNI.
//!
//! The block product of `avx512`/`avx2` works along one weight row, so each block costs a scale
//! multiply, a conversion and a fused multiply-add per activation row for every 32 products. Here
//! the lanes of a 512-bit register are 16 *different* weight rows instead:
//!
//! 1. A panel of 16 weight rows is unpacked once into unsigned bytes and transposed so that
//!    register `g` of block `b` holds, for each of the 16 rows, the four codes `4g..4g+4` of that
//!    block (eight registers per block of 32), next to two vectors of per-row scales.
//! 2. Every activation row (rounded once per product to 8-bit blocks of 32, as in `Q8Rows`)
//!    then costs per block eight `vpdpbusd` (the weight register times four broadcast activation
//!    bytes), one conversion and one or two fused multiply-adds, for 512 products: the unpacking
//!    and the scales are shared by all activation rows, and no horizontal sum is ever needed.
//!
//! Every format is rewritten per block of 32 as unsigned codes `u` with an integer offset `o`
//! and float scales:
//!
//!   `Sym`  (Q4_0, Q5_0, Q8_0: signed codes + 128, o = 128):      a·dx·(Σ u·q − o·Σq)
//!   `Min`  (Q4_1, Q5_1: o = 0, c = m; Q4_K, Q5_K: c = −dmin·mn): a·dx·Σ u·q + c·dx·Σq
//!   `Half` (Q6_K: o = 32, Q3_K: o = 4; one scale per 16 codes):  Σ_h a_h·dx·(Σ_h u·q − o·Σ_h q)
//!
//! The offset is subtracted in integers (the accumulator starts at `−o·Σq`), so the symmetric
//! formats lose nothing to cancellation. Q2_K (a minimum per 16 codes) has no tile form and keeps
//! the other paths. `reference` computes the same sums plainly; tests compare the two.
//!
//! This file holds the tile forms and the dispatch (`takes`, `matmul`); `acts` rounds the
//! activations (`TileActs`), `scalar` holds `row_form` and `reference`, `avx512` the kernel and
//! `packed` the weights repacked once into the panel layout.

// `QK` serves the x86-64 kernels (`matmul`, `avx512`, through `super::*`) and the tests.
#[cfg(any(target_arch = "x86_64", test))]
use super::QK;
use super::{Kind, QMatrixRef};

mod acts;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod packed;
mod scalar;

pub use acts::TileActs;
pub use scalar::{reference, row_form};

/// Weight rows per panel: one per 32-bit lane of a 512-bit register.
pub const PANEL: usize = 16;

/// Activation rows per pass over a panel (accumulators in registers).
pub const ROWS: usize = 8;

/// How a format's blocks map onto the tile arithmetic (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sym,
    Min,
    Half,
}

/// The tile form of `kind`: its mode and integer offset, or `None` (Q2_K).
pub fn form(kind: Kind) -> Option<(Mode, i32)> {
    Some(match kind {
        Kind::Q4_0 | Kind::Q5_0 | Kind::Q8_0 => (Mode::Sym, 128),
        Kind::Q4_1 | Kind::Q5_1 | Kind::Q4K | Kind::Q5K => (Mode::Min, 0),
        Kind::Q6K => (Mode::Half, 32),
        Kind::Q3K => (Mode::Half, 4),
        Kind::Q2K => return None,
    })
}

/// Whether `kernels::matmul` takes this module's kernels on the AVX-512 VNNI path (for every
/// row count and every format with a tile form). On by default; the environment variable
/// `CANON_TILE=off` turns it off (read once), for side-by-side measurements against the
/// row-at-a-time kernels and the f32 GEMM.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("CANON_TILE").as_deref(),
            Ok("off" | "0" | "false")
        )
    })
}

/// From this many activation rows (prompt chunks), `kernels::matmul` takes the tile kernel on
/// the AVX-512 VNNI path. Fewer rows (decoding) keep the row-at-a-time kernels here: in a loaded
/// side-by-side run the one-row tile product, unpacking per product, decoded slower than AVX2's
/// one-row kernel, and the batched decode rows must stay on the same arithmetic as one row alone
/// (engine tests). Weights repacked once (`packed`) run the tile kernel at every row count.
pub const MIN_ROWS: usize = 16;

/// Whether `kernels::matmul` on path `isa` runs this module's kernels for `m` rows of `kind`.
pub fn takes(isa: super::Isa, kind: Kind, m: usize) -> bool {
    m >= MIN_ROWS
        && isa == super::Isa::Avx512Vnni
        && super::Isa::best() == super::Isa::Avx512Vnni
        && enabled()
        && form(kind).is_some()
}

/// Up to this many activation rows, `matmul` runs `avx512::gemv` once per row instead of
/// unpacking panels (same results, bit for bit). From two rows the panel's unpacking is already
/// cheaper than reading the weights again per row (`tilebench`).
pub const GEMV_MAX_ROWS: usize = 1;

/// `y = x Wᵀ` through the tile kernel, with `x` already rounded (`TileActs`). Returns `false`
/// (and leaves `y`) where the CPU lacks AVX-512 VNNI or the format has no tile form.
pub fn matmul(w: QMatrixRef<'_>, act: &TileActs, y: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Some((mode, offset)) = form(w.kind) else {
            return false;
        };
        if !super::Isa::Avx512Vnni.available() || super::Isa::best() != super::Isa::Avx512Vnni {
            return false;
        }
        let (n, m) = (w.rows, act.rows);
        assert_eq!(y.len(), n * m, "tile::matmul: output length");
        assert_eq!(act.nb * QK, w.cols, "tile::matmul: activation width");
        let panels = n.div_ceil(PANEL);
        let tasks = crate::pool::guided_ranges(panels);
        let out = crate::pool::SyncPtr(y.as_mut_ptr());
        thread_local! {
            static PANEL_BUF: std::cell::RefCell<avx512::Panel> =
                std::cell::RefCell::new(avx512::Panel::default());
        }
        if m <= GEMV_MAX_ROWS {
            crate::pool::parallel_for(tasks.len(), &|task| {
                for pi in tasks[task].clone() {
                    for t in 0..m {
                        // SAFETY: AVX-512 VNNI was detected above; the format has a tile form;
                        // tasks own disjoint panels, hence disjoint outputs r0..r0 + 16 of row t.
                        unsafe {
                            avx512::gemv(w, pi * PANEL, act, t, mode, offset, out.get().add(t * n))
                        };
                    }
                }
            });
            return true;
        }
        crate::pool::parallel_for(tasks.len(), &|task| {
            let run = |p: &mut avx512::Panel| {
                for pi in tasks[task].clone() {
                    let r0 = pi * PANEL;
                    // SAFETY: AVX-512 VNNI was detected above; the format has a tile form;
                    // tasks own disjoint panels, hence disjoint output columns r0..r0 + 16.
                    unsafe {
                        avx512::unpack(w, r0, p);
                        avx512::panel_times(p, mode, offset, act, out.get(), n, r0);
                    }
                }
            };
            PANEL_BUF.with(|cell| match cell.try_borrow_mut() {
                Ok(mut p) => run(&mut p),
                Err(_) => run(&mut avx512::Panel::default()),
            });
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, act, y);
        false
    }
}

#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod tests;
