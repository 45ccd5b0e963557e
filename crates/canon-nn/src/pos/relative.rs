//! Transformer-XL's relative positional attention (Dai et al., 2019, paper 4, §3.3).
//!
//! Score between query `i` and key `j` (eq. in §3.3, terms (a)–(d)):
//!   `A_ij = q_iᵀk_j + q_iᵀW_{k,R}R_{i−j} + uᵀk_j + vᵀW_{k,R}R_{i−j}`
//! computed as `AC = (q + u)·k` and `BD = rel_shift((q + v)·(W_{k,R}R))`, `score = (AC + BD)/√d`,
//! where `R` is the sinusoid table for positions `klen−1, …, 0` (no learned positions) and `u`, `v`
//! are learned per-head vectors. `rel_shift` pads one zero column on the left, views the result as
//! `(klen + 1, qlen)`, drops the first row and views back, so that entry `(i, j)` holds the term for
//! distance `i + mlen − j`. Queries see keys `j ≤ i + mlen` (memory `mlen` positions long).
//!
//! Shapes: `q: [b, h, qlen, d]`, `k, v: [b, h, klen, d]`, `r: [h, klen, d]`, `u, v_bias: [h, d]`.

use candle_core::{D, Tensor};

/// `[b, h, qlen, klen]` → same shape, entry `(i, j)` taken from column `j + qlen − 1 − i`.
pub fn rel_shift(x: &Tensor) -> crate::Result<Tensor> {
    let (b, h, q, k) = x.dims4()?;
    let zero = Tensor::zeros((b, h, q, 1), x.dtype(), x.device())?;
    let padded = Tensor::cat(&[&zero, x], D::Minus1)?; // [b, h, q, k+1]
    padded
        .reshape((b, h, k + 1, q))? // the same memory viewed as (klen + 1, qlen)
        .narrow(2, 1, k)? // drop the first row
        .contiguous()?
        .reshape((b, h, q, k))
}

/// Additive mask `[qlen, klen]`: 0 where `j ≤ i + mlen`, −∞ elsewhere.
pub fn memory_causal_mask(
    q: usize,
    k: usize,
    mlen: usize,
    device: &candle_core::Device,
) -> crate::Result<Tensor> {
    crate::attention::causal_mask(q, k, mlen, device)
}

/// Relative multi-head attention with memory; returns `[b, h, qlen, d]`.
pub fn rel_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    r: &Tensor,
    u: &Tensor,
    v_bias: &Tensor,
) -> crate::Result<Tensor> {
    let (b, h, ql, d) = q.dims4()?;
    let kl = k.dim(2)?;
    let mlen = kl - ql;
    let u = u.reshape((1, h, 1, d))?;
    let vb = v_bias.reshape((1, h, 1, d))?;
    // (b) + (d): [b, h, q, d] x [1→b, h, d, k]
    let rk = r.unsqueeze(0)?.broadcast_as((b, h, kl, d))?.contiguous()?;
    let bd = rel_shift(&q.broadcast_add(&vb)?.contiguous()?.matmul(&rk.t()?)?)?;
    let scale = 1.0 / (d as f64).sqrt();
    // (b) + (d) enter as an additive bias on the scaled (a) + (c) scores, with the mask
    // j ≤ i + mlen; the attention op returns their gradient.
    let opts = crate::attention::AttnOpts {
        bias: Some(&(bd * scale)?),
        scale: Some(scale),
        dropout: None,
    };
    crate::attention::attend(
        &q.broadcast_add(&u)?,
        k,
        v,
        crate::AttnMask::Causal { offset: mlen },
        opts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_gradients;
    use candle_core::{DType, Device, Var};
    use canon_testkit::{randn, to_vec};

    #[test]
    fn rel_shift_equals_an_explicit_gather_on_the_unmasked_region() {
        // BD[i][j] must equal (q_i + v)·(W R)[klen−1−(i + mlen − j)] for j ≤ i + mlen.
        let (h, ql, mlen, d) = (2, 3, 4, 5);
        let kl = ql + mlen;
        let q = randn(&[1, h, ql, d], 1);
        let r = randn(&[h, kl, d], 2);
        let raw = q.matmul(&r.unsqueeze(0).unwrap().t().unwrap()).unwrap();
        let shifted = to_vec(&rel_shift(&raw).unwrap());
        let qv = to_vec(&q);
        let rv = to_vec(&r);
        for hh in 0..h {
            for i in 0..ql {
                for j in 0..=(i + mlen) {
                    let m = kl - 1 - (i + mlen - j);
                    let want: f32 = (0..d)
                        .map(|x| qv[(hh * ql + i) * d + x] * rv[(hh * kl + m) * d + x])
                        .sum();
                    let got = shifted[(hh * ql + i) * kl + j];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "h{hh} i{i} j{j}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn finite_differences_through_relative_attention() {
        let v64 = |s: &[usize], seed| {
            Var::from_tensor(&randn(s, seed).to_dtype(DType::F64).unwrap()).unwrap()
        };
        let vars = [
            v64(&[1, 2, 3, 4], 1),
            v64(&[1, 2, 5, 4], 2),
            v64(&[1, 2, 5, 4], 3),
            v64(&[2, 5, 4], 4),
            v64(&[2, 4], 5),
            v64(&[2, 4], 6),
        ];
        let w = randn(&[1, 2, 3, 4], 9).to_dtype(DType::F64).unwrap();
        check_gradients(
            &vars,
            |t| (rel_attention(&t[0], &t[1], &t[2], &t[3], &t[4], &t[5])? * &w)?.sum_all(),
            1e-5,
            1e-7,
            1e-5,
        )
        .unwrap();
        let _ = Device::Cpu;
    }
}
