//! `canon align` end to end at toy sizes (no downloads): every stage runs and prints its figures,
//! bad input ends in one clear error line, every subcommand's help has an example.

use std::path::Path;
use std::process::{Command, Output};

fn canon(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .env("CANON_HOME", home)
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .output()
        .expect("run canon")
}

fn clean_error(o: &Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].contains(needle), "{}", lines[0]);
}

fn ok(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_pipeline_runs_at_toy_size_and_prints_figures() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let dir = h.join("align");
    let dir = dir.to_str().unwrap();
    let t = ["--threads", "1", "-q", "align"];
    let run = |args: &[&str]| ok(&canon(&[&t[..], args].concat(), h));
    let s = run(&[
        "sft",
        "--dir",
        dir,
        "--steps",
        "150",
        "--layers",
        "1",
        "--width",
        "32",
        "--per-prompt",
        "1",
    ]);
    assert!(
        s.contains("test_gold") && s.contains("win_rate_vs_sft"),
        "{s}"
    );
    let s = run(&[
        "rm",
        "--dir",
        dir,
        "--train-prompts",
        "40",
        "--val-prompts",
        "40",
        "--batch",
        "4",
    ]);
    assert!(s.contains("held_out_pair_accuracy"), "{s}");
    let s = run(&["dpo", "--dir", dir, "--steps", "2", "--batch", "4"]);
    assert!(s.contains("win_rate_vs_sft"), "{s}");
    let s = run(&[
        "ppo",
        "--dir",
        dir,
        "--rollouts",
        "1",
        "--rollout-prompts",
        "8",
        "--minibatches",
        "2",
        "--epochs",
        "1",
        "--ptx-coef",
        "0.5",
        "--value",
        "head",
        "--whiten-rewards",
    ]);
    assert!(
        s.contains("kl_last_rollout") && s.contains("pretrain_nll"),
        "{s}"
    );
    assert!(s.contains("value_from_reward_model          0"), "{s}");
    assert!(Path::new(dir).join("ppo/ppo.png").is_file());
    assert!(Path::new(dir).join("ppo/metrics.jsonl").is_file());
}

#[test]
fn bad_input_ends_in_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let empty = h.join("empty");
    let e = empty.to_str().unwrap();
    clean_error(&canon(&["align", "rm", "--dir", e], h), "config.json");
    clean_error(&canon(&["align", "dpo", "--dir", e], h), "groups.json");
    clean_error(
        &canon(&["align", "ppo", "--dir", e, "--minibatches", "99"], h),
        "minibatches",
    );
    clean_error(
        &canon(&["align", "ppo", "--dir", e, "--name", "../x"], h),
        "--name",
    );
    clean_error(&canon(&["align", "rm", "--dir", e, "--k", "1"], h), "--k");
    clean_error(&canon(&["align", "rlaif", "--dir", e], h), "groups.json");
    clean_error(
        &canon(&["align", "rlaif", "--dir", e, "--rollouts", "0"], h),
        "--rollouts",
    );
    clean_error(
        &canon(&["align", "w2s", "--locale-dir", e], h),
        "gettext catalogs",
    );
    clean_error(
        &canon(
            &["align", "w2s", "--student", "finetune", "--epochs", "0"],
            h,
        ),
        "epochs ≥ 1",
    );
    clean_error(
        &canon(
            &[
                "align",
                "ppo",
                "--dir",
                e,
                "--lora-alpha",
                "0",
                "--lora-rank",
                "4",
            ],
            h,
        ),
        "lora_alpha",
    );
    clean_error(
        &canon(&["align", "rlaif", "--dir", e, "--url", "localhost:1"], h),
        "--url",
    );
    clean_error(
        &canon(&["align", "plot-ppo", "--run", e], h),
        "metrics.jsonl",
    );
    clean_error(
        &canon(&["align", "prm-eval", "--samples", e], h),
        "scored samples",
    );
    let junk = h.join("junk.jsonl");
    std::fs::write(
        &junk,
        "{\"problem\": \"p\", \"answer\": \"1\", \"prm_score\": \"high\"}\n",
    )
    .unwrap();
    clean_error(
        &canon(
            &["align", "prm-eval", "--samples", junk.to_str().unwrap()],
            h,
        ),
        "line 1: \"prm_score\" must be a finite number",
    );
}

#[test]
fn prm_eval_runs_the_protocol_on_a_scored_file() {
    let d = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../goldens/prm800k_eval/samples.jsonl"
    );
    let out = d.path().join("out/curves.json");
    let s = ok(&canon(
        &[
            "align",
            "prm-eval",
            "--samples",
            fixture,
            "--trials",
            "40",
            "--total",
            "16",
            "--ns",
            "1,2,3,5,8,12,16",
            "--seed",
            "20231",
            "--out",
            out.to_str().unwrap(),
        ],
        d.path(),
    ));
    assert!(s.contains("8 problems") && s.contains("prm_score"), "{s}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    // The same trials as Python's reference loop (goldens/prm800k_eval/expected.json).
    let e: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../goldens/prm800k_eval/expected.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(v[0]["trials"], e["prm"]);
    assert_eq!(v[1]["trials"], e["orm"]);
    assert!(out.with_extension("png").exists());
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let d = tempfile::tempdir().unwrap();
    for sub in ["sft", "rm", "dpo", "ppo", "prm", "prm-eval", "rlaif", "w2s"] {
        let s = ok(&canon(&["align", sub, "--help"], d.path()));
        assert!(s.contains("Example") && s.contains("canon"), "{sub}: {s}");
    }
}
