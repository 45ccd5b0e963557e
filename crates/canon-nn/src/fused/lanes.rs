//! Reductions over eight independent lanes (sums, dot products, squared deviations, the
//! maximum): written so the compiler vectorises them without reassociating, each lane in order,
//! the lanes combined at the end.

use super::fma;

/// Sum with eight independent lanes (vectorises; pairwise at the end).
#[inline(always)]
pub(crate) fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let tail: f32 = it.remainder().iter().sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// The largest non-NaN value (−∞ for none), in eight independent lanes (vectorises): the value
/// a left-to-right `f32::max` fold gives, up to the sign of a zero maximum, where the fold is one
/// dependent chain of scalar maxima (a 49k-token vocabulary's logits: tens of microseconds).
#[inline(always)]
pub fn max8(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            // A NaN compares false and never replaces the lane: one `maxps` per eight values
            // (`f32::max`'s NaN handling costs a compare and a blend more).
            if c[i] > acc[i] {
                acc[i] = c[i];
            }
        }
    }
    let tail = it
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    acc.iter().fold(tail, |a, &b| a.max(b))
}

/// `Σ a·b` over eight running lanes (no fused multiply-add, so every CPU gets the same bits): the
/// plain dot product of the crates above (dense retrieval, HNSW, attention's backward pass).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot8::<false>(a, b)
}

/// `Σ a·b` with eight independent lanes (vectorises; pairwise at the end).
#[inline(always)]
pub(crate) fn dot8<const F: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = fma::<F>(x[i], y[i], acc[i]);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `Σ (x − m)²` with eight lanes.
#[inline(always)]
pub(crate) fn sum_sq_dev8<const F: bool>(x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            let d = c[i] - m;
            acc[i] = fma::<F>(d, d, acc[i]);
        }
    }
    let tail: f32 = it.remainder().iter().map(|v| (v - m) * (v - m)).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
