use super::*;
use canon_models::gpt::{BlockStyle, FfnKind, NormKind, PosKind};

const CLF2: TaskKind = TaskKind::Classification { classes: 2 };

fn tiny() -> GptConfig {
    GptConfig {
        vocab_size: 12,
        n_layer: 1,
        n_head: 2,
        n_kv_head: None,
        d_model: 16,
        d_ff: 32,
        max_seq_len: 16,
        block: BlockStyle::PostLn,
        norm: NormKind::LayerNorm,
        norm_bias: true,
        positions: PosKind::Learned,
        ffn: FfnKind::Mlp,
        activation: canon_nn::Activation::Gelu,
        bias: true,
        tie_embeddings: false,
        final_norm: false,
        scaled_residual_init: false,
        init_std: 0.02,
        embed_init_std: None,
        scale_logits: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        moe: None,
        moe_every: 2,
        dropout: 0.0,
    }
}

/// Class 0: sequences of tokens 1–5; class 1: tokens 6–10 (a task the head can only solve by
/// reading the text through the body).
fn synthetic(n: usize, seed: u64) -> Vec<TaskExample> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let label = (i % 2) as u32;
            let len = 3 + r.below(6);
            let tokens = (0..len)
                .map(|_| 1 + 5 * label + r.below(5) as u32)
                .collect();
            TaskExample::text(tokens, label)
        })
        .collect()
}

#[test]
fn finetuning_runs_end_to_end_and_drives_the_loss_down() {
    let cfg = FinetuneConfig {
        lr: 5e-3,
        steps: 120,
        warmup: 10,
        batch_size: 8,
        eval_every: 60,
        eval_max: 16,
        ..FinetuneConfig::default()
    };
    let mut ft = Finetuner::new_random(&tiny(), CLF2, cfg).unwrap();
    assert_eq!(ft.tokens, TaskTokens::after_vocab(12));
    let (train, test) = (synthetic(64, 1), synthetic(32, 2));
    let mut reports = Vec::new();
    let acc = ft
        .run(&train, &test, &mut |r| {
            reports.push(r.clone());
            Ok(())
        })
        .unwrap();
    assert_eq!(reports.len(), 120);
    let first: f64 = reports[..5].iter().map(|r| r.clf_loss).sum::<f64>() / 5.0;
    let last: f64 = reports[115..].iter().map(|r| r.clf_loss).sum::<f64>() / 5.0;
    assert!(last < 0.5 * first, "clf loss {first} → {last}");
    let lm_first = reports[0].lm_loss;
    assert!(reports[119].lm_loss < lm_first, "lm loss did not fall");
    for r in &reports {
        let want = r.clf_loss + 0.5 * r.lm_loss;
        assert!((r.loss - want).abs() < 1e-4 * want.max(1.0));
    }
    assert!(reports[59].eval_accuracy.is_some() && reports[119].eval_accuracy == Some(acc));
    assert!(acc > 0.9, "held-out accuracy {acc}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let mut ft = Finetuner::new_random(&tiny(), CLF2, FinetuneConfig::default()).unwrap();
    let ok = synthetic(8, 3);
    let e = ft.run(&[], &ok, &mut |_| Ok(())).err().unwrap();
    assert!(e.to_string().contains("training split is empty"), "{e}");
    let e = ft.run(&ok, &[], &mut |_| Ok(())).err().unwrap();
    assert!(e.to_string().contains("held-out split is empty"), "{e}");
    let one_class: Vec<TaskExample> = ok.iter().filter(|e| e.label == 0).cloned().collect();
    let e = ft.run(&one_class, &ok, &mut |_| Ok(())).err().unwrap();
    assert!(e.to_string().contains("no example of class 1"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = Finetuner::from_run(&dir.path().join("nope"), CLF2, FinetuneConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a pretrained run folder"), "{e}");
    let e = module_group_task(dir.path(), &[vec!["a".into()], vec!["b".into()]], 64)
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn pretrained_weights_are_loaded_and_the_token_table_grows() {
    use crate::checkpoint::{self, TrainState};
    let base = tiny();
    let dir = tempfile::tempdir().unwrap();
    let store = VarStore::new_random(9, base.init_policy());
    Gpt::load(base.clone(), &store).unwrap();
    let params: Vec<Param> = store
        .vars()
        .into_iter()
        .map(|(name, var, decay)| Param { name, var, decay })
        .collect();
    let opt = Optimizer::new(OptimizerConfig::default(), &params);
    checkpoint::save(
        &dir.path().join("checkpoint.safetensors"),
        &params,
        &opt,
        TrainState {
            step: 1,
            rng_state: 0,
        },
        &[],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("model.json"),
        serde_json::to_string(&ModelConfig::Gpt(base)).unwrap(),
    )
    .unwrap();
    let ft = Finetuner::from_run(dir.path(), CLF2, FinetuneConfig::default()).unwrap();
    let wte_pre = store.get("wte.weight").unwrap();
    let wte = ft
        .params
        .iter()
        .find(|p| p.name == "wte.weight")
        .unwrap()
        .var
        .clone();
    assert_eq!(wte.dims(), &[15, 16]);
    let a: Vec<f32> = wte
        .narrow(0, 0, 12)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = wte_pre.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a, b);
    let c0: Vec<f32> = ft
        .params
        .iter()
        .find(|p| p.name == "h.0.mlp.c_fc.weight")
        .unwrap()
        .var
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let c1: Vec<f32> = store
        .get("h.0.mlp.c_fc.weight")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(c0, c1);
}

#[test]
fn snippets_split_at_lines_and_files_are_held_out_whole() {
    let s = snippets("aaaa\nbb\n\n\n\n\n\n\ncccccc\nd\n", 6);
    assert_eq!(s, vec!["aaaa\nbb\n", "cccccc\n"]);
    let dir = tempfile::tempdir().unwrap();
    for (g, n) in [("ga", 4), ("gb", 2)] {
        std::fs::create_dir_all(dir.path().join(g)).unwrap();
        for i in 0..n {
            std::fs::write(
                dir.path().join(g).join(format!("m{i}.py")),
                format!("x = {i}\ny = {i}\n").repeat(10),
            )
            .unwrap();
        }
    }
    let (train, test) =
        module_group_task(dir.path(), &[vec!["ga".into()], vec!["gb".into()]], 32).unwrap();
    assert!(test.iter().any(|s| s.label == 0) && test.iter().any(|s| s.label == 1));
    for t in &test {
        assert!(train.iter().all(|s| s.file != t.file));
        assert!(t.file.ends_with("m1.py"));
    }
    assert_eq!(
        train.iter().filter(|s| s.label == 0).count(),
        3 * test.iter().filter(|s| s.label == 0).count()
    );
}

/// Similarity: label 1 when both texts come from the same half of the vocabulary.
fn synthetic_pairs(n: usize, seed: u64) -> Vec<TaskExample> {
    let mut r = SplitMix64::new(seed);
    let text = |half: u32, r: &mut SplitMix64| -> Vec<u32> {
        (0..2 + r.below(3))
            .map(|_| 1 + 5 * half + r.below(5) as u32)
            .collect()
    };
    (0..n)
        .map(|i| {
            let a_half = r.below(2) as u32;
            let same = (i % 2) as u32;
            let b_half = if same == 1 { a_half } else { 1 - a_half };
            let a = text(a_half, &mut r);
            let b = text(b_half, &mut r);
            TaskExample {
                parts: vec![a, b],
                label: same,
            }
        })
        .collect()
}

/// Multiple choice: the right answer is a token of 1–5 (the context's first token), wrong answers
/// are tokens of 6–10.
fn synthetic_choices(n: usize, seed: u64) -> Vec<TaskExample> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let key = 1 + r.below(5) as u32;
            let right = r.below(3);
            let mut parts = vec![vec![key, 1 + r.below(10) as u32]];
            for c in 0..3 {
                let t = if c == right {
                    key
                } else {
                    6 + r.below(5) as u32
                };
                parts.push(vec![t]);
            }
            TaskExample {
                parts,
                label: right as u32,
            }
        })
        .collect()
}

fn quick() -> FinetuneConfig {
    FinetuneConfig {
        lr: 5e-3,
        steps: 150,
        warmup: 10,
        batch_size: 8,
        eval_every: 0,
        eval_max: 64,
        ..FinetuneConfig::default()
    }
}

#[test]
fn similarity_and_multiple_choice_heads_learn_their_tasks() {
    let mut ft =
        Finetuner::new_random(&tiny(), TaskKind::Similarity { classes: 2 }, quick()).unwrap();
    assert_eq!(ft.head.out_features(), 2);
    let acc = ft
        .run(
            &synthetic_pairs(256, 1),
            &synthetic_pairs(64, 2),
            &mut |_| Ok(()),
        )
        .unwrap();
    // Chance is 0.5; the exclusive-or of two halves is harder for a one-layer model than the
    // classification task.
    assert!(acc > 0.7, "similarity accuracy {acc}");
    let kind = TaskKind::MultipleChoice { choices: 3 };
    let mut ft = Finetuner::new_random(&tiny(), kind, quick()).unwrap();
    assert_eq!(ft.head.out_features(), 1);
    let mut first = None;
    let mut last = 0.0;
    let acc = ft
        .run(
            &synthetic_choices(256, 3),
            &synthetic_choices(64, 4),
            &mut |r| {
                first.get_or_insert(r.clf_loss);
                last = r.clf_loss;
                Ok(())
            },
        )
        .unwrap();
    assert!(acc > 0.6, "multiple-choice accuracy {acc} (chance 1/3)");
    assert!(last < first.unwrap() * 0.7, "{first:?} → {last}");
    // Wrong shapes are refused with the example's index.
    let mut bad = synthetic_choices(4, 5);
    bad[2].parts.pop();
    let e = ft.predict(&bad).err().unwrap();
    assert!(e.to_string().contains("example 2"), "{e}");
}

#[test]
fn fine_tuned_weights_save_and_load_back() {
    let mut ft = Finetuner::new_random(&tiny(), CLF2, quick()).unwrap();
    let test = synthetic(32, 8);
    ft.run(&synthetic(64, 7), &test, &mut |_| Ok(())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    ft.save(dir.path()).unwrap();
    let back = Finetuner::load(dir.path(), quick()).unwrap();
    assert_eq!(back.kind, ft.kind);
    assert_eq!(back.step, ft.step);
    assert_eq!(back.predict(&test).unwrap(), ft.predict(&test).unwrap());
    let e = Finetuner::load(&dir.path().join("none"), quick())
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a fine-tuned folder"), "{e}");
}

#[test]
fn similarity_pairs_and_ending_choices_are_built_from_other_files() {
    let snip = |text: &str, label: u32, file: &str| Snippet {
        text: text.into(),
        label,
        file: file.into(),
    };
    let snips: Vec<Snippet> = (0..12)
        .map(|i| {
            snip(
                &format!("a{i}\nb{i}\nc{i}\nd{i}\n"),
                (i % 2) as u32,
                &format!("f{}", i / 2),
            )
        })
        .collect();
    let pairs = similarity_pairs(&snips, 1).unwrap();
    assert_eq!(pairs.len(), 12);
    for p in &pairs {
        let a = snips.iter().find(|s| s.text == p.parts[0]).unwrap();
        let b = snips.iter().find(|s| s.text == p.parts[1]).unwrap();
        assert_ne!(a.file, b.file);
        assert_eq!(p.label, (a.label == b.label) as u32);
    }
    let ones = pairs.iter().filter(|p| p.label == 1).count();
    assert!(ones > 0 && ones < 12);
    let ch = ending_choices(&snips, 3, 2).unwrap();
    assert_eq!(ch.len(), 12);
    for (e, s) in ch.iter().zip(&snips) {
        assert_eq!(e.parts.len(), 4);
        // Context + right ending is the snippet.
        assert_eq!(
            format!("{}{}", e.parts[0], e.parts[1 + e.label as usize]),
            s.text
        );
    }
    assert!(ending_choices(&snips, 1, 2).is_err());
    assert!(ending_choices(&snips[..1], 2, 2).is_err());
}
