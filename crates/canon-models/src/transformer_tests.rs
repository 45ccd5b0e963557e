use super::*;
use crate::VarStore;
use canon_testkit::{Tol, assert_close, to_vec};

pub(crate) fn tiny() -> TransformerConfig {
    TransformerConfig {
        family: Default::default(),
        vocab_size: 23,
        n_encoder_layers: 2,
        n_decoder_layers: 2,
        d_model: 16,
        n_head: 4,
        d_ff: 32,
        max_seq_len: 24,
        dropout: 0.1,
        norm_eps: 1e-6,
        pad_id: 0,
        bos_id: 1,
        eos_id: 2,
    }
}

pub(crate) fn tiny_model(seed: u64) -> (Transformer, VarStore) {
    let c = tiny();
    let store = VarStore::new_random(seed, c.init_policy());
    (Transformer::load(c, &store).unwrap(), store)
}

fn ids(v: &[&[u32]]) -> Tensor {
    Tensor::new(
        v.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap()
}

fn ones(b: usize, s: usize) -> Tensor {
    Tensor::ones((b, s), DType::U32, &Device::Cpu).unwrap()
}

#[test]
fn cached_one_token_decoding_equals_the_full_decode() {
    let (m, _) = tiny_model(1);
    let src = ids(&[&[5, 6, 7, 8, 2], &[9, 10, 2, 0, 0]]);
    let mask = ids(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 0, 0]]);
    let tgt = ids(&[&[1, 11, 12, 13, 14, 15], &[1, 16, 17, 18, 19, 20]]);
    let enc = m.encode(&src, &mask).unwrap();
    let full = m.decode(&enc, &mask, &tgt, &mut m.new_cache()).unwrap();
    assert_eq!(full.dims(), &[2, 6, 23]);
    // The training forward (no cache, no dropout) gives the same logits.
    let train = m.forward_train(&src, &mask, &tgt).unwrap();
    assert_close(&train, &full, Tol::new(1e-5, 1e-5));
    // One token at a time, then a chunk of two, through the cache.
    let mut cache = m.new_cache();
    let mut steps = Vec::new();
    for i in 0..4 {
        steps.push(
            m.decode(&enc, &mask, &tgt.narrow(1, i, 1).unwrap(), &mut cache)
                .unwrap(),
        );
    }
    steps.push(
        m.decode(&enc, &mask, &tgt.narrow(1, 4, 2).unwrap(), &mut cache)
            .unwrap(),
    );
    assert_eq!(cache.len(), 6);
    let inc = Tensor::cat(&steps, 1).unwrap();
    assert_close(&inc, &full, Tol::new(1e-5, 1e-5));
}

#[test]
fn future_target_tokens_do_not_change_past_logits() {
    let (m, _) = tiny_model(2);
    let src = ids(&[&[5, 6, 7, 2]]);
    let mask = ones(1, 4);
    let a = ids(&[&[1, 11, 12, 13, 14, 15]]);
    let b = ids(&[&[1, 11, 12, 3, 22, 4]]);
    let la = m.forward_train(&src, &mask, &a).unwrap();
    let lb = m.forward_train(&src, &mask, &b).unwrap();
    let (pa, pb) = (la.narrow(1, 0, 3).unwrap(), lb.narrow(1, 0, 3).unwrap());
    assert_close(&pa, &pb, Tol::new(1e-6, 0.0));
    // The changed positions do change (the check can fail).
    let d = to_vec(&(la.narrow(1, 3, 3).unwrap() - lb.narrow(1, 3, 3).unwrap()).unwrap());
    assert!(d.iter().any(|x| x.abs() > 1e-3));
}

#[test]
fn padded_source_keys_do_not_change_the_outputs() {
    let (m, _) = tiny_model(3);
    let tgt = ids(&[&[1, 11, 12, 13]]);
    let short = ids(&[&[5, 6, 7, 2]]);
    let long = ids(&[&[5, 6, 7, 2, 0, 0, 0]]);
    let long_mask = ids(&[&[1, 1, 1, 1, 0, 0, 0]]);
    let ls = m.forward_train(&short, &ones(1, 4), &tgt).unwrap();
    let ll = m.forward_train(&long, &long_mask, &tgt).unwrap();
    assert_close(&ll, &ls, Tol::new(1e-5, 1e-5));
    // Encoder states at real positions agree too.
    let es = m.encode(&short, &ones(1, 4)).unwrap();
    let el = m.encode(&long, &long_mask).unwrap();
    assert_close(&el.narrow(1, 0, 4).unwrap(), &es, Tol::new(1e-5, 1e-5));
    // Unmasked, the padding would leak in.
    let lu = m.forward_train(&long, &ones(1, 7), &tgt).unwrap();
    let d = to_vec(&(lu - &ls).unwrap());
    assert!(d.iter().any(|x| x.abs() > 1e-4));
}

#[test]
fn sinusoids_rotate_by_the_offset_and_start_with_zero_one() {
    let d = 64;
    let n = 4097;
    let pe = sinusoid_table(n, d, &Device::Cpu).unwrap();
    let v = to_vec(&pe);
    assert_eq!(&v[..8], &[0., 1., 0., 1., 0., 1., 0., 1.]);
    let mut worst = 0f64;
    for pos in (0..=2048).step_by(97) {
        for k in [0usize, 1, 7, 500, 2048] {
            for i in 0..d / 2 {
                let w = 10000f64.powf(-((2 * i) as f64) / d as f64);
                let (s, c) = (v[pos * d + 2 * i] as f64, v[pos * d + 2 * i + 1] as f64);
                let (ks, kc) = ((k as f64 * w).sin(), (k as f64 * w).cos());
                // [sin(a+b); cos(a+b)] = [[cos b, sin b]; [−sin b, cos b]] · [sin a; cos a]
                let want_s = kc * s + ks * c;
                let want_c = -ks * s + kc * c;
                let at = (pos + k) * d + 2 * i;
                worst = worst
                    .max((v[at] as f64 - want_s).abs())
                    .max((v[at + 1] as f64 - want_c).abs());
            }
        }
    }
    assert!(worst <= 1e-5, "relative shift off by {worst}");
    assert!(sinusoid_table(2, 7, &Device::Cpu).is_err());
}

#[test]
fn every_parameter_gets_a_gradient_and_the_embedding_is_shared() {
    let (m, store) = tiny_model(4);
    let src = ids(&[&[5, 6, 7, 2], &[8, 2, 0, 0]]);
    let mask = ids(&[&[1, 1, 1, 1], &[1, 1, 0, 0]]);
    let tgt = ids(&[&[1, 11, 12], &[1, 13, 2]]);
    m.set_noise(Some(5));
    let logits = m.forward_train(&src, &mask, &tgt).unwrap();
    let (loss, k) = canon_nn::masked_cross_entropy(
        &logits.reshape((6, 23)).unwrap(),
        &[11, 12, 2, 13, 2, -100],
        0.1,
    )
    .unwrap();
    assert_eq!(k, 5);
    let g = loss.backward().unwrap();
    let vars = store.vars();
    // shared; encoder 2 × (qkv, o, fc1, fc2: w + b; 2 LN: γ + β) = 2 × 12; decoder 2 × (qkv, o,
    // cross q, cross kv, cross o, fc1, fc2: w + b; 3 LN) = 2 × 20.
    assert_eq!(vars.len(), 1 + 2 * 12 + 2 * 20);
    for (name, v, decay) in &vars {
        let gv = to_vec(
            g.get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient")),
        );
        assert!(gv.iter().any(|x| *x != 0.0), "{name}: zero gradient");
        assert_eq!(
            *decay,
            name.ends_with(".weight") && !name.contains("ln_") && name != "shared.weight",
            "{name}"
        );
    }
    assert!(store.get("lm_head.weight").is_none());
    // Dropout changes a training forward; evaluation is deterministic.
    let again = m.forward_train(&src, &mask, &tgt).unwrap();
    let d = to_vec(&(again - &logits).unwrap());
    assert!(d.iter().any(|x| x.abs() > 1e-4));
    m.set_noise(None);
    let e1 = m.forward_train(&src, &mask, &tgt).unwrap();
    let e2 = m.forward_train(&src, &mask, &tgt).unwrap();
    assert_close(&e1, &e2, Tol::EXACT);
}

#[test]
fn label_smoothing_matches_the_papers_worked_values() {
    // docs/papers/01-transformer.md, convention (a): the target is (1 − ε)·onehot + ε/V on every
    // class.
    let uniform = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
    for eps in [0.0, 0.1, 0.5] {
        let (l, _) = canon_nn::masked_cross_entropy(&uniform, &[0, 3, 4], eps).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - 1.609_438).abs() < 1e-6);
    }
    let z = Tensor::new(&[[2f32, 0.5, -1.0, 0.0]], &Device::Cpu).unwrap();
    let (l, _) = canon_nn::masked_cross_entropy(&z, &[0], 0.1).unwrap();
    assert!((l.to_scalar::<f32>().unwrap() - 0.504_849_6).abs() < 1e-6);
}

#[test]
fn config_reads_the_family_tag_and_reports_bad_fields() {
    let text = r#"{"family": "transformer", "n_encoder_layers": 3, "n_decoder_layers": 3,
        "d_model": 256, "n_head": 4, "d_ff": 1024, "max_seq_len": 64}"#;
    let c: TransformerConfig = serde_json::from_str(text).unwrap();
    assert_eq!((c.d_model, c.dropout, c.vocab_size), (256, 0.1, 0));
    let back = serde_json::to_value(&c).unwrap();
    assert_eq!(back["family"], "transformer");
    let wrong = text.replace("\"transformer\"", "\"gpt\"");
    assert!(serde_json::from_str::<TransformerConfig>(&wrong).is_err());
    let typo = text.replace("d_ff", "dff");
    let e = serde_json::from_str::<TransformerConfig>(&typo)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dff"), "{e}");
    let mut bad = tiny();
    bad.n_head = 3;
    assert!(bad.validate().unwrap_err().contains("n_head"));
    let mut bad = tiny();
    bad.eos_id = 99;
    assert!(bad.validate().unwrap_err().contains("eos_id"));
}

#[test]
fn decoding_past_the_position_table_is_an_error() {
    let (m, _) = tiny_model(6);
    let src = ids(&[&[5, 2]]);
    let enc = m.encode(&src, &ones(1, 2)).unwrap();
    let long = Tensor::ones((1, 25), DType::U32, &Device::Cpu).unwrap();
    let e = m
        .decode(&enc, &ones(1, 2), &long, &mut m.new_cache())
        .unwrap_err();
    assert!(e.to_string().contains("max_seq_len"), "{e}");
}

/// The trainable path (tracked weights: fused layer norm and GELU with their backward, the tiled
/// attention op for the causal and padded masks) equals the inference path (detached weights,
/// encoder then a cached decode of the whole prefix) on a padded batch.
#[test]
fn forward_train_equals_the_inference_path() {
    let (m, store) = tiny_model(5);
    let src = ids(&[&[3, 4, 5, 6, 7], &[8, 9, 3, 0, 0]]);
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &Device::Cpu).unwrap();
    let tgt = ids(&[&[1, 5, 6, 7], &[1, 9, 4, 3]]);
    let train = m.forward_train(&src, &mask, &tgt).unwrap();
    assert!(train.track_op());
    let inf = Transformer::load(tiny(), &crate::source::Detached(&store)).unwrap();
    let enc = inf.encode(&src, &mask).unwrap();
    let mut cache = inf.new_cache();
    let y = inf.decode(&enc, &mask, &tgt, &mut cache).unwrap();
    assert!(!y.track_op());
    assert_close(&train.detach(), &y, Tol::new(1e-4, 1e-4));
}
