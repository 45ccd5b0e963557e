use super::*;
use crate::bert_data::train_wordpiece;
use crate::bert_pretrain::params_of;
use crate::bert_pretrain::tests::{regular_corpus, tiny_cfg};
use crate::engine::step_on_loss;
use crate::optim::{Optimizer, OptimizerConfig};
use candle_core::{Device, Var};
use canon_models::bert_heads::bert_init_policy;
use canon_testkit::to_vec;

fn t(v: &[f32], n: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (n, v.len() / n), &Device::Cpu).unwrap()
}

fn scalar(x: &Tensor) -> f64 {
    x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn temperature_softmax_matches_hand_values() {
    let p = to_vec(&softmax_t(&t(&[1.0, 2.0, 0.5], 1), 2.0).unwrap());
    for (a, b) in p.iter().zip([0.291_755_96, 0.481_024_26, 0.227_219_77]) {
        assert!((a - b).abs() < 1e-6, "{p:?}");
    }
    // T = 1 is the plain softmax; a large T flattens towards uniform; rows sum to 1.
    let z = t(&[3.0, -1.0, 0.0, 10.0, 10.0, 9.0], 2);
    let p1 = to_vec(&softmax_t(&z, 1.0).unwrap());
    let e: Vec<f32> = [3f32, -1.0, 0.0].iter().map(|x| x.exp()).collect();
    let s: f32 = e.iter().sum();
    assert!((p1[0] - e[0] / s).abs() < 1e-6);
    let p100 = to_vec(&softmax_t(&z, 1000.0).unwrap());
    assert!(p100.iter().all(|x| (x - 1.0 / 3.0).abs() < 2e-3));
    assert!((p1[3..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
}

#[test]
fn soft_target_loss_matches_the_reference_value_and_is_zero_for_equal_logits() {
    let zs = t(&[1.0, 2.0, 0.5], 1);
    let zt = t(&[2.0, 1.0, 0.0], 1);
    let l = scalar(&soft_target_loss(&zs, &zt, 2.0).unwrap());
    assert!((l - 0.418_516_9).abs() < 1e-6, "{l}");
    assert!(scalar(&soft_target_loss(&zt, &zt, 2.0).unwrap()).abs() < 1e-7);
    assert!(soft_target_loss(&zs, &t(&[1.0, 2.0], 1), 2.0).is_err());
    assert!(soft_target_loss(&zs, &zt, 0.0).is_err());
}

#[test]
fn soft_target_gradient_is_t_times_the_probability_gap_over_rows() {
    // Two rows: d L / d z_s = T (softmax(z_s/T) − softmax(z_t/T)) / n, checked against finite
    // differences of the loss (forgetting T² would be off by T² = 6.25).
    let temp = 2.5;
    let zs_v = [0.3f32, -1.2, 2.0, 0.7, 1.1, 0.0, -0.4, 0.9];
    let zt_v = [1.0f32, 0.5, -0.5, 0.2, -1.0, 2.0, 0.3, 0.1];
    let zs = Var::from_tensor(&t(&zs_v, 2)).unwrap();
    let zt = t(&zt_v, 2);
    let l = soft_target_loss(zs.as_tensor(), &zt, temp).unwrap();
    let g = to_vec(l.backward().unwrap().get(zs.as_tensor()).unwrap());
    let ps = to_vec(&softmax_t(zs.as_tensor(), temp).unwrap());
    let pt = to_vec(&softmax_t(&zt, temp).unwrap());
    for i in 0..8 {
        let want = temp as f32 * (ps[i] - pt[i]) / 2.0;
        assert!(
            (g[i] - want).abs() < 1e-6,
            "analytic {i}: {} vs {want}",
            g[i]
        );
        let h = 1e-2f32;
        let mut up = zs_v;
        up[i] += h;
        let mut dn = zs_v;
        dn[i] -= h;
        let fd = (scalar(&soft_target_loss(&t(&up, 2), &zt, temp).unwrap())
            - scalar(&soft_target_loss(&t(&dn, 2), &zt, temp).unwrap()))
            / (2.0 * h as f64);
        assert!((g[i] as f64 - fd).abs() < 1e-4, "fd {i}: {} vs {fd}", g[i]);
    }
}

#[test]
fn cosine_loss_is_zero_one_two_for_same_orthogonal_opposite() {
    let a = t(&[1.0, 2.0, 0.0, 0.0, 0.0, 3.0], 2);
    let same = t(&[2.0, 4.0, 0.0, 0.0, 0.0, 0.5], 2);
    let orth = t(&[-2.0, 1.0, 5.0, 1.0, 1.0, 0.0], 2);
    let opp = (&a * -1.0).unwrap();
    assert!(scalar(&cosine_loss(&a, &same).unwrap()).abs() < 1e-6);
    assert!((scalar(&cosine_loss(&a, &orth).unwrap()) - 1.0).abs() < 1e-6);
    assert!((scalar(&cosine_loss(&a, &opp).unwrap()) - 2.0).abs() < 1e-6);
    assert!(cosine_loss(&a, &t(&[1.0, 2.0], 1)).is_err());
}

#[test]
fn layer_map_takes_one_layer_in_two_and_the_reference_map_for_12_to_6() {
    assert_eq!(layer_map(12, 6).unwrap(), vec![0, 2, 4, 7, 9, 11]);
    assert_eq!(layer_map(6, 3).unwrap(), vec![0, 2, 4]);
    assert_eq!(layer_map(4, 2).unwrap(), vec![0, 2]);
    assert!(layer_map(2, 3).is_err() && layer_map(4, 0).is_err());
}

fn teacher_store(vocab: usize, layers: usize) -> (VarStore, BertPretraining) {
    let store = VarStore::new_random(21, bert_init_policy(0.3));
    let mut cfg = tiny_cfg(vocab);
    cfg.num_hidden_layers = layers;
    let m = BertPretraining::load(cfg, &store, true).unwrap();
    (store, m)
}

#[test]
fn student_starts_from_alternate_teacher_layers_bit_for_bit() {
    let (ts, teacher) = teacher_store(60, 4);
    let scfg = student_config(&teacher.bert.config, 2);
    let ss = VarStore::new_random(5, bert_init_policy(0.02));
    let _ = BertPretraining::load(scfg, &ss, false).unwrap();
    let copied = init_student(&ts, &ss, &layer_map(4, 2).unwrap()).unwrap();
    assert_eq!(copied.len(), ss.vars().len());
    let same = |s: &str, t: &str| {
        let a = to_vec(ss.get(s).unwrap().as_tensor());
        let b = to_vec(ts.get(t).unwrap().as_tensor());
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    for tail in [
        "attention.self.query.weight",
        "attention.output.LayerNorm.bias",
        "output.dense.weight",
    ] {
        assert!(same(
            &format!("encoder.layer.0.{tail}"),
            &format!("encoder.layer.0.{tail}")
        ));
        assert!(same(
            &format!("encoder.layer.1.{tail}"),
            &format!("encoder.layer.2.{tail}")
        ));
        // Not the neighbouring layer (LayerNorm β starts at 0 in every layer: weights only).
        if tail.ends_with("weight") {
            assert!(!same(
                &format!("encoder.layer.1.{tail}"),
                &format!("encoder.layer.1.{tail}")
            ));
        }
    }
    for n in [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.bias",
    ] {
        assert!(same(n, n), "{n}");
    }
    // One token type: the teacher's row 0.
    let tt = ss.get("embeddings.token_type_embeddings.weight").unwrap();
    assert_eq!(tt.dims(), [1, 32]);
    let t0 = ts
        .get("embeddings.token_type_embeddings.weight")
        .unwrap()
        .as_tensor()
        .narrow(0, 0, 1)
        .unwrap();
    assert_eq!(to_vec(tt.as_tensor()), to_vec(&t0));
    // No pooler or NSP head in the student.
    assert!(
        ss.vars()
            .iter()
            .all(|v| !v.0.starts_with("pooler") && !v.0.contains("seq_rel"))
    );
}

fn distill_setup(init_from_teacher: bool) -> (Distill, Vec<crate::optim::Param>) {
    let c = regular_corpus();
    let tok = train_wordpiece(&c.docs, 100).unwrap();
    let sp = Specials::of(&tok).unwrap();
    let data = SentenceData::encode(&tok, &c, 0.2).unwrap();
    let (ts, _) = teacher_store(tok.get_vocab_size(true), 2);
    let tcfg = {
        let mut c = tiny_cfg(tok.get_vocab_size(true));
        c.num_hidden_layers = 2;
        c
    };
    let teacher = BertPretraining::load(tcfg.clone(), &Frozen(&ts), true).unwrap();
    let ss = VarStore::new_random(8, bert_init_policy(0.3));
    let student = BertPretraining::load(student_config(&tcfg, 1), &ss, false).unwrap();
    if init_from_teacher {
        init_student(&ts, &ss, &layer_map(2, 1).unwrap()).unwrap();
    }
    let params = params_of(&ss);
    let d = Distill::new(
        student,
        ss,
        teacher,
        data,
        sp,
        DistillWeights::default(),
        32,
        8,
        2,
        3,
    )
    .unwrap();
    (d, params)
}

#[test]
fn teacher_initialised_student_starts_closer_and_gradients_reach_every_parameter() {
    let (init, params) = distill_setup(true);
    let (random, _) = distill_setup(false);
    let get = |m: &[(String, f64)], k: &str| m.iter().find(|x| x.0 == k).unwrap().1;
    let mi = init.eval_metrics().unwrap();
    let mr = random.eval_metrics().unwrap();
    assert!(
        get(&mi, "eval_ce_loss") < get(&mr, "eval_ce_loss"),
        "{mi:?} {mr:?}"
    );
    assert!(get(&mi, "eval_student_tokens_per_s") > 0.0);
    // The teacher is frozen: its outputs carry no graph; every student parameter gets a gradient.
    let mut rng = SplitMix64::new(1);
    let b = init.draw_batch(&mut rng).unwrap();
    let l = triple_loss(&init.student, &init.teacher, &b, &init.weights).unwrap();
    let g = l.total.backward().unwrap();
    for p in &params {
        let gr = g
            .get(p.var.as_tensor())
            .unwrap_or_else(|| panic!("{}", p.name));
        assert!(to_vec(gr).iter().any(|x| *x != 0.0), "{}", p.name);
    }
}

#[test]
fn distillation_steps_reduce_the_soft_target_loss() {
    let (mut d, params) = distill_setup(false);
    let get = |m: &[(String, f64)], k: &str| m.iter().find(|x| x.0 == k).unwrap().1;
    let before = get(&d.eval_metrics().unwrap(), "eval_ce_loss");
    let mut opt = Optimizer::new(OptimizerConfig::default(), &params);
    let mut rng = SplitMix64::new(2);
    for _ in 0..30 {
        let mb = d.micro_batch(&mut rng).unwrap();
        assert_eq!(mb.extra.len(), 3);
        step_on_loss(&mb.total, &params, &mut opt, 2e-3, Some(5.0)).unwrap();
    }
    let after = get(&d.eval_metrics().unwrap(), "eval_ce_loss");
    assert!(after < 0.7 * before, "{before} -> {after}");
}
