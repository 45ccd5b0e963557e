use super::*;
use crate::bert_data::train_wordpiece;
use crate::data::Corpus;
use crate::engine::step_on_loss;
use crate::optim::{Optimizer, OptimizerConfig};
use canon_models::VarStore;
use canon_models::bert_heads::{BertTrainConfig, bert_init_policy};
use canon_nn::Activation;

/// Documents of a tiny regular language: each sentence is "<subject> <verb> <object>." with the
/// verb determined by the subject, so masked verbs are predictable from context.
pub(crate) fn regular_corpus() -> Corpus {
    let subj = ["cats", "dogs", "birds", "fish"];
    let verb = ["chase", "bite", "watch", "follow"];
    let obj = ["mice", "sticks", "worms", "boats", "leaves"];
    let mut rng = SplitMix64::new(2);
    let docs = (0..24)
        .map(|_| {
            (0..8)
                .map(|_| {
                    let s = rng.below(4);
                    format!("{} {} {}.", subj[s], verb[s], obj[rng.below(5)])
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    Corpus {
        name: "regular".into(),
        docs,
    }
}

pub(crate) fn tiny_cfg(vocab: usize) -> canon_models::BertConfig {
    BertTrainConfig {
        vocab_size: vocab,
        n_layer: 1,
        n_head: 2,
        d_model: 32,
        d_ff: Some(64),
        max_seq_len: 32,
        type_vocab_size: 2,
        activation: Activation::Gelu,
        layer_norm_eps: 1e-12,
        init_std: 0.02,
    }
    .to_bert()
}

#[test]
fn mlm_and_nsp_losses_fall_and_eval_reports_every_metric() {
    let c = regular_corpus();
    let tok = train_wordpiece(&c.docs, 100).unwrap();
    let sp = Specials::of(&tok).unwrap();
    let data = SentenceData::encode(&tok, &c, 0.2).unwrap();
    let store = VarStore::new_random(1, bert_init_policy(0.02));
    let model = BertPretraining::load(tiny_cfg(tok.get_vocab_size(true)), &store, true).unwrap();
    let pairs = PairConfig {
        max_len: 32,
        short_seq_prob: 0.1,
        pairs: true,
    };
    let mut obj =
        BertPretrain::new(model, data, sp, pairs, MlmConfig::default(), 16, 2, 9).unwrap();
    let before = obj.eval_metrics().unwrap();
    let names: Vec<&str> = before.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "eval_loss",
            "eval_mlm_loss",
            "eval_mlm_accuracy",
            "eval_nsp_loss",
            "eval_nsp_accuracy"
        ]
    );
    // At initialisation the MLM loss is about log(vocab) and NSP about log 2.
    let v = obj.vocab as f64;
    assert!((before[1].1 - v.ln()).abs() < 0.5, "{before:?}");
    assert!((before[3].1 - 2f64.ln()).abs() < 0.2, "{before:?}");
    let params = params_of(&store);
    let mut opt = Optimizer::new(OptimizerConfig::default(), &params);
    let mut rng = SplitMix64::new(4);
    for _ in 0..60 {
        let mb = obj.micro_batch(&mut rng).unwrap();
        assert!(mb.tokens > 0 && mb.extra.len() == 2);
        step_on_loss(&mb.total, &params, &mut opt, 3e-3, Some(1.0)).unwrap();
    }
    let after = obj.eval_metrics().unwrap();
    assert!(after[1].1 < before[1].1 - 1.0, "{before:?} -> {after:?}");
    assert!(after[2].1 > 0.3, "{after:?}");
}

/// Tier 3 (minutes; `cargo test -p canon-train --release -- --ignored tier3_bert`): the shipped
/// `configs/bert.toml` shape (4 layers, width 256, WordPiece 8000) pre-trained on the standard
/// library's docstrings through the engine, then DistilBERT (2 layers) from it, then fine-tuning on
/// the module-group task from it and from scratch. Prints every figure; asserts the losses fall.
#[test]
#[ignore]
fn tier3_bert_pretrain_distill_finetune() {
    use crate::TrainConfig;
    use crate::bert_data::{load_corpus, train_wordpiece};
    use crate::bert_finetune::{BertFinetuneConfig, BertFinetuner};
    use crate::distill::{
        Distill, DistillWeights, Frozen, init_student, layer_map, student_config,
    };
    use crate::engine::{Engine, Objective};
    use crate::finetune::{TaskExample, majority_baseline, module_group_task};
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let stdlib = std::path::PathBuf::from(
        String::from_utf8(
            std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
                ])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    );
    let corpus = load_corpus("python-docstrings", || Ok(stdlib.clone()), 2_000_000).unwrap();
    let tok = train_wordpiece(&corpus.docs, 8000).unwrap();
    let sp = Specials::of(&tok).unwrap();
    let data = SentenceData::encode(&tok, &corpus, 0.05).unwrap();
    eprintln!(
        "corpus {} docs {:.2} MB; train {} docs {} tokens, held out {} docs {} tokens; vocab {}",
        corpus.docs.len(),
        corpus.bytes() as f64 / 1e6,
        data.train.len(),
        SentenceData::tokens(&data.train),
        data.val.len(),
        SentenceData::tokens(&data.val),
        tok.get_vocab_size(true)
    );
    let cfg = BertTrainConfig {
        vocab_size: tok.get_vocab_size(true),
        n_layer: 4,
        n_head: 4,
        d_model: 256,
        d_ff: Some(1024),
        max_seq_len: 128,
        type_vocab_size: 2,
        activation: Activation::Gelu,
        layer_norm_eps: 1e-12,
        init_std: 0.02,
    }
    .to_bert();
    let tc = toml_like;
    fn toml_like(steps: u64, lr: f64, batch: usize) -> TrainConfig {
        serde_json::from_value(serde_json::json!({
            "batch_size": batch, "block_size": 128, "max_steps": steps, "lr": lr,
            "grad_clip": 1.0, "eval_every": 1000000, "eval_batches": 8,
            "schedule": {"kind": "linear", "warmup": (steps / 10).max(1)},
            "optimizer": {"kind": "adamw", "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.01}
        }))
        .unwrap()
    }
    let store = VarStore::new_random(1337, bert_init_policy(0.02));
    let model = BertPretraining::load(cfg.clone(), &store, true).unwrap();
    let pairs = PairConfig {
        max_len: 128,
        short_seq_prob: 0.1,
        pairs: true,
    };
    let mut obj = BertPretrain::new(
        model,
        data.clone(),
        sp,
        pairs,
        MlmConfig::default(),
        16,
        8,
        7,
    )
    .unwrap();
    let before = obj.evaluate().unwrap();
    eprintln!("BERT before: {before:?}");
    let steps = env("BERT_STEPS", 60);
    let mut eng = Engine::new(Engine::params_of(&store), tc(steps, 5e-4, 16)).unwrap();
    eprintln!("BERT parameters: {}", eng.num_params());
    let t0 = std::time::Instant::now();
    for s in 0..steps {
        let r = eng.train_step(&mut obj).unwrap();
        if s % 10 == 0 || s + 1 == steps {
            eprintln!(
                "BERT step {} loss {:.4} {:?} {:.0} tok/s",
                r.step, r.loss, r.extra, r.tokens_per_s
            );
        }
    }
    let after = obj.evaluate().unwrap();
    eprintln!(
        "BERT after {steps} steps ({:.0} s): {after:?}",
        t0.elapsed().as_secs_f64()
    );
    assert!(after[1].1 < before[1].1);

    // DistilBERT: 4 → 2 layers, teacher layers [0, 2].
    let teacher = BertPretraining::load(cfg.clone(), &Frozen(&store), false).unwrap();
    let ss = VarStore::new_random(5, bert_init_policy(0.02));
    let student = BertPretraining::load(student_config(&cfg, 2), &ss, false).unwrap();
    init_student(&store, &ss, &layer_map(4, 2).unwrap()).unwrap();
    let mut d = Distill::new(
        student,
        ss,
        teacher,
        data.clone(),
        sp,
        DistillWeights::default(),
        128,
        16,
        8,
        9,
    )
    .unwrap();
    let db = d.evaluate().unwrap();
    eprintln!("DistilBERT before: {db:?}");
    let dsteps = env("DISTIL_STEPS", 40);
    let mut de = Engine::new(Engine::params_of(&d.store), tc(dsteps, 5e-4, 16)).unwrap();
    for s in 0..dsteps {
        let r = de.train_step(&mut d).unwrap();
        if s % 10 == 0 || s + 1 == dsteps {
            eprintln!(
                "distil step {} loss {:.4} {:?} {:.0} tok/s",
                r.step, r.loss, r.extra, r.tokens_per_s
            );
        }
    }
    let da = d.evaluate().unwrap();
    eprintln!("DistilBERT after {dsteps} steps: {da:?}");

    // Fine-tuning on the module-group task: from the pretrained run and from scratch.
    let (tr, te) = module_group_task(
        &stdlib,
        &[
            vec!["email".into(), "http".into()],
            vec!["json".into(), "xml".into()],
        ],
        256,
    )
    .unwrap();
    let enc = |s: &[crate::finetune::Snippet]| -> Vec<TaskExample> {
        s.iter()
            .map(|s| TaskExample {
                parts: vec![
                    tok.encode(s.text.as_str(), false)
                        .unwrap()
                        .get_ids()
                        .to_vec(),
                ],
                label: s.label,
            })
            .collect()
    };
    let (train, test) = (enc(&tr), enc(&te));
    eprintln!(
        "task: {} train, {} held out; majority baseline {:.3}",
        train.len(),
        test.len(),
        majority_baseline(&test)
    );
    let p = crate::bert_pretrain::Pretrained {
        config: cfg.clone(),
        weights: Box::new(store),
        tokenizer: tok.clone(),
        has_mlm_head: true,
        nsp: true,
    };
    let fsteps = env("FT_STEPS", 60);
    for scratch in [false, true] {
        let fc = BertFinetuneConfig {
            lr: 2e-4,
            steps: fsteps,
            warmup: (fsteps / 10).max(1),
            batch_size: 16,
            max_len: 64,
            eval_every: 0,
            ..Default::default()
        };
        let mut ft = BertFinetuner::new(&p, 2, fc, scratch).unwrap();
        let t0 = std::time::Instant::now();
        let acc = ft.run(&train, &test, &mut |_| Ok(())).unwrap();
        eprintln!(
            "fine-tune (from scratch: {scratch}) {fsteps} steps, {:.0} s: held-out accuracy {acc:.4}",
            t0.elapsed().as_secs_f64()
        );
    }
}

/// Pre-trains a 2-layer, width-64 BERT (MLM + NSP, 1,500 steps of 32 pairs, peak lr 2e-3) on 400
/// synthetic documents from `doc` over `vocab` ids and returns its held-out metrics.
fn synthetic_pretraining(
    vocab: usize,
    doc: &dyn Fn(&mut SplitMix64) -> Vec<Vec<u32>>,
) -> Vec<(String, f64)> {
    let sp = Specials {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
        random_from: 5,
    };
    let mut rng = SplitMix64::new(8);
    let data = SentenceData {
        train: (0..400).map(|_| doc(&mut rng)).collect(),
        val: (0..40).map(|_| doc(&mut rng)).collect(),
    };
    let cfg = BertTrainConfig {
        vocab_size: vocab,
        n_layer: 2,
        n_head: 4,
        d_model: 64,
        d_ff: Some(128),
        max_seq_len: 48,
        type_vocab_size: 2,
        activation: Activation::Gelu,
        layer_norm_eps: 1e-12,
        init_std: 0.02,
    }
    .to_bert();
    let store = VarStore::new_random(3, bert_init_policy(0.02));
    let model = BertPretraining::load(cfg, &store, true).unwrap();
    let pairs = PairConfig {
        max_len: 48,
        short_seq_prob: 0.1,
        pairs: true,
    };
    let mut obj =
        BertPretrain::new(model, data, sp, pairs, MlmConfig::default(), 32, 8, 9).unwrap();
    let params = params_of(&store);
    let mut opt = Optimizer::new(OptimizerConfig::default(), &params);
    let mut rng = SplitMix64::new(4);
    let steps = 1500;
    for step in 0..steps {
        let mb = obj.micro_batch(&mut rng).unwrap();
        // Linear warmup over 100 steps, then linear decay.
        let lr =
            2e-3 * ((step + 1) as f64 / 100.0).min((steps - step) as f64 / (steps - 100) as f64);
        step_on_loss(&mb.total, &params, &mut opt, lr, Some(1.0)).unwrap();
    }
    let m = obj.eval_metrics().unwrap();
    eprintln!("{m:?}");
    m
}

fn metric(m: &[(String, f64)], k: &str) -> f64 {
    m.iter().find(|x| x.0 == k).unwrap().1
}

/// Paper 3's tier-3 checks (`cargo test -p canon-train -- --ignored synthetic_ --nocapture`), MLM:
/// each document counts up modulo 20 from a random start, cut into sentences of 4–8 tokens, so a
/// masked token follows from its neighbours: > 90 % masked-token accuracy (measured 94.9 %).
#[test]
#[ignore]
fn synthetic_mlm_reaches_90_percent() {
    let doc = |rng: &mut SplitMix64| -> Vec<Vec<u32>> {
        let mut x = rng.below(20) as u32;
        (0..8)
            .map(|_| {
                let n = 4 + rng.below(5);
                (0..n)
                    .map(|_| {
                        x = (x + 1) % 20;
                        5 + x
                    })
                    .collect()
            })
            .collect()
    };
    let m = synthetic_pretraining(25, &doc);
    assert!(metric(&m, "eval_mlm_accuracy") > 0.9, "{m:?}");
}

/// NSP: each document picks one of 24 topics (a block of 10 ids) and counts through it cyclically;
/// IsNext B continues A in A's block, NotNext B comes from another document, so (23 times in 24)
/// from another block: > 95 % NSP accuracy (measured 97.3 %).
#[test]
#[ignore]
fn synthetic_nsp_reaches_95_percent() {
    let doc = |rng: &mut SplitMix64| -> Vec<Vec<u32>> {
        let topic = rng.below(24) as u32;
        let mut x = rng.below(10) as u32;
        (0..8)
            .map(|_| {
                let n = 4 + rng.below(5);
                (0..n)
                    .map(|_| {
                        x = (x + 1) % 10;
                        5 + 10 * topic + x
                    })
                    .collect()
            })
            .collect()
    };
    let m = synthetic_pretraining(245, &doc);
    assert!(metric(&m, "eval_nsp_accuracy") > 0.95, "{m:?}");
}
