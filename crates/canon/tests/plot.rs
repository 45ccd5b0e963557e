//! `canon plot` end to end on metrics files written by the test: figures come out with the run
//! names in the legend; bad input ends in one clear error line.

use std::path::Path;
use std::process::{Command, Output};

fn canon(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .current_dir(dir)
        .env("CANON_HOME", dir.join("home"))
        .output()
        .expect("run canon")
}

fn assert_clean_error(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure; stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {e}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}

fn write_run(dir: &Path, name: &str, scale: f64) {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let mut text = String::new();
    for s in 1..=40u64 {
        let eval = if s % 10 == 0 {
            format!(r#","eval_loss":{}"#, scale * 4.0 / (s as f64).sqrt())
        } else {
            String::new()
        };
        text.push_str(&format!(
            r#"{{"step":{s},"loss":{},"tokens_per_s":{},"lr":0.001,"grad_norm":1.0,"tokens":{},"elapsed_s":{}{eval}}}"#,
            scale * 5.0 / (s as f64).sqrt(),
            1000.0 + s as f64,
            s * 2048,
            s as f64 * 1.5,
        ));
        text.push('\n');
    }
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
}

fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>').and_then(|(_, r)| r.split_once("</text>")))
        .map(|(s, _)| s.trim().to_string())
        .collect()
}

#[test]
fn two_runs_on_one_figure() {
    let d = tempfile::tempdir().unwrap();
    write_run(d.path(), "baseline", 1.0);
    write_run(d.path(), "change", 0.9);
    let o = canon(
        &[
            "plot",
            "baseline",
            "change",
            "--metric",
            "eval_loss",
            "--x",
            "tokens",
            "--out",
            "c.svg",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = texts(&std::fs::read_to_string(d.path().join("c.svg")).unwrap());
    for want in ["baseline", "change", "eval_loss", "training tokens", "80k"] {
        assert!(t.iter().any(|s| s == want), "no {want:?} in {t:?}");
    }
    assert!(
        t.iter()
            .any(|s| s.starts_with("canon plot baseline change")),
        "{t:?}"
    );

    let o = canon(
        &[
            "plot", "baseline", "--smooth", "5", "--x", "time", "--log-y", "--out", "s.png",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        &std::fs::read(d.path().join("s.png")).unwrap()[1..4],
        b"PNG"
    );
}

#[test]
fn jsonl_table_with_groups() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("r.jsonl"),
        "{\"k\":0,\"acc\":0.2,\"model\":\"small\"}\n{\"k\":1,\"acc\":0.3,\"model\":\"small\"}\n\n\
         {\"k\":0,\"acc\":0.4,\"model\":\"large\"}\n{\"k\":5,\"acc\":0.6,\"model\":\"large\"}\n",
    )
    .unwrap();
    let o = canon(
        &[
            "plot", "--jsonl", "r.jsonl", "--x", "k", "--y", "acc", "--group", "model", "--out",
            "k.svg",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = texts(&std::fs::read_to_string(d.path().join("k.svg")).unwrap());
    for want in ["small", "large", "k", "acc"] {
        assert!(t.iter().any(|s| s == want), "no {want:?} in {t:?}");
    }
}

#[test]
fn clear_errors() {
    let d = tempfile::tempdir().unwrap();
    write_run(d.path(), "run", 1.0);
    std::fs::create_dir(d.path().join("empty")).unwrap();
    assert_clean_error(
        &canon(&["plot", "empty"], d.path()),
        &["empty", "no metrics.jsonl"],
    );
    assert_clean_error(
        &canon(&["plot", "missing"], d.path()),
        &["missing", "no such run folder"],
    );
    assert_clean_error(
        &canon(&["plot", "run", "--metric", "bleu"], d.path()),
        &[
            "'bleu'",
            "available keys:",
            "eval_loss",
            "loss",
            "tokens_per_s",
        ],
    );
    assert_clean_error(
        &canon(&["plot", "run", "--x", "epochs"], d.path()),
        &["expected step, tokens or time", "epochs"],
    );
    assert_clean_error(
        &canon(&["plot", "run", "--out", "x.jpg"], d.path()),
        &["x.jpg", ".png or .svg"],
    );
    std::fs::write(
        d.path().join("bad.jsonl"),
        "{\"a\":1,\"b\":2}\n{\"a\":2,\"b\":\n",
    )
    .unwrap();
    assert_clean_error(
        &canon(
            &["plot", "--jsonl", "bad.jsonl", "--x", "a", "--y", "b"],
            d.path(),
        ),
        &["bad.jsonl line 2", "not valid JSON"],
    );
    std::fs::write(d.path().join("arr.jsonl"), "[1,2]\n").unwrap();
    assert_clean_error(
        &canon(
            &["plot", "--jsonl", "arr.jsonl", "--x", "a", "--y", "b"],
            d.path(),
        ),
        &["line 1", "expected a JSON object, found an array"],
    );
    assert_clean_error(&canon(&["plot"], d.path()), &["at least one RUN"]);
    // An older run without token counts.
    std::fs::create_dir(d.path().join("old")).unwrap();
    std::fs::write(
        d.path().join("old/metrics.jsonl"),
        "{\"step\":1,\"loss\":3.0,\"tokens_per_s\":1.0,\"lr\":0.1,\"grad_norm\":1.0}\n",
    )
    .unwrap();
    assert_clean_error(
        &canon(&["plot", "old", "--x", "tokens"], d.path()),
        &["'tokens'", "available keys"],
    );
}
