use super::frozen::{BASE_TILE, BWD_PRODUCTS};
use super::*;
use canon_testkit::{Tol, assert_close, randn};

#[test]
fn dense_matches_manual_product_and_keeps_leading_dims() {
    let w = randn(&[5, 3], 1);
    let b = randn(&[5], 2);
    let x = randn(&[2, 4, 3], 3);
    let l = Linear::new(Weight::Dense(w.clone()), Some(b.clone()));
    let y = l.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 4, 5]);
    let manual = x
        .reshape((8, 3))
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap()
        .reshape((2, 4, 5))
        .unwrap();
    assert_close(&y, &manual, Tol::F32);
}

/// A frozen ggml weight without an adapter (the output head over a GGUF table) under a
/// tracked input: the forward is the quantized kernels' product, the backward the input
/// gradient only, `g W` from 256-row dequantized tiles (never the whole table, never a
/// weight-shaped product), equal to the product with the dequantized matrix.
#[test]
fn frozen_quantized_head_backward_is_the_input_gradient_from_tiles() {
    use candle_core::Var;
    use canon_quant::{GgmlTensor, GgmlType, Kind};
    let (n, out, inp) = (18, 700, 64);
    let wv: Vec<f32> = randn(&[out, inp], 31)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let x = Var::from_tensor(&randn(&[n, inp], 32)).unwrap();
    for (kind, dtype) in [(Kind::Q8_0, GgmlType::Q8_0), (Kind::Q4_1, GgmlType::Q4_1)] {
        let mut bytes = Vec::new();
        for row in wv.chunks(inp) {
            canon_quant::kernels::scalar::quantize_row(kind, row, &mut bytes);
        }
        let q = Arc::new(GgmlTensor::from_bytes(dtype, &[out, inp], &bytes).unwrap());
        let lin = Linear::new(Weight::Ggml(q.clone()), None);
        BWD_PRODUCTS.with(|p| p.borrow_mut().clear());
        let y = lin.forward(x.as_tensor()).unwrap();
        // The forward is the inference product.
        assert_close(
            &y,
            &q.matmul(&x.as_tensor().detach()).unwrap(),
            Tol::new(0.0, 0.0),
        );
        let gy = randn(&[n, out], 33);
        let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let shapes = BWD_PRODUCTS.with(|p| p.borrow().clone());
        assert_eq!(shapes, vec![[n, inp]; out.div_ceil(BASE_TILE)], "{dtype:?}");
        let want = gy.matmul(&q.dequantize().unwrap()).unwrap();
        let dx = g.get(x.as_tensor()).unwrap();
        assert_close(dx, &want, Tol::new(1e-4, 1e-4));
    }
}

#[test]
fn nf4_and_int8_weights_multiply_like_their_dequantized_matrices() {
    let w = randn(&[6, 128], 4);
    let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let x = randn(&[2, 3, 128], 5);
    let nf4 = Weight::Nf4(Arc::new(Nf4Tensor::quantize(&wv, 6, 128, true).unwrap()));
    let int8 = Weight::Int8(Arc::new(
        Int8Tensor::quantize(&wv, 6, 128, canon_quant::int8::THRESHOLD, true).unwrap(),
    ));
    for (weight, tol) in [(nf4, Tol::new(1e-3, 1e-4)), (int8, Tol::new(0.5, 0.05))] {
        assert_eq!(weight.shape(), vec![6, 128]);
        let dense = Linear::new(Weight::Dense(weight.to_dense().unwrap()), None);
        let l = Linear::new(weight, None);
        let y = l.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, 6]);
        assert_close(&y, &dense.forward(&x).unwrap(), tol);
        let ids = Tensor::new(&[5u32, 0], &candle_core::Device::Cpu).unwrap();
        assert_close(
            &l.weight.rows(&ids).unwrap(),
            &dense.weight.rows(&ids).unwrap(),
            Tol::EXACT,
        );
    }
}

/// `forward_shared` (one rounding of the input, one kernel job for every matrix) gives each
/// layer the bits of its own `forward`, bias included, at one and at many rows and for a
/// `[b, t, in]` input; a layer with an adapter sends the whole call back to `forward`.
#[test]
fn shared_input_products_equal_each_layers_own_forward() {
    use canon_quant::{GgmlTensor, GgmlType, Kind};
    let inp = 96;
    let ggml = |out: usize, seed: u64, kind: Kind, dtype: GgmlType| {
        let wv: Vec<f32> = randn(&[out, inp], seed)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut bytes = Vec::new();
        for row in wv.chunks(inp) {
            canon_quant::kernels::scalar::quantize_row(kind, row, &mut bytes);
        }
        Weight::Ggml(Arc::new(
            GgmlTensor::from_bytes(dtype, &[out, inp], &bytes).unwrap(),
        ))
    };
    let q = Linear::new(ggml(80, 41, Kind::Q4_1, GgmlType::Q4_1), None);
    let k = Linear::new(
        ggml(40, 42, Kind::Q4_1, GgmlType::Q4_1),
        Some(randn(&[40], 43)),
    );
    let v = Linear::new(ggml(24, 44, Kind::Q8_0, GgmlType::Q8_0), None);
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    for shape in [vec![1, inp], vec![9, inp], vec![2, 7, inp]] {
        let x = randn(&shape, 45);
        let got = Linear::forward_shared([&q, &k, &v], &x).unwrap();
        for (g, l) in got.iter().zip([&q, &k, &v]) {
            let want = l.forward(&x).unwrap();
            assert_eq!(g.dims(), want.dims());
            assert_eq!(bits(g), bits(&want), "shape {shape:?}");
        }
    }
    // An adapter on one layer: each layer's own forward.
    let mut with_lora = k.clone();
    with_lora
        .set_lora(Lora {
            a: randn(&[4, inp], 46),
            b: randn(&[40, 4], 48),
            scale: 2.0,
            dropout: None,
        })
        .unwrap();
    let x = randn(&[3, inp], 47);
    let got = Linear::forward_shared([&q, &with_lora], &x).unwrap();
    assert_eq!(bits(&got[1]), bits(&with_lora.forward(&x).unwrap()));
}
