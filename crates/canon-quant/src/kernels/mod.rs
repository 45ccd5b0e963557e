//! Matrix products over ggml block formats without dequantizing the matrix.
//!
//! `y = x Wᵀ` with `W: [n, k]` in Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 blocks of 32 (K-quants: `kquant`)
//! and `x: [m, k]` in f32.
//! As in llama.cpp, each activation row is rounded once per product to blocks of 32 signed bytes
//! with one scale (`d = max|x| / 127`, stored as f16) and, for the formats with a minimum, the
//! block sum `s = d·Σq` (also f16). A block product is then an integer dot product of 32 byte pairs:
//!
//!   symmetric formats (Q4_0, Q5_0, Q8_0):  Σ_blocks d_w·d_x·Σ q_w q_x
//!   formats with a minimum (Q4_1, Q5_1):   Σ_blocks d_w·d_x·Σ q_w q_x + m_w·s_x
//!
//! Three paths compute it, chosen at run time (`Isa::best`): a plain scalar reference (`scalar`),
//! AVX2 + FMA + F16C (`avx2`), and AVX-512 + VNNI. The output rows are split over `pool`'s
//! persistent threads.
//!
//! Below `tile::MIN_ROWS` activation rows (decoding) each weight block is unpacked once and
//! multiplied with 4 (AVX2) or 8 (`avx512`, bit-identical to AVX2, from 4 rows) activation rows.
//! From there (prompts) the AVX-512 VNNI path runs `tile` for every format but Q2_K (panels of
//! 16 weight rows unpacked once and multiplied with 8 activation rows per pass), and the other
//! paths (or `CANON_TILE=off`) run dequantized tiles through an f32 GEMM from `GEMM_MIN_ROWS`.
//! On the AVX-512 VNNI path, `GgmlTensor` products skip all of this for the formats of
//! `tile::packed`: their weights are repacked once into the tile layout and every row count runs
//! the tile kernel on that copy.

pub mod kquant;
pub mod scalar;
pub mod tile;

#[cfg(target_arch = "x86_64")]
pub mod avx2;

#[cfg(target_arch = "x86_64")]
pub mod avx512;

use std::sync::OnceLock;

use crate::GgmlType;

/// Values per block in every format handled here.
pub const QK: usize = 32;

/// The block formats with a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// K-quants: super-blocks of 256 (`kquant`).
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl Kind {
    pub fn of(t: GgmlType) -> Option<Self> {
        Some(match t {
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 => Self::Q4_1,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q5_1 => Self::Q5_1,
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q2K => Self::Q2K,
            GgmlType::Q3K => Self::Q3K,
            GgmlType::Q4K => Self::Q4K,
            GgmlType::Q5K => Self::Q5K,
            GgmlType::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q2K => GgmlType::Q2K,
            Self::Q3K => GgmlType::Q3K,
            Self::Q4K => GgmlType::Q4K,
            Self::Q5K => GgmlType::Q5K,
            Self::Q6K => GgmlType::Q6K,
        }
    }

    /// Whether this is a K-quant (blocks of 256, activations in Q8_K).
    pub fn is_k(self) -> bool {
        matches!(
            self,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K
        )
    }

    /// Values per block: 32, or 256 for the K-quants.
    pub fn block_len(self) -> usize {
        self.ggml().block_size()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml().type_size()
    }

    /// Whether blocks carry a minimum (`x = d·q + m`, q unsigned) instead of `x = d·q` (q signed).
    pub fn has_min(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1)
    }
}

/// The instruction set a product runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 with FMA and F16C (x86-64).
    Avx2,
    /// AVX-512 F/BW/VL/DQ with VNNI (`vpdpbusd`, `vpdpwssd`), on top of AVX2/FMA/F16C (x86-64).
    Avx512Vnni,
}

impl Isa {
    /// Every path, best last.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    /// The best path this CPU supports (detected once). The environment variable `CANON_ISA`
    /// (`scalar`, `avx2`, `avxvnni` or `avx512vnni`) caps the choice, for side-by-side measurements; a value
    /// this CPU cannot run, or an unknown one, leaves the detected path.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let detected = Isa::ALL
                .into_iter()
                .rev()
                .find(|i| i.available())
                .unwrap_or(Isa::Scalar);
            std::env::var("CANON_ISA")
                .ok()
                .and_then(|v| Isa::parse(&v))
                .filter(|i| i.available())
                .unwrap_or(detected)
        })
    }

    /// `scalar`, `avx2`, `avxvnni` (the AVX2 path with AVX-VNNI, see [`avx_vnni`]) or
    /// `avx512vnni` (any case).
    pub fn parse(name: &str) -> Option<Isa> {
        match name.to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" | "avxvnni" | "avx-vnni" => Some(Isa::Avx2),
            "avx512vnni" | "avx512" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }

    /// Whether this path includes AVX2/FMA/F16C (so AVX2-only kernels may run under it).
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Vnni)
    }

    /// The CPU extensions this path needs, as named by `/proc/cpuinfo`-style feature names.
    pub fn extensions(self) -> &'static str {
        match self {
            Isa::Scalar => "none",
            Isa::Avx2 => "avx2 fma f16c",
            Isa::Avx512Vnni => "avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512vnni",
        }
    }

    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.available()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni => false,
        }
    }
}

/// Whether the AVX2 path multiplies bytes with AVX-VNNI's 256-bit `vpdpbusd` (Intel cores from
/// Alder Lake and Sapphire Rapids on, AMD from Zen 5): the best path is AVX2 (so on a CPU with
/// AVX-512 VNNI only under `CANON_ISA=avxvnni`), the CPU has AVX-VNNI, and `CANON_ISA` is not
/// `avx2`, which keeps the AVX2 instructions alone for side-by-side measurements. Detected once.
/// Where it is used (the AVX2 panel kernel of packed weights) its integer sums equal the AVX2
/// ones, so the products keep their bits.
pub fn avx_vnni() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let detected = std::arch::is_x86_feature_detected!("avxvnni");
        #[cfg(not(target_arch = "x86_64"))]
        let detected = false;
        let plain = std::env::var("CANON_ISA").is_ok_and(|v| v.eq_ignore_ascii_case("avx2"));
        detected && !plain && Isa::best() == Isa::Avx2
    })
}

/// Activation rows rounded to 8-bit blocks: `x ≈ d·q` per block of 32, plus `s = d·Σq`.
#[derive(Debug, Clone, Default)]
pub struct Q8Rows {
    pub rows: usize,
    /// Blocks per row.
    pub nb: usize,
    /// `[rows, nb·32]`
    pub qs: Vec<i8>,
    /// `[rows, nb]`, f16-rounded scales.
    pub d: Vec<f32>,
    /// `[rows, nb]`, f16-rounded `d·Σq`.
    pub s: Vec<f32>,
}

impl Q8Rows {
    /// Rounds `x: [rows, k]` (k a multiple of 32) to 8-bit blocks.
    pub fn quantize(x: &[f32], rows: usize, k: usize) -> Self {
        let mut out = Q8Rows::default();
        out.quantize_into(x, rows, k);
        out
    }

    /// As `quantize`, reusing this buffer's memory.
    pub fn quantize_into(&mut self, x: &[f32], rows: usize, k: usize) {
        let nb = k / QK;
        self.rows = rows;
        self.nb = nb;
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * nb, 0.0);
        self.s.resize(rows * nb, 0.0);
        let out = self;
        let isa = Isa::best();
        for ((q, (d, s)), xb) in out
            .qs
            .chunks_mut(QK)
            .zip(out.d.iter_mut().zip(out.s.iter_mut()))
            .zip(x.chunks(QK))
        {
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Avx2 is chosen only after run-time detection; blocks hold 32 values.
                Isa::Avx2 | Isa::Avx512Vnni => unsafe { avx2::quantize_block(xb, q, d, s) },
                _ => quantize_block(xb, q, d, s),
            }
        }
    }

    fn row(&self, r: usize) -> ActRow<'_> {
        let k = self.nb * QK;
        ActRow {
            qs: &self.qs[r * k..(r + 1) * k],
            d: &self.d[r * self.nb..(r + 1) * self.nb],
            s: &self.s[r * self.nb..(r + 1) * self.nb],
        }
    }
}

/// One block: `d = max|x|/127`, `q = round(x/d)` (ties to even, as the SIMD rounding does).
pub fn quantize_block(x: &[f32], q: &mut [i8], d: &mut f32, s: &mut f32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let dd = amax / 127.0;
    let id = if dd > 0.0 { 1.0 / dd } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &xi) in q.iter_mut().zip(x) {
        let v = (xi * id).round_ties_even() as i32;
        *qi = v as i8;
        sum += v;
    }
    *d = f16_round(dd);
    *s = f16_round(dd * sum as f32);
}

/// Rounds to the nearest f16 and back (how ggml stores activation scales).
pub fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// One activation row, borrowed.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// A quantized matrix `[rows, cols]` in ggml blocks, row-major, rows contiguous.
#[derive(Debug, Clone, Copy)]
pub struct QMatrixRef<'a> {
    pub kind: Kind,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a [u8],
}

impl<'a> QMatrixRef<'a> {
    pub fn row_bytes(&self) -> usize {
        self.cols / self.kind.block_len() * self.kind.block_bytes()
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.bytes[r * rb..(r + 1) * rb]
    }
}

/// Computes `y[t, r] = Σ_blocks` for rows `r` of `w` and activation rows `acts` (at most 4),
/// writing `out[t]` for each activation row.
fn dot_rows(isa: Isa, kind: Kind, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: `Isa::Avx2` is only chosen after run-time detection of avx2, fma and f16c
            // (`Isa::available`).
            unsafe { avx2::dot_rows(kind, w, acts, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if acts.len() >= avx512::MIN_ROWS => {
            // SAFETY: `Isa::Avx512Vnni` is only chosen after run-time detection of its extensions.
            unsafe { avx512::dot_rows(kind, w, acts, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            // Fewer rows: AVX2's kernel, faster there and bit-identical (`avx512::dot_n`).
            // SAFETY: AVX2/FMA/F16C are part of `Isa::Avx512Vnni`, detected at run time.
            unsafe { avx2::dot_rows(kind, w, acts, out) }
        }
        _ => scalar::dot_rows(kind, w, acts, out),
    }
}

/// `y = x Wᵀ`: `x: [m, k]` f32 row-major, `w: [n, k]`, `y: [m, n]` f32 row-major.
///
/// Panics never; callers check shapes (`k == w.cols`, `k % 32 == 0`, lengths).
pub fn matmul(isa: Isa, w: QMatrixRef<'_>, x: &[f32], m: usize, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(y.len(), m * n);
    if tile::takes(isa, w.kind, m) {
        thread_local! {
            static SCRATCH_T: std::cell::RefCell<tile::TileActs> =
                std::cell::RefCell::new(tile::TileActs::default());
        }
        let done = SCRATCH_T.with(|cell| match cell.try_borrow_mut() {
            Ok(mut act) => {
                act.quantize_into(x, m, k);
                tile::matmul(w, &act, y)
            }
            Err(_) => tile::matmul(w, &tile::TileActs::quantize(x, m, k), y),
        });
        if done {
            return;
        }
    }
    if m >= GEMM_MIN_ROWS {
        return matmul_dequantized(w, x, m, y);
    }
    if w.kind.is_k() {
        thread_local! {
            static SCRATCH_K: std::cell::RefCell<kquant::Q8KRows> =
                std::cell::RefCell::new(kquant::Q8KRows::default());
        }
        return SCRATCH_K.with(|cell| match cell.try_borrow_mut() {
            Ok(mut act) => {
                act.quantize_into(x, m, k);
                matmul_q8k(isa, w, &act, y);
            }
            Err(_) => matmul_q8k(isa, w, &kquant::Q8KRows::quantize(x, m, k), y),
        });
    }
    thread_local! {
        // Decoding runs a few hundred products per token: reuse one activation buffer per thread.
        static SCRATCH: std::cell::RefCell<Q8Rows> = std::cell::RefCell::new(Q8Rows::default());
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut act) => {
            act.quantize_into(x, m, k);
            matmul_q8(isa, w, &act, y);
        }
        Err(_) => matmul_q8(isa, w, &Q8Rows::quantize(x, m, k), y),
    });
}

/// From this many activation rows on (prompt processing), products dequantize `W` tile by tile
/// and run an f32 GEMM: the 8-bit block product spends most of its instructions on per-block
/// scales, while a GEMM reuses each dequantized tile across all rows at full FMA throughput.
/// Activations then stay in f32 (no 8-bit rounding), which is at least as accurate.
pub const GEMM_MIN_ROWS: usize = 16;

/// `y = x Wᵀ` through f32 tiles of `W` and the `gemm` crate (`gemm_dequantized`).
pub fn matmul_dequantized(w: QMatrixRef<'_>, x: &[f32], m: usize, y: &mut [f32]) {
    gemm_dequantized(w.rows, w.cols, x, m, y, &|r, out| dequantize_row(w, r, out));
}

/// `y = x Wᵀ` for any `W: [n, k]` whose rows `row(r, out)` dequantizes: f32 tiles of `W` (about
/// 4 MiB each, rows dequantized in parallel) multiplied by the `gemm` crate. Shared by every
/// quantized format (ggml blocks here, NF4).
pub(crate) fn gemm_dequantized(
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    row: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    if n == 0 || k == 0 || m == 0 {
        y.fill(0.0);
        return;
    }
    let threads = crate::pool::pool().threads();
    // (max then min: a matrix of fewer than 64 rows is one tile; `clamp` would panic there.)
    let tile = ((4 << 20) / (4 * k)).max(64).min(n);
    let mut buf = vec![0.0f32; tile * k];
    for r0 in (0..n).step_by(tile) {
        let rows = tile.min(n - r0);
        let bp = crate::pool::SyncPtr(buf.as_mut_ptr());
        crate::pool::parallel_for(rows.div_ceil(32), &|c| {
            for r in c * 32..((c + 1) * 32).min(rows) {
                // SAFETY: row r of the tile buffer (r < rows <= tile); tasks own disjoint rows.
                let out = unsafe { std::slice::from_raw_parts_mut(bp.get().add(r * k), k) };
                row(r0 + r, out);
            }
        });
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // dst [m, rows] at y[.., r0..] (row stride n); lhs x [m, k]; rhs tileᵀ [k, rows] read from
        // the row-major tile [rows, k] (column stride k, row stride 1).
        // SAFETY: every pointer/stride pair stays inside its slice: y has m·n elements and
        // r0 + rows <= n; x has m·k; buf has at least rows·k.
        unsafe {
            gemm::gemm(
                m,
                rows,
                k,
                y.as_mut_ptr().add(r0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                buf.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
}

/// Weight rows per parallel task: enough tasks to balance the threads, few enough that scheduling
/// costs little; and when several passes of activation rows go over the task's rows, no more rows
/// than fit in 256 KiB, so that every pass after the first reads them from the core's L2 cache, not
/// from memory (a 49,152-row output head would otherwise be streamed once per pass).
fn rows_per_task(n: usize, row_bytes: usize, m: usize) -> usize {
    let threads = crate::pool::pool().threads();
    let balanced = n.div_ceil(threads * 8).max(4);
    if m <= 8 {
        balanced
    } else {
        balanced.min(((256 << 10) / row_bytes.max(1)).max(4))
    }
}

/// `y = x Wᵀ` with `x` already rounded to 8-bit blocks (any number of rows).
pub fn matmul_q8(isa: Isa, w: QMatrixRef<'_>, act: &Q8Rows, y: &mut [f32]) {
    let (n, m) = (w.rows, act.rows);
    assert_eq!(y.len(), n * m, "matmul_q8: output length");
    let rows_per_task = rows_per_task(n, w.row_bytes(), m);
    let tasks = n.div_ceil(rows_per_task);
    let acts: Vec<ActRow<'_>> = (0..m).map(|t| act.row(t)).collect();
    let out = crate::pool::SyncPtr(y.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    if m == 1 && isa.has_avx2() {
        let rb = w.row_bytes();
        crate::pool::parallel_for(tasks, &|task| {
            let r0 = task * rows_per_task;
            let r1 = (r0 + rows_per_task).min(n);
            // SAFETY: rows r0..r1 of y belong to this task alone; y has n elements (m = 1).
            let ys = unsafe { std::slice::from_raw_parts_mut(out.get().add(r0), r1 - r0) };
            let ws = &w.bytes[r0 * rb..r1 * rb];
            // One activation row takes AVX2's kernel on the VNNI path too: with no other row to
            // share each unpacked pair of blocks, the 512-bit step decoded slower (README), and
            // its results are bit-identical to AVX2's anyway (`avx512::dot_n`).
            // SAFETY: AVX2/FMA/F16C are part of both paths and were detected (`Isa::available`);
            // the rows hold whole blocks matching the activation row.
            unsafe { avx2::gemv(w.kind, ws, rb, &acts[0], ys) }
        });
        return;
    }
    // Activation rows per pass over a weight row: as many as the path keeps accumulators for.
    const MAX_ROWS: usize = 8;
    let per_pass = if isa == Isa::Avx512Vnni { MAX_ROWS } else { 4 };
    crate::pool::parallel_for(tasks, &|task| {
        let r0 = task * rows_per_task;
        let r1 = (r0 + rows_per_task).min(n);
        // `per_pass` activation rows at a time against every weight row of the task: the task's
        // weights stay in L1 while the activations stream.
        let mut buf = [0.0f32; MAX_ROWS];
        for t0 in (0..m).step_by(per_pass) {
            let t1 = (t0 + per_pass).min(m);
            for r in r0..r1 {
                dot_rows(isa, w.kind, w.row(r), &acts[t0..t1], &mut buf[..t1 - t0]);
                for (j, v) in buf[..t1 - t0].iter().enumerate() {
                    // SAFETY: (t0 + j) < m and r < n index inside y; tasks own disjoint rows r, so
                    // no two threads write the same element.
                    unsafe { *out.get().add((t0 + j) * n + r) = *v };
                }
            }
        }
    });
}

/// `y = x Wᵀ` for a K-quant `W` with `x` already rounded to Q8_K (any number of rows).
pub fn matmul_q8k(isa: Isa, w: QMatrixRef<'_>, act: &kquant::Q8KRows, y: &mut [f32]) {
    let (n, m) = (w.rows, act.rows);
    assert_eq!(y.len(), n * m, "matmul_q8k: output length");
    let rows_per_task = rows_per_task(n, w.row_bytes(), m);
    let tasks = n.div_ceil(rows_per_task);
    let acts: Vec<kquant::KActRow<'_>> = (0..m).map(|t| act.row(t)).collect();
    let out = crate::pool::SyncPtr(y.as_mut_ptr());
    const MAX_ROWS: usize = 8;
    crate::pool::parallel_for(tasks, &|task| {
        let r0 = task * rows_per_task;
        let r1 = (r0 + rows_per_task).min(n);
        let mut buf = [0.0f32; MAX_ROWS];
        for t0 in (0..m).step_by(MAX_ROWS) {
            let t1 = (t0 + MAX_ROWS).min(m);
            for r in r0..r1 {
                let (a, o) = (&acts[t0..t1], &mut buf[..t1 - t0]);
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the path's extensions were detected (`Isa::available`); the row
                    // holds whole blocks and every activation row as many.
                    Isa::Avx512Vnni => unsafe {
                        kquant::simd::avx512::dot_rows(w.kind, w.row(r), a, o)
                    },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Isa::Avx2 => unsafe { kquant::simd::avx2::dot_rows(w.kind, w.row(r), a, o) },
                    _ => kquant::scalar::dot_rows(w.kind, w.row(r), a, o),
                }
                for (j, v) in o.iter().enumerate() {
                    // SAFETY: (t0 + j) < m and r < n index inside y; tasks own disjoint rows r.
                    unsafe { *out.get().add((t0 + j) * n + r) = *v };
                }
            }
        }
    });
}

/// Dequantizes one row of `w` into `out` (`w.cols` values).
pub fn dequantize_row(w: QMatrixRef<'_>, r: usize, out: &mut [f32]) {
    dequantize_row_with(Isa::best(), w, r, out)
}

/// `dequantize_row` on a given path (K-quants have an AVX2 version; the others are scalar).
pub fn dequantize_row_with(isa: Isa, w: QMatrixRef<'_>, r: usize, out: &mut [f32]) {
    if w.kind.is_k() {
        #[cfg(target_arch = "x86_64")]
        if isa.has_avx2() && isa.available() {
            // SAFETY: AVX2/FMA/F16C were detected (`available`); the row holds whole blocks.
            return unsafe { kquant::simd::dequantize_row(w.kind, w.row(r), out) };
        }
        kquant::scalar::dequantize_row(w.kind, w.row(r), out)
    } else {
        scalar::dequantize_row(w.kind, w.row(r), out)
    }
}

#[cfg(test)]
mod tests;
