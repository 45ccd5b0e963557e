//! Tier 2: every shipped encoder and sequence-to-sequence config (papers 1, 3, 6, 7, 8) trains
//! through `train_opts::train` (what `canon train` runs) with its architecture shrunk (the rest of
//! the config as shipped), writes `metrics.jsonl` with a falling loss, and its run folder serves
//! the library runs that read it (translation and test BLEU, BERT fine-tuning, the fine-tuning
//! configs). The translation data is a synthetic gettext catalog, so the test does not depend on
//! the locales installed; the other corpora are the Python standard library's, as the configs say.
//! The command line's own checks (exit codes, files, error lines) are `canon`'s
//! `tests/train_encoders.rs`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use canon_runs::heads::FinetuneBertArgs;
use canon_runs::train_opts::{self, TrainArgs, Trained};
use canon_runs::translate_opts::{TranslateArgs, test_bleu};
use canon_runs::{Report, Result};
use canon_testkit::runs::{catalogs, config, int, s, short_run};

/// A flag nothing raises.
fn no_stop() -> Result<Arc<AtomicBool>> {
    Ok(Arc::new(AtomicBool::new(false)))
}

/// Runs `canon train --config cfg --out out` through the library, quietly on 2 threads.
fn train_run(cfg: &Path, out: &Path) -> Result<Trained> {
    let a = TrainArgs {
        config: Some(cfg.to_path_buf()),
        out: Some(out.to_path_buf()),
        resume: None,
        max_steps: None,
        stop_at: None,
        seed: None,
        bf16: false,
    };
    let report = Report {
        say: &|_| {},
        progress: &canon_assets::Quiet,
    };
    train_opts::train(&a, 2, report, &no_stop, &mut |_| {})
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Trains `cfg` into `out` and returns (first training loss, last held-out loss, the metrics).
fn train(cfg: &Path, out: &Path) -> (f64, f64, Vec<serde_json::Value>) {
    let t = train_run(cfg, out).unwrap_or_else(|e| panic!("training {}: {e}", cfg.display()));
    assert_eq!(t.outcome, canon_train::Outcome::Finished);
    let m = metrics(out);
    let first = m[0]["loss"].as_f64().unwrap();
    let eval = m.last().unwrap()["eval_loss"].as_f64().unwrap();
    (first, eval, m)
}

/// `canon translate --model run` with beam `beam` (and the other settings as the command's
/// defaults), one text.
fn translate(
    run: &Path,
    text: &str,
    prefix: Option<&str>,
    beam: usize,
    max: Option<usize>,
) -> String {
    let a = args(run, prefix, beam, max);
    let opened = a.open_run().unwrap();
    let h = opened
        .translate(&[text.to_string()], &a.decode_options().unwrap())
        .unwrap();
    h.into_iter().next().unwrap()
}

fn args(run: &Path, prefix: Option<&str>, beam: usize, max_tokens: Option<usize>) -> TranslateArgs {
    TranslateArgs {
        model: run.to_path_buf(),
        text: None,
        prefix: prefix.map(str::to_string),
        beam,
        length_penalty: 0.6,
        max_tokens,
        test_bleu: false,
        limit: None,
    }
}

#[test]
fn transformer_mt_trains_translates_and_scores_bleu() {
    let tmp = tempfile::tempdir().unwrap();
    let locale = catalogs(tmp.path());
    let mut p = short_run(40);
    p.extend([
        ("model.n_encoder_layers", int(1)),
        ("model.n_decoder_layers", int(1)),
        ("model.d_model", int(32)),
        ("model.n_head", int(2)),
        ("model.d_ff", int(64)),
        ("data.locale_dir", s(locale.to_str().unwrap())),
        ("data.vocab_size", int(300)),
        ("train.batch_size", int(16)),
        ("train.lr", toml::Value::Float(3e-3)),
        ("translation.eval_bleu_sentences", int(8)),
    ]);
    let cfg = config("transformer-mt", tmp.path(), &p);
    let run = tmp.path().join("mt");
    let (first, eval, m) = train(&cfg, &run);
    assert!(eval < first - 1.0, "held-out loss {eval} vs first {first}");
    assert!(m.last().unwrap()["eval_bleu"].as_f64().is_some());
    let out = translate(&run, "Cannot open file 3", None, 4, None);
    assert_eq!(out.lines().count(), 1, "{out}");
    let a = args(&run, None, 2, None);
    let opened = a.open_run().unwrap();
    let opts = a.decode_options().unwrap();
    let line = test_bleu(&opened, &run, &opts, Some(5), &mut |_, _| {}).unwrap();
    assert!(line.contains("BLEU"), "{line}");
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("test_bleu.json")).unwrap())
            .unwrap();
    assert_eq!(b["sentences"], 5);
    assert!(b["bleu"].as_f64().unwrap() >= 0.0);
    // A Transformer takes no task prefix.
    let e = args(&run, Some("x: "), 4, None).open_run().err().unwrap();
    assert!(e.to_string().contains("--prefix is for T5 runs"), "{e}");
    // A catalog that cannot be parsed is named in one clear error.
    std::fs::write(locale.join("de/LC_MESSAGES/broken.mo"), b"\xde\x12\x04").unwrap();
    let e = train_run(&cfg, &tmp.path().join("mt2")).err().unwrap();
    let e = canon_runs::error_line(&e);
    assert!(e.contains("broken.mo"), "{e}");
}

#[test]
fn bert_pretrains_distils_and_fine_tunes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = short_run(40);
    p.extend([
        ("model.n_layer", int(2)),
        ("model.n_head", int(2)),
        ("model.d_model", int(32)),
        ("model.d_ff", int(64)),
        ("model.max_seq_len", int(64)),
        ("data.vocab_size", int(600)),
        ("data.max_bytes", int(200_000)),
        ("train.batch_size", int(8)),
        ("train.block_size", int(64)),
        ("train.lr", toml::Value::Float(2e-3)),
    ]);
    let bert = tmp.path().join("bert");
    let (first, eval, m) = train(&config("bert", tmp.path(), &p), &bert);
    assert!(eval < first - 0.2, "held-out loss {eval} vs first {first}");
    let last = m.last().unwrap();
    assert!(last["eval_mlm_loss"].as_f64().is_some() && last["eval_nsp_loss"].as_f64().is_some());

    let mut d = short_run(20);
    d.extend([
        ("model.teacher", s(bert.to_str().unwrap())),
        ("model.n_layer", int(1)),
        ("data.max_bytes", int(200_000)),
        ("train.batch_size", int(8)),
        ("train.block_size", int(64)),
    ]);
    let student = tmp.path().join("student");
    let (first, eval, m) = train(&config("distilbert", tmp.path(), &d), &student);
    assert!(
        eval < first,
        "student held-out loss {eval} vs first {first}"
    );
    let last = m.last().unwrap();
    for k in [
        "eval_mlm_accuracy",
        "eval_teacher_mlm_accuracy",
        "eval_cos_loss",
    ] {
        assert!(last[k].as_f64().is_some(), "{k} missing: {last}");
    }

    let ft = tmp.path().join("ft");
    let a = FinetuneBertArgs {
        model: bert.to_str().unwrap().to_string(),
        out: ft.clone(),
        task: "stdlib-groups".into(),
        group_a: vec!["email".into(), "http".into()],
        group_b: vec!["json".into(), "xml".into()],
        snippet_bytes: 256,
        steps: 8,
        lr: 5e-5,
        batch_size: 4,
        max_len: 32,
        seed: 1,
        eval_every: 8,
        eval_max: 16,
        from_scratch: false,
        resume: false,
    };
    canon_runs::heads_run::run_bert(&a, &canon_assets::Quiet, 2, &no_stop, &|_| {}).unwrap();
    let m = metrics(&ft);
    assert!(
        m.iter().any(|l| l["eval_accuracy"].as_f64().is_some()),
        "{m:?}"
    );
}

#[test]
fn t5_span_corruption_then_multitask_with_translation() {
    let tmp = tempfile::tempdir().unwrap();
    let locale = catalogs(tmp.path());
    let mut p = short_run(30);
    p.extend([
        ("model.d_model", int(32)),
        ("model.d_kv", int(16)),
        ("model.n_heads", int(2)),
        ("model.d_ff", int(64)),
        ("model.n_layers", int(1)),
        ("model.n_decoder_layers", int(1)),
        ("data.vocab_size", int(600)),
        ("data.max_bytes", int(200_000)),
        ("train.batch_size", int(4)),
        ("train.lr", toml::Value::Float(3e-3)),
    ]);
    let t5 = tmp.path().join("t5");
    let (first, eval, _) = train(&config("t5", tmp.path(), &p), &t5);
    assert!(eval < first, "held-out loss {eval} vs first {first}");

    let tasks = tmp.path().join("tasks.jsonl");
    let lines: String = (0..40)
        .map(|i| {
            format!(
                "{{\"prefix\": \"parity: \", \"input\": \"{i}\", \"target\": \"{}\"}}\n",
                ["even", "odd"][i % 2]
            )
        })
        .collect();
    std::fs::write(&tasks, lines).unwrap();
    let mut q = short_run(20);
    q.extend([
        ("t5.init_from", s(t5.to_str().unwrap())),
        (
            "t5.tasks",
            toml::Value::Array(vec![
                s(&format!("jsonl:{}", tasks.display())),
                s("translate_en_de"),
            ]),
        ),
        ("t5.locale_dir", s(locale.to_str().unwrap())),
        ("t5.mixing_cap", int(64)),
        ("t5.generate_eval", int(4)),
        ("train.batch_size", int(4)),
        ("train.block_size", int(32)),
    ]);
    let mt = tmp.path().join("t5-mt");
    let (first, eval, m) = train(&config("t5-multitask", tmp.path(), &q), &mt);
    assert!(eval < first, "held-out loss {eval} vs first {first}");
    let last = m.last().unwrap();
    for k in [
        "eval_exact_match",
        "eval_bleu_translate_en_de",
        "eval_exact_translate_en_de",
    ] {
        let v = last[k].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&v), "{k} = {v}: {last}");
    }
    let out = translate(&mt, "Cannot find printer 4", None, 1, Some(8));
    assert_eq!(out.lines().count(), 1, "{out}");
    translate(&mt, "7", Some("parity: "), 4, Some(4));
}

#[test]
fn ernie_pretrains_and_fine_tunes_typing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = short_run(20);
    p.extend([
        ("model.hidden_size", int(32)),
        ("model.intermediate_size", int(64)),
        ("model.t_layers", int(1)),
        ("model.k_layers", int(1)),
        ("model.entity_dim", int(16)),
        ("data.vocab_size", int(1000)),
        ("transe.dim", int(16)),
        ("transe.steps", int(50)),
        ("train.batch_size", int(8)),
    ]);
    let ernie = tmp.path().join("ernie");
    let (first, eval, m) = train(&config("ernie", tmp.path(), &p), &ernie);
    assert!(eval < first, "held-out loss {eval} vs first {first}");
    assert!(m.last().unwrap()["eval_dea_accuracy"].as_f64().is_some());

    let mut t = short_run(10);
    t.extend([
        ("ernie.init", s(ernie.to_str().unwrap())),
        ("ernie.max_test", int(64)),
        ("data.vocab_size", int(1000)),
        ("train.batch_size", int(8)),
    ]);
    let typing = tmp.path().join("typing");
    let (_, _, m) = train(&config("ernie-typing", tmp.path(), &t), &typing);
    let last = m.last().unwrap();
    assert!(
        last.as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("accuracy")),
        "{last}"
    );
}

#[test]
fn bad_data_is_one_clear_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let fails = |cfg: &Path, needles: &[&str]| {
        let e = train_run(cfg, &tmp.path().join("run")).err().unwrap();
        let err = canon_runs::error_line(&e);
        for n in needles {
            assert!(err.contains(n), "'{n}' not in: {err}");
        }
    };
    // An empty corpus, for the BERT and T5 pre-training configs.
    for name in ["bert", "t5"] {
        let cfg = config(
            name,
            tmp.path(),
            &[("data.corpus", s(empty.to_str().unwrap()))],
        );
        fails(&cfg, &["empty.txt"]);
    }
    // A text-to-text record without a target: file and line.
    let t5 = tmp.path().join("t5");
    let mut p = short_run(2);
    p.extend([
        ("model.d_model", int(32)),
        ("model.d_kv", int(16)),
        ("model.n_heads", int(2)),
        ("model.d_ff", int(64)),
        ("model.n_layers", int(1)),
        ("model.n_decoder_layers", int(1)),
        ("data.vocab_size", int(400)),
        ("data.max_bytes", int(100_000)),
        ("train.batch_size", int(2)),
    ]);
    train(&config("t5", tmp.path(), &p), &t5);
    let tasks = tmp.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"input\": \"a\", \"target\": \"b\"}\n{\"input\": \"no target here\"}\n",
    )
    .unwrap();
    let q = [
        ("t5.init_from", s(t5.to_str().unwrap())),
        (
            "t5.tasks",
            toml::Value::Array(vec![s(&format!("jsonl:{}", tasks.display()))]),
        ),
    ];
    fails(
        &config("t5-multitask", tmp.path(), &q),
        &["tasks.jsonl:2", "target"],
    );
    // A Transformer's catalog folder without catalogs.
    let bare = tmp.path().join("bare/de/LC_MESSAGES");
    std::fs::create_dir_all(&bare).unwrap();
    let cfg = config(
        "transformer-mt",
        tmp.path(),
        &[(
            "data.locale_dir",
            s(tmp.path().join("bare").to_str().unwrap()),
        )],
    );
    fails(&cfg, &["LC_MESSAGES", "no .mo catalogs"]);
}
