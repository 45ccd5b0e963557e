//! The plain reference: one block at a time, integer sums, no SIMD. Every SIMD path is tested
//! against these functions, and CPUs without a SIMD path run them.
//!
//! Block layouts (ggml, little-endian, 32 values per block; nibble `j` of byte `i` holds value
//! `i` for the low nibble and `i + 16` for the high one; bit `j` of `qh` is the fifth bit of value `j`):
//!   Q4_0: d:f16, qs:[u8;16]            x = d·(q − 8)
//!   Q4_1: d:f16, m:f16, qs:[u8;16]     x = d·q + m
//!   Q5_0: d:f16, qh:u32, qs:[u8;16]    x = d·(q − 16)
//!   Q5_1: d:f16, m:f16, qh:u32, qs:[u8;16]  x = d·q + m
//!   Q8_0: d:f16, qs:[i8;32]            x = d·q

use super::{ActRow, Kind, QK};

fn f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// One block as integer values (with the offset of the symmetric formats applied), scale and minimum.
pub fn unpack_block(kind: Kind, b: &[u8], q: &mut [i32; QK]) -> (f32, f32) {
    let nibbles = |qs: &[u8], q: &mut [i32; QK], qh: u32, offset: i32| {
        for i in 0..16 {
            let lo = (qs[i] & 0x0F) as i32 | ((((qh >> i) & 1) << 4) as i32);
            let hi = (qs[i] >> 4) as i32 | ((((qh >> (i + 16)) & 1) << 4) as i32);
            q[i] = lo - offset;
            q[i + 16] = hi - offset;
        }
    };
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    match kind {
        Kind::Q4_0 => {
            nibbles(&b[2..18], q, 0, 8);
            (f16(b, 0), 0.0)
        }
        Kind::Q4_1 => {
            nibbles(&b[4..20], q, 0, 0);
            (f16(b, 0), f16(b, 2))
        }
        Kind::Q5_0 => {
            nibbles(&b[6..22], q, u32_at(2), 16);
            (f16(b, 0), 0.0)
        }
        Kind::Q5_1 => {
            nibbles(&b[8..24], q, u32_at(4), 0);
            (f16(b, 0), f16(b, 2))
        }
        Kind::Q8_0 => {
            for (qi, &v) in q.iter_mut().zip(&b[2..34]) {
                *qi = v as i8 as i32;
            }
            (f16(b, 0), 0.0)
        }
        // Blocks of 256: `super::kquant` unpacks them.
        Kind::Q2K | Kind::Q3K | Kind::Q4K | Kind::Q5K | Kind::Q6K => {
            q.fill(0);
            (0.0, 0.0)
        }
    }
}

/// `out[t] = Σ_blocks d_w·d_x·Σ q_w q_x (+ m_w·s_x)` for each activation row `acts[t]`.
pub fn dot_rows(kind: Kind, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let bb = kind.block_bytes();
    let mut q = [0i32; QK];
    for (t, a) in acts.iter().enumerate() {
        let mut sum = 0.0f32;
        for (b, blk) in w.chunks_exact(bb).enumerate() {
            let (d, m) = unpack_block(kind, blk, &mut q);
            let xq = &a.qs[b * QK..(b + 1) * QK];
            let isum: i32 = q.iter().zip(xq).map(|(&wq, &xv)| wq * xv as i32).sum();
            sum += d * a.d[b] * isum as f32;
            if kind.has_min() {
                sum += m * a.s[b];
            }
        }
        out[t] = sum;
    }
}

/// Dequantizes one row (`out.len()` values).
pub fn dequantize_row(kind: Kind, w: &[u8], out: &mut [f32]) {
    let mut q = [0i32; QK];
    for (blk, o) in w
        .chunks_exact(kind.block_bytes())
        .zip(out.chunks_exact_mut(QK))
    {
        let (d, m) = unpack_block(kind, blk, &mut q);
        for (ov, &qv) in o.iter_mut().zip(&q) {
            *ov = d * qv as f32 + m;
        }
    }
}

/// Quantizes one row of floats (length a multiple of 32) into ggml blocks, with the rounding rules
/// of the formats' reference quantizers: symmetric formats take the signed value of largest
/// magnitude as `-8·d` (Q4_0) or `-16·d` (Q5_0); the formats with a minimum spread `[min, max]`
/// over 15 or 31 steps; Q8_0 uses `d = max|x|/127`.
pub fn quantize_row(kind: Kind, x: &[f32], out: &mut Vec<u8>) {
    if kind.is_k() {
        return super::kquant::scalar::quantize_row(kind, x, out);
    }
    let put16 = |out: &mut Vec<u8>, v: f32| {
        out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
    };
    for xb in x.chunks_exact(QK) {
        match kind {
            Kind::Q8_0 => {
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                put16(out, d);
                out.extend(xb.iter().map(|v| (v * id).round() as i8 as u8));
            }
            Kind::Q4_0 | Kind::Q5_0 => {
                let (levels, offset) = if kind == Kind::Q4_0 {
                    (15, 8.0)
                } else {
                    (31, 16.0)
                };
                // The value of largest magnitude, with its sign.
                let max = xb
                    .iter()
                    .fold(0.0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -offset;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u8> = xb
                    .iter()
                    .map(|v| ((v * id + offset + 0.5) as i32).clamp(0, levels) as u8)
                    .collect();
                put16(out, d);
                pack(kind, &q, out);
            }
            Kind::Q4_1 | Kind::Q5_1 => {
                let levels = if kind == Kind::Q4_1 { 15 } else { 31 };
                let min = xb.iter().copied().fold(f32::INFINITY, f32::min);
                let max = xb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / levels as f32;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u8> = xb
                    .iter()
                    .map(|v| (((v - min) * id + 0.5) as i32).clamp(0, levels) as u8)
                    .collect();
                put16(out, d);
                put16(out, min);
                pack(kind, &q, out);
            }
            Kind::Q2K | Kind::Q3K | Kind::Q4K | Kind::Q5K | Kind::Q6K => {}
        }
    }
}

/// Packs 32 values of 4 or 5 bits: the fifth bits first (`qh`, Q5 only), then the nibbles.
fn pack(kind: Kind, q: &[u8], out: &mut Vec<u8>) {
    if matches!(kind, Kind::Q5_0 | Kind::Q5_1) {
        let qh = q
            .iter()
            .enumerate()
            .fold(0u32, |h, (j, &v)| h | (((v as u32 >> 4) & 1) << j));
        out.extend_from_slice(&qh.to_le_bytes());
    }
    for i in 0..16 {
        out.push((q[i] & 0x0F) | ((q[i + 16] & 0x0F) << 4));
    }
}
