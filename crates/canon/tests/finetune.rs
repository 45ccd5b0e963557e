//! `canon finetune` end to end on a tiny GGUF model written by the test: LoRA and QLoRA runs write
//! a PEFT adapter, metrics and a checkpoint; the loss falls; `generate --lora` equals generating
//! with the merged model; resuming equals running straight through; bad input is one clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

fn canon(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .env("CANON_HOME", home)
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .output()
        .expect("run canon")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!e.contains("panicked"), "{e}");
    e
}

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("tiny.gguf");
    write_tiny_llama(&model, &TinyLlama::default()).unwrap();
    let data = dir.join("d.jsonl");
    let mut lines = Vec::new();
    for (p, c) in [("ab", "ba"), ("cd", "dc"), ("ef", "fe"), ("gh", "hg")] {
        lines.push(serde_json::json!({"prompt": format!("rev {p}:"), "completion": c}).to_string());
    }
    lines.push(
        serde_json::json!({"messages": [
            {"role": "user", "content": "rev xy"},
            {"role": "assistant", "content": "yx"}]})
        .to_string(),
    );
    std::fs::write(&data, lines.join("\n")).unwrap();
    (model, data)
}

fn finetune(model: &Path, data: &Path, out: &Path, home: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "-q",
        "--threads",
        "1",
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lr",
        "0.05",
        "--batch-size",
        "2",
        "--eval-every",
        "3",
        "--checkpoint-every",
        "2",
        "--val-fraction",
        "0.2",
    ];
    args.extend_from_slice(extra);
    canon(&args, home)
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn greedy(model: &Path, home: &Path, extra: &[&str]) -> Vec<u64> {
    let mut args = vec![
        "-q",
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "rev ab:",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    ];
    args.extend_from_slice(extra);
    let v: serde_json::Value = serde_json::from_str(&ok(&canon(&args, home))).unwrap();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn lora_run_writes_a_peft_adapter_that_merges_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (model, data) = setup(dir.path());
    let run = dir.path().join("run");
    let out = ok(&finetune(
        &model,
        &data,
        &run,
        home,
        &["--max-steps", "12", "--targets", "q,v,o"],
    ));
    assert!(out.contains("finished step 12/12"), "{out}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "checkpoint.safetensors",
        "metrics.jsonl",
        "loss.png",
        "finetune.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()),
        (Some(8), Some(16.0))
    );
    assert_eq!(cfg["lora_dropout"].as_f64(), Some(0.0));
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["o_proj", "q_proj", "v_proj"])
    );
    let m = metrics(&run);
    assert_eq!(m.len(), 12);
    let mean = |r: std::ops::Range<usize>| {
        r.clone()
            .map(|i| m[i]["loss"].as_f64().unwrap())
            .sum::<f64>()
            / r.len() as f64
    };
    let (first, last) = (mean(0..3), mean(9..12));
    assert!(last < 0.9 * first, "loss {first} -> {last}");
    assert!(m[2]["eval_loss"].is_number() && m[11]["eval_loss"].is_number());

    // Base + adapter generates what the merged model generates, and differs from the base.
    let with = greedy(&model, home, &["--lora", run.to_str().unwrap()]);
    let merged = dir.path().join("merged.gguf");
    ok(&canon(
        &[
            "-q",
            "merge",
            "--model",
            model.to_str().unwrap(),
            "--lora",
            run.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
        home,
    ));
    assert_eq!(greedy(&merged, home, &[]), with);

    // 6 steps, then a resume to 12, equals 12 straight (adapter bytes), LoRA dropout included (its
    // masks come from the checkpointed RNG). The schedule (3 % warmup, then constant) is the same
    // for both.
    let straight = dir.path().join("straight");
    ok(&finetune(
        &model,
        &data,
        &straight,
        home,
        &[
            "--max-steps",
            "12",
            "--targets",
            "q,v,o",
            "--dropout",
            "0.1",
        ],
    ));
    let cfg = std::fs::read_to_string(straight.join("adapter_config.json")).unwrap();
    assert!(cfg.contains("\"lora_dropout\": 0.1"), "{cfg}");
    let half = dir.path().join("half");
    ok(&finetune(
        &model,
        &data,
        &half,
        home,
        &["--max-steps", "6", "--targets", "q,v,o", "--dropout", "0.1"],
    ));
    let o = canon(
        &[
            "-q",
            "--threads",
            "1",
            "finetune",
            "--resume",
            half.to_str().unwrap(),
            "--max-steps",
            "12",
            "--eval-every",
            "3",
            "--checkpoint-every",
            "2",
        ],
        home,
    );
    assert!(ok(&o).contains("finished step 12/12"));
    let a = std::fs::read(half.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(straight.join("adapter_model.safetensors")).unwrap();
    assert_eq!(a, b, "resumed adapter differs from the straight run");
    let c = std::fs::read(run.join("adapter_model.safetensors")).unwrap();
    assert_ne!(a, c, "dropout changed nothing");
    assert_eq!(metrics(&half).len(), 12);

    // The run trained over the base in the file's format: a resume cannot switch it to f32.
    let settings = std::fs::read_to_string(half.join("finetune.json")).unwrap();
    assert!(settings.contains("\"f32_base\": false"), "{settings}");
    let o = canon(
        &[
            "-q",
            "--f32",
            "finetune",
            "--resume",
            half.to_str().unwrap(),
            "--max-steps",
            "14",
        ],
        home,
    );
    let e = err(&o);
    assert!(e.contains("resume it without --f32"), "{e}");
}

#[test]
fn qlora_run_trains_over_an_nf4_base() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = setup(dir.path());
    let run = dir.path().join("q");
    let out = ok(&finetune(
        &model,
        &data,
        &run,
        dir.path(),
        &["--method", "qlora", "--max-steps", "10"],
    ));
    assert!(out.contains("finished step 10/10"), "{out}");
    let cfg = std::fs::read_to_string(run.join("adapter_config.json")).unwrap();
    for m in [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ] {
        assert!(cfg.contains(m), "{m} not adapted: {cfg}");
    }
    let m = metrics(&run);
    let (first, last) = (
        m[0]["loss"].as_f64().unwrap(),
        m[9]["loss"].as_f64().unwrap(),
    );
    assert!(last < 0.85 * first, "loss {first} -> {last}");
}

#[test]
fn bad_finetune_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (model, data) = setup(dir.path());
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"x\"}\n",
    )
    .unwrap();
    let e = err(&finetune(&model, &bad, &dir.path().join("r1"), home, &[]));
    assert!(
        e.contains("bad.jsonl:2") && e.contains("no \"completion\""),
        "{e}"
    );
    std::fs::write(&bad, "not json\n").unwrap();
    let e = err(&finetune(&model, &bad, &dir.path().join("r2"), home, &[]));
    assert!(
        e.contains("bad.jsonl:1") && e.contains("malformed JSON"),
        "{e}"
    );
    let e = err(&finetune(
        &model,
        &data,
        &dir.path().join("r3"),
        home,
        &["--rank", "0"],
    ));
    assert!(e.contains("rank must be at least 1"), "{e}");
    let e = err(&finetune(
        &model,
        &data,
        &dir.path().join("r5"),
        home,
        &["--dropout", "1.5"],
    ));
    assert!(e.contains("--dropout must be in [0, 1)"), "{e}");
    let e = err(&finetune(
        &model,
        &data,
        &dir.path().join("r4"),
        home,
        &["--targets", "q,zz"],
    ));
    assert!(e.contains("unknown module 'zz'"), "{e}");
    let e = err(&canon(
        &["-q", "finetune", "--resume", dir.path().to_str().unwrap()],
        home,
    ));
    assert!(e.contains("not a `canon finetune` run folder"), "{e}");
    // A finished run's folder is not overwritten.
    let run = dir.path().join("r5");
    ok(&finetune(&model, &data, &run, home, &["--max-steps", "1"]));
    let e = err(&finetune(&model, &data, &run, home, &["--max-steps", "1"]));
    assert!(e.contains("holds a run already"), "{e}");
}
