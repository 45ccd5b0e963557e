use super::*;
use crate::engine::Engine;
use crate::optim::OptimizerConfig;
use crate::{Schedule, TrainConfig};
use canon_models::VarStore;
use canon_models::ernie::{ErnieConfig, init_policy};
use canon_nn::Activation;
use canon_nn::Linear;

#[test]
fn dea_corruption_follows_the_reference_proportions() {
    // 1e5 aligned positions among 2e5 (every other position unaligned).
    let ents: Vec<i64> = (0..200_000)
        .map(|i| if i % 2 == 0 { (i / 2 % 50) as i64 } else { -1 })
        .collect();
    let c = corrupt_alignments(&ents, 50, &DeaConfig::default(), &mut SplitMix64::new(5));
    let (mut rep, mut masked, mut kept) = (0usize, 0usize, 0usize);
    for (i, &e) in ents.iter().enumerate() {
        if e < 0 {
            assert_eq!(
                c.labels[i], IGNORE_INDEX,
                "unaligned positions carry no label"
            );
            assert_eq!(c.input[i], -1);
            continue;
        }
        assert_eq!(c.labels[i], e, "labels are the original entities");
        match c.input[i] {
            -1 => masked += 1,
            x if x == e => kept += 1,
            x => {
                assert!((0..50).contains(&x));
                rep += 1;
            }
        }
    }
    let n = 100_000.0;
    let (r, m, k) = (rep as f64 / n, masked as f64 / n, kept as f64 / n);
    assert!((r - 0.05).abs() < 0.005, "replaced {r}");
    assert!((m - 0.15).abs() < 0.01, "masked {m}");
    assert!((k - 0.80).abs() < 0.01, "kept {k}");
}

fn tiny_corpus() -> Arc<ErnieCorpus> {
    // Vocabulary of 40 words; 6 entities whose kind is entity % 3; each sequence mentions two.
    let mut rng = SplitMix64::new(3);
    let mut make = |n: usize| -> Vec<Sequence> {
        (0..n)
            .map(|_| {
                let len = 6 + rng.below(5);
                let mut ids = vec![CLS];
                let mut ents = vec![-1i64];
                for _ in 0..len {
                    ids.push(5 + rng.below(35) as u32);
                    ents.push(-1);
                }
                ids.push(SEP);
                ents.push(-1);
                for _ in 0..2 {
                    let p = 1 + rng.below(len);
                    let e = rng.below(6) as i64;
                    ents[p] = e;
                    // The token says nothing about the kind: the same word for every mention.
                    ids[p] = 5;
                }
                Sequence { ids, ents }
            })
            .collect()
    };
    let train = make(64);
    let val = make(16);
    Arc::new(ErnieCorpus {
        train,
        val,
        table: canon_testkit::randn(&[6, 8], 9),
        kinds: (0..6).map(|i| EntityKind::ALL[i % 3]).collect(),
        vocab_size: 40,
    })
}

fn tiny_model(k_layers: usize, t_layers: usize, seed: u64) -> (Ernie, VarStore) {
    let cfg = ErnieConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_attention_heads: 2,
        intermediate_size: 32,
        t_layers,
        k_layers,
        entity_dim: 8,
        entity_heads: 2,
        max_position_embeddings: 16,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: Activation::Gelu,
    };
    let vs = VarStore::new_random(seed, init_policy());
    (Ernie::load(cfg, &vs).unwrap(), vs)
}

fn train_cfg(steps: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        batch_size: 8,
        block_size: 16,
        grad_accum: 1,
        max_steps: steps,
        lr,
        schedule: Schedule::default(),
        optimizer: OptimizerConfig::default(),
        grad_clip: Some(1.0),
        eval_every: 1000,
        eval_batches: 2,
        log_every: 1000,
        checkpoint_every: 1000,
        seed: 1,
        z_loss: 0.0,
        moe_aux_weight: 0.0,
    }
}

#[test]
fn pretrain_batch_candidates_and_labels_agree() {
    let data = tiny_corpus();
    let seqs: Vec<&Sequence> = data.train.iter().take(4).collect();
    let pb = pretrain_batch(
        &seqs,
        &data.table,
        40,
        &MlmConfig::default(),
        &DeaConfig::default(),
        &mut SplitMix64::new(1),
    )
    .unwrap();
    let t = pb.batch.t;
    let (_, c, k) = pb.candidates.dims3().unwrap();
    let cand = pb.candidates.to_vec3::<f32>().unwrap();
    let table = data.table.to_vec2::<f32>().unwrap();
    let cm = pb.cand_mask.to_vec2::<f32>().unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let distinct: std::collections::BTreeSet<i64> =
            s.ents.iter().copied().filter(|&e| e >= 0).collect();
        assert_eq!(cm[i].iter().sum::<f32>() as usize, distinct.len());
        for p in 0..t {
            let l = pb.dea_labels[i * t + p];
            let orig = s.ents.get(p).copied().unwrap_or(-1);
            if orig < 0 {
                assert_eq!(l, IGNORE_INDEX);
            } else {
                // The labelled candidate's vector is the original entity's.
                assert!((l as usize) < c);
                assert_eq!(cand[i][l as usize][..k], table[orig as usize][..]);
            }
        }
    }
    assert!(pb.mlm_labels.iter().any(|&l| l >= 0));
}

#[test]
fn pretraining_gradient_reaches_every_parameter_and_the_loss_falls() {
    let data = tiny_corpus();
    let (model, vs) = tiny_model(1, 1, 4);
    let mut obj = PretrainObjective::new(model, data, 8, 2, DeaConfig::default()).unwrap();
    let l = obj.train_batch(&mut SplitMix64::new(2), 0).unwrap();
    assert!(l.extra.iter().any(|(k, _)| k == "dea_loss"));
    let grads = l.total.backward().unwrap();
    for (name, v, _) in vs.vars() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        // A key bias adds the same q·b to every score of a query: softmax cancels it, so its
        // gradient is zero in exact arithmetic (it is still computed).
        if !name.ends_with("key.bias") {
            assert!(
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0,
                "{name}"
            );
        }
    }
    let before = obj.evaluate().unwrap();
    assert_eq!(before[0].0, "eval_loss");
    let mut engine = Engine::new(Engine::params_of(&vs), train_cfg(60, 3e-3)).unwrap();
    for _ in 0..60 {
        engine.train_step(&mut obj).unwrap();
    }
    let after = obj.evaluate().unwrap();
    let get = |m: &[(String, f64)], k: &str| m.iter().find(|x| x.0 == k).unwrap().1;
    assert!(
        get(&after, "eval_loss") < get(&before, "eval_loss") - 0.3,
        "{before:?} -> {after:?}"
    );
    assert!(
        get(&after, "eval_dea_loss") < get(&before, "eval_dea_loss"),
        "{before:?} -> {after:?}"
    );
}

#[test]
fn typing_uses_the_entities_ernie_sees_and_bert_does_not() {
    // The kind is a function of the entity and the mention's word is the same for every kind:
    // ERNIE can learn it from the entity vector; BERT only from chance.
    let data = tiny_corpus();
    let run = |k_layers: usize, t_layers: usize| -> f64 {
        let (model, vs) = tiny_model(k_layers, t_layers, 5);
        let classifier = Linear::new(
            canon_nn::Weight::Dense(
                canon_models::source::WeightSource::tensor(&vs, "classifier.weight", &[3, 16])
                    .unwrap(),
            ),
            Some(canon_models::source::WeightSource::tensor(&vs, "classifier.bias", &[3]).unwrap()),
        );
        let mut obj = TypingObjective {
            model,
            classifier,
            train: typing_examples(&data.train, &data.kinds),
            test: typing_examples(&data.val, &data.kinds),
            data: data.clone(),
            batch_size: 8,
        };
        let mut engine = Engine::new(Engine::params_of(&vs), train_cfg(80, 1e-2)).unwrap();
        for _ in 0..80 {
            engine.train_step(&mut obj).unwrap();
        }
        let m = obj.evaluate().unwrap();
        assert_eq!(m[0].0, "eval_loss");
        m.iter().find(|x| x.0 == "eval_accuracy").unwrap().1
    };
    let ernie = run(1, 1);
    let bert = run(0, 2);
    assert!(ernie > 0.9, "ERNIE typing accuracy {ernie}");
    assert!(bert < 0.7, "BERT typing accuracy {bert}");
}

#[test]
fn vocabulary_round_trips_and_rejects_bad_files() {
    let v = Vocab::build(["b a a c c c", "a"].into_iter(), 8).unwrap();
    assert_eq!(&v.words[5..], ["a", "c", "b"]);
    assert_eq!(v.id("zzz"), UNK);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.json");
    v.save(&p).unwrap();
    let w = Vocab::load(&p).unwrap();
    assert_eq!(w.words, v.words);
    assert_eq!(w.id("c"), 6);
    std::fs::write(&p, "[\"x\"]").unwrap();
    assert!(
        Vocab::load(&p)
            .unwrap_err()
            .to_string()
            .contains("vocab.json")
    );
    assert!(Vocab::build(["a"].into_iter(), 5).is_err());
}
