use super::*;
use crate::VarStore;
use candle_core::{Device, Tensor};
use canon_testkit::{Tol, assert_close, assert_close_f32, golden, goldens_dir, to_vec};

pub(crate) fn tiny(ffn: T5Ffn) -> T5Config {
    T5Config {
        vocab_size: 23,
        d_model: 16,
        d_kv: 4,
        n_heads: 2,
        d_ff: 32,
        n_layers: 2,
        n_decoder_layers: Some(2),
        num_buckets: 32,
        max_distance: 128,
        ffn,
        tie_embeddings: true,
        norm_eps: 1e-6,
        max_seq_len: 64,
        pad_id: 0,
        eos_id: 1,
        decoder_start_id: None,
        init_factor: 1.0,
    }
}

fn random(cfg: &T5Config, seed: u64) -> (T5, VarStore) {
    let store = VarStore::new_random(seed, cfg.init_policy());
    let m = T5::load(cfg.clone(), &store).unwrap();
    (m, store)
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

fn mask_of(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

#[test]
fn matches_transformers_t5_on_random_weights() {
    // goldens/t5/gen.py: HF T5ForConditionalGeneration (relu v1.0 and gated-gelu v1.1), tied head,
    // padded sources, and a 150-token source / 140-token target reaching the saturated buckets.
    let g = golden("t5/t5.json");
    for case in g["models"].as_array().unwrap() {
        let c = &case["config"];
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let cfg = T5Config {
            vocab_size: u("vocab_size"),
            d_model: u("d_model"),
            d_kv: u("d_kv"),
            n_heads: u("num_heads"),
            d_ff: u("d_ff"),
            n_layers: u("num_layers"),
            n_decoder_layers: Some(u("num_decoder_layers")),
            ffn: match c["feed_forward_proj"].as_str().unwrap() {
                "relu" => T5Ffn::Relu,
                _ => T5Ffn::GatedGelu,
            },
            max_seq_len: 256,
            norm_eps: c["layer_norm_epsilon"].as_f64().unwrap(),
            ..tiny(T5Ffn::Relu)
        };
        assert!(c["scale_decoder_outputs"].as_bool().unwrap());
        let path = goldens_dir()
            .join("t5")
            .join(case["weights"].as_str().unwrap());
        let store = VarStore::from_safetensors(&path, "", cfg.init_policy()).unwrap();
        let m = T5::load(cfg.clone(), &store).unwrap();
        let to_u32 = |v: &serde_json::Value| -> Tensor {
            let rows: Vec<Vec<u32>> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as u32)
                        .collect()
                })
                .collect();
            let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
            ids(&refs)
        };
        let fl = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let (src, mask, tgt) = (
            to_u32(&case["src"]),
            to_u32(&case["src_mask"]),
            to_u32(&case["tgt"]),
        );
        let enc = m.encode(&src, &mask).unwrap();
        // Padded positions' states are not compared (HF computes them too; they are unused), so
        // compare all: both sides compute them the same way.
        assert_close_f32(
            &to_vec(&enc),
            &fl(&case["encoder_out"]),
            Tol::new(2e-5, 1e-4),
        );
        let mut cache = m.new_cache();
        let logits = m.decode(&enc, &mask, &tgt, &mut cache).unwrap();
        assert_eq!(logits.dims(), &[2, 7, cfg.vocab_size]);
        assert_close_f32(&to_vec(&logits), &fl(&case["logits"]), Tol::new(1e-4, 1e-4));
        // Long: offsets beyond max_distance.
        let (ls, lt) = (to_u32(&case["long_src"]), to_u32(&case["long_tgt"]));
        let lm = Tensor::ones(ls.dims(), DType::U32, &Device::Cpu).unwrap();
        let logits = m.forward_train(&ls, &lm, &lt).unwrap();
        let t = lt.dim(1).unwrap();
        let last4 = logits.narrow(1, t - 4, 4).unwrap();
        assert_close_f32(
            &to_vec(&last4),
            &fl(&case["long_logits_last4"]),
            Tol::new(1e-4, 1e-4),
        );
    }
}

#[test]
fn cached_decoding_equals_full_decoding() {
    for ffn in [T5Ffn::Relu, T5Ffn::GatedGelu] {
        let (m, _) = random(&tiny(ffn), 3);
        let src = ids(&[&[5, 6, 7, 8, 9, 1], &[10, 11, 12, 1, 0, 0]]);
        let mask = mask_of(&[&[1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 0, 0]]);
        let tgt = ids(&[&[0, 3, 4, 5, 6, 7, 8, 9, 2], &[0, 9, 8, 7, 6, 5, 4, 3, 2]]);
        let enc = m.encode(&src, &mask).unwrap();
        let mut c = m.new_cache();
        let full = m.decode(&enc, &mask, &tgt, &mut c).unwrap();
        // One token at a time, then in uneven pieces.
        for pieces in [vec![1; 9], vec![3, 1, 4, 1]] {
            let mut c = m.new_cache();
            let mut at = 0;
            let mut parts = Vec::new();
            for n in pieces {
                parts.push(
                    m.decode(&enc, &mask, &tgt.narrow(1, at, n).unwrap(), &mut c)
                        .unwrap(),
                );
                at += n;
            }
            assert_eq!(c.len(), 9);
            let inc = Tensor::cat(&parts, 1).unwrap();
            assert_close(&inc, &full, Tol::new(1e-5, 1e-4));
        }
        // The training forward (no cache) is the same function.
        let train = m.forward_train(&src, &mask, &tgt).unwrap();
        assert_close(&train, &full, Tol::new(1e-5, 1e-4));
    }
}

#[test]
fn future_target_tokens_do_not_change_past_logits() {
    let (m, _) = random(&tiny(T5Ffn::Relu), 4);
    let src = ids(&[&[5, 6, 7, 8, 1]]);
    let mask = mask_of(&[&[1, 1, 1, 1, 1]]);
    let a = m
        .forward_train(&src, &mask, &ids(&[&[0, 3, 4, 5, 6, 7]]))
        .unwrap();
    let b = m
        .forward_train(&src, &mask, &ids(&[&[0, 3, 4, 20, 21, 22]]))
        .unwrap();
    assert_close(
        &a.narrow(1, 0, 3).unwrap(),
        &b.narrow(1, 0, 3).unwrap(),
        Tol::new(1e-6, 1e-5),
    );
    let d = to_vec(&(a.narrow(1, 3, 3).unwrap() - b.narrow(1, 3, 3).unwrap()).unwrap());
    assert!(
        d.iter().any(|x| x.abs() > 1e-3),
        "later positions must differ"
    );
}

#[test]
fn padding_the_source_changes_nothing() {
    let (m, _) = random(&tiny(T5Ffn::GatedGelu), 5);
    let tgt = ids(&[&[0, 3, 4, 5]]);
    let short = m
        .forward_train(&ids(&[&[5, 6, 7, 1]]), &mask_of(&[&[1, 1, 1, 1]]), &tgt)
        .unwrap();
    let padded = m
        .forward_train(
            &ids(&[&[5, 6, 7, 1, 0, 0, 0]]),
            &mask_of(&[&[1, 1, 1, 1, 0, 0, 0]]),
            &tgt,
        )
        .unwrap();
    assert_close(&padded, &short, Tol::new(1e-5, 1e-4));
    // Padding tokens with other ids behind the mask change nothing either; unmasking them does.
    let other = m
        .forward_train(
            &ids(&[&[5, 6, 7, 1, 9, 9, 9]]),
            &mask_of(&[&[1, 1, 1, 1, 0, 0, 0]]),
            &tgt,
        )
        .unwrap();
    assert_close(&other, &short, Tol::new(1e-5, 1e-4));
    let seen = m
        .forward_train(
            &ids(&[&[5, 6, 7, 1, 9, 9, 9]]),
            &mask_of(&[&[1, 1, 1, 1, 1, 1, 1]]),
            &tgt,
        )
        .unwrap();
    let d = to_vec(&(seen - short).unwrap());
    assert!(d.iter().any(|x| x.abs() > 1e-3));
}

#[test]
fn one_bias_table_per_stack_and_every_parameter_gets_a_gradient() {
    let cfg = tiny(T5Ffn::Relu);
    let (m, store) = random(&cfg, 6);
    let names: Vec<String> = store.vars().into_iter().map(|v| v.0).collect();
    let tables: Vec<&String> = names
        .iter()
        .filter(|n| n.contains("relative_attention_bias"))
        .collect();
    assert_eq!(
        tables,
        vec![
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ]
    );
    // shared + enc 2×(4 attn + 2 ffn + 2 ln) + enc bias + final ln + dec 2×(8 attn + 2 ffn + 3 ln)
    // + dec bias + final ln; no lm_head (tied).
    assert_eq!(names.len(), 1 + 2 * 8 + 1 + 1 + 2 * 13 + 1 + 1);
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".bias") || n == "lm_head.weight")
    );
    let src = ids(&[&[5, 6, 7, 8, 9, 1]]);
    let mask = mask_of(&[&[1, 1, 1, 1, 1, 1]]);
    let logits = m
        .forward_train(&src, &mask, &ids(&[&[0, 3, 4, 5, 6]]))
        .unwrap();
    let g = logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, v, decay) in store.vars() {
        let gr = g
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(
            to_vec(gr).iter().any(|x| *x != 0.0),
            "{name}: zero gradient"
        );
        assert_eq!(
            decay,
            !(name.contains("layer_norm") || name.contains("relative") || name == "shared.weight"),
            "{name}"
        );
    }
    // The q init folds in 1/√d_kv: std (d·d_kv)^-0.5 = 0.125 against k's d^-0.5 = 0.25.
    let std = |n: &str| {
        let v = to_vec(store.get(n).unwrap().as_tensor());
        (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
    };
    let (q, k) = (
        std("encoder.block.0.layer.0.SelfAttention.q.weight"),
        std("encoder.block.0.layer.0.SelfAttention.k.weight"),
    );
    assert!(
        (q - 0.125).abs() < 0.03 && (k - 0.25).abs() < 0.06,
        "{q} {k}"
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (m, _) = random(&tiny(T5Ffn::Relu), 7);
    let mask = mask_of(&[&[1, 1]]);
    let e = m.encode(&ids(&[&[5, 99]]), &mask).unwrap_err().to_string();
    assert!(e.contains("99") && e.contains("23"), "{e}");
    let e = m
        .encode(&ids(&[&[5, 6]]), &mask_of(&[&[1, 1, 1]]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mask"), "{e}");
    let enc = m.encode(&ids(&[&[5, 6]]), &mask).unwrap();
    let long: Vec<u32> = vec![3; 65];
    let e = m
        .decode(&enc, &mask, &ids(&[&long]), &mut m.new_cache())
        .unwrap_err()
        .to_string();
    assert!(e.contains("64"), "{e}");
    let mut bad = tiny(T5Ffn::Relu);
    bad.eos_id = 40;
    assert!(bad.validate().unwrap_err().contains("eos_id"));
}

/// The trainable path (tracked weights: the relative bias through the biased tiled attention op
/// with its gradient into the table, fused RMS norm and GELU) equals the inference path (detached
/// weights, a cached decode of the whole prefix) on a padded batch, for both feed-forward forms.
#[test]
fn forward_train_equals_the_inference_path() {
    for ffn in [T5Ffn::Relu, T5Ffn::GatedGelu] {
        let cfg = tiny(ffn);
        let (m, store) = random(&cfg, 4);
        let rows: [&[u32]; 2] = [&[3, 4, 5, 6, 7, 1], &[8, 9, 3, 1, 0, 0]];
        let src = ids(&rows);
        let mask = mask_of(&[&[1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 0, 0]]);
        let tgt = ids(&[&[0, 5, 6, 7], &[0, 9, 4, 3]]);
        let train = m.forward_train(&src, &mask, &tgt).unwrap();
        assert!(train.track_op());
        let inf = T5::load(cfg.clone(), &crate::source::Detached(&store)).unwrap();
        let enc = inf.encode(&src, &mask).unwrap();
        let mut cache = inf.new_cache();
        let y = inf.decode(&enc, &mask, &tgt, &mut cache).unwrap();
        assert!(!y.track_op());
        assert_close(&train.detach(), &y, Tol::new(1e-4, 1e-4));
    }
}
