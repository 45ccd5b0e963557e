//! T5's relative position bias (Raffel et al., 2020, paper 8, §2.1; the bucketing of HF's
//! `T5Attention._relative_position_bucket`).
//!
//! Idea: instead of position embeddings, every attention logit gets a learned scalar that depends
//! only on the (bucketed) offset between key and query and on the head:
//!   `score_ij = q_i·k_j + B[bucket(j − i), head]`   (no `1/√d_kv`: T5 folds it into the init of W_q).
//! Offsets are bucketed: `num_buckets` (32) buckets, exact for small offsets, logarithmically spaced
//! up to `max_distance` (128) and saturating beyond. The encoder is bidirectional (half the buckets
//! for keys after the query), the decoder causal (only keys at or before the query; later keys all
//! fall in bucket 0 and are masked anyway). One table `[num_buckets, n_heads]` lives in the first
//! layer of each stack and all layers of that stack add the same bias.
//!
//! Bucket of `rp = key_pos − query_pos`:
//!   bidirectional: `nb = num_buckets/2`, `base = nb` if `rp > 0` else 0, `n = |rp|`;
//!   causal:        `nb = num_buckets`,   `base = 0`,                    `n = max(−rp, 0)`;
//!   `max_exact = nb/2`; bucket = `base + n` if `n < max_exact`, else
//!   `base + min(nb − 1, max_exact + ⌊ln(n/max_exact) / ln(max_distance/max_exact) · (nb − max_exact)⌋)`.
//!
//! Shapes: table `[num_buckets, h]`; bias `[1, h, tq, tk]`, handed to
//! [`crate::attention::attend`] with a scale of 1.

use candle_core::Tensor;

/// The bucket of offset `rp = key − query`, computed in `f64` (see the module header).
pub fn relative_position_bucket(
    rp: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    bucket_with(rp, bidirectional, num_buckets, max_distance, |n, me, md| {
        (n as f64 / me as f64).ln() / (md as f64 / me as f64).ln()
    })
}

/// The same bucket computed in `f32` (as PyTorch does); docs/papers/08-t5.md requires both to
/// agree.
pub fn relative_position_bucket_f32(
    rp: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    bucket_with(rp, bidirectional, num_buckets, max_distance, |n, me, md| {
        ((n as f32 / me as f32).ln() / (md as f32 / me as f32).ln()) as f64
    })
}

fn bucket_with(
    rp: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
    log_ratio: impl Fn(u64, usize, usize) -> f64,
) -> usize {
    let (nb, base, n) = if bidirectional {
        let nb = num_buckets / 2;
        (nb, if rp > 0 { nb } else { 0 }, rp.unsigned_abs())
    } else {
        (num_buckets, 0, (-rp).max(0) as u64)
    };
    let max_exact = (nb / 2).max(1);
    if (n as usize) < max_exact {
        return base + n as usize;
    }
    let large = max_exact as f64
        + (log_ratio(n, max_exact, max_distance) * (nb - max_exact) as f64).floor();
    base + (large as usize).min(nb.saturating_sub(1))
}

/// Bucket ids `[tq · tk]` (row-major) for queries at `q_offset .. q_offset + tq` and keys at
/// `0 .. tk`.
pub fn bucket_ids(
    tq: usize,
    tk: usize,
    q_offset: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<u32> {
    let mut ids = Vec::with_capacity(tq * tk);
    for i in 0..tq {
        let qp = (q_offset + i) as i64;
        for j in 0..tk {
            ids.push(relative_position_bucket(
                j as i64 - qp,
                bidirectional,
                num_buckets,
                max_distance,
            ) as u32);
        }
    }
    ids
}

/// The learned table and its bucketing; shared by every layer of one stack.
#[derive(Debug, Clone)]
pub struct RelativeBias {
    /// `[num_buckets, n_heads]`
    pub table: Tensor,
    pub bidirectional: bool,
    pub max_distance: usize,
}

impl RelativeBias {
    pub fn new(table: Tensor, bidirectional: bool, max_distance: usize) -> Self {
        Self {
            table,
            bidirectional,
            max_distance,
        }
    }

    pub fn num_buckets(&self) -> usize {
        self.table.dims().first().copied().unwrap_or(0)
    }

    /// Bias `[1, h, tq, tk]` for queries at positions `q_offset .. q_offset + tq` against keys at
    /// `0 .. tk` (a cached decoder step passes its absolute position as `q_offset`). Gradients reach
    /// the table through the lookup.
    pub fn bias(&self, tq: usize, tk: usize, q_offset: usize) -> crate::Result<Tensor> {
        let (nbk, h) = self.table.dims2()?;
        let ids = bucket_ids(tq, tk, q_offset, self.bidirectional, nbk, self.max_distance);
        let ids = Tensor::from_vec(ids, tq * tk, self.table.device())?;
        // [tq·tk, h] -> [tq, tk, h] -> [h, tq, tk] -> [1, h, tq, tk]
        self.table
            .index_select(&ids, 0)?
            .reshape((tq, tk, h))?
            .permute((2, 0, 1))?
            .contiguous()?
            .unsqueeze(0)
    }
}

#[cfg(test)]
#[path = "t5_bias_tests.rs"]
mod tests;
