//! Resource limits: input that would make a command allocate or compute without bound stops at a
//! limit, with one error line naming the limit and the flag that raises it.

use std::path::Path;
use std::process::{Command, Output};

use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

fn canon(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .current_dir(dir)
        .env("CANON_HOME", dir.join("home"))
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .output()
        .expect("run canon")
}

fn one_error_line(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_jsonl_line_over_the_limit_is_named_with_its_flag() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let model = p.join("tiny.gguf");
    write_tiny_llama(&model, &TinyLlama::default()).unwrap();
    let data = p.join("d.jsonl");
    let long = "x".repeat(300);
    std::fs::write(
        &data,
        format!(
            "{{\"prompt\": \"a\", \"completion\": \"b\"}}\n{{\"prompt\": \"{long}\", \"completion\": \"c\"}}\n"
        ),
    )
    .unwrap();
    let args = |limit: &str| {
        vec![
            "-q".to_string(),
            "--max-line-bytes".into(),
            limit.into(),
            "finetune".into(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--out".into(),
            p.join("run").to_str().unwrap().into(),
            "--max-steps".into(),
            "1".into(),
        ]
    };
    let o = canon(&refs(&args("200")), p);
    one_error_line(&o, &["d.jsonl line 2", "200 bytes", "--max-line-bytes"]);
    assert!(
        !p.join("run").exists(),
        "nothing is written for refused input"
    );
    // Raised, the same file gets past the reader (and fails, or not, on its own merits).
    let o = canon(&refs(&args("1000")), p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("--max-line-bytes"), "{err}");
}

#[test]
fn an_index_build_over_too_many_files_is_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let docs = p.join("docs");
    std::fs::create_dir(&docs).unwrap();
    for i in 0..3 {
        std::fs::write(docs.join(format!("{i}.md")), "# t\n\ntext\n").unwrap();
    }
    let o = canon(
        &[
            "index",
            "build",
            "--docs",
            "docs",
            "--out",
            "d.idx",
            "--max-files",
            "2",
        ],
        p,
    );
    one_error_line(&o, &["3 files", "limit of 2", "--max-files", "--limit"]);
    assert!(!p.join("d.idx").exists());
}
