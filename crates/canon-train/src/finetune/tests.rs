use super::*;
use canon_models::gpt::{BlockStyle, FfnKind, NormKind, PosKind};

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
fn synthetic(n: usize, seed: u64) -> Vec<ClfExample> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let label = (i % 2) as u32;
            let len = 3 + r.below(6);
            let tokens = (0..len)
                .map(|_| 1 + 5 * label + r.below(5) as u32)
                .collect();
            ClfExample { tokens, label }
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
    let mut ft = Finetuner::new_random(&tiny(), 2, cfg).unwrap();
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
    let mut ft = Finetuner::new_random(&tiny(), 2, FinetuneConfig::default()).unwrap();
    let ok = synthetic(8, 3);
    let e = ft.run(&[], &ok, &mut |_| Ok(())).err().unwrap();
    assert!(e.to_string().contains("training split is empty"), "{e}");
    let e = ft.run(&ok, &[], &mut |_| Ok(())).err().unwrap();
    assert!(e.to_string().contains("held-out split is empty"), "{e}");
    let one_class: Vec<ClfExample> = ok.iter().filter(|e| e.label == 0).cloned().collect();
    let e = ft.run(&one_class, &ok, &mut |_| Ok(())).err().unwrap();
    assert!(e.to_string().contains("no example of class 1"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = Finetuner::from_run(&dir.path().join("nope"), 2, FinetuneConfig::default())
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
    let ft = Finetuner::from_run(dir.path(), 2, FinetuneConfig::default()).unwrap();
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
