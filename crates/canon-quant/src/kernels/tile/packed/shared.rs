//! Products from f32 activations: the input rounded once per call (in a reused per-thread
//! buffer), and several matrices sharing one input in one job on the kernel pool.

use super::{Packed, TileActs};

/// `f` on `x: [m, cols]` rounded to activations, in this thread's reused buffer when it is free.
pub(super) fn with_acts<R>(x: &[f32], m: usize, cols: usize, f: impl FnOnce(&TileActs) -> R) -> R {
    thread_local! {
        static ACTS: std::cell::RefCell<TileActs> = std::cell::RefCell::new(TileActs::default());
    }
    ACTS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut act) => {
            act.quantize_into(x, m, cols);
            f(&act)
        }
        Err(_) => f(&TileActs::quantize(x, m, cols)),
    })
}

/// `ys[j] = x W_jᵀ` for matrices of one width sharing their input (a layer's query, key and
/// value projections; a feed-forward's gate and up): `x: [m, cols]` is rounded once, and one job
/// on the kernel pool runs every matrix's panels, instead of a rounding and a job per matrix.
/// Each output gets the bits of [`Packed::matmul`]. `ys[j]` must hold `m · ws[j].rows` values,
/// all of which are written.
///
/// # Panics
/// When `ws` and `ys` differ in length, the widths differ, or an output has the wrong length.
pub fn matmul_shared_uninit(
    ws: &[&Packed],
    x: &[f32],
    m: usize,
    ys: &mut [&mut [std::mem::MaybeUninit<f32>]],
) {
    assert_eq!(ws.len(), ys.len(), "matmul_shared: matrices and outputs");
    let Some(first) = ws.first() else {
        return;
    };
    let cols = first.cols;
    for (w, y) in ws.iter().zip(ys.iter()) {
        assert_eq!(w.cols, cols, "matmul_shared: widths differ");
        assert_eq!(y.len(), w.rows * m, "matmul_shared: output length");
    }
    // (matrix, first panel, end) per task: the matrices' panels one after another, cut by
    // guided scheduling over all of them (large ranges first, single panels last).
    let mut starts = Vec::with_capacity(ws.len() + 1);
    starts.push(0);
    for w in ws {
        starts.push(starts.last().copied().unwrap_or(0) + w.panels);
    }
    let mut tasks = Vec::new();
    for r in crate::pool::guided_ranges(starts[ws.len()]) {
        // A range that crosses from one matrix into the next becomes one task per matrix.
        for (j, w) in ws.iter().enumerate() {
            let (lo, hi) = (r.start.max(starts[j]), r.end.min(starts[j] + w.panels));
            if lo < hi {
                tasks.push((j, lo - starts[j], hi - starts[j]));
            }
        }
    }
    let outs: Vec<crate::pool::SyncPtr> = ys
        .iter_mut()
        .map(|y| crate::pool::SyncPtr(y.as_mut_ptr().cast()))
        .collect();
    with_acts(x, m, cols, |act| {
        crate::pool::parallel_for(tasks.len(), &|t| {
            let (j, p0, p1) = tasks[t];
            // SAFETY: `outs[j]` holds rows·m values (checked above) and the tasks of one matrix
            // own disjoint panels; the widths match `act` (rounded at `cols`).
            unsafe { ws[j].panels_times(p0..p1, act, outs[j].get()) };
        });
    });
}
