//! `canon train`, `canon translate` and `canon finetune --method classifier` on the command line:
//! exit codes, the files a run writes and the error lines, on runs of a few steps. That training
//! works (falling losses, every family's metrics, the runs serving translation and fine-tuning) is
//! tested through the library in `canon-runs`' `tests/train_encoders.rs`.

use canon_testkit::runs::{catalogs, config, int, s, short_run};
use std::path::Path;
use std::process::{Command, Output};

fn canon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(["-q", "--threads", "2"])
        .args(args)
        .output()
        .expect("run canon")
}

fn ok(args: &[&str]) -> String {
    let o = canon(args);
    assert!(
        o.status.success(),
        "canon {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `canon train --config cfg --out out`, which must succeed and write a run folder.
fn train(cfg: &Path, out: &Path) {
    ok(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    for f in [
        "metrics.jsonl",
        "checkpoint.safetensors",
        "model.json",
        "config.toml",
    ] {
        assert!(out.join(f).is_file(), "{f} missing in {}", out.display());
    }
}

#[test]
fn train_and_translate_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let locale = catalogs(tmp.path());
    let mut p = short_run(4);
    p.extend([
        ("model.n_encoder_layers", int(1)),
        ("model.n_decoder_layers", int(1)),
        ("model.d_model", int(16)),
        ("model.n_head", int(2)),
        ("model.d_ff", int(32)),
        ("data.locale_dir", s(locale.to_str().unwrap())),
        ("data.vocab_size", int(300)),
        ("train.batch_size", int(4)),
        ("translation.eval_bleu_sentences", int(2)),
    ]);
    let cfg = config("transformer-mt", tmp.path(), &p);
    let run = tmp.path().join("mt");
    train(&cfg, &run);
    assert!(!metrics(&run).is_empty());
    let m = run.to_str().unwrap();
    let out = ok(&[
        "translate",
        "--model",
        m,
        "--text",
        "Cannot open file 3",
        "--max-tokens",
        "4",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let out = ok(&[
        "translate",
        "--model",
        m,
        "--test-bleu",
        "--limit",
        "2",
        "--beam",
        "1",
    ]);
    assert!(out.starts_with("BLEU = "), "{out}");
    assert!(run.join("test_bleu.json").is_file());
    // A Transformer takes no task prefix.
    let o = canon(&["translate", "--model", m, "--prefix", "x: ", "--text", "a"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--prefix is for T5 runs"));
    // A catalog that cannot be parsed is named in one clear error.
    std::fs::write(locale.join("de/LC_MESSAGES/broken.mo"), b"\xde\x12\x04").unwrap();
    let o = canon(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("mt2").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("broken.mo"), "{err}");
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn classifier_fine_tuning_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = short_run(2);
    p.extend([
        ("model.n_layer", int(1)),
        ("model.n_head", int(2)),
        ("model.d_model", int(16)),
        ("model.d_ff", int(32)),
        ("model.max_seq_len", int(32)),
        ("data.vocab_size", int(400)),
        ("data.max_bytes", int(50_000)),
        ("train.batch_size", int(2)),
        ("train.block_size", int(32)),
    ]);
    let bert = tmp.path().join("bert");
    train(&config("bert", tmp.path(), &p), &bert);
    let ft = tmp.path().join("ft");
    let (b, f) = (bert.to_str().unwrap(), ft.to_str().unwrap());
    let out = ok(&[
        "finetune",
        "--method",
        "classifier",
        "--model",
        b,
        "--out",
        f,
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--max-len",
        "16",
        "--eval-every",
        "2",
        "--eval-max",
        "4",
    ]);
    assert!(!out.trim().is_empty());
    assert!(ft.join("metrics.jsonl").is_file());
    // An empty corpus is one error line naming the file.
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let cfg = config(
        "bert",
        tmp.path(),
        &[("data.corpus", s(empty.to_str().unwrap()))],
    );
    let o = canon(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("run").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("empty.txt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
