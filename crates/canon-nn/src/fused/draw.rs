//! A sampler's tempered softmax and the block sums of its inverse-CDF draw, in three passes over
//! the vocabulary instead of eight.

use super::exp;

/// The probabilities `p = softmax(x / T)` of a temperature draw and the f64 sum of each block of
/// `block` of them, in three passes (the limits and NaN in one, the exponentials and their sum
/// in the second, the normalisation and the block sums in the third) where copying `x`, taking
/// its maximum, scaling it, `softmax_inplace` (a maximum, the exponentials, their sum, the
/// normalisation) and the sums took eight: about twice as fast for a 49k vocabulary. Every value
/// is the one that sequence gives, bit for bit:
///
/// - `p[i]` is `softmax_inplace` of `x[i] · inv_t`, with a NaN logit taken as −∞;
/// - `sums[b]` sums `p[i]` for `i` in block `b` of `0..n`, `n = min(x.len(), live.len())`, in
///   eight f64 lanes (lane `k` adds tokens `8j + k` in order, then the lanes in order, then the
///   block's tail of fewer than eight), counting 0 for a token whose `live[i]` is −∞ or NaN (a
///   constraint's mask).
///
/// Returns `false`, with `p` and `sums` unspecified, when no logit of `x` is finite or +∞ is
/// among them (the largest non-NaN logit is not finite): the sampler's sorted path handles those.
pub fn tempered_softmax_blocks(
    x: &[f32],
    live: &[f32],
    inv_t: f32,
    block: usize,
    p: &mut Vec<f32>,
    sums: &mut Vec<f64>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA.
        return unsafe { tempered_avx2(x, live, inv_t, block, p, sums) };
    }
    tempered::<false>(x, live, inv_t, block, p, sums)
}

/// [`tempered`] compiled with AVX2 and FMA (so its exponentials are `softmax_inplace`'s there).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tempered_avx2(
    x: &[f32],
    live: &[f32],
    inv_t: f32,
    block: usize,
    p: &mut Vec<f32>,
    sums: &mut Vec<f64>,
) -> bool {
    tempered::<true>(x, live, inv_t, block, p, sums)
}

#[inline(always)]
pub(super) fn tempered<const F: bool>(
    x: &[f32],
    live: &[f32],
    inv_t: f32,
    block: usize,
    p: &mut Vec<f32>,
    sums: &mut Vec<f64>,
) -> bool {
    let len = x.len();
    // Unchanged once the buffer has the vocabulary's length: no pass.
    p.resize(len, 0.0);
    // Pass 1: the largest non-NaN logit (`max8`'s), the scaled logits (NaN as −∞) and their
    // maximum, in eight lanes. A maximum is exact, so the lanes give `max8`'s value whatever the
    // order, up to the sign of a zero maximum, which no exponential below can show
    // (`(v − 0) = (v − (−0))` for every v ≠ ±0, and `exp(±0) = 1`).
    let mut top = [f32::NEG_INFINITY; 8];
    let mut most = [f32::NEG_INFINITY; 8];
    let scaled = |v: f32| {
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v * inv_t
        }
    };
    let mut xc = x.chunks_exact(8);
    let mut pc = p.chunks_exact_mut(8);
    for (c, o) in (&mut xc).zip(&mut pc) {
        for i in 0..8 {
            if c[i] > top[i] {
                top[i] = c[i];
            }
            let y = scaled(c[i]);
            o[i] = y;
            if y > most[i] {
                most[i] = y;
            }
        }
    }
    let (mut top_tail, mut most_tail) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (&v, o) in xc.remainder().iter().zip(pc.into_remainder()) {
        top_tail = top_tail.max(v);
        *o = scaled(v);
        most_tail = most_tail.max(*o);
    }
    if !top.iter().fold(top_tail, |a, &b| a.max(b)).is_finite() {
        return false;
    }
    let m = most.iter().fold(most_tail, |a, &b| a.max(b));
    // Pass 2: the exponentials, summed in `sum8`'s lanes and order: a stretch of 256 at a time
    // (a plain loop over a slice, which vectorises eight lanes wide), then summed while it is in
    // the first-level cache; the lanes run on across stretches (each a multiple of eight).
    let mut acc = [0f32; 8];
    let whole = len - len % 8;
    for stretch in p[..whole].chunks_mut(256) {
        for v in stretch.iter_mut() {
            *v = exp::<F>(*v - m);
        }
        for c in stretch.chunks_exact(8) {
            for i in 0..8 {
                acc[i] += c[i];
            }
        }
    }
    let rest = &mut p[whole..];
    for v in rest.iter_mut() {
        *v = exp::<F>(*v - m);
    }
    let tail: f32 = rest.iter().sum();
    let total =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
    let inv = 1.0 / total;
    // Pass 3: normalised block by block, each block then summed while it is in the first-level
    // cache. A token's weight: its probability where it can be drawn, else 0 (a compare and a
    // select, so the lanes vectorise).
    let weight = |p: f32, l: f32| -> f64 {
        if l > f32::NEG_INFINITY {
            f64::from(p)
        } else {
            0.0
        }
    };
    let n = len.min(live.len());
    sums.clear();
    let (head, rest) = p.split_at_mut(n);
    for (pb, lb) in head.chunks_mut(block.max(1)).zip(live.chunks(block.max(1))) {
        for v in pb.iter_mut() {
            *v *= inv;
        }
        let mut acc = [0.0f64; 8];
        let (pc, lc) = (pb.chunks_exact(8), lb.chunks_exact(8));
        let tail: f64 = pc
            .remainder()
            .iter()
            .zip(lc.remainder())
            .map(|(&p, &l)| weight(p, l))
            .sum();
        for (p8, l8) in pc.zip(lc) {
            for k in 0..8 {
                acc[k] += weight(p8[k], l8[k]);
            }
        }
        sums.push(acc.iter().sum::<f64>() + tail);
    }
    for v in rest.iter_mut() {
        *v *= inv;
    }
    true
}
