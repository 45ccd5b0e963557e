//! `canon eval cot` end to end on a tiny random GGUF model (figures, not their values: the model is
//! random), the problem generator's file, and one clear error line for bad input.

use std::path::Path;
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

fn one_error(o: &Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !e.contains("panicked"), "{e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].contains(needle), "{}", lines[0]);
}

#[test]
fn eval_cot_reports_direct_cot_and_vote_accuracy() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("tiny.gguf");
    write_tiny_llama(
        &model,
        &TinyLlama {
            context_length: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let m = model.to_str().unwrap();
    let o = canon(
        &[
            "eval",
            "cot",
            "--model",
            m,
            "--generate",
            "3",
            "--steps",
            "1-2",
            "--shots",
            "2",
            "--samples",
            "1,3",
            "--max-tokens",
            "6",
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"], 3);
    for k in ["accuracy_direct", "accuracy_greedy_cot"] {
        let a = v[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{v}");
    }
    let votes = v["accuracy_vote"].as_array().unwrap();
    assert_eq!(votes.len(), 2);
    assert_eq!(votes[1]["m"], 3);
    let per = v["per_problem"].as_array().unwrap();
    assert_eq!(per[0]["sampled"].as_array().unwrap().len(), 3);

    // The generator writes a problems file the command reads back (zero-shot this time).
    let file = d.path().join("p.jsonl");
    let o = canon(
        &[
            "eval",
            "cot",
            "--generate",
            "4",
            "--write-problems",
            file.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = canon(
        &[
            "eval",
            "cot",
            "--model",
            m,
            "--problems",
            file.to_str().unwrap(),
            "--shots",
            "0",
            "--samples",
            "2",
            "--max-tokens",
            "4",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("4 problems") && out.contains("self-consistency, m = 2"),
        "{out}"
    );

    // Bad input: one error line each.
    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"q\"}\n").unwrap();
    one_error(
        &canon(
            &[
                "eval",
                "cot",
                "--model",
                m,
                "--problems",
                bad.to_str().unwrap(),
            ],
            d.path(),
        ),
        "line 1",
    );
    one_error(
        &canon(&["eval", "cot", "--model", m, "--steps", "3-1"], d.path()),
        "--steps",
    );
    one_error(
        &canon(&["eval", "cot", "--model", m, "--samples", "0"], d.path()),
        "--samples",
    );
}
