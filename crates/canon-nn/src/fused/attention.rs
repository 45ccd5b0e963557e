//! Inference self-attention per (sequence, head) that skips padded keys (see `super`).

use super::*;

/// Sizes of a packed self-attention problem.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence (padded length).
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Scratch buffers of the attention kernel, reused across heads.
#[derive(Default)]
struct AttnScratch {
    kept: Vec<usize>,
    /// Two queries with their biases added, `[2, head_dim]`.
    q: Vec<f32>,
    /// `Kᵀ` of every head over the kept keys, `[heads, head_dim, nk_padded]` (padding columns
    /// zero).
    kt: Vec<f32>,
    /// `V` of every head over the kept keys, `[heads, nk, head_dim]`.
    v: Vec<f32>,
    /// Two queries' scores, `[2, nk_padded]`.
    scores: Vec<f32>,
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn self_attention_impl<const F: bool>(
    qkv: &[f32],
    stride: usize,
    bias: Option<&[f32]>,
    keep: &[f32],
    dims: AttnDims,
    out: &mut [f32],
    out_stride: usize,
    sc: &mut AttnScratch,
) {
    let AttnDims {
        batch,
        seq: t,
        heads,
        head_dim: hd,
    } = dims;
    let d = heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    for s in 0..batch {
        sc.kept.clear();
        sc.kept.extend((0..t).filter(|&j| keep[s * t + j] != 0.0));
        // A row with no real key: every score gets the same huge negative bias in the composed
        // path, i.e. uniform weights over all keys.
        let uniform = sc.kept.is_empty();
        if uniform {
            sc.kept.extend(0..t);
        }
        let nk = sc.kept.len();
        // Scores are computed for 32 keys at a time (four 8-lane accumulators held in registers):
        // the key axis of the Kᵀ tile is padded with zeros to a multiple of 32.
        let nkp = nk.div_ceil(32) * 32;
        sc.kt.clear();
        sc.kt.resize(heads * hd * nkp, 0.0);
        sc.v.resize(heads * nk * hd, 0.0);
        sc.scores.resize(2 * nkp, 0.0);
        sc.q.resize(2 * hd, 0.0);
        // One sequential pass over the sequence's rows gathers every head's keys (transposed,
        // `[h][c][j]`) and values (`[h][j][c]`) into small tiles, biases added; reading whole rows
        // in order is what the prefetchers follow, and leaves the rows in cache for the queries.
        for (jj, &j) in sc.kept.iter().enumerate() {
            let row = &qkv[(s * t + j) * stride..][..3 * d];
            for h in 0..heads {
                let (ko, vo) = (d + h * hd, 2 * d + h * hd);
                let kt = &mut sc.kt[h * hd * nkp..(h + 1) * hd * nkp];
                let vdst = &mut sc.v[(h * nk + jj) * hd..(h * nk + jj + 1) * hd];
                match bias {
                    Some(b) => {
                        for (c, (&k, bk)) in row[ko..ko + hd].iter().zip(&b[ko..]).enumerate() {
                            kt[c * nkp + jj] = k + bk;
                        }
                        for ((dst, &v), bv) in vdst.iter_mut().zip(&row[vo..vo + hd]).zip(&b[vo..])
                        {
                            *dst = v + bv;
                        }
                    }
                    None => {
                        for (c, &k) in row[ko..ko + hd].iter().enumerate() {
                            kt[c * nkp + jj] = k;
                        }
                        vdst.copy_from_slice(&row[vo..vo + hd]);
                    }
                }
            }
        }
        // Queries go in pairs: each key and value vector loaded is used by both, and the pair's
        // eight accumulator chains keep both FMA pipes busy (one query's four chains wait on the
        // FMA latency). Each query's sums run in the order a query alone would use, so the result
        // does not depend on the pairing; an odd last query is paired with itself.
        for h in 0..heads {
            let qo = h * hd;
            let kt = &sc.kt[h * hd * nkp..(h + 1) * hd * nkp];
            let vt = &sc.v[h * nk * hd..(h + 1) * nk * hd];
            let mut i = 0;
            while i < t {
                let pair = [i, (i + 1).min(t - 1)];
                for (r, &qi) in pair.iter().enumerate() {
                    let q = &qkv[(s * t + qi) * stride + qo..][..hd];
                    let dst = &mut sc.q[r * hd..(r + 1) * hd];
                    match bias {
                        Some(b) => {
                            for ((dst, &x), bq) in dst.iter_mut().zip(q).zip(&b[qo..]) {
                                *dst = x + bq;
                            }
                        }
                        None => dst.copy_from_slice(q),
                    }
                }
                let (q0, q1) = sc.q.split_at(hd);
                if uniform {
                    sc.scores[..nk].fill(1.0 / nk as f32);
                    sc.scores[nkp..nkp + nk].fill(1.0 / nk as f32);
                } else {
                    // s_j = (q · k_j) / √d_k: Σ_c q_c · Kᵀ[c, j..j+32].
                    for g in (0..nkp).step_by(32) {
                        let mut acc = [[[0f32; 8]; 4]; 2];
                        for (c, (&a0, &a1)) in q0.iter().zip(q1).enumerate() {
                            let k = &kt[c * nkp + g..][..32];
                            for (v, k8) in k.chunks_exact(8).enumerate() {
                                for l in 0..8 {
                                    acc[0][v][l] = fma::<F>(a0, k8[l], acc[0][v][l]);
                                    acc[1][v][l] = fma::<F>(a1, k8[l], acc[1][v][l]);
                                }
                            }
                        }
                        for (r, acc) in acc.iter().enumerate() {
                            let row = &mut sc.scores[r * nkp + g..r * nkp + g + 32];
                            for (dst, a) in row.chunks_exact_mut(8).zip(acc) {
                                dst.copy_from_slice(a);
                            }
                        }
                    }
                    for r in 0..2 {
                        let p = &mut sc.scores[r * nkp..r * nkp + nk];
                        p.iter_mut().for_each(|v| *v *= scale);
                        softmax_impl::<F>(p);
                    }
                }
                // o = Σ_j p_j v_j, 32 output columns of both queries at a time in registers.
                let (p0, p1) = (&sc.scores[..nk], &sc.scores[nkp..nkp + nk]);
                let mut res = [[0f32; 32]; 2];
                let mut c0 = 0;
                while c0 + 32 <= hd {
                    let mut acc = [[[0f32; 8]; 4]; 2];
                    for ((&a0, &a1), vrow) in p0.iter().zip(p1).zip(vt.chunks_exact(hd)) {
                        for (v, v8) in vrow[c0..c0 + 32].chunks_exact(8).enumerate() {
                            for l in 0..8 {
                                acc[0][v][l] = fma::<F>(a0, v8[l], acc[0][v][l]);
                                acc[1][v][l] = fma::<F>(a1, v8[l], acc[1][v][l]);
                            }
                        }
                    }
                    for (r, acc) in acc.iter().enumerate() {
                        for (dst, a) in res[r].chunks_exact_mut(8).zip(acc) {
                            dst.copy_from_slice(a);
                        }
                    }
                    for (r, &qi) in pair
                        .iter()
                        .enumerate()
                        .take(if pair[1] > i { 2 } else { 1 })
                    {
                        out[(s * t + qi) * out_stride + h * hd + c0..][..32]
                            .copy_from_slice(&res[r]);
                    }
                    c0 += 32;
                }
                if c0 < hd {
                    for (r, &qi) in pair
                        .iter()
                        .enumerate()
                        .take(if pair[1] > i { 2 } else { 1 })
                    {
                        let p = [p0, p1][r];
                        let o = &mut out[(s * t + qi) * out_stride + h * hd + c0..][..hd - c0];
                        o.fill(0.0);
                        for (&pj, vrow) in p.iter().zip(vt.chunks_exact(hd)) {
                            for (o, &v) in o.iter_mut().zip(&vrow[c0..]) {
                                *o = fma::<F>(pj, v, *o);
                            }
                        }
                    }
                }
                i += 2;
            }
        }
    }
}

dispatch! {
    fn self_attention_dispatch / self_attention_avx2 => self_attention_impl(
        qkv: &[f32],
        stride: usize,
        bias: Option<&[f32]>,
        keep: &[f32],
        dims: AttnDims,
        out: &mut [f32],
        out_stride: usize,
        sc: &mut AttnScratch
    )
}

/// Bidirectional multi-head self-attention (Vaswani et al., 2017, eq. 1) for inference:
/// `softmax(Q Kᵀ/√d_k) V` per (sequence, head), keys with `keep == 0` left out (the same result as
/// an additive −∞ mask, without building one).
///
/// `qkv: [batch·seq, stride]` holds Q in columns `0..d`, K in `d..2d`, V in `2d..3d`
/// (`d = heads·head_dim`, head `h` in columns `h·head_dim..` of each), to which `bias` (`[3d]`, the
/// projections' biases) is added on the fly; `keep: [batch·seq]` is 1 for real tokens and 0 for
/// padding; `out: [batch·seq, out_stride]` receives the heads concatenated.
#[allow(clippy::too_many_arguments)]
pub fn self_attention(
    qkv: &[f32],
    stride: usize,
    bias: Option<&[f32]>,
    keep: &[f32],
    dims: AttnDims,
    out: &mut [f32],
    out_stride: usize,
) {
    let rows = dims.batch * dims.seq;
    let d = dims.heads * dims.head_dim;
    if rows == 0 || d == 0 {
        return;
    }
    assert!(stride >= 3 * d && qkv.len() >= (rows - 1) * stride + 3 * d);
    assert!(out_stride >= d && out.len() >= (rows - 1) * out_stride + d);
    assert!(keep.len() >= rows);
    assert!(bias.is_none_or(|b| b.len() >= 3 * d));
    let mut scratch = AttnScratch::default();
    self_attention_dispatch(qkv, stride, bias, keep, dims, out, out_stride, &mut scratch);
}
