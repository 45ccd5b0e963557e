//! Scaled dot-product attention (Vaswani et al., 2017, paper 1, eq. 1):
//! `Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V`, with an additive mask `M` (−∞ where a query
//! must not look). Grouped-query attention (Ainslie et al., 2023; used by LLaMA-2/SmolLM2) shares each
//! K/V head among `n_heads / n_kv_heads` query heads; multi-query attention (PaLM, paper 19) is the
//! case `n_kv_heads = 1`.
//!
//! Shapes: `q: [b, h, tq, d]`, `k, v: [b, h_kv, tk, d]` → `[b, h, tq, d]`.

use candle_core::{D, DType, Device, Tensor};

/// Which keys each query may attend to.
#[derive(Debug, Clone, Copy)]
pub enum AttnMask<'a> {
    /// Every query sees every key (encoders without padding).
    None,
    /// Query `i` sits at absolute position `offset + i` and sees keys `0 ..= offset + i`
    /// (decoders; `offset` is the number of cached positions).
    Causal { offset: usize },
    /// `[b, tk]` with 1 for real tokens and 0 for padding (encoders over padded batches).
    Padding(&'a Tensor),
}

/// Repeats each K/V head `n_rep` times: `[b, h_kv, t, d] → [b, h_kv·n_rep, t, d]`.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> crate::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, hkv, t, d) = x.dims4()?;
    // [b, h_kv, t, d] -> [b, h_kv, n_rep, t, d] -> [b, h_kv·n_rep, t, d]
    x.unsqueeze(2)?
        .broadcast_as((b, hkv, n_rep, t, d))?
        .reshape((b, hkv * n_rep, t, d))
}

/// Additive causal mask `[tq, tk]`: 0 where `j <= offset + i`, −∞ elsewhere.
pub fn causal_mask(tq: usize, tk: usize, offset: usize, device: &Device) -> crate::Result<Tensor> {
    let v: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(v, (tq, tk), device)
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: AttnMask<'_>) -> crate::Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (_, hkv, tk, _) = k.dims4()?;
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention: {h} query heads cannot share {hkv} key/value heads");
    }
    let k = repeat_kv(k, h / hkv)?.contiguous()?;
    let v = repeat_kv(v, h / hkv)?.contiguous()?;
    let scale = 1.0 / (d as f64).sqrt();
    // [b, h, tq, d] x [b, h, d, tk] -> [b, h, tq, tk]
    let mut scores = (q.contiguous()?.matmul(&k.t()?)? * scale)?;
    match mask {
        AttnMask::None => {}
        AttnMask::Causal { offset } => {
            if tq > 1 || offset + tq != tk {
                let m = causal_mask(tq, tk, offset, q.device())?.to_dtype(scores.dtype())?;
                scores = scores.broadcast_add(&m)?;
            }
        }
        AttnMask::Padding(keep) => {
            // [b, tk] of 1/0 -> additive [b, 1, 1, tk] of 0/−∞ (a large negative keeps the
            // softmax finite when a row is all padding).
            let keep = keep.to_dtype(DType::F32)?;
            let add = ((keep - 1.0)? * 1e30)?.reshape((b, 1, 1, tk))?;
            scores = scores.broadcast_add(&add.to_dtype(scores.dtype())?)?;
        }
    }
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    probs.matmul(&v) // [b, h, tq, d]
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::{Tol, assert_close, randn};

    #[test]
    fn gqa_equals_mha_over_explicitly_replicated_heads() {
        let q = randn(&[2, 6, 5, 8], 1);
        let k = randn(&[2, 2, 5, 8], 2);
        let v = randn(&[2, 2, 5, 8], 3);
        let gqa = attention(&q, &k, &v, AttnMask::Causal { offset: 0 }).unwrap();
        // Explicit replication: head j uses kv head j / 3.
        let idx = Tensor::new(&[0u32, 0, 0, 1, 1, 1], &Device::Cpu).unwrap();
        let kr = k.index_select(&idx, 1).unwrap();
        let vr = v.index_select(&idx, 1).unwrap();
        let mha = attention(&q, &kr, &vr, AttnMask::Causal { offset: 0 }).unwrap();
        assert_close(&gqa, &mha, Tol::EXACT);
        assert_close(&repeat_kv(&k, 3).unwrap(), &kr, Tol::EXACT);
        assert_close(&repeat_kv(&k, 1).unwrap(), &k, Tol::EXACT);
    }

    #[test]
    fn future_keys_do_not_change_past_outputs() {
        let q = randn(&[1, 2, 6, 4], 1);
        let k = randn(&[1, 2, 6, 4], 2);
        let v = randn(&[1, 2, 6, 4], 3);
        let full = attention(&q, &k, &v, AttnMask::Causal { offset: 0 }).unwrap();
        let q3 = q.narrow(2, 0, 3).unwrap();
        let part = attention(
            &q3,
            &k.narrow(2, 0, 3).unwrap(),
            &v.narrow(2, 0, 3).unwrap(),
            AttnMask::Causal { offset: 0 },
        )
        .unwrap();
        assert_close(&full.narrow(2, 0, 3).unwrap(), &part, Tol::F32);
        // A cached query at offset 4 sees keys 0..=4.
        let last = attention(
            &q.narrow(2, 4, 1).unwrap(),
            &k.narrow(2, 0, 5).unwrap(),
            &v.narrow(2, 0, 5).unwrap(),
            AttnMask::Causal { offset: 4 },
        )
        .unwrap();
        assert_close(&full.narrow(2, 4, 1).unwrap(), &last, Tol::F32);
    }

    #[test]
    fn padding_keys_are_ignored() {
        let q = randn(&[1, 2, 3, 4], 1);
        let k = randn(&[1, 2, 5, 4], 2);
        let v = randn(&[1, 2, 5, 4], 3);
        let keep = Tensor::new(&[[1f32, 1., 1., 0., 0.]], &Device::Cpu).unwrap();
        let padded = attention(&q, &k, &v, AttnMask::Padding(&keep)).unwrap();
        let short = attention(
            &q,
            &k.narrow(2, 0, 3).unwrap(),
            &v.narrow(2, 0, 3).unwrap(),
            AttnMask::None,
        )
        .unwrap();
        assert_close(&padded, &short, Tol::F32);
    }
}
