use super::*;
use candle_core::{DType, Device};
use canon_testkit::{Tol, assert_close, to_vec};

fn tiny() -> BertConfig {
    BertTrainConfig {
        vocab_size: 50,
        n_layer: 2,
        n_head: 2,
        d_model: 32,
        d_ff: Some(48),
        max_seq_len: 24,
        type_vocab_size: 2,
        activation: Activation::Gelu,
        layer_norm_eps: 1e-12,
        init_std: 0.2,
    }
    .to_bert()
}

fn ids(rows: &[&[u32]], t: usize) -> (Tensor, Tensor, Tensor) {
    let b = rows.len();
    let (mut id, mut ty, mut m) = (vec![0u32; b * t], vec![0u32; b * t], vec![0f32; b * t]);
    for (i, r) in rows.iter().enumerate() {
        for (j, &x) in r.iter().enumerate() {
            id[i * t + j] = x;
            ty[i * t + j] = u32::from(j >= r.len() / 2);
            m[i * t + j] = 1.0;
        }
    }
    let d = &Device::Cpu;
    (
        Tensor::from_vec(id, (b, t), d).unwrap(),
        Tensor::from_vec(ty, (b, t), d).unwrap(),
        Tensor::from_vec(m, (b, t), d).unwrap(),
    )
}

#[test]
fn mlm_decoder_is_the_word_embedding_variable() {
    let store = VarStore::new_random(3, bert_init_policy(0.2));
    let m = BertPretraining::load(tiny(), &store, true).unwrap();
    let emb = m.bert.word_embeddings();
    assert_eq!(m.mlm.decoder.id(), emb.id(), "one tensor, not a copy");
    // No separate decoder variable exists.
    let names: Vec<String> = store.vars().into_iter().map(|v| v.0).collect();
    assert!(!names.iter().any(|n| n.contains("decoder")), "{names:?}");
    // Writing the variable changes the decoder: shared storage.
    let var = store.get("embeddings.word_embeddings.weight").unwrap();
    var.set(&var.as_tensor().ones_like().unwrap()).unwrap();
    assert!(to_vec(&m.mlm.decoder).iter().all(|&x| x == 1.0));
}

#[test]
fn gradients_reach_every_parameter_of_the_pretraining_model_and_the_classifier() {
    let store = VarStore::new_random(5, bert_init_policy(0.2));
    let m = BertPretraining::load(tiny(), &store, true).unwrap();
    let (id, ty, mask) = ids(&[&[2, 10, 11, 3, 12, 3], &[2, 20, 3, 21, 3]], 6);
    let out = m.forward(&id, Some(&ty), &mask, &[1, 4, 7]).unwrap();
    assert_eq!(out.mlm_logits.dims(), [3, 50]);
    let nsp = out.nsp_logits.unwrap();
    assert_eq!(nsp.dims(), [2, 2]);
    let loss = (out.mlm_logits.sqr().unwrap().mean_all().unwrap()
        + nsp.sqr().unwrap().mean_all().unwrap())
    .unwrap();
    let g = loss.backward().unwrap();
    let vars = store.vars();
    // embeddings 3 + LN 2, 16 per layer, pooler 2, NSP 2, MLM transform 2 + LN 2 + bias 1.
    assert_eq!(vars.len(), 5 + 2 * 16 + 2 + 2 + 5);
    for (name, v, _) in &vars {
        let gr = g
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(to_vec(gr).iter().any(|x| *x != 0.0), "zero gradient {name}");
    }

    let store = VarStore::new_random(6, bert_init_policy(0.2));
    let c = BertClassifier::load(tiny(), &store, 3).unwrap();
    let logits = c.forward(&id, &mask).unwrap();
    assert_eq!(logits.dims(), [2, 3]);
    let g = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v, _) in store.vars() {
        // Rows of the position / type / word tables never looked up get zero gradient; every
        // tensor still receives one.
        let gr = g.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}"));
        assert!(to_vec(gr).iter().any(|x| *x != 0.0), "zero gradient {name}");
    }
    assert!(BertClassifier::load(tiny(), &store, 1).is_err());
}

#[test]
fn appending_padding_leaves_real_positions_unchanged() {
    // Trainable weights: the composed pass (the fast inference pass has its own test in bert.rs).
    let store = VarStore::new_random(9, bert_init_policy(0.2));
    let m = BertPretraining::load(tiny(), &store, true).unwrap();
    let seq: &[u32] = &[2, 14, 15, 16, 3, 17, 18, 3];
    let (a, ta, ma) = ids(&[seq], 8);
    let (b, tb, mb) = ids(&[seq, &[2, 30, 3]], 13); // 5 [PAD] after the first; a second row.
    let ha = m.bert.forward_composed(&a, Some(&ta), &ma).unwrap();
    let hb = m.bert.forward_composed(&b, Some(&tb), &mb).unwrap();
    let hb = hb.narrow(0, 0, 1).unwrap().narrow(1, 0, 8).unwrap();
    assert_close(&hb, &ha, Tol::new(1e-5, 1e-5));
    // The pooled [CLS] and the NSP logits follow.
    let (pool, head) = m.nsp.as_ref().unwrap();
    let pa = head.forward(&pool.forward(&ha).unwrap()).unwrap();
    let full = m.bert.forward_composed(&b, Some(&tb), &mb).unwrap();
    let pb = head.forward(&pool.forward(&full).unwrap()).unwrap();
    assert_close(&pb.narrow(0, 0, 1).unwrap(), &pa, Tol::new(1e-5, 1e-5));
    // A wrong mask (padding marked real) does change them: the test can fail.
    let ones = mb.ones_like().unwrap();
    let hw = m.bert.forward_composed(&b, Some(&tb), &ones).unwrap();
    let diff = (hw.narrow(0, 0, 1).unwrap().narrow(1, 0, 8).unwrap() - &ha)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-3, "{diff}");
}

#[test]
fn copy_into_takes_what_the_source_has_and_gather_rows_checks_range() {
    let a = VarStore::new_random(1, bert_init_policy(0.2));
    let _ = BertPretraining::load(tiny(), &a, true).unwrap();
    let b = VarStore::new_random(2, bert_init_policy(0.2));
    let _ = BertClassifier::load(tiny(), &b, 2).unwrap();
    let (copied, kept) = copy_into(&b, &a).unwrap();
    // VarStore in create mode "has" everything: the classifier's head is made in `a` on request.
    assert!(kept.is_empty());
    assert!(copied.iter().any(|n| n == "pooler.dense.weight"));
    let wa = a.get("encoder.layer.1.output.dense.weight").unwrap();
    let wb = b.get("encoder.layer.1.output.dense.weight").unwrap();
    assert_eq!(to_vec(wa.as_tensor()), to_vec(wb.as_tensor()));
    let h = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(gather_rows(&h, &[0, 5]).unwrap().dims(), [2, 4]);
    assert!(gather_rows(&h, &[6]).is_err());
}
