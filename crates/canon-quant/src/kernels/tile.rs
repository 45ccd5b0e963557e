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

use super::{Kind, QK, QMatrixRef};

pub mod packed;

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
            true => unsafe { super::avx2::quantize_block(xb, q, d, &mut s16) },
            _ => super::quantize_block(xb, q, d, &mut s16),
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
        let simd = super::Isa::best().has_avx2();
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

/// One weight row in the tile form: for each block of 32, the unsigned codes and the two scales
/// (`Sym`: (a, 0); `Min`: (a, c); `Half`: (a₀, a₁)). Scalar, for the reference and tests.
pub fn row_form(w: QMatrixRef<'_>, r: usize, codes: &mut [u8], scales: &mut [[f32; 2]]) {
    let row = w.row(r);
    let kind = w.kind;
    if kind.is_k() {
        let bb = kind.block_bytes();
        let mut u = [0u8; super::kquant::QK_K];
        for (sb, blk) in row.chunks_exact(bb).enumerate() {
            super::kquant::codes(kind, blk, &mut u);
            let s = super::kquant::scales(kind, blk);
            codes[sb * 256..(sb + 1) * 256].copy_from_slice(&u);
            for c in 0..8 {
                scales[sb * 8 + c] = if kind.is_k() && super::kquant::min_is_d(kind) {
                    [s.d * s.sc[2 * c] as f32, s.d * s.sc[2 * c + 1] as f32]
                } else {
                    [s.d * s.sc[2 * c] as f32, -s.dmin * s.mn[2 * c] as f32]
                };
            }
        }
    } else {
        let mut q = [0i32; QK];
        for (b, blk) in row.chunks_exact(kind.block_bytes()).enumerate() {
            let (d, m) = super::scalar::unpack_block(kind, blk, &mut q);
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

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    //! The AVX-512 VNNI tile kernel (see the module above).

    use std::arch::x86_64::*;

    use super::super::avx2::{Fmt, Q40, Q41, Q50, Q51, Q80};
    use super::super::kquant::simd::{KFmt, Q3K, Q4K, Q5K, Q6K};
    use super::super::kquant::{QK_K, min_is_d, scales};
    use super::*;

    /// 64 aligned bytes.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    pub struct Line(pub(crate) [u8; 64]);

    /// Lines per block in a panel: eight code registers, then two scale vectors.
    pub(crate) const LINES: usize = 10;

    /// One panel in the transposed layout, plus its row-major staging area.
    #[derive(Default)]
    pub struct Panel {
        pub(crate) lines: Vec<Line>,
        /// `[16, k]` codes, row-major.
        stage: Vec<u8>,
        /// `[16, nb]` scale pairs.
        stage_sc: Vec<[f32; 2]>,
    }

    /// Unpacks row `r` of `w` (legacy format `F`) into the staging row.
    ///
    /// # Safety
    /// AVX2/FMA/F16C present; `codes` holds `w.cols` bytes and `sc` `w.cols / 32` pairs.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn stage_legacy<F: Fmt>(row: &[u8], codes: &mut [u8], sc: &mut [[f32; 2]]) {
        let nb = row.len() / F::BYTES;
        for (b, scb) in sc.iter_mut().enumerate().take(nb) {
            // SAFETY: block b lies inside `row`; the store writes 32 bytes inside `codes`.
            let (d, m) = unsafe {
                let (v, d, m) = F::unpack(row.as_ptr().add(b * F::BYTES));
                let u = if F::HAS_MIN {
                    v
                } else {
                    _mm256_xor_si256(v, _mm256_set1_epi8(-128))
                };
                _mm256_storeu_si256(codes.as_mut_ptr().add(b * QK) as *mut __m256i, u);
                (d, m)
            };
            *scb = [d, m];
        }
    }

    /// Unpacks row `r` of `w` (K-quant `F`) into the staging row.
    ///
    /// # Safety
    /// As `stage_legacy`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn stage_k<F: KFmt>(row: &[u8], codes: &mut [u8], sc: &mut [[f32; 2]]) {
        let bb = F::KIND.block_bytes();
        let half = min_is_d(F::KIND);
        for (sb, blk) in row.chunks_exact(bb).enumerate() {
            // SAFETY: `blk` is one whole block.
            let u = unsafe { F::codes(blk.as_ptr()) };
            for (c, v) in u.iter().enumerate() {
                // SAFETY: chunk c of super-block sb lies inside `codes` (k values).
                unsafe {
                    _mm256_storeu_si256(
                        codes.as_mut_ptr().add(sb * QK_K + c * QK) as *mut __m256i,
                        *v,
                    )
                };
            }
            let s = scales(F::KIND, blk);
            for c in 0..8 {
                sc[sb * 8 + c] = if half {
                    [s.d * s.sc[2 * c] as f32, s.d * s.sc[2 * c + 1] as f32]
                } else {
                    [s.d * s.sc[2 * c] as f32, -s.dmin * s.mn[2 * c] as f32]
                };
            }
        }
    }

    /// Rows `r0..r0 + 16` of `w` (zeros past `w.rows`) into `p`, transposed.
    ///
    /// # Safety
    /// The CPU supports the `Isa::Avx512Vnni` extensions; `w.kind` has a tile form.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn unpack(w: QMatrixRef<'_>, r0: usize, p: &mut Panel) {
        let (k, nb) = (w.cols, w.cols / QK);
        p.stage.resize(PANEL * k, 0);
        p.stage_sc.resize(PANEL * nb, [0.0; 2]);
        p.lines.resize(nb * LINES, Line([0; 64]));
        for i in 0..PANEL {
            let codes = &mut p.stage[i * k..(i + 1) * k];
            let sc = &mut p.stage_sc[i * nb..(i + 1) * nb];
            if r0 + i >= w.rows {
                codes.fill(0);
                sc.fill([0.0; 2]);
                continue;
            }
            let row = w.row(r0 + i);
            // SAFETY: AVX2 is part of this path; `codes` and `sc` have the row's size.
            unsafe {
                match w.kind {
                    Kind::Q4_0 => stage_legacy::<Q40>(row, codes, sc),
                    Kind::Q4_1 => stage_legacy::<Q41>(row, codes, sc),
                    Kind::Q5_0 => stage_legacy::<Q50>(row, codes, sc),
                    Kind::Q5_1 => stage_legacy::<Q51>(row, codes, sc),
                    Kind::Q8_0 => stage_legacy::<Q80>(row, codes, sc),
                    Kind::Q3K => stage_k::<Q3K>(row, codes, sc),
                    Kind::Q4K => stage_k::<Q4K>(row, codes, sc),
                    Kind::Q5K => stage_k::<Q5K>(row, codes, sc),
                    Kind::Q6K => stage_k::<Q6K>(row, codes, sc),
                    Kind::Q2K => {}
                }
            }
        }
        let st = p.stage.as_ptr();
        for b in 0..nb {
            // Z_i = [row i | row i + 8] of block b; then an 8×8 transpose of 32-bit words in
            // each 256-bit half: output g holds word g (codes 4g..4g+4) of rows 0..7 | 8..15.
            // SAFETY: rows i and i + 8 hold k ≥ (b + 1)·32 staged bytes each.
            let z: [__m512i; 8] = std::array::from_fn(|i| unsafe {
                let lo = _mm256_loadu_si256(st.add(i * k + b * QK) as *const __m256i);
                let hi = _mm256_loadu_si256(st.add((i + 8) * k + b * QK) as *const __m256i);
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            });
            let t: [__m512i; 8] = std::array::from_fn(|j| {
                let (a, c) = (z[2 * (j / 2)], z[2 * (j / 2) + 1]);
                if j % 2 == 0 {
                    _mm512_unpacklo_epi32(a, c)
                } else {
                    _mm512_unpackhi_epi32(a, c)
                }
            });
            // u[4q + j]: rows 4q..4q+4, words (j, j + 4) per 128-bit lane pair.
            let u: [__m512i; 8] = std::array::from_fn(|i| {
                let (q, j) = (i / 4, i % 4);
                let (a, c) = (t[4 * q + j / 2], t[4 * q + 2 + j / 2]);
                if j % 2 == 0 {
                    _mm512_unpacklo_epi64(a, c)
                } else {
                    _mm512_unpackhi_epi64(a, c)
                }
            });
            let lo_idx = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
            let hi_idx = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
            let lines = &mut p.lines[b * LINES..(b + 1) * LINES];
            for j in 0..4 {
                let (a, c) = (u[j], u[4 + j]);
                let w0 = _mm512_permutex2var_epi64(a, lo_idx, c);
                let w4 = _mm512_permutex2var_epi64(a, hi_idx, c);
                // SAFETY: each line is 64 bytes.
                unsafe {
                    _mm512_store_si512(lines[j].0.as_mut_ptr() as *mut __m512i, w0);
                    _mm512_store_si512(lines[j + 4].0.as_mut_ptr() as *mut __m512i, w4);
                }
            }
            let mut s0 = [0.0f32; PANEL];
            let mut s1 = [0.0f32; PANEL];
            for i in 0..PANEL {
                [s0[i], s1[i]] = p.stage_sc[i * nb + b];
            }
            // SAFETY: lines 8 and 9 are 64 bytes each.
            unsafe {
                _mm512_store_ps(
                    lines[8].0.as_mut_ptr() as *mut f32,
                    _mm512_loadu_ps(s0.as_ptr()),
                );
                _mm512_store_ps(
                    lines[9].0.as_mut_ptr() as *mut f32,
                    _mm512_loadu_ps(s1.as_ptr()),
                );
            }
        }
    }

    /// The four activation codes `4g..4g+4` of block `b` in every 32-bit lane.
    ///
    /// # Safety
    /// `q` points at 4 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn bcast(q: *const i8) -> __m512i {
        // SAFETY: 4 readable bytes (caller); unaligned read.
        _mm512_set1_epi32(unsafe { (q as *const i32).read_unaligned() })
    }

    /// `T` activation rows from `t0` against one unpacked panel; writes `y[t, r0..r0 + valid]`.
    ///
    /// # Safety
    /// CPU as `unpack`; `p` was unpacked from a matrix with `act.nb` blocks per row; rows
    /// `t0..t0 + T` exist in `act`; `y` points at `[act.rows, n]` and `r0 + valid ≤ n`,
    /// `valid ≤ 16`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const MODE: u8, const T: usize>(
        p: &Panel,
        act: &TileActs,
        offset: i32,
        t0: usize,
        y: *mut f32,
        n: usize,
        r0: usize,
        valid: usize,
    ) {
        let nb = act.nb;
        let k = nb * QK;
        let mut acc = [_mm512_setzero_ps(); T];
        let lp = p.lines.as_ptr();
        for b in 0..nb {
            // SAFETY: the panel holds nb·LINES aligned lines (unpacked from this shape).
            let (wv, s0, s1) = unsafe {
                let l = lp.add(b * LINES);
                let wv: [__m512i; 8] =
                    std::array::from_fn(|g| _mm512_load_si512(l.add(g) as *const __m512i));
                (
                    wv,
                    _mm512_load_ps(l.add(8) as *const f32),
                    _mm512_load_ps(l.add(9) as *const f32),
                )
            };
            for (t, a) in acc.iter_mut().enumerate() {
                let row = t0 + t;
                let at = row * nb + b;
                // SAFETY: row < act.rows and b < nb index inside the activation buffers.
                let (q, [h0, h1], dx) = unsafe {
                    (
                        act.qs.as_ptr().add(row * k + b * QK),
                        *act.h.get_unchecked(at),
                        _mm512_set1_ps(*act.d.get_unchecked(at)),
                    )
                };
                if MODE == 2 {
                    let mut i0 = _mm512_set1_epi32(-offset * h0);
                    let mut i1 = _mm512_set1_epi32(-offset * h1);
                    for g in 0..4 {
                        // SAFETY: codes 4g.. and 16 + 4g.. of the block lie inside the row.
                        unsafe {
                            i0 = _mm512_dpbusd_epi32(i0, wv[g], bcast(q.add(4 * g)));
                            i1 = _mm512_dpbusd_epi32(i1, wv[g + 4], bcast(q.add(16 + 4 * g)));
                        }
                    }
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(s0, dx), *a);
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(s1, dx), *a);
                } else {
                    let mut i0 = _mm512_set1_epi32(-offset * (h0 + h1));
                    let mut i1 = _mm512_setzero_si512();
                    for g in 0..4 {
                        // SAFETY: as above.
                        unsafe {
                            i0 = _mm512_dpbusd_epi32(i0, wv[g], bcast(q.add(4 * g)));
                            i1 = _mm512_dpbusd_epi32(i1, wv[g + 4], bcast(q.add(16 + 4 * g)));
                        }
                    }
                    let i = _mm512_add_epi32(i0, i1);
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(s0, dx), *a);
                    if MODE == 1 {
                        // SAFETY: as above.
                        let sx = unsafe { _mm512_set1_ps(*act.s.get_unchecked(at)) };
                        *a = _mm512_fmadd_ps(s1, sx, *a);
                    }
                }
            }
        }
        let mask: __mmask16 = if valid >= PANEL {
            0xFFFF
        } else {
            ((1u32 << valid) - 1) as __mmask16
        };
        for (t, a) in acc.iter().enumerate() {
            // SAFETY: y[(t0 + t)·n + r0 ..][..valid] lies inside y (caller); masked lanes are
            // not written.
            unsafe { _mm512_mask_storeu_ps(y.add((t0 + t) * n + r0), mask, *a) };
        }
    }

    /// Sums of 16 vectors of 8 partial sums (`p[i]` = row `i`): lane `i` of the first result
    /// holds lanes 0..4 of `p[i]` (codes 0..16), of the second lanes 4..8 (codes 16..32).
    ///
    /// # Safety
    /// CPU as `unpack`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn reduce16(p: &[__m256i; PANEL]) -> (__m512i, __m512i) {
        let mut lo = [_mm_setzero_si128(); 4];
        let mut hi = [_mm_setzero_si128(); 4];
        for q in 0..4 {
            let a = _mm256_hadd_epi32(p[4 * q], p[4 * q + 1]);
            let b = _mm256_hadd_epi32(p[4 * q + 2], p[4 * q + 3]);
            let c = _mm256_hadd_epi32(a, b);
            lo[q] = _mm256_castsi256_si128(c);
            hi[q] = _mm256_extracti128_si256::<1>(c);
        }
        let join = |v: [__m128i; 4]| {
            let z = _mm512_castsi128_si512(v[0]);
            let z = _mm512_inserti32x4::<1>(z, v[1]);
            let z = _mm512_inserti32x4::<2>(z, v[2]);
            _mm512_inserti32x4::<3>(z, v[3])
        };
        (join(lo), join(hi))
    }

    /// One block's step of the tile arithmetic for 16 rows: integer sums `i0` (codes 0..16) and
    /// `i1` (16..32) without the offset, scales `s0`, `s1`; as `rows` does for one activation row.
    ///
    /// # Safety
    /// CPU as `unpack`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn chain_step(
        mode: Mode,
        offset: i32,
        (i0, i1): (__m512i, __m512i),
        [h0, h1]: [i32; 2],
        dx: f32,
        sx: f32,
        s0: __m512,
        s1: __m512,
        acc: __m512,
    ) -> __m512 {
        let dx = _mm512_set1_ps(dx);
        match mode {
            Mode::Half => {
                let i0 = _mm512_add_epi32(i0, _mm512_set1_epi32(-offset * h0));
                let i1 = _mm512_add_epi32(i1, _mm512_set1_epi32(-offset * h1));
                let a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(s0, dx), acc);
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(s1, dx), a)
            }
            _ => {
                let i = _mm512_add_epi32(
                    _mm512_add_epi32(i0, i1),
                    _mm512_set1_epi32(-offset * (h0 + h1)),
                );
                let a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(s0, dx), acc);
                if mode == Mode::Min {
                    _mm512_fmadd_ps(s1, _mm512_set1_ps(sx), a)
                } else {
                    a
                }
            }
        }
    }

    /// Rows `r0..r0 + 16` (those below `w.rows`) of a legacy format times activation row `t`.
    ///
    /// # Safety
    /// CPU as `unpack`; `act` matches `w`'s width; `y` has `w.rows` values.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn gemv_legacy<F: Fmt>(
        w: QMatrixRef<'_>,
        r0: usize,
        act: &TileActs,
        t: usize,
        mode: Mode,
        y: *mut f32,
    ) {
        let (nb, k) = (act.nb, act.nb * QK);
        let valid = PANEL.min(w.rows - r0);
        let mut acc = _mm512_setzero_ps();
        let mut p = [_mm256_setzero_si256(); PANEL];
        let mut s0 = [0.0f32; PANEL];
        let mut s1 = [0.0f32; PANEL];
        let rb = w.row_bytes();
        let base = w.bytes.as_ptr();
        for b in 0..nb {
            let at = t * nb + b;
            // SAFETY: block b of row t lies inside the activation codes.
            let xq = unsafe {
                _mm256_loadu_si256(act.qs.as_ptr().add(t * k + b * QK) as *const __m256i)
            };
            for i in 0..valid {
                // SAFETY: row r0 + i < w.rows holds nb blocks of F.
                let (v, d, m) = unsafe { F::unpack(base.add((r0 + i) * rb + b * F::BYTES)) };
                let u = if F::HAS_MIN {
                    v
                } else {
                    _mm256_xor_si256(v, _mm256_set1_epi8(-128))
                };
                p[i] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, xq);
                s0[i] = d;
                s1[i] = m;
            }
            // SAFETY: the CPU condition is this function's; the arrays hold 16 values.
            acc = unsafe {
                chain_step(
                    mode,
                    if F::HAS_MIN { 0 } else { 128 },
                    reduce16(&p),
                    act.h[at],
                    act.d[at],
                    act.s[at],
                    _mm512_loadu_ps(s0.as_ptr()),
                    _mm512_loadu_ps(s1.as_ptr()),
                    acc,
                )
            };
        }
        let mask = ((1u32 << valid) - 1) as __mmask16;
        // SAFETY: y[r0..r0 + valid] lies inside y (caller).
        unsafe { _mm512_mask_storeu_ps(y.add(r0), mask, acc) };
    }

    /// As `gemv_legacy` for a K-quant.
    ///
    /// # Safety
    /// As `gemv_legacy`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn gemv_k<F: KFmt>(
        w: QMatrixRef<'_>,
        r0: usize,
        act: &TileActs,
        t: usize,
        mode: Mode,
        offset: i32,
        y: *mut f32,
    ) {
        let (nb, k) = (act.nb, act.nb * QK);
        let valid = PANEL.min(w.rows - r0);
        let half = min_is_d(F::KIND);
        let mut acc = _mm512_setzero_ps();
        // [chunk][row] partial sums and scales of one super-block.
        let mut p = [[_mm256_setzero_si256(); PANEL]; 8];
        let mut s0 = [[0.0f32; PANEL]; 8];
        let mut s1 = [[0.0f32; PANEL]; 8];
        let rb = w.row_bytes();
        let bb = F::KIND.block_bytes();
        let base = w.bytes.as_ptr();
        for sb in 0..nb / 8 {
            // SAFETY: super-block sb of row t lies inside the activation codes.
            let xq: [__m256i; 8] = std::array::from_fn(|c| unsafe {
                _mm256_loadu_si256(act.qs.as_ptr().add(t * k + sb * QK_K + c * QK) as *const __m256i)
            });
            for i in 0..valid {
                // SAFETY: row r0 + i < w.rows holds nb / 8 whole blocks of F.
                let blk =
                    unsafe { std::slice::from_raw_parts(base.add((r0 + i) * rb + sb * bb), bb) };
                // SAFETY: `blk` is one whole block.
                let u = unsafe { F::codes(blk.as_ptr()) };
                for c in 0..8 {
                    p[c][i] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u[c], xq[c]);
                }
                let s = scales(F::KIND, blk);
                for c in 0..8 {
                    [s0[c][i], s1[c][i]] = if half {
                        [s.d * s.sc[2 * c] as f32, s.d * s.sc[2 * c + 1] as f32]
                    } else {
                        [s.d * s.sc[2 * c] as f32, -s.dmin * s.mn[2 * c] as f32]
                    };
                }
            }
            for c in 0..8 {
                let at = t * nb + sb * 8 + c;
                // SAFETY: the CPU condition is this function's; the arrays hold 16 values.
                acc = unsafe {
                    chain_step(
                        mode,
                        offset,
                        reduce16(&p[c]),
                        act.h[at],
                        act.d[at],
                        act.s[at],
                        _mm512_loadu_ps(s0[c].as_ptr()),
                        _mm512_loadu_ps(s1[c].as_ptr()),
                        acc,
                    )
                };
            }
        }
        let mask = ((1u32 << valid) - 1) as __mmask16;
        // SAFETY: y[r0..r0 + valid] lies inside y (caller).
        unsafe { _mm512_mask_storeu_ps(y.add(r0), mask, acc) };
    }

    /// Activation row `t` against weight rows `r0..r0 + 16` with no unpacked panel: each block's
    /// integer sums row by row, then the tile kernel's float steps on 16 lanes. The results equal
    /// the tile kernel's bit for bit (integer sums are exact in any order; the float operations
    /// are the same, in the same order), so one row decoded alone and the same row in a batch
    /// agree exactly.
    ///
    /// # Safety
    /// CPU as `unpack`; the format has a tile form; `act` matches `w`'s width; `r0 < w.rows`;
    /// `y` points at `w.rows` values (row `t` of the output).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn gemv(
        w: QMatrixRef<'_>,
        r0: usize,
        act: &TileActs,
        t: usize,
        mode: Mode,
        offset: i32,
        y: *mut f32,
    ) {
        // SAFETY: forwarded from this function's contract; `kind` selects the block layout.
        unsafe {
            match w.kind {
                Kind::Q4_0 => gemv_legacy::<Q40>(w, r0, act, t, mode, y),
                Kind::Q4_1 => gemv_legacy::<Q41>(w, r0, act, t, mode, y),
                Kind::Q5_0 => gemv_legacy::<Q50>(w, r0, act, t, mode, y),
                Kind::Q5_1 => gemv_legacy::<Q51>(w, r0, act, t, mode, y),
                Kind::Q8_0 => gemv_legacy::<Q80>(w, r0, act, t, mode, y),
                Kind::Q3K => gemv_k::<Q3K>(w, r0, act, t, mode, offset, y),
                Kind::Q4K => gemv_k::<Q4K>(w, r0, act, t, mode, offset, y),
                Kind::Q5K => gemv_k::<Q5K>(w, r0, act, t, mode, offset, y),
                Kind::Q6K => gemv_k::<Q6K>(w, r0, act, t, mode, offset, y),
                Kind::Q2K => {}
            }
        }
    }

    /// Every activation row against one unpacked panel.
    ///
    /// # Safety
    /// As `rows`, for all rows of `act`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn panel_times(
        p: &Panel,
        mode: Mode,
        offset: i32,
        act: &TileActs,
        y: *mut f32,
        n: usize,
        r0: usize,
    ) {
        let valid = PANEL.min(n - r0);
        let m = act.rows;
        let mut t0 = 0;
        macro_rules! go {
            ($t:literal) => {
                // SAFETY: rows t0..t0 + $t exist; the rest is the caller's contract.
                unsafe {
                    match mode {
                        Mode::Sym => rows::<0, $t>(p, act, offset, t0, y, n, r0, valid),
                        Mode::Min => rows::<1, $t>(p, act, offset, t0, y, n, r0, valid),
                        Mode::Half => rows::<2, $t>(p, act, offset, t0, y, n, r0, valid),
                    }
                }
            };
        }
        while t0 < m {
            let left = m - t0;
            let t = match left {
                1 => {
                    go!(1);
                    1
                }
                2 => {
                    go!(2);
                    2
                }
                3 => {
                    go!(3);
                    3
                }
                4 => {
                    go!(4);
                    4
                }
                5 => {
                    go!(5);
                    5
                }
                6 => {
                    go!(6);
                    6
                }
                7 => {
                    go!(7);
                    7
                }
                _ => {
                    go!(8);
                    8
                }
            };
            t0 += t;
        }
    }
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
        let threads = crate::pool::pool().threads();
        let per_task = panels.div_ceil(threads * 4).max(1);
        let tasks = panels.div_ceil(per_task);
        let out = crate::pool::SyncPtr(y.as_mut_ptr());
        thread_local! {
            static PANEL_BUF: std::cell::RefCell<avx512::Panel> =
                std::cell::RefCell::new(avx512::Panel::default());
        }
        if m <= GEMV_MAX_ROWS {
            crate::pool::parallel_for(tasks, &|task| {
                for pi in task * per_task..((task + 1) * per_task).min(panels) {
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
        crate::pool::parallel_for(tasks, &|task| {
            let run = |p: &mut avx512::Panel| {
                for pi in task * per_task..((task + 1) * per_task).min(panels) {
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
mod tests;
