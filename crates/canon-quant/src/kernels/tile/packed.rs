//! Weights repacked once into the tile kernel's panel layout, so that no product unpacks or
//! transposes a block again (llama.cpp does the same with its repacked `Q4_0x8`/`Q4_K x8` forms).
//!
//! `tile::matmul` unpacks every panel of 16 weight rows into the transposed byte layout on each
//! product: for a prompt that cost is shared by hundreds of activation rows, but for decoding (one
//! to fifteen rows) it is most of the work. A `Packed` matrix holds that layout permanently, in
//! place of the file's blocks for the products:
//!
//! - codes: per panel and block of 32, register `g` (codes `4g..4g+4` of each of the 16 rows) as
//!   in `tile`; the 4-bit formats (Q4_0, Q4_1, Q4_K) keep two registers per 64-byte line, `g` in
//!   the low nibbles and `g + 4` in the high ones (one shift and two masks unpack them), the other
//!   formats one register per line;
//! - scales: the two per-row scale vectors of `tile` (one for the symmetric formats), as f16 for
//!   the legacy formats (whose scales are f16 in the file, so nothing is rounded) and as f32 for the
//!   K-quants (super-block scale × 6-bit sub-scale is not an f16).
//!
//! Sizes per block of 32 weights × 16 rows, against the file: Q4_0 288 bytes (file 288), Q4_1 320
//! (320), Q8_0 544 (544), Q5_0 544 (352), Q5_1 576 (384), Q4_K 384 (288), Q5_K 640 (352), Q6_K 640
//! (420). Q3_K (which would triple) and Q2_K (no tile form) are not packed. For the AVX2 kernel
//! Q5_0 keeps its file size (352): its codes `q + 16` as the 4-bit formats' two nibble registers
//! per line, plus a fifth line whose byte `i` holds in bit `g` the fifth bit of register `g`'s
//! byte `i` (one shift, one mask and one `or` put it back).
//!
//! Every activation row goes through the same operations in the same order whatever the number of
//! rows, and those are the operations of `tile::matmul` (the 4-bit codes carry an offset smaller
//! by the same amount, an exact integer change): one sequence decoded alone, the same sequence in
//! a batch and a prompt chunk give bit-identical products.

use super::{Mode, PANEL, TileActs, form};
use crate::kernels::{Isa, Kind, QK, QMatrixRef};

/// 64 aligned bytes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Line64([u8; 64]);

/// A matrix `[rows, cols]` in the packed panel layout (module docs).
pub struct Packed {
    pub kind: Kind,
    pub rows: usize,
    pub cols: usize,
    mode: Mode,
    /// The integer offset of the stored codes (`tile::form`'s, less `base` for 4-bit codes).
    offset: i32,
    /// Codes stored as nibbles.
    nib: bool,
    /// Nibbles plus a line of fifth bits (Q5_0 for AVX2, module docs).
    hi5: bool,
    /// Scales stored as f16.
    half: bool,
    nb: usize,
    panels: usize,
    codes: Vec<Line64>,
    scales: Vec<Line64>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("kind", &self.kind)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Whether products repack weights (`GgmlTensor::packed`): on by default where the tile kernel
/// runs; the environment variable `CANON_PACK=off` turns it off (read once), for side-by-side
/// measurements against the unpacking kernels.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("CANON_PACK").as_deref(),
            Ok("off" | "0" | "false")
        )
    })
}

/// Whether `kind` is packed on this CPU: every tile format but Q3_K with AVX-512 VNNI, the 4-bit
/// formats (Q4_0, Q4_1, Q4_K), Q5_0, Q6_K and Q8_0 with AVX2 alone (`avx2_packs`); the tile
/// kernel and packing enabled.
pub fn packs(kind: Kind) -> bool {
    super::enabled()
        && enabled()
        && form(kind).is_some()
        && kind != Kind::Q3K
        && (avx512_packs() || (avx2_packs() && avx2_kind(kind)))
}

/// The formats the AVX2 panel kernel multiplies: the 4-bit ones, Q5_0 (nibbles and fifth bits),
/// Q6_K (a byte per code, two scales per block) and Q8_0 (by the sign trick).
fn avx2_kind(kind: Kind) -> bool {
    avx2_base(kind).is_some() || matches!(kind, Kind::Q6K | Kind::Q8_0)
}

/// `nibble_base` for the AVX2 layout, which also stores Q5_0's codes `q + 128 − 112` in five bits.
fn avx2_base(kind: Kind) -> Option<u8> {
    match kind {
        Kind::Q5_0 => Some(112),
        _ => nibble_base(kind),
    }
}

/// Whether this CPU packs with the AVX-512 VNNI kernels.
fn avx512_packs() -> bool {
    Isa::best() == Isa::Avx512Vnni && Isa::Avx512Vnni.available()
}

/// Whether this CPU packs the 4-bit formats for the AVX2 panel kernel (`avx2` below): AVX2 is
/// its best path. There each weight code is multiplied by four activation bytes broadcast to
/// eight rows at once, and the scales are applied per block to eight rows in one vector, where
/// the row-at-a-time kernel spends a scale multiply, a conversion and a fused multiply-add per
/// row and block: for decoding several sequences (and prompts) the products cost about half.
/// 4-bit codes: eight of their byte-pair sums still fit a 16-bit lane; Q8_0 (signed bytes) adds
/// each register's pair sums into 32 bits (`maddubs` of |w| and x signed by w).
fn avx2_packs() -> bool {
    Isa::best() == Isa::Avx2 && Isa::Avx2.available()
}

/// The value subtracted from `tile`'s unsigned codes to store them as nibbles, for the 4-bit
/// formats (`Q4_0`'s codes are `q + 8 + 120`).
fn nibble_base(kind: Kind) -> Option<u8> {
    match kind {
        Kind::Q4_0 => Some(120),
        Kind::Q4_1 | Kind::Q4K => Some(0),
        _ => None,
    }
}

fn mode_id(mode: Mode) -> u8 {
    match mode {
        Mode::Sym => 0,
        Mode::Min => 1,
        Mode::Half => 2,
    }
}

/// Scale bytes per panel and block.
const fn scale_bytes(mode: u8, half: bool) -> usize {
    let vecs = if mode == 0 { 1 } else { 2 };
    vecs * PANEL * if half { 2 } else { 4 }
}

impl Packed {
    /// Repacks `w` (all rows, in parallel over the kernel pool), or `None` where `packs` says no.
    pub fn pack(w: QMatrixRef<'_>) -> Option<Packed> {
        Self::pack_releasing(w, &|_, _| {})
    }

    /// As `pack`, calling `done(r0, r1)` once rows `r0..r1` of `w` have been read for the last
    /// time (so that a caller can release their memory while the rest is packed).
    pub fn pack_releasing(
        w: QMatrixRef<'_>,
        done: &(dyn Fn(usize, usize) + Sync),
    ) -> Option<Packed> {
        if !packs(w.kind) || !w.cols.is_multiple_of(QK) {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let (mode, offset) = form(w.kind)?;
            let wide = avx512_packs();
            let base = if wide {
                nibble_base(w.kind)
            } else {
                avx2_base(w.kind)
            };
            let nib = base.is_some();
            let hi5 = !wide && w.kind == Kind::Q5_0;
            let half = !w.kind.is_k();
            let nb = w.cols / QK;
            let panels = w.rows.div_ceil(PANEL);
            let cl = lines_per_block(nib, hi5);
            let sb = scale_bytes(mode_id(mode), half);
            let mut codes = vec![Line64([0; 64]); panels * nb * cl];
            let mut scales = vec![Line64([0; 64]); (panels * nb * sb).div_ceil(64)];
            // Addresses (Send + Sync) of the two buffers; tasks write disjoint panels.
            let cptr = codes.as_mut_ptr() as usize;
            let sptr = scales.as_mut_ptr() as usize;
            let per_task = 8;
            if !wide {
                // AVX2 (4-bit formats, Q5_0, Q8_0): the same bytes from the plain tile form of
                // each row.
                crate::pool::parallel_for(panels.div_ceil(per_task), &|task| {
                    let mut u = vec![0u8; w.cols];
                    let mut sc = vec![[0.0f32; 2]; nb];
                    for pi in task * per_task..((task + 1) * per_task).min(panels) {
                        for lane in 0..PANEL.min(w.rows - pi * PANEL) {
                            super::row_form(w, pi * PANEL + lane, &mut u, &mut sc);
                            for b in 0..nb {
                                // SAFETY: panel pi's codes and scales are written by this task
                                // alone and lie inside the buffers sized above.
                                let (c, s) = unsafe {
                                    (
                                        std::slice::from_raw_parts_mut(
                                            (cptr as *mut u8).add((pi * nb + b) * cl * 64),
                                            cl * 64,
                                        ),
                                        std::slice::from_raw_parts_mut(
                                            (sptr as *mut u8).add((pi * nb + b) * sb),
                                            sb,
                                        ),
                                    )
                                };
                                let blk = &u[b * QK..(b + 1) * QK];
                                match base {
                                    Some(base) => {
                                        for j in 0..4 {
                                            for jj in 0..4 {
                                                let lo = blk[4 * j + jj].wrapping_sub(base);
                                                let hi = blk[4 * (j + 4) + jj].wrapping_sub(base);
                                                c[j * 64 + 4 * lane + jj] = (lo & 15) | (hi << 4);
                                            }
                                        }
                                        if hi5 {
                                            for jj in 0..4 {
                                                let mut bits = 0u8;
                                                for g in 0..8 {
                                                    let u = blk[4 * g + jj].wrapping_sub(base);
                                                    bits |= ((u >> 4) & 1) << g;
                                                }
                                                c[4 * 64 + 4 * lane + jj] = bits;
                                            }
                                        }
                                    }
                                    None => {
                                        for g in 0..8 {
                                            c[g * 64 + 4 * lane..g * 64 + 4 * lane + 4]
                                                .copy_from_slice(&blk[4 * g..4 * g + 4]);
                                        }
                                    }
                                }
                                let vecs = sb / (PANEL * if half { 2 } else { 4 });
                                for v in 0..vecs {
                                    let f = sc[b][v];
                                    if half {
                                        let h = half::f16::from_f32(f).to_bits().to_le_bytes();
                                        s[v * 32 + 2 * lane..v * 32 + 2 * lane + 2]
                                            .copy_from_slice(&h);
                                    } else {
                                        s[v * 64 + 4 * lane..v * 64 + 4 * lane + 4]
                                            .copy_from_slice(&f.to_le_bytes());
                                    }
                                }
                            }
                        }
                    }
                    let r0 = task * per_task * PANEL;
                    done(r0, ((task + 1) * per_task * PANEL).min(w.rows));
                });
            } else {
                crate::pool::parallel_for(panels.div_ceil(per_task), &|task| {
                    let mut p = super::avx512::Panel::default();
                    for pi in task * per_task..((task + 1) * per_task).min(panels) {
                        // SAFETY: `packs` checked the AVX-512 VNNI extensions and the tile form.
                        unsafe { super::avx512::unpack(w, pi * PANEL, &mut p) };
                        for b in 0..nb {
                            let lines = &p.lines[b * super::avx512::LINES..];
                            // SAFETY: panel pi's codes and scales are written by this task alone and
                            // lie inside the buffers sized above.
                            let (c, s) = unsafe {
                                (
                                    std::slice::from_raw_parts_mut(
                                        (cptr as *mut u8).add((pi * nb + b) * cl * 64),
                                        cl * 64,
                                    ),
                                    std::slice::from_raw_parts_mut(
                                        (sptr as *mut u8).add((pi * nb + b) * sb),
                                        sb,
                                    ),
                                )
                            };
                            match base {
                                Some(base) => {
                                    for j in 0..4 {
                                        for i in 0..64 {
                                            let lo = lines[j].0[i].wrapping_sub(base);
                                            let hi = lines[j + 4].0[i].wrapping_sub(base);
                                            c[j * 64 + i] = (lo & 15) | (hi << 4);
                                        }
                                    }
                                }
                                None => {
                                    for g in 0..8 {
                                        c[g * 64..(g + 1) * 64].copy_from_slice(&lines[g].0);
                                    }
                                }
                            }
                            let vecs = sb / (PANEL * if half { 2 } else { 4 });
                            for v in 0..vecs {
                                let line = &lines[8 + v].0;
                                for i in 0..PANEL {
                                    let f = f32::from_le_bytes([
                                        line[4 * i],
                                        line[4 * i + 1],
                                        line[4 * i + 2],
                                        line[4 * i + 3],
                                    ]);
                                    if half {
                                        let h = half::f16::from_f32(f).to_bits().to_le_bytes();
                                        s[v * 32 + 2 * i..v * 32 + 2 * i + 2].copy_from_slice(&h);
                                    } else {
                                        s[v * 64 + 4 * i..v * 64 + 4 * i + 4]
                                            .copy_from_slice(&f.to_le_bytes());
                                    }
                                }
                            }
                        }
                    }
                    let r0 = task * per_task * PANEL;
                    done(r0, ((task + 1) * per_task * PANEL).min(w.rows));
                });
            }
            let offset = offset - base.map_or(0, i32::from);
            Some(Packed {
                kind: w.kind,
                rows: w.rows,
                cols: w.cols,
                mode,
                offset,
                nib,
                hi5,
                half,
                nb,
                panels,
                codes,
                scales,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = done;
            None
        }
    }

    /// Row `r` dequantized from the packed copy into `out` (`cols` values), for the legacy formats
    /// (`d·q + m`, the same operations as `scalar::dequantize_row`, so the same bits); `false`
    /// (and `out` untouched) for the K-quants or a row out of range. Embedding lookups read rows
    /// here, so the file's released pages stay released.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> bool {
        if self.kind.is_k() || r >= self.rows || out.len() != self.cols {
            return false;
        }
        let (pi, lane) = (r / PANEL, r % PANEL);
        let cl = lines_per_block(self.nib, self.hi5);
        let m = mode_id(self.mode);
        let sb = scale_bytes(m, self.half);
        let codes = as_bytes(&self.codes);
        let scales = as_bytes(&self.scales);
        for (b, o) in out.chunks_exact_mut(QK).enumerate() {
            let blk = pi * self.nb + b;
            let s = &scales[blk * sb..(blk + 1) * sb];
            let f16 = |at: usize| half::f16::from_le_bytes([s[at], s[at + 1]]).to_f32();
            let (d, mn) = if m == 0 {
                (f16(2 * lane), 0.0)
            } else {
                (f16(2 * lane), f16(32 + 2 * lane))
            };
            let c = &codes[blk * cl * 64..(blk + 1) * cl * 64];
            // The row's 32 codes first (four per register), then one branch-free loop over
            // them that the compiler vectorizes: a QLoRA input gradient dequantizes every row.
            let mut u = [0u8; QK];
            if self.nib {
                for j in 0..4 {
                    let at = j * 64 + 4 * lane;
                    for i in 0..4 {
                        u[4 * j + i] = c[at + i] & 15;
                        u[16 + 4 * j + i] = c[at + i] >> 4;
                    }
                }
                if self.hi5 {
                    for g in 0..8 {
                        for i in 0..4 {
                            u[4 * g + i] |= ((c[4 * 64 + 4 * lane + i] >> g) & 1) << 4;
                        }
                    }
                }
            } else {
                for (g, reg) in u.chunks_exact_mut(4).enumerate() {
                    reg.copy_from_slice(&c[g * 64 + 4 * lane..g * 64 + 4 * lane + 4]);
                }
            }
            for (v, &code) in o.iter_mut().zip(&u) {
                *v = d * (code as i32 - self.offset) as f32 + mn;
            }
        }
        true
    }

    /// Rows `r0..r0 + out.len() / cols` dequantized into `out` (row-major), with the bits of
    /// `dequantize_row`: whole 16-row panels at once with AVX-512 or AVX2 (one pass over each
    /// panel's lines, no per-value branches), the rest row by row. `false` (and `out` partly written)
    /// for the K-quants, rows out of range or an `out` that is not whole rows.
    pub fn dequantize_rows(&self, r0: usize, out: &mut [f32]) -> bool {
        if self.kind.is_k() || self.cols == 0 || !out.len().is_multiple_of(self.cols) {
            return false;
        }
        let r1 = r0 + out.len() / self.cols;
        if r1 > self.rows {
            return false;
        }
        let mut r = r0;
        while r < r1 {
            let at = (r - r0) * self.cols;
            #[cfg(target_arch = "x86_64")]
            if r.is_multiple_of(PANEL) && r + PANEL <= r1 && self.half {
                let dst = &mut out[at..at + PANEL * self.cols];
                if avx512_packs() {
                    // SAFETY: a `Packed` exists only where `packs` found the AVX-512 extensions;
                    // panel r / PANEL exists (r + PANEL <= rows) and `dst` holds its 16 rows.
                    unsafe { avx512::dequantize_panel(self, r / PANEL, dst.as_mut_ptr()) };
                    r += PANEL;
                    continue;
                }
                if avx2_packs() {
                    // SAFETY: `avx2_packs` checked AVX2 (with FMA and F16C, see `Isa::Avx2`);
                    // panel r / PANEL exists (r + PANEL <= rows) and `dst` holds its 16 rows.
                    unsafe { avx2::dequantize_panel(self, r / PANEL, dst.as_mut_ptr()) };
                    r += PANEL;
                    continue;
                }
            }
            if !self.dequantize_row(r, &mut out[at..at + self.cols]) {
                return false;
            }
            r += 1;
        }
        true
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        (self.codes.len() + self.scales.len()) * 64
    }

    /// `y = x Wᵀ`: `x: [m, k]` f32 row-major, `y: [m, n]`. Panics never; callers check shapes.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        thread_local! {
            static ACTS: std::cell::RefCell<TileActs> = std::cell::RefCell::new(TileActs::default());
        }
        ACTS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut act) => {
                act.quantize_into(x, m, self.cols);
                self.matmul_acts(&act, y)
            }
            Err(_) => self.matmul_acts(&TileActs::quantize(x, m, self.cols), y),
        })
    }

    /// `y = x Wᵀ` with `x` already rounded (`TileActs` of `self.cols` columns).
    pub fn matmul_acts(&self, act: &TileActs, y: &mut [f32]) {
        let (n, m) = (self.rows, act.rows);
        assert_eq!(y.len(), n * m, "Packed::matmul: output length");
        assert_eq!(act.nb, self.nb, "Packed::matmul: activation width");
        #[cfg(target_arch = "x86_64")]
        {
            let threads = crate::pool::pool().threads();
            let per_task = self.panels.div_ceil(threads * 4).max(1);
            let tasks = self.panels.div_ceil(per_task);
            let out = crate::pool::SyncPtr(y.as_mut_ptr());
            let wide = avx512_packs();
            crate::pool::parallel_for(tasks, &|task| {
                for pi in task * per_task..((task + 1) * per_task).min(self.panels) {
                    // SAFETY: a `Packed` exists only where `packs` found the CPU extensions
                    // (AVX-512 VNNI, or AVX2 for the 4-bit formats); tasks own disjoint panels,
                    // hence disjoint output columns.
                    unsafe {
                        if wide {
                            avx512::panel_times(self, pi, act, out.get())
                        } else {
                            avx2::panel_times(self, pi, act, out.get())
                        }
                    };
                }
            });
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (n, m);
    }
}

/// 64-byte lines per block of a panel: nibbles (4), nibbles and fifth bits (5), bytes (8).
const fn lines_per_block(nib: bool, hi5: bool) -> usize {
    if hi5 {
        5
    } else if nib {
        4
    } else {
        8
    }
}

/// The bytes of a line buffer.
fn as_bytes(lines: &[Line64]) -> &[u8] {
    // SAFETY: `Line64` is 64 plain bytes (`repr(C)`), so the buffer is `64·len` initialised bytes.
    unsafe { std::slice::from_raw_parts(lines.as_ptr() as *const u8, lines.len() * 64) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    /// Panel `pi`'s 16 rows dequantized into `out` (`[16, p.cols]` row-major): per block and
    /// register `g`, the 64 codes (4 per row) widened to i32, less the offset, to f32, times the
    /// row's scale plus its minimum (zero for the symmetric formats), the operations and order of
    /// `Packed::dequantize_row`, so the same bits.
    ///
    /// # Safety
    /// CPU with AVX-512F/BW and F16C (any CPU a `Packed` exists on); `p.half`; `pi < p.panels`
    /// with all 16 rows inside `p.rows`; `out` points at `16 · p.cols` writable floats.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
    pub(super) unsafe fn dequantize_panel(p: &Packed, pi: usize, out: *mut f32) {
        let (nb, k) = (p.nb, p.cols);
        let cl = if p.nib { 4 } else { 8 };
        let m = mode_id(p.mode);
        let sb = scale_bytes(m, p.half);
        // SAFETY: panel pi's lines lie inside the buffers (pi < panels).
        let (cp, sp) = unsafe {
            (
                (p.codes.as_ptr() as *const u8).add(pi * nb * cl * 64),
                (p.scales.as_ptr() as *const u8).add(pi * nb * sb),
            )
        };
        let off = _mm512_set1_epi32(p.offset);
        let low = _mm512_set1_epi8(15);
        // Quarter q of a line holds rows 4q..4q+4, four codes each: their scales repeated 4×.
        let idx: [__m512i; 4] = std::array::from_fn(|q| {
            let l = 4 * q as i32;
            _mm512_setr_epi32(
                l,
                l,
                l,
                l,
                l + 1,
                l + 1,
                l + 1,
                l + 1,
                l + 2,
                l + 2,
                l + 2,
                l + 2,
                l + 3,
                l + 3,
                l + 3,
                l + 3,
            )
        });
        for b in 0..nb {
            // SAFETY: block b's scales (16 f16 scales, then 16 minimums when m != 0).
            let (d, mn) = unsafe {
                let s = sp.add(b * sb);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(s as *const __m256i));
                let mn = if m == 0 {
                    _mm512_setzero_ps()
                } else {
                    _mm512_cvtph_ps(_mm256_loadu_si256(s.add(32) as *const __m256i))
                };
                (d, mn)
            };
            let ds: [__m512; 4] = std::array::from_fn(|q| _mm512_permutexvar_ps(idx[q], d));
            let ms: [__m512; 4] = std::array::from_fn(|q| _mm512_permutexvar_ps(idx[q], mn));
            let reg = |g: usize, v: __m512i| {
                for q in 0..4 {
                    let c = match q {
                        0 => _mm512_extracti32x4_epi32::<0>(v),
                        1 => _mm512_extracti32x4_epi32::<1>(v),
                        2 => _mm512_extracti32x4_epi32::<2>(v),
                        _ => _mm512_extracti32x4_epi32::<3>(v),
                    };
                    let x = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(c), off));
                    let y = _mm512_add_ps(_mm512_mul_ps(ds[q], x), ms[q]);
                    let col = b * QK + 4 * g;
                    // SAFETY: rows 4q..4q+4 of the panel, columns col..col+4 < k, inside `out`.
                    unsafe {
                        let row = |i: usize| out.add((4 * q + i) * k + col);
                        _mm_storeu_ps(row(0), _mm512_extractf32x4_ps::<0>(y));
                        _mm_storeu_ps(row(1), _mm512_extractf32x4_ps::<1>(y));
                        _mm_storeu_ps(row(2), _mm512_extractf32x4_ps::<2>(y));
                        _mm_storeu_ps(row(3), _mm512_extractf32x4_ps::<3>(y));
                    }
                }
            };
            for j in 0..cl {
                // SAFETY: line j of block b (64-byte aligned lines).
                let v = unsafe { _mm512_load_si512(cp.add((b * cl + j) * 64) as *const __m512i) };
                if p.nib {
                    reg(j, _mm512_and_si512(v, low));
                    reg(j + 4, _mm512_and_si512(_mm512_srli_epi16::<4>(v), low));
                } else {
                    reg(j, v);
                }
            }
        }
    }

    /// The four activation codes `4g..4g+4` of a block in every 32-bit lane.
    ///
    /// # Safety
    /// `q` points at 4 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn bcast(q: *const i8) -> __m512i {
        // SAFETY: 4 readable bytes (caller); unaligned read.
        _mm512_set1_epi32(unsafe { (q as *const i32).read_unaligned() })
    }

    /// `T` activation rows from `t0` against panel `pi`, whose codes start at `cp` (nibbles if
    /// `NIB`, else one register per line) and scales at `sp`; writes `y[t, r0..r0 + valid]`. The
    /// float steps are `tile::avx512::rows`', in the same order.
    ///
    /// # Safety
    /// CPU with the `Isa::Avx512Vnni` extensions; `HALF` and `MODE` are `p`'s, `cp`/`sp` hold
    /// panel `pi`'s `p.nb` blocks in that layout (`cp` 64-byte aligned); rows `t0..t0 + T` exist
    /// in `act`, whose width is `p`'s; `y` points at `[act.rows, p.rows]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const MODE: u8, const T: usize, const NIB: bool, const HALF: bool>(
        p: &Packed,
        pi: usize,
        cp: *const u8,
        sp: *const u8,
        act: &TileActs,
        t0: usize,
        y: *mut f32,
    ) {
        let (nb, n, offset) = (p.nb, p.rows, p.offset);
        let k = nb * QK;
        let r0 = pi * PANEL;
        let valid = PANEL.min(n - r0);
        let cl = if NIB { 4 } else { 8 };
        let sb = scale_bytes(MODE, HALF);
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            // SAFETY: block b of panel pi: cl aligned lines and sb scale bytes inside the buffers.
            let (wv, s0, s1) = unsafe {
                let l = cp.add(b * cl * 64);
                let wv: [__m512i; 8] = if NIB {
                    let r: [__m512i; 4] =
                        std::array::from_fn(|j| _mm512_load_si512(l.add(j * 64) as *const __m512i));
                    std::array::from_fn(|g| {
                        if g < 4 {
                            _mm512_and_si512(r[g], low)
                        } else {
                            _mm512_and_si512(_mm512_srli_epi16::<4>(r[g - 4]), low)
                        }
                    })
                } else {
                    std::array::from_fn(|g| _mm512_load_si512(l.add(g * 64) as *const __m512i))
                };
                let s = sp.add(b * sb);
                let (s0, s1) = if HALF {
                    let s0 = _mm512_cvtph_ps(_mm256_loadu_si256(s as *const __m256i));
                    let s1 = if MODE == 0 {
                        _mm512_setzero_ps()
                    } else {
                        _mm512_cvtph_ps(_mm256_loadu_si256(s.add(32) as *const __m256i))
                    };
                    (s0, s1)
                } else {
                    let s0 = _mm512_loadu_ps(s as *const f32);
                    let s1 = if MODE == 0 {
                        _mm512_setzero_ps()
                    } else {
                        _mm512_loadu_ps(s.add(64) as *const f32)
                    };
                    (s0, s1)
                };
                (wv, s0, s1)
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

    /// `T` rows through the instance of `rows` for `p`'s layout.
    ///
    /// # Safety
    /// As `rows`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_t<const T: usize>(
        p: &Packed,
        pi: usize,
        nib: bool,
        cp: *const u8,
        sp: *const u8,
        act: &TileActs,
        t0: usize,
        y: *mut f32,
    ) {
        macro_rules! pick {
            ($($m:literal, $nib:literal, $half:literal);*) => {
                match (mode_id(p.mode), nib, p.half) {
                    $(($m, $nib, $half) => {
                        // SAFETY: the layout parameters are the caller's; so is the rest.
                        unsafe { rows::<$m, T, $nib, $half>(p, pi, cp, sp, act, t0, y) }
                    })*
                    _ => {}
                }
            };
        }
        pick!(0, true, true; 1, true, true; 1, true, false; 0, false, true;
              1, false, true; 1, false, false; 2, false, false; 0, false, false;
              2, false, true; 0, true, false; 2, true, true; 2, true, false);
    }

    /// Every activation row against panel `pi`, eight rows per pass.
    ///
    /// # Safety
    /// CPU as `rows`; `act` has `p`'s width; `y` points at `[act.rows, p.rows]`; `pi < panels`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub(super) unsafe fn panel_times(p: &Packed, pi: usize, act: &TileActs, y: *mut f32) {
        let m = act.rows;
        let nb = p.nb;
        let sb = scale_bytes(mode_id(p.mode), p.half);
        let cl = if p.nib { 4 } else { 8 };
        // SAFETY: panel pi's lines start inside the buffers (pi < panels).
        let (mut cp, sp) = unsafe {
            (
                (p.codes.as_ptr() as *const u8).add(pi * nb * cl * 64),
                (p.scales.as_ptr() as *const u8).add(pi * nb * sb),
            )
        };
        thread_local! {
            static WIDE: std::cell::RefCell<Vec<Line64>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // More than one pass of activation rows over a nibble panel: its codes are widened to
        // bytes once (the same integers), instead of once per pass.
        let mut nib = p.nib;
        let mut wide = None;
        if nib && m > 8 {
            wide = WIDE.with(|w| w.try_borrow_mut().ok().map(|mut w| std::mem::take(&mut *w)));
            if let Some(buf) = wide.as_mut() {
                buf.resize(nb * 8, Line64([0; 64]));
                // SAFETY: the panel holds nb·4 nibble lines; `buf` nb·8 aligned lines.
                unsafe { widen(cp, nb, buf.as_mut_ptr() as *mut u8) };
                cp = buf.as_ptr() as *const u8;
                nib = false;
            }
        }
        let mut t0 = 0;
        while t0 < m {
            let left = m - t0;
            // SAFETY: rows t0..t0 + t exist; the rest is the caller's contract.
            let t = unsafe {
                match left {
                    1 => {
                        rows_t::<1>(p, pi, nib, cp, sp, act, t0, y);
                        1
                    }
                    2 => {
                        rows_t::<2>(p, pi, nib, cp, sp, act, t0, y);
                        2
                    }
                    3 => {
                        rows_t::<3>(p, pi, nib, cp, sp, act, t0, y);
                        3
                    }
                    4 => {
                        rows_t::<4>(p, pi, nib, cp, sp, act, t0, y);
                        4
                    }
                    5 => {
                        rows_t::<5>(p, pi, nib, cp, sp, act, t0, y);
                        5
                    }
                    6 => {
                        rows_t::<6>(p, pi, nib, cp, sp, act, t0, y);
                        6
                    }
                    7 => {
                        rows_t::<7>(p, pi, nib, cp, sp, act, t0, y);
                        7
                    }
                    _ => {
                        rows_t::<8>(p, pi, nib, cp, sp, act, t0, y);
                        8
                    }
                }
            };
            t0 += t;
        }
        if let Some(buf) = wide {
            WIDE.with(|w| {
                if let Ok(mut w) = w.try_borrow_mut() {
                    *w = buf;
                }
            });
        }
    }

    /// Nibble lines `[nb, 4]` at `src` to byte lines `[nb, 8]` at `dst` (register `g` in the low
    /// nibbles of line `g`, `g + 4` in the high ones).
    ///
    /// # Safety
    /// CPU as `rows`; `src` holds `nb·4` and `dst` `nb·8` 64-byte aligned lines.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn widen(src: *const u8, nb: usize, dst: *mut u8) {
        let low = _mm512_set1_epi8(0x0F);
        for b in 0..nb {
            for j in 0..4 {
                // SAFETY: line j of block b in both buffers (caller).
                unsafe {
                    let r = _mm512_load_si512(src.add((b * 4 + j) * 64) as *const __m512i);
                    let lo = _mm512_and_si512(r, low);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(r), low);
                    _mm512_store_si512(dst.add((b * 8 + j) * 64) as *mut __m512i, lo);
                    _mm512_store_si512(dst.add((b * 8 + j + 4) * 64) as *mut __m512i, hi);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The panel kernel on AVX2 alone, for the 4-bit formats, Q5_0, Q6_K and Q8_0. A 64-byte line holds rows 0..8 of a
    //! panel in its first 32 bytes and rows 8..16 in the others, so each half is one 256-bit
    //! register of eight rows. Per activation row and block, register `g` (codes `4g..4g+4` of
    //! each row) meets the four activation bytes `4g..4g+4` broadcast: `maddubs` leaves two
    //! 16-bit pair sums per row, the eight registers' sums add up in 16 bits (a 4-bit code times
    //! a byte of at most 127 in magnitude, two of them eight times: |Σ| ≤ 16·15·127 = 30,480 <
    //! 2¹⁵), one `madd` by ones finishes each row's 32-term integer sum, and the float steps are
    //! the AVX-512 kernel's, in the same order: a row's result does not depend on the other rows.

    use std::arch::x86_64::*;

    use super::*;

    /// Panel `pi`'s 16 rows dequantized into `out` (`[16, p.cols]` row-major), as the AVX-512
    /// `dequantize_panel` does it with half the width: per block, half (rows 0..8, 8..16) and
    /// line, two rows' four codes at a time widened to i32, less the offset, to f32, times the
    /// row's scale plus its minimum (zero for the symmetric formats): the operations and order
    /// of `Packed::dequantize_row`, so the same bits. A LoRA/QLoRA input gradient dequantizes
    /// every row of the frozen base this way.
    ///
    /// # Safety
    /// CPU with AVX2 and F16C; `p.half`; `pi < p.panels` with all 16 rows inside `p.rows`; `out`
    /// points at `16 · p.cols` writable floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize_panel(p: &Packed, pi: usize, out: *mut f32) {
        let (nb, k) = (p.nb, p.cols);
        let cl = lines_per_block(p.nib, p.hi5);
        let m = mode_id(p.mode);
        let sb = scale_bytes(m, p.half);
        // SAFETY: panel pi's lines lie inside the buffers (pi < panels).
        let (cp, sp) = unsafe {
            (
                (p.codes.as_ptr() as *const u8).add(pi * nb * cl * 64),
                (p.scales.as_ptr() as *const u8).add(pi * nb * sb),
            )
        };
        let off = _mm256_set1_epi32(p.offset);
        let low = _mm256_set1_epi8(15);
        // Quarter q of a half-line holds rows 2q and 2q + 1 (four codes each): scales 2q, 2q + 1
        // repeated 4×.
        let idx: [__m256i; 4] = std::array::from_fn(|q| {
            let l = 2 * q as i32;
            _mm256_setr_epi32(l, l, l, l, l + 1, l + 1, l + 1, l + 1)
        });
        for b in 0..nb {
            // SAFETY: block b's scales: 16 f16 scales, then 16 minimums when m != 0.
            let (d, mn) = unsafe {
                let s = sp.add(b * sb);
                let half =
                    |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(s.add(at) as *const __m128i));
                let d = [half(0), half(16)];
                let mn = if m == 0 {
                    [_mm256_setzero_ps(); 2]
                } else {
                    [half(32), half(48)]
                };
                (d, mn)
            };
            for h in 0..2 {
                let ds: [__m256; 4] =
                    std::array::from_fn(|q| _mm256_permutevar8x32_ps(d[h], idx[q]));
                let ms: [__m256; 4] =
                    std::array::from_fn(|q| _mm256_permutevar8x32_ps(mn[h], idx[q]));
                let reg = |g: usize, v: __m256i| {
                    for q in 0..4 {
                        let lane = if q < 2 {
                            _mm256_castsi256_si128(v)
                        } else {
                            _mm256_extracti128_si256::<1>(v)
                        };
                        let c = if q % 2 == 0 {
                            lane
                        } else {
                            _mm_srli_si128::<8>(lane)
                        };
                        let x = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(c), off));
                        let y = _mm256_add_ps(_mm256_mul_ps(ds[q], x), ms[q]);
                        let (row, col) = (8 * h + 2 * q, b * QK + 4 * g);
                        // SAFETY: rows `row`, `row + 1` < 16 of the panel, columns col..col+4 < k,
                        // inside `out`.
                        unsafe {
                            _mm_storeu_ps(out.add(row * k + col), _mm256_castps256_ps128(y));
                            _mm_storeu_ps(
                                out.add((row + 1) * k + col),
                                _mm256_extractf128_ps::<1>(y),
                            );
                        }
                    }
                };
                let hv = if p.hi5 {
                    // SAFETY: half h of line 4 of block b (Q5_0's fifth bits, present when `hi5`).
                    unsafe {
                        _mm256_load_si256(cp.add((b * cl + 4) * 64 + 32 * h) as *const __m256i)
                    }
                } else {
                    _mm256_setzero_si256()
                };
                for j in 0..if p.nib { 4 } else { 8 } {
                    // SAFETY: half h of line j of block b (64-byte aligned lines, so 32-byte
                    // aligned halves).
                    let v = unsafe {
                        _mm256_load_si256(cp.add((b * cl + j) * 64 + 32 * h) as *const __m256i)
                    };
                    if p.nib {
                        let (lo, hi) = (
                            _mm256_and_si256(v, low),
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), low),
                        );
                        if p.hi5 {
                            reg(j, _mm256_or_si256(lo, fifth(hv, j)));
                            reg(j + 4, _mm256_or_si256(hi, fifth(hv, j + 4)));
                        } else {
                            reg(j, lo);
                            reg(j + 4, hi);
                        }
                    } else {
                        reg(j, v);
                    }
                }
            }
        }
    }

    /// Bit `g` of every byte of `hv` as that byte's bit 4 (Q5_0's fifth bits, module docs): the
    /// 16-bit shifts carry bits across bytes only into positions the mask clears.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fifth(hv: __m256i, g: usize) -> __m256i {
        let m = _mm256_set1_epi8(0x10);
        let v = match g {
            0 => _mm256_slli_epi16::<4>(hv),
            1 => _mm256_slli_epi16::<3>(hv),
            2 => _mm256_slli_epi16::<2>(hv),
            3 => _mm256_slli_epi16::<1>(hv),
            4 => hv,
            5 => _mm256_srli_epi16::<1>(hv),
            6 => _mm256_srli_epi16::<2>(hv),
            _ => _mm256_srli_epi16::<3>(hv),
        };
        _mm256_and_si256(v, m)
    }

    /// `T` activation rows from `t0` against half `HALF_ROWS` (0: rows 0..8, 1: rows 8..16) of
    /// panel `pi`; writes `y[t, r0..r0 + valid]` for that half's valid rows.
    ///
    /// # Safety
    /// CPU with AVX2, FMA and F16C; `F16`, `NIB`, `H5` and `MODE` (0 or 1; 0 when not `NIB`) are `p`'s; `cp`/`sp` hold
    /// panel `pi`'s `p.nb` blocks; rows `t0..t0 + T` exist in `act`, whose width is `p`'s; `y`
    /// points at `[act.rows, p.rows]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<
        const MODE: u8,
        const T: usize,
        const F16: bool,
        const NIB: bool,
        const H5: bool,
    >(
        p: &Packed,
        half_rows: usize,
        pi: usize,
        cp: *const u8,
        sp: *const u8,
        act: &TileActs,
        t0: usize,
        y: *mut f32,
    ) {
        let (nb, n, offset) = (p.nb, p.rows, p.offset);
        let k = nb * QK;
        let r0 = pi * PANEL + 8 * half_rows;
        if r0 >= n {
            return;
        }
        let valid = 8.min(n - r0);
        let sb = scale_bytes(MODE, F16);
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(-128);
        let cl = lines_per_block(NIB, H5);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            // SAFETY: block b of panel pi: cl lines and sb scale bytes inside the buffers; this
            // half's 32 bytes of each line, its 8 scales (and 8 minimums) of the vectors.
            let (wv, s0, s1) = unsafe {
                let l = cp.add(b * cl * 64 + 32 * half_rows);
                let wv: [__m256i; 8] = if NIB {
                    let r: [__m256i; 4] =
                        std::array::from_fn(
                            |j| _mm256_loadu_si256(l.add(j * 64) as *const __m256i),
                        );
                    let hv = if H5 {
                        _mm256_loadu_si256(l.add(4 * 64) as *const __m256i)
                    } else {
                        _mm256_setzero_si256()
                    };
                    std::array::from_fn(|g| {
                        let v = if g < 4 {
                            _mm256_and_si256(r[g], low)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16::<4>(r[g - 4]), low)
                        };
                        if H5 {
                            _mm256_or_si256(v, fifth(hv, g))
                        } else {
                            v
                        }
                    })
                } else if MODE == 2 {
                    // Q6_K's codes u = q + 32 in 0..64, unsigned as they are.
                    std::array::from_fn(|g| _mm256_loadu_si256(l.add(g * 64) as *const __m256i))
                } else {
                    // Q8_0's codes u = q + 128 back to the signed q.
                    std::array::from_fn(|g| {
                        _mm256_xor_si256(_mm256_loadu_si256(l.add(g * 64) as *const __m256i), flip)
                    })
                };
                let s = sp.add(b * sb);
                let (s0, s1) = if F16 {
                    let at = |v: usize| s.add(v * 32 + 16 * half_rows) as *const __m128i;
                    let s0 = _mm256_cvtph_ps(_mm_loadu_si128(at(0)));
                    let s1 = if MODE == 0 {
                        _mm256_setzero_ps()
                    } else {
                        _mm256_cvtph_ps(_mm_loadu_si128(at(1)))
                    };
                    (s0, s1)
                } else {
                    let at = |v: usize| s.add(v * 64 + 32 * half_rows) as *const f32;
                    let s0 = _mm256_loadu_ps(at(0));
                    let s1 = if MODE == 0 {
                        _mm256_setzero_ps()
                    } else {
                        _mm256_loadu_ps(at(1))
                    };
                    (s0, s1)
                };
                (wv, s0, s1)
            };
            for (t, a) in acc.iter_mut().enumerate() {
                let row = t0 + t;
                let at = row * nb + b;
                // SAFETY: row < act.rows and b < nb index inside the activation buffers.
                let (q, [h0, h1], dx) = unsafe {
                    (
                        act.qs.as_ptr().add(row * k + b * QK),
                        *act.h.get_unchecked(at),
                        _mm256_set1_ps(*act.d.get_unchecked(at)),
                    )
                };
                if MODE == 2 {
                    // Six-bit codes, a scale per 16: two registers' pair sums fit 16 bits
                    // (2·2·63·128 = 32,256 < 2¹⁵); each half its own integer sum and scale.
                    let mut s16 = [_mm256_setzero_si256(); 4];
                    for (g, w) in wv.iter().enumerate() {
                        // SAFETY: codes 4g..4g + 4 of the block lie inside the row.
                        let x = unsafe {
                            _mm256_set1_epi32((q.add(4 * g) as *const i32).read_unaligned())
                        };
                        s16[g / 2] = _mm256_add_epi16(s16[g / 2], _mm256_maddubs_epi16(*w, x));
                    }
                    let half = |a: __m256i, b: __m256i, h: i32| {
                        _mm256_add_epi32(
                            _mm256_add_epi32(
                                _mm256_madd_epi16(a, ones),
                                _mm256_madd_epi16(b, ones),
                            ),
                            _mm256_set1_epi32(-offset * h),
                        )
                    };
                    let (i0, i1) = (half(s16[0], s16[1], h0), half(s16[2], s16[3], h1));
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(s0, dx), *a);
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(s1, dx), *a);
                    continue;
                }
                let i = if H5 {
                    // Five-bit codes: four registers' pair sums fit 16 bits
                    // (4·2·31·128 = 31,744 < 2¹⁵), so two partial sums.
                    let mut s16 = [_mm256_setzero_si256(); 2];
                    for (g, w) in wv.iter().enumerate() {
                        // SAFETY: codes 4g..4g + 4 of the block lie inside the row.
                        let x = unsafe {
                            _mm256_set1_epi32((q.add(4 * g) as *const i32).read_unaligned())
                        };
                        s16[g / 4] = _mm256_add_epi16(s16[g / 4], _mm256_maddubs_epi16(*w, x));
                    }
                    _mm256_add_epi32(
                        _mm256_add_epi32(
                            _mm256_madd_epi16(s16[0], ones),
                            _mm256_madd_epi16(s16[1], ones),
                        ),
                        _mm256_set1_epi32(-offset * (h0 + h1)),
                    )
                } else if NIB {
                    let mut s16 = _mm256_setzero_si256();
                    for (g, w) in wv.iter().enumerate() {
                        // SAFETY: codes 4g..4g + 4 of the block lie inside the row.
                        let x = unsafe {
                            _mm256_set1_epi32((q.add(4 * g) as *const i32).read_unaligned())
                        };
                        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*w, x));
                    }
                    _mm256_add_epi32(
                        _mm256_madd_epi16(s16, ones),
                        _mm256_set1_epi32(-offset * (h0 + h1)),
                    )
                } else {
                    // Σ (u − 128)·x, the same integer as Σ u·x − 128·Σx: |w|·(x signed by w).
                    let mut s32 = _mm256_setzero_si256();
                    for (g, w) in wv.iter().enumerate() {
                        // SAFETY: codes 4g..4g + 4 of the block lie inside the row.
                        let x = unsafe {
                            _mm256_set1_epi32((q.add(4 * g) as *const i32).read_unaligned())
                        };
                        let p = _mm256_maddubs_epi16(_mm256_abs_epi8(*w), _mm256_sign_epi8(x, *w));
                        s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(p, ones));
                    }
                    let _ = (h0, h1, offset);
                    s32
                };
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(s0, dx), *a);
                if MODE == 1 {
                    // SAFETY: as above.
                    let sx = unsafe { _mm256_set1_ps(*act.s.get_unchecked(at)) };
                    *a = _mm256_fmadd_ps(s1, sx, *a);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let mut out = [0.0f32; 8];
            // SAFETY: `out` holds 8 floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), *a) };
            for (j, v) in out[..valid].iter().enumerate() {
                // SAFETY: y[(t0 + t)·n + r0 + j] with r0 + j < n lies inside y (caller).
                unsafe { *y.add((t0 + t) * n + r0 + j) = *v };
            }
        }
    }

    /// `T` rows through the instance of `rows` for `p`'s layout, both halves of the panel.
    ///
    /// # Safety
    /// As `rows`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_t<const T: usize>(
        p: &Packed,
        pi: usize,
        cp: *const u8,
        sp: *const u8,
        act: &TileActs,
        t0: usize,
        y: *mut f32,
    ) {
        for h in 0..2 {
            // SAFETY: the layout parameters are `p`'s; the rest is the caller's contract.
            unsafe {
                match (mode_id(p.mode), p.half, p.nib, p.hi5) {
                    (0, true, true, true) => {
                        rows::<0, T, true, true, true>(p, h, pi, cp, sp, act, t0, y)
                    }
                    (0, true, true, false) => {
                        rows::<0, T, true, true, false>(p, h, pi, cp, sp, act, t0, y)
                    }
                    (1, true, true, false) => {
                        rows::<1, T, true, true, false>(p, h, pi, cp, sp, act, t0, y)
                    }
                    (1, false, true, false) => {
                        rows::<1, T, false, true, false>(p, h, pi, cp, sp, act, t0, y)
                    }
                    (0, true, false, false) => {
                        rows::<0, T, true, false, false>(p, h, pi, cp, sp, act, t0, y)
                    }
                    (2, false, false, false) => {
                        rows::<2, T, false, false, false>(p, h, pi, cp, sp, act, t0, y)
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every activation row against panel `pi`, four rows per pass.
    ///
    /// # Safety
    /// CPU with AVX2, FMA and F16C; `p` packed for it (`p.nib`, mode 0 or 1); `act` has `p`'s
    /// width; `y` points at `[act.rows, p.rows]`; `pi < panels`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn panel_times(p: &Packed, pi: usize, act: &TileActs, y: *mut f32) {
        let m = act.rows;
        let nb = p.nb;
        let sb = scale_bytes(mode_id(p.mode), p.half);
        let cl = lines_per_block(p.nib, p.hi5);
        // SAFETY: panel pi's lines start inside the buffers (pi < panels).
        let (cp, sp) = unsafe {
            (
                (p.codes.as_ptr() as *const u8).add(pi * nb * cl * 64),
                (p.scales.as_ptr() as *const u8).add(pi * nb * sb),
            )
        };
        let mut t0 = 0;
        while t0 < m {
            // SAFETY: rows t0..t0 + t exist; the rest is the caller's contract.
            let t = unsafe {
                match m - t0 {
                    1 => {
                        rows_t::<1>(p, pi, cp, sp, act, t0, y);
                        1
                    }
                    2 => {
                        rows_t::<2>(p, pi, cp, sp, act, t0, y);
                        2
                    }
                    3 => {
                        rows_t::<3>(p, pi, cp, sp, act, t0, y);
                        3
                    }
                    _ => {
                        rows_t::<4>(p, pi, cp, sp, act, t0, y);
                        4
                    }
                }
            };
            t0 += t;
        }
    }
}
