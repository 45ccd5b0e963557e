//! docs/papers/04-transformer-xl.md acceptance checks for Transformer-XL.

use super::*;
use crate::varstore::VarStore;
use candle_core::Device;
use canon_testkit::{Tol, assert_close, to_vec};

fn cfg(mem_len: usize) -> TxlConfig {
    TxlConfig {
        vocab_size: 17,
        n_layer: 2,
        n_head: 2,
        d_model: 8,
        d_inner: 16,
        mem_len,
        eval_mem_len: 2 * mem_len,
        max_seq_len: 16,
        init_std: 0.3,
    }
}

fn model(mem_len: usize) -> (TransformerXl, VarStore) {
    let c = cfg(mem_len);
    let s = VarStore::new_random(11, c.init_policy());
    // u and v start at zero; give them values so the (c) and (d) terms matter in the tests.
    let m = TransformerXl::load(c, &s).unwrap();
    for n in ["r_w_bias", "r_r_bias"] {
        let v = s.get(n).unwrap();
        v.set(&(canon_testkit::randn(v.dims(), 5) * 0.5).unwrap())
            .unwrap();
    }
    (m, s)
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

const S1: [u32; 5] = [3, 1, 4, 1, 5];
const S2: [u32; 4] = [9, 2, 6, 5];

#[test]
fn recurrence_with_enough_memory_equals_one_causal_pass() {
    let (m, _) = model(8);
    let all: Vec<u32> = S1.iter().chain(&S2).copied().collect();
    let (full, _) = m.segment(&ids(&all), &[]).unwrap();
    let (_, in1) = m.segment(&ids(&S1), &[]).unwrap();
    let mems = TransformerXl::update_mems(&[], &in1, 8).unwrap();
    let (l2, _) = m.segment(&ids(&S2), &mems).unwrap();
    assert_close(&l2, &full.narrow(1, 5, 4).unwrap(), Tol::new(1e-5, 1e-5));
    // The stateful path gives the same.
    m.set_mem_len(8);
    m.forward_with_memory(&ids(&S1)).unwrap();
    let l2b = m.forward_with_memory(&ids(&S2)).unwrap();
    assert_close(&l2b, &l2, Tol::EXACT);
    // And incremental generation through the cache equals the full pass too.
    let mut cache = m.new_cache();
    let a = m.forward(&ids(&S1), &mut cache, Positions::All).unwrap();
    let b = m.forward(&ids(&S2), &mut cache, Positions::All).unwrap();
    assert_close(
        &Tensor::cat(&[a, b], 1).unwrap(),
        &full,
        Tol::new(1e-5, 1e-5),
    );
}

#[test]
fn truncated_memory_differs_from_the_full_pass() {
    // Three segments of 3 with mem_len 3: the third segment cannot see the first.
    let (m, _) = model(3);
    let seq = [3u32, 1, 4, 1, 5, 9, 2, 6, 5];
    let (full, _) = m.segment(&ids(&seq), &[]).unwrap();
    let mut mems = Vec::new();
    let mut last = None;
    for s in seq.chunks(3) {
        let (l, inputs) = m.segment(&ids(s), &mems).unwrap();
        mems = TransformerXl::update_mems(&mems, &inputs, 3).unwrap();
        last = Some(l);
    }
    let a = to_vec(&last.unwrap());
    let b = to_vec(&full.narrow(1, 6, 3).unwrap());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        diff > 1e-3,
        "memory truncation must change the logits (diff {diff})"
    );
}

#[test]
fn memory_update_keeps_exactly_the_last_mem_len_states() {
    let st = |a: f32, n: usize| {
        Tensor::from_vec(
            (0..n).map(|i| a + i as f32).collect::<Vec<_>>(),
            (1, n, 1),
            &Device::Cpu,
        )
        .unwrap()
    };
    let old = vec![st(0.0, 3)]; // 0 1 2
    let new = vec![st(10.0, 2)]; // 10 11
    let m = TransformerXl::update_mems(&old, &new, 4).unwrap();
    assert_eq!(to_vec(&m[0]), vec![1.0, 2.0, 10.0, 11.0]);
    let m = TransformerXl::update_mems(&old, &new, 1).unwrap();
    assert_eq!(to_vec(&m[0]), vec![11.0]);
    assert!(
        TransformerXl::update_mems(&old, &new, 0)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn loss_on_segment_two_sends_no_gradient_into_segment_one() {
    let (m, s) = model(8);
    let (_, in1) = m.segment(&ids(&S1), &[]).unwrap();
    let mems = TransformerXl::update_mems(&[], &in1, 8).unwrap();
    let (l2, _) = m.segment(&ids(&S2), &mems).unwrap();
    let g = l2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for h in &in1 {
        assert!(
            g.get(h).is_none(),
            "segment 1 activations must get no gradient"
        );
    }
    // Every parameter is trained (through the current segment).
    for (name, v, _) in s.vars() {
        let gr = g
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(to_vec(gr).iter().any(|x| *x != 0.0), "{name}");
    }
}

#[test]
fn bad_config_names_the_field() {
    let mut c = cfg(4);
    c.n_head = 3;
    assert!(c.validate().unwrap_err().contains("n_head"));
}

/// The trainable path (tracked weights: the position terms through the biased tiled attention
/// op, fused layer norm) equals the same segments run with detached weights (inference
/// kernels), memory included.
#[test]
fn forward_train_equals_the_inference_path() {
    let (m, store) = model(4);
    let inf = TransformerXl::load(cfg(4), &crate::source::Detached(&store)).unwrap();
    for seg in [&S1[..], &S2[..]] {
        let train = crate::TrainableLm::forward_train(&m, &ids(seg))
            .unwrap()
            .logits;
        assert!(train.track_op());
        let y = inf.forward_with_memory(&ids(seg)).unwrap();
        assert!(!y.track_op());
        assert_close(&train.detach(), &y, Tol::new(1e-4, 1e-4));
    }
}
