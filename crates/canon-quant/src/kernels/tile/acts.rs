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
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2/FMA/F16C were detected (`Isa::best`).
        unsafe { quantize_rows_avx2(qs, ds, ss, hs, x) };
        return;
    }
    let _ = simd;
    for (((q, d), (s, h)), xb) in qs
        .chunks_mut(QK)
        .zip(ds.iter_mut())
        .zip(ss.iter_mut().zip(hs.iter_mut()))
        .zip(x.chunks(QK))
    {
        let mut s16 = 0.0;
        super::super::quantize_block(xb, q, d, &mut s16);
        let h0: i32 = q[..16].iter().map(|&v| v as i32).sum();
        let h1: i32 = q[16..].iter().map(|&v| v as i32).sum();
        *h = [h0, h1];
        *s = *d * (h0 + h1) as f32;
    }
}

/// [`quantize_rows`] in one loop compiled with AVX2: each block rounded by
/// `avx2::quantize_block`'s own steps (`round_block`, `pack_block`: the same codes and scale), its half sums taken from the stored codes
/// with `vpsadbw` and its scale rounded to f16 with F16C, instead of a call, a scalar sum of the
/// codes and a software conversion per block (a third of a decode step's serial work at 8 rows).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_rows_avx2(
    qs: &mut [i8],
    ds: &mut [f32],
    ss: &mut [f32],
    hs: &mut [[i32; 2]],
    x: &[f32],
) {
    use super::super::avx2;
    use std::arch::x86_64::*;
    let nb = (x.len() / QK)
        .min(qs.len() / QK)
        .min(ds.len())
        .min(ss.len())
        .min(hs.len());
    let flip = _mm256_set1_epi8(i8::MIN);
    for b in 0..nb {
        // SAFETY: block b < nb: 32 floats of `x` and 32 codes of `qs` at b·32, read and written
        // unaligned.
        unsafe {
            let (i, dd) = avx2::round_block(x.as_ptr().add(b * QK));
            let p8 = avx2::pack_block(i);
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK).cast::<__m256i>(), p8);
            // Codes + 128 as unsigned bytes, summed by eights: Σq over 8 codes + 1024.
            let sad = _mm256_sad_epu8(_mm256_xor_si256(p8, flip), _mm256_setzero_si256());
            let (lo, hi) = (
                _mm256_castsi256_si128(sad),
                _mm256_extracti128_si256::<1>(sad),
            );
            let h0 = (_mm_cvtsi128_si64(lo) + _mm_extract_epi64::<1>(lo)) as i32 - 2048;
            let h1 = (_mm_cvtsi128_si64(hi) + _mm_extract_epi64::<1>(hi)) as i32 - 2048;
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
                _mm_set_ss(dd),
            )));
            *ds.get_unchecked_mut(b) = d;
            *hs.get_unchecked_mut(b) = [h0, h1];
            *ss.get_unchecked_mut(b) = d * (h0 + h1) as f32;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The row loop compiled with AVX2 gives the codes, scales and sums of the per-block
    /// rounding it replaced (`avx2::quantize_block`, the codes summed one by one), hostile values
    /// included.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_row_loop_equals_the_per_block_rounding() {
        if !crate::kernels::Isa::Avx2.available() {
            eprintln!("SKIPPED avx2_row_loop_equals_the_per_block_rounding: no AVX2");
            return;
        }
        let mut rng = crate::kernels::tests::Rng(23);
        let nb = 40;
        let mut x = rng.vec(nb * QK, 3.0);
        let specials = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            65504.0 * 127.0,
            1e30,
        ];
        // Blocks 0..10 hold one special value each among ordinary ones, block 10 is all zero,
        // block 11 all subnormal, block 12 scaled to overflow an f16 scale.
        for (b, &v) in specials.iter().enumerate() {
            x[b * QK + (b * 7) % QK] = v;
        }
        x[10 * QK..11 * QK].fill(0.0);
        x[11 * QK..12 * QK].fill(1e-41);
        for v in &mut x[12 * QK..13 * QK] {
            *v *= 1e8;
        }
        let (mut q0, mut d0, mut s0, mut h0) = (
            vec![0i8; nb * QK],
            vec![0.0; nb],
            vec![0.0; nb],
            vec![[0; 2]; nb],
        );
        for b in 0..nb {
            let (q, xb) = (&mut q0[b * QK..(b + 1) * QK], &x[b * QK..(b + 1) * QK]);
            let mut s16 = 0.0;
            // SAFETY: AVX2 checked above; 32 values each.
            unsafe { crate::kernels::avx2::quantize_block(xb, q, &mut d0[b], &mut s16) };
            let a: i32 = q[..16].iter().map(|&v| v as i32).sum();
            let c: i32 = q[16..].iter().map(|&v| v as i32).sum();
            h0[b] = [a, c];
            s0[b] = d0[b] * (a + c) as f32;
        }
        let (mut q1, mut d1, mut s1, mut h1) = (
            vec![0i8; nb * QK],
            vec![0.0; nb],
            vec![0.0; nb],
            vec![[0; 2]; nb],
        );
        quantize_rows(&mut q1, &mut d1, &mut s1, &mut h1, &x, true);
        assert_eq!(q0, q1);
        assert_eq!(h0, h1);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&d0), bits(&d1));
        assert_eq!(bits(&s0), bits(&s1));
    }
}
