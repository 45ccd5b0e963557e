use super::tasks::*;
use super::*;
use crate::engine::Engine;
use crate::{OptimizerConfig, Schedule, TrainConfig};
use canon_models::VarStore;
use canon_models::t5::{T5Config, T5Ffn};

fn tiny_cfg(vocab: usize, pad: u32, eos: u32) -> T5Config {
    T5Config {
        vocab_size: vocab,
        d_model: 32,
        d_kv: 8,
        n_heads: 4,
        d_ff: 64,
        n_layers: 2,
        n_decoder_layers: Some(2),
        num_buckets: 32,
        max_distance: 128,
        ffn: T5Ffn::Relu,
        tie_embeddings: true,
        norm_eps: 1e-6,
        max_seq_len: 64,
        pad_id: pad,
        eos_id: eos,
        decoder_start_id: None,
        init_factor: 1.0,
    }
}

fn train_cfg(steps: u64, lr: f64, batch: usize) -> TrainConfig {
    TrainConfig {
        batch_size: batch,
        block_size: 32,
        grad_accum: 1,
        max_steps: steps,
        lr,
        schedule: Schedule::default(),
        optimizer: OptimizerConfig::default(),
        grad_clip: Some(1.0),
        eval_every: 1000,
        eval_batches: 2,
        log_every: 10,
        checkpoint_every: 1000,
        seed: 1,
        z_loss: 0.0,
        moe_aux_weight: 0.0,
    }
}

#[test]
fn collate_shifts_targets_right_and_ignores_padding() {
    let b = collate(
        &[(vec![5, 6, 7, 1], vec![8, 9, 1]), (vec![5, 1], vec![1])],
        0,
        0,
    )
    .unwrap();
    assert_eq!(
        b.src.to_vec2::<u32>().unwrap(),
        vec![vec![5, 6, 7, 1], vec![5, 1, 0, 0]]
    );
    assert_eq!(
        b.src_mask.to_vec2::<u32>().unwrap(),
        vec![vec![1, 1, 1, 1], vec![1, 1, 0, 0]]
    );
    assert_eq!(
        b.tgt_in.to_vec2::<u32>().unwrap(),
        vec![vec![0, 8, 9], vec![0, 0, 0]]
    );
    assert_eq!(b.labels, vec![8, 9, 1, 1, IGNORE_INDEX, IGNORE_INDEX]);
    assert_eq!(b.tokens, 4 + 3 + 2 + 1);
    assert!(collate(&[], 0, 0).is_err());
    assert!(collate(&[(vec![5], vec![])], 0, 0).is_err());
}

#[test]
fn tokenizer_puts_sentinels_at_the_top_counting_down() {
    let docs: Vec<String> = (0..30)
        .map(|i| format!("def function_{i}(x):\n    return x + {i}\n"))
        .collect();
    let tok = t5_tokenizer(&docs, 300, 10).unwrap();
    let v = tok.get_vocab_size(true);
    let ids = SpecialIds::of(&tok).unwrap();
    assert_eq!(ids.first_sentinel as usize, v - 1);
    assert_eq!(ids.n_sentinels, 10);
    for k in 0..10u32 {
        assert_eq!(
            tok.token_to_id(&format!("<extra_id_{k}>")),
            Some(v as u32 - 1 - k)
        );
    }
    assert!(ids.pad < ids.first_sentinel - 9 && ids.eos < ids.first_sentinel - 9);
    // A sentinel in text is one token.
    let enc = tok.encode("a <extra_id_3> b", false).unwrap();
    assert!(enc.get_ids().contains(&(v as u32 - 4)));
    assert!(t5_tokenizer(&docs, 300, 0).is_err());
}

#[test]
fn mixing_is_examples_proportional_with_a_limit() {
    let m = Mixture::new(&[100, 300, 600], 0).unwrap();
    let r = m.rates();
    assert!((r[0] - 0.1).abs() < 1e-12 && (r[1] - 0.3).abs() < 1e-12 && (r[2] - 0.6).abs() < 1e-12);
    // K = 200: min(e, K) = 100, 200, 200.
    let m = Mixture::new(&[100, 300, 600], 200).unwrap();
    let r = m.rates();
    assert!(
        (r[0] - 0.2).abs() < 1e-12 && (r[2] - 0.4).abs() < 1e-12,
        "{r:?}"
    );
    let mut rng = SplitMix64::new(3);
    let mut n = [0usize; 3];
    for _ in 0..20_000 {
        n[m.pick(&mut rng)] += 1;
    }
    assert!((n[0] as f64 / 20_000.0 - 0.2).abs() < 0.02, "{n:?}");
    assert!(Mixture::new(&[3, 0], 0).is_err());
}

#[test]
fn docstring_functions_and_jsonl_records() {
    let src = "def get_header(self, name):\n    \"\"\"Return the value of the named header. More.\"\"\"\n\n\
               def _helper(\n        a,\n        b):  # comment\n    '''\n    Compute the thing for a and b.\n    '''\n\n\
               def __init__(self):\n    \"\"\"Initialise the object here.\"\"\"\n\
               def nodoc(x):\n    return x\n\
               def short():\n    \"\"\"Too short.\"\"\"\n";
    let f = docstring_functions(src);
    let got: Vec<(&str, &str)> = f.iter().map(|(n, s, _)| (n.as_str(), s.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("get_header", "Return the value of the named header."),
            ("_helper", "Compute the thing for a and b."),
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.jsonl");
    std::fs::write(
        &p,
        "{\"input\": \"a\", \"target\": \"b\", \"prefix\": \"p: \"}\n\n{\"input\": \"c\"}\n",
    )
    .unwrap();
    let e = jsonl_records(&p, "t").unwrap_err().to_string();
    assert!(e.contains("r.jsonl:3") && e.contains("target"), "{e}");
    std::fs::write(&p, "{\"input\": \"a\", \"target\": \"b\"}\nnot json\n").unwrap();
    let e = jsonl_records(&p, "t").unwrap_err().to_string();
    assert!(e.contains("r.jsonl:2"), "{e}");
    std::fs::write(
        &p,
        "{\"input\": \"a\", \"target\": \"b\", \"prefix\": \"p: \"}\n",
    )
    .unwrap();
    let r = jsonl_records(&p, "t").unwrap();
    assert_eq!((r[0].prefix.as_str(), r[0].task.as_str()), ("p: ", "t"));
    std::fs::write(&p, "\n").unwrap();
    assert!(jsonl_records(&p, "t").is_err());
}

/// Greedy decoding with the decoder cache (tests only; generation lives in `canon-infer`).
fn greedy(model: &T5, src: &[u32], max: usize) -> Vec<u32> {
    let dev = Device::Cpu;
    let s = Tensor::new(src, &dev).unwrap().unsqueeze(0).unwrap();
    let m = Tensor::ones(s.dims(), DType::U32, &dev).unwrap();
    let enc = model.encode(&s, &m).unwrap();
    let mut cache = model.new_cache();
    let mut next = model.decoder_start_id();
    let mut out = Vec::new();
    for _ in 0..max {
        let t = Tensor::new(&[[next]], &dev).unwrap();
        let logits = model.decode(&enc, &m, &t, &mut cache).unwrap();
        next = logits
            .flatten_all()
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        out.push(next);
        if next == model.eos_id() {
            break;
        }
    }
    out
}

#[test]
fn span_corruption_pretraining_loss_falls_through_the_engine() {
    // A synthetic stream with structure (repeating counting runs), vocabulary 40 with the 8
    // sentinels at the top (32..=39), pad 0, eos 1.
    let stream: Vec<u32> = (0..4000u32)
        .map(|i| 2 + (i % 7) * 3 + (i / 7) % 3)
        .collect();
    let data = TokenData {
        train: stream[..3500].to_vec(),
        val: stream[3500..].to_vec(),
        vocab_size: 40,
    };
    let ids = SpecialIds {
        pad: 0,
        eos: 1,
        first_sentinel: 39,
        n_sentinels: 8,
    };
    let span = SpanConfig::default();
    let raw_len = span.raw_length_for(24).unwrap();
    let cfg = tiny_cfg(40, 0, 1);
    let store = VarStore::new_random(2, cfg.init_policy());
    let model = T5::load(cfg, &store).unwrap();
    let source = Source::Spans {
        data,
        raw_len,
        cfg: span,
    };
    let mut obj = T5Objective::new(model, source, ids, 8, 2).unwrap();
    let before = obj.evaluate().unwrap();
    assert_eq!(before[0].0, "eval_loss");
    // The same held-out batches every time.
    assert_eq!(obj.evaluate().unwrap()[0].1, before[0].1);
    let mut engine = Engine::new(Engine::params_of(&store), train_cfg(40, 3e-3, 8)).unwrap();
    let first = engine.train_step(&mut obj).unwrap();
    assert!(first.tokens_per_s > 0.0);
    for _ in 1..40 {
        engine.train_step(&mut obj).unwrap();
    }
    let after = obj.evaluate().unwrap();
    assert!(
        after[0].1 < 0.7 * before[0].1,
        "held-out loss {} -> {}",
        before[0].1,
        after[0].1
    );
    assert!(after[1].1 > before[1].1, "token accuracy must rise");
}

#[test]
fn multitask_text_to_text_learns_two_prefixed_tasks() {
    // Two toy tasks over single-character tokens 2..=21, told apart only by their prefix token
    // (22 = "reverse:", 23 = "first:"): reverse the sequence, or output its first token.
    let mut rng = SplitMix64::new(9);
    let mut make = |prefix: u32, n: usize| -> Vec<Example> {
        (0..n)
            .map(|_| {
                let len = 2 + rng.below(3);
                let xs: Vec<u32> = (0..len).map(|_| 2 + rng.below(20) as u32).collect();
                let tgt: Vec<u32> = if prefix == 22 {
                    xs.iter().rev().copied().chain([1]).collect()
                } else {
                    vec![xs[0], 1]
                };
                let src: Vec<u32> = [prefix].into_iter().chain(xs).chain([1]).collect();
                Example { src, tgt }
            })
            .collect()
    };
    let (rev, first) = (make(22, 400), make(23, 400));
    let train = vec![rev[..360].to_vec(), first[..360].to_vec()];
    let test = vec![rev[360..].to_vec(), first[360..].to_vec()];
    let ids = SpecialIds {
        pad: 0,
        eos: 1,
        first_sentinel: 31,
        n_sentinels: 4,
    };
    let cfg = tiny_cfg(32, 0, 1);
    let store = VarStore::new_random(4, cfg.init_policy());
    let model = T5::load(cfg, &store).unwrap();
    let source = Source::Tasks {
        train,
        test: test.clone(),
        names: vec!["reverse".into(), "first".into()],
        mixture: Mixture::new(&[360, 360], 0).unwrap(),
    };
    let mut obj = T5Objective::new(model, source, ids, 16, 3).unwrap();
    let mut engine = Engine::new(Engine::params_of(&store), train_cfg(150, 3e-3, 16)).unwrap();
    for _ in 0..150 {
        engine.train_step(&mut obj).unwrap();
    }
    let ev = obj.evaluate().unwrap();
    let get = |k: &str| ev.iter().find(|(n, _)| n == k).unwrap().1;
    // One run gave 0.84 (first) and 0.49 (reverse); chance is about 1/30 per token.
    assert!(get("eval_accuracy_first") > 0.75, "{ev:?}");
    assert!(get("eval_accuracy_reverse") > 0.4, "{ev:?}");
    // Exact match by greedy decoding on held-out "first:" examples: the prefix selects the task.
    let hits = test[1]
        .iter()
        .take(20)
        .filter(|e| greedy(&obj.model, &e.src, 8) == e.tgt)
        .count();
    assert!(hits >= 8, "first-token exact match {hits}/20");
}

#[test]
fn translation_task_uses_t5s_prefix_and_the_transformers_split() {
    use crate::translation::{TranslationDataConfig, split_of};
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("de/LC_MESSAGES");
    std::fs::create_dir_all(&dir).unwrap();
    let header = b"Content-Type: text/plain; charset=UTF-8\n".to_vec();
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = vec![(Vec::new(), header)];
    for i in 0..400 {
        entries.push((
            format!("Cannot open file number {i}").into_bytes(),
            format!("Datei Nummer {i} kann nicht geöffnet werden").into_bytes(),
        ));
    }
    let refs: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    std::fs::write(dir.join("app.mo"), canon_testkit::write_mo(&refs, true)).unwrap();
    // A name list the task leaves out, as configs/transformer-mt.toml does.
    std::fs::write(dir.join("iso_639.mo"), b"not a catalog").unwrap();
    let cfg = TranslationDataConfig {
        locale_dir: root.path().display().to_string(),
        language: "de".into(),
        exclude: vec!["iso_".into()],
        vocab_size: 8000,
        valid_fraction: 0.05,
        test_fraction: 0.05,
    };
    let (train, test) = translation_task(&cfg).unwrap();
    assert!(!train.is_empty() && !test.is_empty());
    assert!(
        train.len() + test.len() < 400,
        "the validation split is left out"
    );
    for r in train.iter().chain(&test) {
        assert_eq!(r.prefix, "translate English to German: ");
        assert_eq!(r.task, "translate_en_de");
        let n = r.input.rsplit(' ').next().unwrap();
        assert_eq!(
            r.target,
            format!("Datei Nummer {n} kann nicht geöffnet werden")
        );
    }
    for r in &test {
        assert_eq!(
            split_of(&r.input, 0.05, 0.05),
            crate::translation::Split::Test,
            "{}",
            r.input
        );
    }
    // A catalog that cannot be parsed is reported with its file.
    std::fs::write(dir.join("broken.mo"), b"\x00\x01").unwrap();
    let err = translation_task(&cfg).unwrap_err().to_string();
    assert!(err.contains("broken.mo"), "{err}");
}

#[test]
fn held_out_subsets_spread_over_the_whole_split() {
    // A split grouped by class: 30 of class 0, then 30 of class 1.
    let items: Vec<u32> = (0..60).map(|i| u32::from(i >= 30)).collect();
    let picked: Vec<u32> = spread(&items, 8).copied().collect();
    assert_eq!(picked.len(), 8);
    assert!(picked.contains(&0) && picked.contains(&1), "{picked:?}");
    assert_eq!(spread(&items, 100).count(), 60);
    assert_eq!(spread(&items[..0], 5).count(), 0);
}
