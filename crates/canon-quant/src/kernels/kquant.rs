//! K-quant products (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): super-blocks of 256 values in sixteen groups
//! of 16 (or, for Q4_K/Q5_K, eight sub-blocks of 32 whose scale applies to two groups).
//!
//! As in llama.cpp, each activation row is rounded once per product to Q8_K: blocks of 256 signed
//! bytes with an f32 scale `d = max|x|/127` and the sixteen sums of each group of 16 codes
//! (`bsums`). Every format here is rewritten as unsigned codes `u` with an integer scale `sc` and
//! an integer minimum `mn` per group, so that a weight is `d·sc·u − dmin·mn`:
//!
//!   Q2_K: u = 2-bit code,  sc, mn = the group's 4-bit scale and minimum, d, dmin from the block
//!   Q3_K: u = 3-bit code (2 low bits + the high-mask bit), sc = the group's 6-bit scale − 32,
//!         mn = 4·sc, dmin = d (the format's `d·sc·(u − 4)`)
//!   Q4_K: u = 4-bit code,  sc, mn = the sub-block's 6-bit scale and minimum, d, dmin from the block
//!   Q5_K: u = 5-bit code,  likewise
//!   Q6_K: u = 6-bit code,  sc = the group's signed 8-bit scale, mn = 32·sc, dmin = d
//!         (the format's `d·sc·(u − 32)`)
//!
//! A block product is then two integer sums and one scale:
//!
//!   dx · (d · Σ_g sc_g · Σ_{i∈g} u_i·q_i  −  dmin · Σ_g mn_g · bsum_g)
//!
//! `scalar` computes it plainly; `simd` holds AVX2 and AVX-512 VNNI versions.

use super::{Kind, f16_round};

/// Values per super-block.
pub const QK_K: usize = 256;

/// Activation rows rounded to Q8_K.
#[derive(Debug, Clone, Default)]
pub struct Q8KRows {
    pub rows: usize,
    /// Blocks per row.
    pub nb: usize,
    /// `[rows, nb·256]`
    pub qs: Vec<i8>,
    /// `[rows, nb]`
    pub d: Vec<f32>,
    /// `[rows, nb·16]`: sums of each group of 16 codes.
    pub bsums: Vec<i16>,
}

/// One activation row, borrowed.
#[derive(Clone, Copy)]
pub struct KActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
}

impl Q8KRows {
    /// Rounds `x: [rows, k]` (k a multiple of 256).
    pub fn quantize(x: &[f32], rows: usize, k: usize) -> Self {
        let mut out = Q8KRows::default();
        out.quantize_into(x, rows, k);
        out
    }

    /// As `quantize`, reusing this buffer's memory.
    pub fn quantize_into(&mut self, x: &[f32], rows: usize, k: usize) {
        let nb = k / QK_K;
        self.rows = rows;
        self.nb = nb;
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * nb, 0.0);
        self.bsums.resize(rows * nb * 16, 0);
        for (((q, d), bs), xb) in self
            .qs
            .chunks_mut(QK_K)
            .zip(self.d.iter_mut())
            .zip(self.bsums.chunks_mut(16))
            .zip(x.chunks(QK_K))
        {
            quantize_block(xb, q, d, bs);
        }
    }

    pub fn row(&self, r: usize) -> KActRow<'_> {
        let k = self.nb * QK_K;
        KActRow {
            qs: &self.qs[r * k..(r + 1) * k],
            d: &self.d[r * self.nb..(r + 1) * self.nb],
            bsums: &self.bsums[r * self.nb * 16..(r + 1) * self.nb * 16],
        }
    }
}

/// One Q8_K block: `d = max|x|/127`, `q = round(x/d)` (ties to even), group sums of `q`.
pub fn quantize_block(x: &[f32], q: &mut [i8], d: &mut f32, bsums: &mut [i16]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let dd = amax / 127.0;
    let id = if dd > 0.0 { 1.0 / dd } else { 0.0 };
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = (xi * id).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    for (s, g) in bsums.iter_mut().zip(q.chunks(16)) {
        *s = g.iter().map(|&v| v as i16).sum();
    }
    *d = dd;
}

/// Scales of one block in the common form: per group of 16, `sc` and `mn`, plus `d`, `dmin`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KScales {
    pub sc: [i16; 16],
    pub mn: [i16; 16],
    pub d: f32,
    pub dmin: f32,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Sub-block `j`'s 6-bit scale and minimum from Q4_K/Q5_K's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Byte offsets inside a block: (codes, high bits, scales, d).
pub fn layout(kind: Kind) -> (usize, usize, usize, usize) {
    match kind {
        Kind::Q2K => (16, 0, 0, 80),
        Kind::Q3K => (32, 0, 96, 108),
        Kind::Q4K => (16, 0, 4, 0),
        Kind::Q5K => (48, 16, 4, 0),
        Kind::Q6K => (0, 128, 192, 208),
        _ => (0, 0, 0, 0),
    }
}

/// Whether the block's minimum term uses `d` itself (`d·sc·(u − c)`): the two integer sums can
/// then be subtracted before scaling.
pub fn min_is_d(kind: Kind) -> bool {
    matches!(kind, Kind::Q3K | Kind::Q6K)
}

/// Q3_K's sixteen 6-bit scales (stored + 32) from its 12 packed bytes: low nibbles in bytes
/// 0..8 (groups 0..7 low, 8..15 high nibble), the two high bits of group g in byte 8 + g % 4 at
/// bit 2·(g / 4).
fn q3k_scales(q: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (g, o) in out.iter_mut().enumerate() {
        let low = if g < 8 { q[g] & 0x0F } else { q[g - 8] >> 4 };
        let high = (q[8 + g % 4] >> (2 * (g / 4))) & 3;
        *o = low | (high << 4);
    }
    out
}

/// The block's scales in the common form.
pub fn scales(kind: Kind, b: &[u8]) -> KScales {
    let mut s = KScales::default();
    match kind {
        Kind::Q2K => {
            s.d = f16_at(b, 80);
            s.dmin = f16_at(b, 82);
            for (g, &v) in b[..16].iter().enumerate() {
                s.sc[g] = (v & 0x0F) as i16;
                s.mn[g] = (v >> 4) as i16;
            }
        }
        Kind::Q3K => {
            s.d = f16_at(b, 108);
            s.dmin = s.d;
            for (g, &v) in q3k_scales(&b[96..108]).iter().enumerate() {
                let sc = v as i16 - 32;
                s.sc[g] = sc;
                s.mn[g] = 4 * sc;
            }
        }
        Kind::Q4K | Kind::Q5K => {
            s.d = f16_at(b, 0);
            s.dmin = f16_at(b, 2);
            let q = &b[4..16];
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, q);
                s.sc[2 * j] = sc as i16;
                s.sc[2 * j + 1] = sc as i16;
                s.mn[2 * j] = m as i16;
                s.mn[2 * j + 1] = m as i16;
            }
        }
        Kind::Q6K => {
            s.d = f16_at(b, 208);
            s.dmin = s.d;
            for g in 0..16 {
                let sc = b[192 + g] as i8 as i16;
                s.sc[g] = sc;
                s.mn[g] = 32 * sc;
            }
        }
        _ => {}
    }
    s
}

/// The block's unsigned codes in natural order.
pub fn codes(kind: Kind, b: &[u8], u: &mut [u8; QK_K]) {
    match kind {
        Kind::Q2K | Kind::Q3K => {
            let qs_at = layout(kind).0;
            for h in 0..2 {
                for j in 0..4 {
                    for l in 0..32 {
                        let mut v = (b[qs_at + 32 * h + l] >> (2 * j)) & 3;
                        if kind == Kind::Q3K {
                            v |= ((b[l] >> (4 * h + j)) & 1) << 2;
                        }
                        u[128 * h + 32 * j + l] = v;
                    }
                }
            }
        }
        Kind::Q4K | Kind::Q5K => {
            let (qs_at, qh_at, _, _) = layout(kind);
            let qs = &b[qs_at..qs_at + 128];
            for i in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * i + l];
                    let (mut lo, mut hi) = (byte & 0x0F, byte >> 4);
                    if kind == Kind::Q5K {
                        let h = b[qh_at + l];
                        lo |= ((h >> (2 * i)) & 1) << 4;
                        hi |= ((h >> (2 * i + 1)) & 1) << 4;
                    }
                    u[64 * i + l] = lo;
                    u[64 * i + 32 + l] = hi;
                }
            }
        }
        Kind::Q6K => {
            for h in 0..2 {
                let ql = &b[64 * h..64 * h + 64];
                let qh = &b[128 + 32 * h..128 + 32 * h + 32];
                let y = &mut u[128 * h..128 * h + 128];
                for l in 0..32 {
                    y[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                    y[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                    y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
        _ => u.fill(0),
    }
}

/// The plain reference.
pub mod scalar {
    use super::*;

    /// `out[t] = Σ_blocks dx·(d·Σ_g sc_g·Σ u·q − dmin·Σ_g mn_g·bsum_g)` for each row `acts[t]`.
    pub fn dot_rows(kind: Kind, w: &[u8], acts: &[KActRow<'_>], out: &mut [f32]) {
        let bb = kind.block_bytes();
        let mut u = [0u8; QK_K];
        for (t, a) in acts.iter().enumerate() {
            let mut sum = 0.0f32;
            for (b, blk) in w.chunks_exact(bb).enumerate() {
                codes(kind, blk, &mut u);
                let s = scales(kind, blk);
                let xq = &a.qs[b * QK_K..(b + 1) * QK_K];
                let mut isum = 0i32;
                let mut msum = 0i32;
                for g in 0..16 {
                    let gs: i32 = (16 * g..16 * g + 16)
                        .map(|i| u[i] as i32 * xq[i] as i32)
                        .sum();
                    isum += s.sc[g] as i32 * gs;
                    msum += s.mn[g] as i32 * a.bsums[b * 16 + g] as i32;
                }
                sum += if min_is_d(kind) {
                    // dmin = d: subtract in integers, no cancellation between two large floats.
                    a.d[b] * (s.d * (isum - msum) as f32)
                } else {
                    a.d[b] * (s.d * isum as f32 - s.dmin * msum as f32)
                };
            }
            out[t] = sum;
        }
    }

    /// Dequantizes one row (`out.len()` values).
    pub fn dequantize_row(kind: Kind, w: &[u8], out: &mut [f32]) {
        let mut u = [0u8; QK_K];
        for (blk, o) in w
            .chunks_exact(kind.block_bytes())
            .zip(out.chunks_exact_mut(QK_K))
        {
            codes(kind, blk, &mut u);
            let s = scales(kind, blk);
            for (i, ov) in o.iter_mut().enumerate() {
                let g = i / 16;
                *ov = s.d * s.sc[g] as f32 * u[i] as f32 - s.dmin * s.mn[g] as f32;
            }
        }
    }

    /// Quantizes one row (length a multiple of 256) with a plain per-group rule: the range of each
    /// sub-block (Q4_K/Q5_K: `[min(0, lo), hi]` over 15 or 31 steps; Q6_K: the signed value of
    /// largest magnitude as `-32` steps), scales rounded to the format's bits, codes rounded
    /// against the rounded scales. Not llama.cpp's search for the best scales: files from
    /// llama.cpp keep their own codes; this writes test data and small conversions.
    pub fn quantize_row(kind: Kind, x: &[f32], out: &mut Vec<u8>) {
        let put16 = |out: &mut Vec<u8>, v: f32| {
            out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
        };
        for xb in x.chunks_exact(QK_K) {
            let mut u = [0u8; QK_K];
            match kind {
                Kind::Q4K | Kind::Q5K => {
                    let levels = if kind == Kind::Q4K { 15.0 } else { 31.0 };
                    let mut scale = [0.0f32; 8];
                    let mut min = [0.0f32; 8];
                    for (j, sb) in xb.chunks(32).enumerate() {
                        let lo = sb.iter().copied().fold(0.0f32, f32::min);
                        let hi = sb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        scale[j] = (hi - lo).max(0.0) / levels;
                        min[j] = -lo;
                    }
                    let d = f16_round(scale.iter().copied().fold(0.0, f32::max) / 63.0);
                    let dmin = f16_round(min.iter().copied().fold(0.0, f32::max) / 63.0);
                    let q6 = |v: f32, step: f32| {
                        if step > 0.0 {
                            (v / step).round().clamp(0.0, 63.0) as u8
                        } else {
                            0
                        }
                    };
                    let ls: Vec<u8> = scale.iter().map(|&v| q6(v, d)).collect();
                    let lm: Vec<u8> = min.iter().map(|&v| q6(v, dmin)).collect();
                    for (j, sb) in xb.chunks(32).enumerate() {
                        let step = d * ls[j] as f32;
                        let off = dmin * lm[j] as f32;
                        for (l, &v) in sb.iter().enumerate() {
                            u[32 * j + l] = if step > 0.0 {
                                ((v + off) / step).round().clamp(0.0, levels) as u8
                            } else {
                                0
                            };
                        }
                    }
                    put16(out, d);
                    put16(out, dmin);
                    let mut sc = [0u8; 12];
                    for j in 0..4 {
                        sc[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
                        sc[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
                        sc[j + 8] = (ls[j + 4] & 0x0F) | ((lm[j + 4] & 0x0F) << 4);
                    }
                    out.extend_from_slice(&sc);
                    if kind == Kind::Q5K {
                        let mut qh = [0u8; 32];
                        for i in 0..4 {
                            for (l, h) in qh.iter_mut().enumerate() {
                                *h |= ((u[64 * i + l] >> 4) & 1) << (2 * i);
                                *h |= ((u[64 * i + 32 + l] >> 4) & 1) << (2 * i + 1);
                            }
                        }
                        out.extend_from_slice(&qh);
                    }
                    for i in 0..4 {
                        for l in 0..32 {
                            out.push((u[64 * i + l] & 0x0F) | ((u[64 * i + 32 + l] & 0x0F) << 4));
                        }
                    }
                }
                Kind::Q2K => {
                    let mut scale = [0.0f32; 16];
                    let mut min = [0.0f32; 16];
                    for (g, grp) in xb.chunks(16).enumerate() {
                        let lo = grp.iter().copied().fold(0.0f32, f32::min);
                        let hi = grp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        scale[g] = (hi - lo).max(0.0) / 3.0;
                        min[g] = -lo;
                    }
                    let d = f16_round(scale.iter().copied().fold(0.0, f32::max) / 15.0);
                    let dmin = f16_round(min.iter().copied().fold(0.0, f32::max) / 15.0);
                    let q4 = |v: f32, step: f32| {
                        if step > 0.0 {
                            (v / step).round().clamp(0.0, 15.0) as u8
                        } else {
                            0
                        }
                    };
                    let mut sc = [0u8; 16];
                    for (g, grp) in xb.chunks(16).enumerate() {
                        let (ls, lm) = (q4(scale[g], d), q4(min[g], dmin));
                        sc[g] = ls | (lm << 4);
                        let (step, off) = (d * ls as f32, dmin * lm as f32);
                        for (l, &v) in grp.iter().enumerate() {
                            u[16 * g + l] = if step > 0.0 {
                                ((v + off) / step).round().clamp(0.0, 3.0) as u8
                            } else {
                                0
                            };
                        }
                    }
                    out.extend_from_slice(&sc);
                    out.extend_from_slice(&pack_2bit(&u));
                    put16(out, d);
                    put16(out, dmin);
                }
                Kind::Q3K => {
                    let mut gscale = [0.0f32; 16];
                    for (g, grp) in xb.chunks(16).enumerate() {
                        let max = grp
                            .iter()
                            .fold(0.0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                        gscale[g] = max / -4.0;
                    }
                    let amax = gscale.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let d = f16_round(amax / 32.0);
                    let mut stored = [0u8; 16];
                    for (g, grp) in xb.chunks(16).enumerate() {
                        let sc = if d > 0.0 {
                            (gscale[g] / d).round().clamp(-32.0, 31.0) as i32
                        } else {
                            0
                        };
                        stored[g] = (sc + 32) as u8;
                        let step = d * sc as f32;
                        for (l, &v) in grp.iter().enumerate() {
                            u[16 * g + l] = if step != 0.0 {
                                ((v / step).round() + 4.0).clamp(0.0, 7.0) as u8
                            } else {
                                4
                            };
                        }
                    }
                    let mut hmask = [0u8; 32];
                    for (i, &v) in u.iter().enumerate() {
                        hmask[i % 32] |= (v >> 2) << (i / 32);
                    }
                    let mut sc = [0u8; 12];
                    for (g, &v) in stored.iter().enumerate() {
                        if g < 8 {
                            sc[g] |= v & 0x0F;
                        } else {
                            sc[g - 8] |= (v & 0x0F) << 4;
                        }
                        sc[8 + g % 4] |= (v >> 4) << (2 * (g / 4));
                    }
                    let low: Vec<u8> = u.iter().map(|v| v & 3).collect();
                    out.extend_from_slice(&hmask);
                    out.extend_from_slice(&pack_2bit(&low));
                    out.extend_from_slice(&sc);
                    put16(out, d);
                }
                Kind::Q6K => {
                    let mut gscale = [0.0f32; 16];
                    for (g, grp) in xb.chunks(16).enumerate() {
                        let max = grp
                            .iter()
                            .fold(0.0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                        gscale[g] = max / -32.0;
                    }
                    let amax = gscale.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let d = f16_round(amax / 127.0);
                    let mut sc = [0i8; 16];
                    for (g, grp) in xb.chunks(16).enumerate() {
                        sc[g] = if d > 0.0 {
                            (gscale[g] / d).round().clamp(-128.0, 127.0) as i8
                        } else {
                            0
                        };
                        let step = d * sc[g] as f32;
                        for (l, &v) in grp.iter().enumerate() {
                            u[16 * g + l] = if step != 0.0 {
                                ((v / step).round() + 32.0).clamp(0.0, 63.0) as u8
                            } else {
                                32
                            };
                        }
                    }
                    let mut ql = [0u8; 128];
                    let mut qh = [0u8; 64];
                    for h in 0..2 {
                        for l in 0..32 {
                            let y = &u[128 * h..];
                            let (q1, q2, q3, q4) = (y[l], y[l + 32], y[l + 64], y[l + 96]);
                            ql[64 * h + l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
                            ql[64 * h + l + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
                            qh[32 * h + l] =
                                (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
                        }
                    }
                    out.extend_from_slice(&ql);
                    out.extend_from_slice(&qh);
                    out.extend(sc.iter().map(|&v| v as u8));
                    put16(out, d);
                }
                _ => {}
            }
        }
    }
}

/// Q2_K/Q3_K's low bits: value `128·h + 32·j + l` at bits `2j` of byte `32·h + l`.
fn pack_2bit(u: &[u8]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for (i, &v) in u.iter().enumerate() {
        let (h, j, l) = (i / 128, (i / 32) % 4, i % 32);
        qs[32 * h + l] |= (v & 3) << (2 * j);
    }
    qs
}

#[cfg(target_arch = "x86_64")]
pub mod simd;

#[cfg(test)]
mod tests;
