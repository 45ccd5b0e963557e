//! The tile arithmetic in scalar code: one weight row in the tile form and the plain product
//! the kernels are tested against.

use super::super::{QK, QMatrixRef};
use super::{Mode, TileActs, form};

/// One weight row in the tile form: for each block of 32, the unsigned codes and the two scales
/// (`Sym`: (a, 0); `Min`: (a, c); `Half`: (a₀, a₁)). Scalar, for the reference and tests.
pub fn row_form(w: QMatrixRef<'_>, r: usize, codes: &mut [u8], scales: &mut [[f32; 2]]) {
    let row = w.row(r);
    let kind = w.kind;
    if kind.is_k() {
        let bb = kind.block_bytes();
        let mut u = [0u8; super::super::kquant::QK_K];
        for (sb, blk) in row.chunks_exact(bb).enumerate() {
            super::super::kquant::codes(kind, blk, &mut u);
            let s = super::super::kquant::scales(kind, blk);
            codes[sb * 256..(sb + 1) * 256].copy_from_slice(&u);
            for c in 0..8 {
                scales[sb * 8 + c] = if kind.is_k() && super::super::kquant::min_is_d(kind) {
                    [s.d * s.sc[2 * c] as f32, s.d * s.sc[2 * c + 1] as f32]
                } else {
                    [s.d * s.sc[2 * c] as f32, -s.dmin * s.mn[2 * c] as f32]
                };
            }
        }
    } else {
        let mut q = [0i32; QK];
        for (b, blk) in row.chunks_exact(kind.block_bytes()).enumerate() {
            let (d, m) = super::super::scalar::unpack_block(kind, blk, &mut q);
            for (o, &v) in codes[b * QK..(b + 1) * QK].iter_mut().zip(&q) {
                *o = if kind.has_min() {
                    v as u8
                } else {
                    (v + 128) as u8
                };
            }
            scales[b] = [d, m];
        }
    }
}

/// The tile arithmetic, plainly: `y[t, r]` for every activation row `t` and weight row `r`.
pub fn reference(w: QMatrixRef<'_>, act: &TileActs, y: &mut [f32]) {
    let Some((mode, o)) = form(w.kind) else {
        return;
    };
    let (n, k, nb) = (w.rows, w.cols, act.nb);
    let mut codes = vec![0u8; k];
    let mut scales = vec![[0.0f32; 2]; nb];
    for r in 0..n {
        row_form(w, r, &mut codes, &mut scales);
        for t in 0..act.rows {
            let mut acc = 0.0f32;
            for (b, sc) in scales.iter().enumerate() {
                let q = &act.qs[t * k + b * QK..t * k + (b + 1) * QK];
                let u = &codes[b * QK..(b + 1) * QK];
                let half = |h: usize| -> i32 {
                    (16 * h..16 * h + 16)
                        .map(|i| u[i] as i32 * q[i] as i32)
                        .sum()
                };
                let [h0, h1] = act.h[t * nb + b];
                let dx = act.d[t * nb + b];
                match mode {
                    Mode::Sym | Mode::Min => {
                        let i = half(0) + half(1) - o * (h0 + h1);
                        acc += i as f32 * (sc[0] * dx);
                        if mode == Mode::Min {
                            acc += sc[1] * act.s[t * nb + b];
                        }
                    }
                    Mode::Half => {
                        acc += (half(0) - o * h0) as f32 * (sc[0] * dx);
                        acc += (half(1) - o * h1) as f32 * (sc[1] * dx);
                    }
                }
            }
            y[t * n + r] = acc;
        }
    }
}
