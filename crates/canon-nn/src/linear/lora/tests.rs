use std::sync::Arc;

use super::*;
use crate::linear::frozen::BWD_PRODUCTS;
use crate::linear::{Linear, Weight};
use canon_testkit::{Tol, assert_close, randn};

/// The frozen-base path gives the same output and the same input and adapter gradients as the
/// composed ops over a trainable copy of the weight, and never materialises a gradient of the
/// weight's shape (no `[out, in]` or `[in, out]` tensor in the gradient store).
#[test]
fn frozen_dense_base_backward_gives_input_and_adapter_gradients_only() {
    use candle_core::Var;
    let (out, inp, r) = (7, 6, 2);
    let w = randn(&[out, inp], 11);
    let x = Var::from_tensor(&randn(&[2, 3, inp], 12)).unwrap();
    let a = Var::from_tensor(&randn(&[r, inp], 13)).unwrap();
    let b = Var::from_tensor(&randn(&[out, r], 14)).unwrap();
    let run = |weight: Weight| {
        let mut l = Linear::new(weight, None);
        l.set_lora(Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 0.5,
            dropout: None,
        })
        .unwrap();
        let y = l.forward(x.as_tensor()).unwrap();
        let loss = (y.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        (y, loss.backward().unwrap())
    };
    let (y_frozen, g_frozen) = run(Weight::Dense(w.clone()));
    let w_var = Var::from_tensor(&w).unwrap();
    let (y_ref, g_ref) = run(Weight::Dense(w_var.as_tensor().clone()));
    assert_close(&y_frozen, &y_ref, Tol::F32);
    for t in [x.as_tensor(), a.as_tensor(), b.as_tensor()] {
        assert_close(g_frozen.get(t).unwrap(), g_ref.get(t).unwrap(), Tol::F32);
    }
    assert!(g_ref.get(w_var.as_tensor()).is_some());
    let weight_shaped = g_frozen
        .get_ids()
        .filter_map(|id| g_frozen.get_id(*id))
        .filter(|g| g.dims() == [out, inp] || g.dims() == [inp, out])
        .count();
    assert_eq!(
        weight_shaped, 0,
        "a frozen weight's gradient was materialised"
    );
}

/// The products the fused LoRA backward runs, counted: none has the frozen weight's shape
/// `[out, in]`, and the input gradient's two are skipped when the input is a constant.
#[test]
fn lora_backward_never_forms_a_weight_gradient_product() {
    use candle_core::Var;
    let (n, out, inp, r) = (6, 7, 5, 2);
    let w = randn(&[out, inp], 1);
    let a = Var::from_tensor(&randn(&[r, inp], 2)).unwrap();
    let b = Var::from_tensor(&randn(&[out, r], 3)).unwrap();
    let mut l = Linear::new(Weight::Dense(w), None);
    l.set_lora(Lora {
        a: a.as_tensor().clone(),
        b: b.as_tensor().clone(),
        scale: 2.0,
        dropout: None,
    })
    .unwrap();
    let x_var = Var::from_tensor(&randn(&[n, inp], 4)).unwrap();
    for (x, tracked) in [
        (x_var.as_tensor().clone(), true),
        (randn(&[n, inp], 4), false),
    ] {
        BWD_PRODUCTS.with(|p| p.borrow_mut().clear());
        let y = l.forward(&x).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let shapes = BWD_PRODUCTS.with(|p| p.borrow().clone());
        let mut want = vec![[n, r], [r, inp], [n, r], [out, r]];
        if tracked {
            want.extend([[n, inp], [n, inp]]);
        }
        let (mut got, mut want) = (shapes.clone(), want);
        got.sort();
        want.sort();
        assert_eq!(got, want, "backward products {shapes:?}");
        assert!(!shapes.contains(&[out, inp]) && !shapes.contains(&[inp, out]));
        assert_eq!(grads.get(&x).is_some(), tracked);
    }
}

/// LoRA over a quantized base (GGUF Q8_0 and Q4_0 blocks, NF4) as the one fused op: the
/// output and the input and adapter gradients equal those over the same weight dequantized
/// to a frozen dense f32 tensor (the row-tiled input gradient spans several tiles), and no
/// backward product has the weight's shape.
#[test]
fn lora_over_a_quantized_base_equals_lora_over_its_dequantized_weight() {
    use candle_core::Var;
    use canon_quant::{GgmlTensor, GgmlType, Kind, Nf4Tensor};
    let (n, out, inp, r) = (20, 600, 64, 3);
    let w = randn(&[out, inp], 21);
    let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    let ggml = |kind: Kind, dtype: GgmlType| {
        let mut bytes = Vec::new();
        for row in wv.chunks(inp) {
            canon_quant::kernels::scalar::quantize_row(kind, row, &mut bytes);
        }
        Weight::Ggml(Arc::new(
            GgmlTensor::from_bytes(dtype, &[out, inp], &bytes).unwrap(),
        ))
    };
    let nf4 = Weight::Nf4(Arc::new(Nf4Tensor::quantize(&wv, out, inp, true).unwrap()));
    let x = Var::from_tensor(&randn(&[n, inp], 22)).unwrap();
    let a = Var::from_tensor(&randn(&[r, inp], 23)).unwrap();
    let b = Var::from_tensor(&randn(&[out, r], 24)).unwrap();
    let run = |weight: Weight| {
        let mut l = Linear::new(weight, None);
        l.set_lora(Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 0.5,
            dropout: None,
        })
        .unwrap();
        BWD_PRODUCTS.with(|p| p.borrow_mut().clear());
        let y = l.forward(x.as_tensor()).unwrap();
        let g = (y.sqr().unwrap().sum_all().unwrap() * 0.5)
            .unwrap()
            .backward()
            .unwrap();
        (y, g, BWD_PRODUCTS.with(|p| p.borrow().clone()))
    };
    for q in [
        ggml(Kind::Q8_0, GgmlType::Q8_0),
        ggml(Kind::Q4_0, GgmlType::Q4_0),
        nf4,
    ] {
        let dense = Weight::Dense(q.to_dense().unwrap());
        let (yq, gq, shapes) = run(q.clone());
        // The fused op ran: its backward recorded its products, input gradient in tiles.
        assert!(
            shapes.iter().filter(|s| **s == [n, inp]).count() >= 3,
            "{shapes:?}"
        );
        assert!(!shapes.contains(&[out, inp]) && !shapes.contains(&[inp, out]));
        // The reference: the same quantized product, unfused (the kernels may round the
        // activations to 8 bits for prompt-sized products; both paths then round alike), plus
        // the adapter product composed from candle's ops.
        let composed = {
            let base = Linear::new(q.clone(), None).forward(x.as_tensor()).unwrap();
            let delta = (x
                .as_tensor()
                .matmul(&a.as_tensor().t().unwrap())
                .unwrap()
                .matmul(&b.as_tensor().t().unwrap())
                .unwrap()
                * 0.5)
                .unwrap();
            (base + delta).unwrap()
        };
        let gc = (composed.sqr().unwrap().sum_all().unwrap() * 0.5)
            .unwrap()
            .backward()
            .unwrap();
        assert_close(&yq, &composed, Tol::new(1e-4, 1e-4));
        for t in [x.as_tensor(), a.as_tensor(), b.as_tensor()] {
            // Gradients reach 2e4 here while some elements are a few units after cancelling:
            // the absolute part of the tolerance follows the tensor's scale (f32 sums in
            // another order differ by ~1e-7 of the largest terms).
            let reference = gc.get(t).unwrap();
            let scale = reference
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            assert_close(gq.get(t).unwrap(), reference, Tol::new(1e-6 * scale, 1e-4));
        }
        // Against the dequantized weight in f32: within the 8-bit activation rounding.
        let (yd, _, _) = run(dense);
        let diff = (&yq - &yd)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.5, "max |quantized - dequantized| {diff}");
    }
}

#[test]
fn merged_equals_the_adapter_applied_on_the_side() {
    let mut l = Linear::new(Weight::Dense(randn(&[4, 6], 1)), Some(randn(&[4], 9)));
    l.set_lora(Lora {
        a: randn(&[2, 6], 3),
        b: randn(&[4, 2], 4),
        scale: 0.5,
        dropout: None,
    })
    .unwrap();
    let x = randn(&[3, 6], 2);
    let merged = l.merged().unwrap();
    assert!(merged.lora.is_none());
    assert_close(
        &merged.forward(&x).unwrap(),
        &l.forward(&x).unwrap(),
        Tol::F32,
    );
    // Shapes are checked, and rank 0 is refused.
    let bad = Lora {
        a: randn(&[2, 5], 3),
        b: randn(&[4, 2], 4),
        scale: 1.0,
        dropout: None,
    };
    let e = l.set_lora(bad).unwrap_err().to_string();
    assert!(e.contains("[2, 5]") && e.contains("[r, 6]"), "{e}");
    let zero = Lora {
        a: Tensor::zeros((0, 6), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        b: Tensor::zeros((4, 0), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        scale: 1.0,
        dropout: None,
    };
    assert!(l.set_lora(zero).is_err());
}

#[test]
fn lora_with_zero_b_is_the_identity() {
    let w = randn(&[4, 6], 1);
    let x = randn(&[3, 6], 2);
    let mut l = Linear::new(Weight::Dense(w), None);
    let base = l.forward(&x).unwrap();
    l.lora = Some(Lora {
        a: randn(&[2, 6], 3),
        b: Tensor::zeros((4, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        scale: 8.0,
        dropout: None,
    });
    assert_close(&l.forward(&x).unwrap(), &base, Tol::EXACT);
}

#[test]
fn lora_dropout_acts_on_the_adapter_input_only_while_training() {
    let w = randn(&[4, 6], 1);
    let x = randn(&[3, 6], 2);
    let noise = std::sync::Arc::new(crate::Noise::default());
    let lora = |dropout| Lora {
        a: randn(&[2, 6], 3),
        b: randn(&[4, 2], 4),
        scale: 2.0,
        dropout,
    };
    let mut plain = Linear::new(Weight::Dense(w.clone()), None);
    plain.set_lora(lora(None)).unwrap();
    let mut dropped = Linear::new(Weight::Dense(w.clone()), None);
    dropped.set_lora(lora(Some((0.5, noise.clone())))).unwrap();
    // Inactive noise (evaluation, inference): exactly the plain adapter.
    let want = plain.forward(&x).unwrap();
    assert_close(&dropped.forward(&x).unwrap(), &want, Tol::EXACT);
    // Seeded: the adapter sees a dropped-out input, the frozen path the whole input.
    noise.set(Some(5));
    let got = dropped.forward(&x).unwrap();
    assert!(
        (&got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 1e-3
    );
    noise.set(Some(5));
    let masked = crate::dropout(&x, 0.5, &noise).unwrap();
    let frozen = Linear::new(Weight::Dense(w), None).forward(&x).unwrap();
    let adapter = (masked
        .matmul(&randn(&[2, 6], 3).t().unwrap())
        .unwrap()
        .matmul(&randn(&[4, 2], 4).t().unwrap())
        .unwrap()
        * 2.0)
        .unwrap();
    assert_close(&got, &(frozen + adapter).unwrap(), Tol::F32);
}
