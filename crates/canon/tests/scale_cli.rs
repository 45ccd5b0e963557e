//! `canon scale` and `canon data` on bad input: one clear error line, never a panic.

use std::path::Path;
use std::process::{Command, Output};

fn canon(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .env("CANON_HOME", home)
        .output()
        .expect("run canon")
}

fn assert_clean_error(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected failure; stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {e}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}

#[test]
fn scale_refuses_a_ladder_without_enough_rungs() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/scale.toml"
    ))
    .unwrap();
    // Keep only the first two rungs.
    let start = text.find("rungs = [").unwrap();
    let end = start + text[start..].find("\n]").unwrap();
    let two = "rungs = [\n  { n_layer = 1, n_head = 2, d_model = 12, d_ff = 48 },\n  { n_layer = 1, n_head = 2, d_model = 16, d_ff = 64 },";
    let bad = format!("{}{}{}", &text[..start], two, &text[end..]);
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, bad).unwrap();
    let out = dir.path().join("out");
    let o = canon(
        &[
            "scale",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&o, &["at least 3 rungs", "found 2"]);
}

#[test]
fn replot_without_a_sweep_and_compare_without_data_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let o = canon(
        &["scale", "--out", dir.path().to_str().unwrap(), "--replot"],
        dir.path(),
    );
    assert_clean_error(&o, &["no finished sweep"]);
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/phi1.toml");
    let o = canon(
        &[
            "data",
            "compare",
            "--data",
            dir.path().to_str().unwrap(),
            "--config",
            cfg,
            "--out",
            dir.path().join("c").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&o, &["snippets.jsonl", "canon data filter"]);
}

/// `canon data filter`'s settings are checked before the corpus is read: one error line each.
#[test]
fn data_filter_rejects_bad_settings_before_reading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    for (extra, needle) in [
        (["--threshold", "1.5"], "--threshold must be in [0, 1]"),
        (["--embed-chars", "0"], "--embed-chars must be positive"),
        (["--label-sample", "5"], "--label-sample"),
    ] {
        let mut args = vec!["data", "filter", "--out", out];
        args.extend_from_slice(&extra);
        assert_clean_error(&canon(&args, dir.path()), &[needle]);
    }
    assert!(!dir.path().join("out").exists());
}
