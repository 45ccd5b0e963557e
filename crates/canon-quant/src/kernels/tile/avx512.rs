//! The AVX-512 VNNI tile kernel (see the module `tile`).

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
        let xq =
            unsafe { _mm256_loadu_si256(act.qs.as_ptr().add(t * k + b * QK) as *const __m256i) };
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
            let blk = unsafe { std::slice::from_raw_parts(base.add((r0 + i) * rb + sb * bb), bb) };
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
