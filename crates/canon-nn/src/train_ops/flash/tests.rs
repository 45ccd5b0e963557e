//! Tests of the tiled attention ops against the composed ops and finite differences.

use super::super::tests::wsum;
use super::*;
use crate::gradcheck::check_gradients;
use crate::{AttnMask, attention};
use candle_core::Var;
use canon_testkit::{Tol, assert_close, randn};

#[test]
fn causal_attention_matches_the_composed_layer_forward_and_backward() {
    let q = Var::from_tensor(&randn(&[2, 4, 5, 8], 1)).unwrap();
    let k = Var::from_tensor(&randn(&[2, 2, 5, 8], 2)).unwrap();
    let v = Var::from_tensor(&randn(&[2, 2, 5, 8], 3)).unwrap();
    let ours = attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        AttnMask::Causal { offset: 0 },
    )
    .unwrap();
    let refr = crate::attention::attention_composed(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        AttnMask::Causal { offset: 0 },
    )
    .unwrap();
    assert_close(&ours, &refr, Tol::F32);
    let g1 = wsum(&ours, 7).unwrap().backward().unwrap();
    let g2 = wsum(&refr, 7).unwrap().backward().unwrap();
    for x in [&q, &k, &v] {
        assert_close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            Tol::new(1e-5, 1e-4),
        );
    }
}

/// The tiled op against the composed ops, forward and all three gradients, for every mask
/// it serves: shapes span several 64-row tiles, grouped K/V heads, a causal offset with
/// fewer queries than keys, and a padded batch (a sequence with three real keys).
#[test]
fn flash_attention_equals_the_composed_ops_for_every_mask() {
    let keep = Tensor::from_vec(
        (0..2 * 70)
            .map(|i| match i / 70 {
                0 => u32::from(i % 70 < 50),
                _ => u32::from([0, 10, 69].contains(&(i % 70))),
            })
            .collect::<Vec<u32>>(),
        (2, 70),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let cases: Vec<(usize, usize, usize, AttnMask)> = vec![
        (130, 130, 4, AttnMask::Causal { offset: 0 }),
        (70, 150, 2, AttnMask::Causal { offset: 80 }),
        (70, 70, 1, AttnMask::None),
        (70, 70, 2, AttnMask::Padding(&keep)),
    ];
    for (case, (tq, tk, hkv, mask)) in cases.into_iter().enumerate() {
        let seed = 10 * case as u64;
        let q = Var::from_tensor(&randn(&[2, 4, tq, 16], seed + 1)).unwrap();
        let k = Var::from_tensor(&randn(&[2, hkv, tk, 16], seed + 2)).unwrap();
        let v = Var::from_tensor(&randn(&[2, hkv, tk, 16], seed + 3)).unwrap();
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let ours = attention(qt, kt, vt, mask).unwrap();
        let refr = crate::attention::attention_composed(qt, kt, vt, mask).unwrap();
        assert_close(&ours, &refr, Tol::new(1e-5, 1e-4));
        let g1 = wsum(&ours, seed + 7).unwrap().backward().unwrap();
        let g2 = wsum(&refr, seed + 7).unwrap().backward().unwrap();
        for x in [&q, &k, &v] {
            assert_close(
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
                Tol::new(1e-4, 1e-4),
            );
        }
    }
}

/// A sequence that is all padding: the output averages the values uniformly, as the
/// composed ops' `−1e30` mask gives, and the scores get no gradient (the output does not
/// depend on them; the composed ops' backward reports a spurious one through the rounded-away
/// scores, so only the value gradient is compared with them).
#[test]
fn flash_attention_over_an_all_padding_sequence() {
    let keep = Tensor::new(&[[0u32, 0, 0, 0]], &candle_core::Device::Cpu).unwrap();
    let q = Var::from_tensor(&randn(&[1, 2, 3, 4], 1)).unwrap();
    let k = Var::from_tensor(&randn(&[1, 2, 4, 4], 2)).unwrap();
    let v = Var::from_tensor(&randn(&[1, 2, 4, 4], 3)).unwrap();
    let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
    let ours = attention(qt, kt, vt, AttnMask::Padding(&keep)).unwrap();
    let refr = crate::attention::attention_composed(qt, kt, vt, AttnMask::Padding(&keep)).unwrap();
    assert_close(&ours, &refr, Tol::F32);
    let mean = vt
        .mean_keepdim(2)
        .unwrap()
        .broadcast_as((1, 2, 3, 4))
        .unwrap();
    assert_close(&ours, &mean, Tol::F32);
    let g1 = wsum(&ours, 4).unwrap().backward().unwrap();
    let g2 = wsum(&refr, 4).unwrap().backward().unwrap();
    assert_close(g1.get(vt).unwrap(), g2.get(vt).unwrap(), Tol::F32);
    for x in [qt, kt] {
        let zero = x.zeros_like().unwrap();
        assert_close(g1.get(x).unwrap(), &zero, Tol::EXACT);
    }
}

#[test]
fn flash_attention_refuses_bad_shapes_with_an_error() {
    let q = randn(&[1, 2, 3, 4], 1);
    let none = randn(&[1, 1, 0, 4], 2);
    let e = flash_attention(&q, &none, &none, TrainMask::None, 0.5).unwrap_err();
    assert!(e.to_string().contains("at least one key"), "{e}");
    let k = randn(&[1, 3, 5, 4], 2);
    let e = flash_attention(&q, &k, &k, TrainMask::None, 0.5).unwrap_err();
    assert!(e.to_string().contains("multiple of h_kv"), "{e}");
    let k = randn(&[1, 1, 5, 4], 2);
    let short = padding_keep(&Tensor::new(&[[1u32, 1]], q.device()).unwrap()).unwrap();
    let e = flash_attention(&q, &k, &k, short, 0.5).unwrap_err();
    assert!(e.to_string().contains("padding mask of 2 values"), "{e}");
}

/// The split heads of a packed `[b, t, (h + 2·h_kv)·d]` tensor, attended with
/// `flash_attention` and merged back: what `packed_causal_attention` replaces.
fn composed_packed(
    qkv: &Tensor,
    (h, hkv, d): (usize, usize, usize),
    offset: usize,
    scale: f64,
) -> crate::Result<Tensor> {
    let (b, t, _) = qkv.dims3()?;
    let split = |first: usize, heads: usize| -> crate::Result<Tensor> {
        qkv.narrow(2, first * d, heads * d)?
            .reshape((b, t, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(0, h)?, split(h, hkv)?, split(h + hkv, hkv)?);
    let o = flash_attention(&q, &k, &v, TrainMask::Causal { offset }, scale)?;
    o.transpose(1, 2)?.reshape((b, t, h * d))
}

/// The packed op equals the split + flash attention + merge it replaces, forward and
/// backward, bit for bit (same tiles, plain copies around them), with grouped K/V heads,
/// several 64-row tiles and an offset; and finite differences agree with its gradient.
#[test]
fn packed_attention_equals_the_split_heads_and_finite_differences() {
    for &((b, t), (h, hkv, d), offset) in &[
        ((2usize, 5usize), (2usize, 2usize, 4usize), 0usize),
        ((1, 70), (4, 2, 8), 0),
        ((2, 9), (3, 1, 4), 2),
    ] {
        let w = (h + 2 * hkv) * d;
        let x = Var::from_tensor(&randn(&[b, t, w], 11)).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let y = packed_causal_attention(&x, (h, hkv, d), offset, scale).unwrap();
        let want = composed_packed(&x, (h, hkv, d), offset, scale).unwrap();
        assert_eq!(y.dims(), &[b, t, h * d]);
        let bits = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        assert_eq!(bits(&y), bits(&want), "forward, {b}x{t}, heads {h}/{hkv}");
        let g1 = wsum(&y, 3).unwrap().backward().unwrap();
        let g2 = wsum(&want, 3).unwrap().backward().unwrap();
        let (d1, d2) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
        assert_eq!(bits(d1), bits(d2), "gradient, {b}x{t}, heads {h}/{hkv}");
        assert_close(d1, d2, Tol::F32);
    }
    let x = Var::from_tensor(&randn(&[1, 4, 4 * 3], 5)).unwrap();
    check_gradients(
        &[x],
        |t| wsum(&packed_causal_attention(&t[0], (2, 1, 3), 1, 0.6)?, 5),
        1e-2,
        2e-3,
        2e-2,
    )
    .unwrap();
    let bad = randn(&[1, 4, 10], 1);
    let e = packed_causal_attention(&bad, (2, 1, 3), 0, 0.6).unwrap_err();
    assert!(e.to_string().contains("expected qkv [b, t, 12]"), "{e}");
}

#[test]
fn finite_differences_through_flash_attention() {
    let keep = Tensor::new(&[[1u32, 1, 0, 1, 1]], &candle_core::Device::Cpu).unwrap();
    for mask in [
        TrainMask::Causal { offset: 1 },
        TrainMask::None,
        padding_keep(&keep).unwrap(),
    ] {
        let q = Var::from_tensor(&randn(&[1, 2, 4, 3], 1)).unwrap();
        let k = Var::from_tensor(&randn(&[1, 1, 5, 3], 2)).unwrap();
        let v = Var::from_tensor(&randn(&[1, 1, 5, 3], 3)).unwrap();
        check_gradients(
            &[q, k, v],
            |t| wsum(&flash_attention(&t[0], &t[1], &t[2], mask.clone(), 0.6)?, 5),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }
}

/// The biased op against the composed ops (scores materialised, bias and mask added),
/// forward and the gradients of Q, K, V and the bias, for biases broadcast over sequences
/// and heads (T5), full ones (Transformer-XL), lower-rank ones, with every mask, grouped
/// K/V heads and several 64-row tiles.
#[test]
fn biased_attention_equals_the_composed_ops() {
    use crate::attention::{AttnOpts, attend, attention_composed_with};
    let keep = Tensor::from_vec(
        (0..2 * 70)
            .map(|i| match i / 70 {
                0 => u32::from(i % 70 < 50),
                _ => u32::from([0, 10, 69].contains(&(i % 70))),
            })
            .collect::<Vec<u32>>(),
        (2, 70),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    type Case<'a> = (usize, usize, usize, Vec<usize>, AttnMask<'a>, Option<f64>);
    let cases: Vec<Case> = vec![
        (
            130,
            130,
            4,
            vec![1, 4, 130, 130],
            AttnMask::Causal { offset: 0 },
            Some(1.0),
        ),
        (
            70,
            150,
            2,
            vec![2, 4, 70, 150],
            AttnMask::Causal { offset: 80 },
            None,
        ),
        (70, 70, 1, vec![2, 1, 70, 70], AttnMask::None, Some(0.3)),
        (
            70,
            70,
            2,
            vec![1, 4, 70, 70],
            AttnMask::Padding(&keep),
            Some(1.0),
        ),
        (33, 70, 4, vec![70], AttnMask::Padding(&keep), None),
        (
            20,
            20,
            2,
            vec![4, 1, 1],
            AttnMask::Causal { offset: 0 },
            None,
        ),
    ];
    for (case, (tq, tk, hkv, bshape, mask, scale)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * case as u64;
        let q = Var::from_tensor(&randn(&[2, 4, tq, 16], seed + 1)).unwrap();
        let k = Var::from_tensor(&randn(&[2, hkv, tk, 16], seed + 2)).unwrap();
        let v = Var::from_tensor(&randn(&[2, hkv, tk, 16], seed + 3)).unwrap();
        let bias = Var::from_tensor(&randn(&bshape, seed + 4)).unwrap();
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let opts = AttnOpts {
            bias: Some(bias.as_tensor()),
            scale,
            dropout: None,
        };
        let ours = attend(qt, kt, vt, mask, opts).unwrap();
        let refr = attention_composed_with(qt, kt, vt, mask, opts).unwrap();
        assert_close(&ours, &refr, Tol::new(1e-5, 1e-4));
        let g1 = wsum(&ours, seed + 7).unwrap().backward().unwrap();
        let g2 = wsum(&refr, seed + 7).unwrap().backward().unwrap();
        for x in [&q, &k, &v, &bias] {
            let (a, b) = (
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), x.dims(), "case {case}");
            assert_close(a, b, Tol::new(1e-4, 1e-4));
        }
        // Without gradients (inference) the biased op serves too, with the same result.
        let plain = attend(
            &qt.detach(),
            &kt.detach(),
            &vt.detach(),
            mask,
            AttnOpts {
                bias: Some(&bias.as_tensor().detach()),
                ..opts
            },
        )
        .unwrap();
        assert_close(&plain, &ours.detach(), Tol::EXACT);
    }
}

#[test]
fn finite_differences_through_biased_flash_attention() {
    let keep = Tensor::new(&[[1u32, 1, 0, 1, 1]], &candle_core::Device::Cpu).unwrap();
    for (mask, bshape) in [
        (TrainMask::Causal { offset: 1 }, [1, 2, 4, 5]),
        (TrainMask::None, [1, 1, 4, 5]),
        (padding_keep(&keep).unwrap(), [1, 2, 4, 5]),
    ] {
        let q = Var::from_tensor(&randn(&[1, 2, 4, 3], 1)).unwrap();
        let k = Var::from_tensor(&randn(&[1, 1, 5, 3], 2)).unwrap();
        let v = Var::from_tensor(&randn(&[1, 1, 5, 3], 3)).unwrap();
        let bias = Var::from_tensor(&randn(&bshape, 4)).unwrap();
        check_gradients(
            &[q, k, v, bias],
            |t| {
                let y = flash_attention_bias(&t[0], &t[1], &t[2], &t[3], mask.clone(), 0.6)?;
                wsum(&y, 5)
            },
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }
}

#[test]
fn a_bias_of_the_wrong_shape_is_an_error() {
    use crate::attention::{AttnOpts, attend};
    let q = randn(&[2, 2, 3, 4], 1);
    let k = randn(&[2, 2, 5, 4], 2);
    let bias = randn(&[3, 2, 3, 5], 3);
    let opts = AttnOpts {
        bias: Some(&bias),
        ..AttnOpts::default()
    };
    let e = attend(&q, &k, &k, AttnMask::None, opts).unwrap_err();
    assert!(e.to_string().contains("broadcasts to [2, 2, 3, 5]"), "{e}");
}
