use crate::linear::{Linear, Weight};
use candle_core::Tensor;
use canon_testkit::{Tol, assert_close, randn};

/// A trainable weight's product: output and both gradients equal candle's matmul by `Wᵀ`.
#[test]
fn trainable_dense_weight_matches_candles_matmul_forward_and_backward() {
    use candle_core::Var;
    let w = Var::from_tensor(&randn(&[7, 5], 1)).unwrap();
    let x = Var::from_tensor(&randn(&[2, 3, 5], 2)).unwrap();
    let l = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
    let y = l.forward(x.as_tensor()).unwrap();
    let r = x
        .as_tensor()
        .reshape((6, 5))
        .unwrap()
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .reshape((2, 3, 7))
        .unwrap();
    assert_close(&y, &r, Tol::F32);
    let wt = randn(&[2, 3, 7], 3);
    let g1 = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (&r * &wt).unwrap().sum_all().unwrap().backward().unwrap();
    for t in [w.as_tensor(), x.as_tensor()] {
        assert_close(g1.get(t).unwrap(), g2.get(t).unwrap(), Tol::F32);
    }
    crate::gradcheck::check_gradients(
        &[w.clone(), x.clone()],
        |t| {
            let l = Linear::new(Weight::Dense(t[0].clone()), None);
            (l.forward(&t[1])? * &wt)?.sum_all()
        },
        1e-2,
        2e-3,
        2e-2,
    )
    .unwrap();
    // With a trainable bias, on a 3-D input read in place (no reshape nodes).
    let b = Var::from_tensor(&randn(&[7], 4)).unwrap();
    let lb = Linear::new(
        Weight::Dense(w.as_tensor().clone()),
        Some(b.as_tensor().clone()),
    );
    let yb = lb.forward(x.as_tensor()).unwrap();
    let rb = r.broadcast_add(b.as_tensor()).unwrap();
    assert_close(&yb, &rb, Tol::F32);
    let g1 = (&yb * &wt).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (&rb * &wt).unwrap().sum_all().unwrap().backward().unwrap();
    for t in [w.as_tensor(), x.as_tensor(), b.as_tensor()] {
        assert_close(g1.get(t).unwrap(), g2.get(t).unwrap(), Tol::F32);
    }
}

/// The product and GELU as one op equal the two ops (`forward` then the activation), forward
/// and backward, in both GELU forms; finite differences agree; other layers decline it.
#[test]
fn linear_gelu_equals_the_product_then_the_activation() {
    use crate::Activation;
    use candle_core::Var;
    for act in [Activation::Gelu, Activation::GeluTanh] {
        let tanh = act == Activation::GeluTanh;
        let w = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
        let x = Var::from_tensor(&(randn(&[2, 3, 5], 2) * 2.0).unwrap()).unwrap();
        let l = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
        let y = l.forward_gelu(x.as_tensor(), tanh).unwrap().expect("fused");
        let r = act.forward(&l.forward(x.as_tensor()).unwrap()).unwrap();
        assert_eq!(y.dims(), &[2, 3, 9]);
        assert_close(&y, &r, Tol::F32);
        let wt = randn(&[2, 3, 9], 3);
        let g1 = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&r * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [w.as_tensor(), x.as_tensor()] {
            assert_close(g1.get(t).unwrap(), g2.get(t).unwrap(), Tol::F32);
        }
        crate::gradcheck::check_gradients(
            &[w.clone(), x.clone()],
            |t| {
                let l = Linear::new(Weight::Dense(t[0].clone()), None);
                // The perturbed evaluations run on constants (the two ops).
                let y = match l.forward_gelu(&t[1], tanh)? {
                    Some(y) => y,
                    None => act.forward(&l.forward(&t[1])?)?,
                };
                (y * &wt)?.sum_all()
            },
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }
    // A bias, a frozen weight or a 1-D input keep the two ops.
    let w = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
    let x = randn(&[2, 5], 2);
    let biased = Linear::new(Weight::Dense(w.as_tensor().clone()), Some(randn(&[9], 4)));
    assert!(biased.forward_gelu(&x, false).unwrap().is_none());
    let frozen = Linear::new(Weight::Dense(randn(&[9, 5], 1)), None);
    assert!(frozen.forward_gelu(&x, false).unwrap().is_none());
    let dense = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
    assert!(
        dense
            .forward_gelu(&randn(&[5], 2), false)
            .unwrap()
            .is_none()
    );
}

/// The fused GELU ops hand their saved activations to the backward (freed there, not with
/// the graph); a second backward over the same graph recomputes them and gives the same bits.
#[test]
fn a_second_backward_recomputes_the_saved_activations() {
    use candle_core::Var;
    let bits = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let w1 = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
    let w2 = Var::from_tensor(&randn(&[4, 9], 5)).unwrap();
    let x = Var::from_tensor(&(randn(&[2, 3, 5], 2) * 2.0).unwrap()).unwrap();
    let l1 = Linear::new(Weight::Dense(w1.as_tensor().clone()), None);
    let l2 = Linear::new(Weight::Dense(w2.as_tensor().clone()), None);
    let mlp = l1
        .forward_gelu_mlp(&l2, x.as_tensor(), false)
        .unwrap()
        .unwrap();
    let h = l1.forward_gelu(x.as_tensor(), false).unwrap().unwrap();
    let wt = randn(&[2, 3, 4], 3);
    let wh = randn(&[2, 3, 9], 4);
    let loss = ((&mlp * &wt).unwrap().sum_all().unwrap() + (&h * &wh).unwrap().sum_all().unwrap())
        .unwrap();
    let g1 = loss.backward().unwrap();
    let g2 = loss.backward().unwrap();
    for t in [w1.as_tensor(), w2.as_tensor(), x.as_tensor()] {
        assert_eq!(bits(g1.get(t).unwrap()), bits(g2.get(t).unwrap()));
    }
}

/// The GELU MLP as one op equals the three ops (product, activation, product), forward and
/// backward, bit for bit, in both GELU forms; finite differences agree; a bias keeps the
/// separate ops.
#[test]
fn gelu_mlp_equals_the_separate_ops() {
    use crate::Activation;
    use candle_core::Var;
    for act in [Activation::Gelu, Activation::GeluTanh] {
        let tanh = act == Activation::GeluTanh;
        let w1 = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
        let w2 = Var::from_tensor(&randn(&[4, 9], 5)).unwrap();
        let x = Var::from_tensor(&(randn(&[2, 3, 5], 2) * 2.0).unwrap()).unwrap();
        let l1 = Linear::new(Weight::Dense(w1.as_tensor().clone()), None);
        let l2 = Linear::new(Weight::Dense(w2.as_tensor().clone()), None);
        let y = l1
            .forward_gelu_mlp(&l2, x.as_tensor(), tanh)
            .unwrap()
            .expect("fused");
        let h = l1
            .forward_gelu(x.as_tensor(), tanh)
            .unwrap()
            .expect("fused");
        let r = l2.forward(&h).unwrap();
        assert_eq!(y.dims(), &[2, 3, 4]);
        let bits = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        assert_eq!(bits(&y), bits(&r));
        let composed = l2.forward(&act.forward(&l1.forward(x.as_tensor()).unwrap()).unwrap());
        assert_close(&y, &composed.unwrap(), Tol::F32);
        let wt = randn(&[2, 3, 4], 3);
        let g1 = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&r * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [w1.as_tensor(), w2.as_tensor(), x.as_tensor()] {
            assert_eq!(bits(g1.get(t).unwrap()), bits(g2.get(t).unwrap()));
        }
        crate::gradcheck::check_gradients(
            &[w1.clone(), w2.clone(), x.clone()],
            |t| {
                let l1 = Linear::new(Weight::Dense(t[0].clone()), None);
                let l2 = Linear::new(Weight::Dense(t[1].clone()), None);
                // The perturbed evaluations run on constants (the separate ops).
                let y = match l1.forward_gelu_mlp(&l2, &t[2], tanh)? {
                    Some(y) => y,
                    None => l2.forward(&act.forward(&l1.forward(&t[2])?)?)?,
                };
                (y * &wt)?.sum_all()
            },
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }
    let w1 = Var::from_tensor(&randn(&[9, 5], 1)).unwrap();
    let l1 = Linear::new(Weight::Dense(w1.as_tensor().clone()), None);
    let biased = Linear::new(Weight::Dense(randn(&[4, 9], 5)), Some(randn(&[4], 6)));
    let x = randn(&[2, 5], 2);
    assert!(l1.forward_gelu_mlp(&biased, &x, false).unwrap().is_none());
}

/// The backward's two products of a trainable linear (and of the GELU MLP) run side by side
/// on a pool of 2 or 3 threads (`train_ops::join_products`), on shapes large enough for a
/// product to be split over threads: every gradient has the bits of a 1-thread pool, where
/// they run one after the other.
#[test]
fn backward_products_side_by_side_give_the_one_thread_bits() {
    use candle_core::Var;
    let w = Var::from_tensor(&(randn(&[160, 128], 1) * 0.1).unwrap()).unwrap();
    let w2 = Var::from_tensor(&(randn(&[128, 160], 4) * 0.1).unwrap()).unwrap();
    let x = Var::from_tensor(&randn(&[2, 160, 128], 2)).unwrap();
    let wt = randn(&[2, 160, 128], 3);
    let grads = |threads: usize| -> Vec<Vec<u32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let l1 = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
            let l2 = Linear::new(Weight::Dense(w2.as_tensor().clone()), None);
            let y = l2.forward(&l1.forward(x.as_tensor()).unwrap()).unwrap();
            let m = l1
                .forward_gelu_mlp(&l2, x.as_tensor(), false)
                .unwrap()
                .expect("fused");
            let loss = ((&y * &wt).unwrap().sum_all().unwrap()
                + (&m * &wt).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            [w.as_tensor(), w2.as_tensor(), x.as_tensor()]
                .iter()
                .map(|t| {
                    let v: Vec<f32> = g.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                    v.iter().map(|f| f.to_bits()).collect()
                })
                .collect()
        })
    };
    let one = grads(1);
    assert_eq!(grads(2), one);
    assert_eq!(grads(3), one);
}
