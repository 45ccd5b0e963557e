//! Activation rows rounded for the tile kernel (`TileActs`), over the kernel pool for prompts.

use super::super::QK;

/// Rows per task when a prompt's activations are rounded on the kernel pool.
const ROWS_PER_TASK: usize = 16;

/// `TileActs::quantize_into`'s loop over the blocks of whole rows.
fn quantize_rows(
    qs: &mut [i8],
    ds: &mut [f32],
    ss: &mut [f32],
    hs: &mut [[i32; 2]],
    x: &[f32],
    simd: bool,
) {
    for (((q, d), (s, h)), xb) in qs
        .chunks_mut(QK)
        .zip(ds.iter_mut())
        .zip(ss.iter_mut().zip(hs.iter_mut()))
        .zip(x.chunks(QK))
    {
        let mut s16 = 0.0;
        match simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2/FMA/F16C were detected (`Isa::best`); blocks hold 32 values.
            true => unsafe { super::super::avx2::quantize_block(xb, q, d, &mut s16) },
            _ => super::super::quantize_block(xb, q, d, &mut s16),
        }
        let h0: i32 = q[..16].iter().map(|&v| v as i32).sum();
        let h1: i32 = q[16..].iter().map(|&v| v as i32).sum();
        *h = [h0, h1];
        *s = *d * (h0 + h1) as f32;
    }
}

/// Activation rows rounded to 8-bit blocks of 32 for the tile kernel: as `Q8Rows` (same codes
/// and f16-rounded scales), plus each block's integer code sums per half, and `s = d·Σq` in f32.
#[derive(Debug, Clone, Default)]
pub struct TileActs {
    pub rows: usize,
    /// Blocks per row.
    pub nb: usize,
    /// `[rows, nb·32]`
    pub qs: Vec<i8>,
    /// `[rows, nb]`
    pub d: Vec<f32>,
    /// `[rows, nb]`: `d·Σq`.
    pub s: Vec<f32>,
    /// `[rows, nb]`: (Σ of codes 0..16, Σ of codes 16..32).
    pub h: Vec<[i32; 2]>,
}

impl TileActs {
    /// Rounds `x: [rows, k]` (k a multiple of 32).
    pub fn quantize_into(&mut self, x: &[f32], rows: usize, k: usize) {
        let nb = k / QK;
        self.rows = rows;
        self.nb = nb;
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * nb, 0.0);
        self.s.resize(rows * nb, 0.0);
        self.h.resize(rows * nb, [0, 0]);
        let simd = super::super::Isa::best().has_avx2();
        let threads = crate::pool::pool().threads();
        if rows < 2 * ROWS_PER_TASK || threads == 1 {
            quantize_rows(&mut self.qs, &mut self.d, &mut self.s, &mut self.h, x, simd);
            return;
        }
        // Prompts: row groups over the kernel pool (each row's blocks are rounded alone, so the
        // codes and scales are the sequential loop's).
        let tasks = rows.div_ceil(ROWS_PER_TASK);
        let (qa, da, sa, ha) = (
            self.qs.as_mut_ptr() as usize,
            self.d.as_mut_ptr() as usize,
            self.s.as_mut_ptr() as usize,
            self.h.as_mut_ptr() as usize,
        );
        crate::pool::parallel_for(tasks, &|t| {
            let r0 = t * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(rows);
            let n = r1 - r0;
            // SAFETY: tasks own disjoint row ranges r0..r1 of the four buffers (resized above to
            // rows·k and rows·nb elements), and `parallel_for` returns after every task.
            let (q, d, s, h) = unsafe {
                (
                    std::slice::from_raw_parts_mut((qa as *mut i8).add(r0 * k), n * k),
                    std::slice::from_raw_parts_mut((da as *mut f32).add(r0 * nb), n * nb),
                    std::slice::from_raw_parts_mut((sa as *mut f32).add(r0 * nb), n * nb),
                    std::slice::from_raw_parts_mut((ha as *mut [i32; 2]).add(r0 * nb), n * nb),
                )
            };
            quantize_rows(q, d, s, h, &x[r0 * k..r1 * k], simd);
        });
    }

    /// A new buffer holding `x: [rows, k]` rounded.
    pub fn quantize(x: &[f32], rows: usize, k: usize) -> Self {
        let mut a = TileActs::default();
        a.quantize_into(x, rows, k);
        a
    }
}
