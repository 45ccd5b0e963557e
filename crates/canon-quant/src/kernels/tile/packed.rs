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
//!   the low nibbles and `g + 4` in the high ones (one shift and two masks unpack them); the
//!   five-bit formats (Q5_0's codes `q + 16`, Q5_1's and Q5_K's `q`, all in 0..32) the same two
//!   nibble registers per line plus a fifth line whose byte `i` holds in bit `g` the fifth bit of
//!   register `g`'s byte `i` (one shift, one mask and one `or` put it back); the other formats one
//!   register per line;
//! - scales: the two per-row scale vectors of `tile` (one for the symmetric formats), as f16 for
//!   the legacy formats (whose scales are f16 in the file, so nothing is rounded) and as f32 for the
//!   K-quants (super-block scale × 6-bit sub-scale is not an f16).
//!
//! Sizes per block of 32 weights × 16 rows, against the file: Q4_0 288 bytes (file 288), Q4_1 320
//! (320), Q5_0 352 (352), Q5_1 384 (384), Q8_0 544 (544), Q4_K 384 (288), Q5_K 448 (352), Q6_K
//! 640 (420). Q3_K (which would triple) and Q2_K (no tile form) are not packed. The AVX-512 and
//! AVX2 kernels read the same layout (a 64-byte line is rows 0..16 to the one, two halves of rows
//! 0..8 and 8..16 to the other).
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
    /// Nibbles plus a line of fifth bits (the five-bit formats for AVX2, module docs).
    hi5: bool,
    /// Scales stored as f16.
    half: bool,
    nb: usize,
    panels: usize,
    codes: LineBuf,
    scales: LineBuf,
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
/// formats (Q4_0, Q4_1, Q4_K), the five-bit ones (Q5_0, Q5_1, Q5_K), Q6_K and Q8_0 with AVX2
/// alone (`avx2_packs`); the tile
/// kernel and packing enabled.
pub fn packs(kind: Kind) -> bool {
    super::enabled()
        && enabled()
        && form(kind).is_some()
        && kind != Kind::Q3K
        && (avx512_packs() || (avx2_packs() && avx2_kind(kind)))
}

/// The formats the AVX2 panel kernel multiplies: the 4-bit and 5-bit ones (nibbles, and fifth bits),
/// Q6_K (a byte per code, two scales per block) and Q8_0 (by the sign trick).
fn avx2_kind(kind: Kind) -> bool {
    nibble_base(kind).is_some() || matches!(kind, Kind::Q6K | Kind::Q8_0)
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

/// The value subtracted from `tile`'s unsigned codes to store them as nibbles (with a line of
/// fifth bits for the five-bit formats), the same on the AVX-512 and AVX2 layouts: `Q4_0`'s codes
/// are `q + 8 + 120`, Q5_0's `q + 16 + 112`; the formats with a minimum keep `q` (base 0).
fn nibble_base(kind: Kind) -> Option<u8> {
    match kind {
        Kind::Q4_0 => Some(120),
        Kind::Q5_0 => Some(112),
        Kind::Q4_1 | Kind::Q4K | Kind::Q5_1 | Kind::Q5K => Some(0),
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
            let base = nibble_base(w.kind);
            let nib = base.is_some();
            let hi5 = matches!(w.kind, Kind::Q5_0 | Kind::Q5_1 | Kind::Q5K);
            let half = !w.kind.is_k();
            let nb = w.cols / QK;
            let panels = w.rows.div_ceil(PANEL);
            let cl = lines_per_block(nib, hi5);
            let sb = scale_bytes(mode_id(mode), half);
            let mut codes = LineBuf::zeroed(panels * nb * cl);
            let mut scales = LineBuf::zeroed((panels * nb * sb).div_ceil(64));
            // Addresses (Send + Sync) of the two buffers; tasks write disjoint panels.
            let cptr = codes.as_mut_ptr() as usize;
            let sptr = scales.as_mut_ptr() as usize;
            let per_task = 8;
            if !wide {
                // AVX2 (4- and 5-bit formats, Q6_K, Q8_0): the same bytes from the tile form of
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
                                    if hi5 {
                                        for i in 0..64 {
                                            let mut bits = 0u8;
                                            for (g, line) in lines[..8].iter().enumerate() {
                                                let u = line.0[i].wrapping_sub(base);
                                                bits |= ((u >> 4) & 1) << g;
                                            }
                                            c[4 * 64 + i] = bits;
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
        self.with_acts(x, m, |act| self.matmul_acts(act, y))
    }

    /// `f` on `x` rounded to activations, in this thread's reused buffer when it is free.
    fn with_acts<R>(&self, x: &[f32], m: usize, f: impl FnOnce(&TileActs) -> R) -> R {
        with_acts(x, m, self.cols, f)
    }

    /// [`Packed::matmul`] into memory that need not be initialised (a new output buffer, no
    /// zero-fill first): every one of the `m·rows` values is written (test
    /// `packed_products_write_every_output`), so the caller may treat `y` as initialised after.
    pub fn matmul_uninit(&self, x: &[f32], m: usize, y: &mut [std::mem::MaybeUninit<f32>]) {
        assert_eq!(y.len(), self.rows * m, "Packed::matmul: output length");
        self.with_acts(x, m, |act| {
            assert_eq!(act.nb, self.nb, "Packed::matmul: activation width");
            // SAFETY: `y` holds rows·m values (checked above); the kernels only write it.
            unsafe { self.matmul_acts_ptr(act, y.as_mut_ptr().cast()) }
        })
    }

    /// `y = x Wᵀ` with `x` already rounded (`TileActs` of `self.cols` columns).
    pub fn matmul_acts(&self, act: &TileActs, y: &mut [f32]) {
        assert_eq!(
            y.len(),
            self.rows * act.rows,
            "Packed::matmul: output length"
        );
        assert_eq!(act.nb, self.nb, "Packed::matmul: activation width");
        // SAFETY: `y` holds rows·m values (checked above).
        unsafe { self.matmul_acts_ptr(act, y.as_mut_ptr()) }
    }

    /// The products of [`Packed::matmul_acts`], written through `y`.
    ///
    /// # Safety
    /// `y` must be valid for writes of `self.rows · act.rows` values, and `act.nb == self.nb`.
    unsafe fn matmul_acts_ptr(&self, act: &TileActs, y: *mut f32) {
        let tasks = crate::pool::guided_ranges(self.panels);
        let out = crate::pool::SyncPtr(y);
        crate::pool::parallel_for(tasks.len(), &|task| {
            // SAFETY: tasks own disjoint panels, hence disjoint output columns of `y` (the
            // caller's contract).
            unsafe { self.panels_times(tasks[task].clone(), act, out.get()) };
        });
    }

    /// `y = x Wᵀ` on one thread through instance `kernel` of the AVX2 panel kernel (tests
    /// compare them); `false` where this matrix is not in the AVX2 layout or the CPU lacks
    /// AVX-VNNI for `Instance::Vnni`.
    #[cfg(all(test, target_arch = "x86_64"))]
    pub(super) fn matmul_avx2_kernel(
        &self,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        kernel: Instance,
    ) -> bool {
        {
            let vnni = kernel == Instance::Vnni;
            if !avx2_packs() || (vnni && !std::arch::is_x86_feature_detected!("avxvnni")) {
                return false;
            }
            assert_eq!(y.len(), self.rows * m, "output length");
            self.with_acts(x, m, |act| {
                for pi in 0..self.panels {
                    // SAFETY: AVX2 layout and extensions checked above; `y` holds rows·m values.
                    unsafe { avx2::panel_times(self, pi, act, y.as_mut_ptr(), kernel) };
                }
            });
            true
        }
    }

    /// Panels `range` of this matrix against every row of `act`, written to their columns of
    /// `y` (`[act.rows, self.rows]`).
    ///
    /// # Safety
    /// `y` valid for writes of `self.rows · act.rows` values; `act.nb == self.nb`; `range`
    /// inside `0..panels`.
    unsafe fn panels_times(&self, range: std::ops::Range<usize>, act: &TileActs, y: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        {
            let wide = avx512_packs();
            let kernel = avx2::Instance::detect();
            for pi in range {
                // SAFETY: a `Packed` exists only where `packs` found the CPU extensions
                // (AVX-512 VNNI, or AVX2 for the 4-bit formats), AVX-VNNI checked by
                // `avx_vnni`; the rest is the caller's.
                unsafe {
                    if wide {
                        avx512::panel_times(self, pi, act, y)
                    } else {
                        avx2::panel_times(self, pi, act, y, kernel)
                    }
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (range, act, y);
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

mod lines;
pub use lines::LineBuf;

mod shared;
pub use shared::matmul_shared_uninit;
use shared::with_acts;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub use avx2::Instance;
