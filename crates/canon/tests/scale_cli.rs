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

/// `canon data exercises` checks its settings and needs a filter folder: one error line each.
#[test]
fn data_exercises_rejects_bad_settings_and_a_missing_filter_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (extra, needle) in [
        (["--timeout", "0"], "--timeout must be in (0, 600]"),
        (
            ["--max-prompt-chars", "0"],
            "--max-prompt-chars must be at least 1",
        ),
        (["--jobs", "0"], "--jobs must be at least 1"),
    ] {
        let mut args = vec!["data", "exercises", "--data", d];
        args.extend_from_slice(&extra);
        assert_clean_error(&canon(&args, dir.path()), &[needle]);
    }
    let o = canon(&["data", "exercises", "--data", d], dir.path());
    assert_clean_error(&o, &["manifest.jsonl", "canon data filter"]);
}

/// `canon data synth` checks its settings before loading a model or creating --out.
#[test]
fn data_synth_rejects_bad_settings_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    for (extra, needle) in [
        (["--n", "0"], "--n and --max-tokens must be positive"),
        (
            ["--max-tokens", "0"],
            "--n and --max-tokens must be positive",
        ),
        (["--timeout", "0"], "--timeout must be in (0, 600]"),
        (["--timeout", "nan"], "--timeout must be in (0, 600]"),
        (
            ["--topics", "/nonexistent/topics.txt"],
            "cannot read --topics",
        ),
    ] {
        let mut args = vec!["data", "synth", "--out", out, "--model", "no-such-model"];
        args.extend_from_slice(&extra);
        assert_clean_error(&canon(&args, dir.path()), &[needle]);
    }
    assert!(!dir.path().join("out").exists());
}

/// `canon data exercises` end to end on a made-up filter folder whose "standard library" is one
/// file: the function with a deciding doctest becomes the one exercise; the one an arm trained
/// on, the one that needs its module's constant and the one whose test a `None` body passes do
/// not; the files are written and `canon eval humaneval --problems` reads the set.
#[test]
fn data_exercises_builds_a_set_the_harness_reads() {
    use canon_scale::data::corpus::sha256_hex;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let seen = "def seen(a, b):\n    \"\"\"Sum of the squares of two numbers.\n\n    >>> seen(1, 2)\n    5\n    \"\"\"\n    total = a * a\n    total = total + b * b\n    return total\n";
    let text = format!(
        "CONST = 3\n\n\ndef double(x):\n    \"\"\"Twice x.\n\n    >>> double(4)\n    8\n    \"\"\"\n    return 2 * x\n\n\n{seen}\n\ndef uses_const(x):\n    \"\"\"\n    >>> uses_const(2)\n    6\n    \"\"\"\n    return CONST * x\n\n\ndef quiet(x):\n    \"\"\"\n    >>> quiet(1)\n    \"\"\"\n    y = x\n"
    );
    std::fs::write(lib.join("mod.py"), &text).unwrap();
    let data = dir.path().join("phi1");
    std::fs::create_dir_all(&data).unwrap();
    let manifest = serde_json::json!({
        "path": "mod.py", "origin": "stdlib", "distribution": null, "licence": "PSF",
        "sha256": sha256_hex(&text), "bytes": text.len()
    });
    std::fs::write(data.join("manifest.jsonl"), format!("{manifest}\n")).unwrap();
    let row = |id: &str, pool: &str, text: &str| {
        serde_json::json!({
            "id": id, "pool": pool, "label": 1, "score": 5, "method": "heuristic", "prob": 0.9,
            "kept": true, "sample": null, "text": text
        })
    };
    let rows = [
        row("other.py#0", "train", &format!("import os\n\n{seen}")),
        row("x.py#0", "eval", "def held():\n    return 1\n"),
    ];
    let lines: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(data.join("snippets.jsonl"), lines).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(["-q", "data", "exercises", "--data", data.to_str().unwrap()])
        .env("CANON_HOME", dir.path())
        .env("CANON_PYTHON_STDLIB", &lib)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["candidates"], 4, "{report}");
    assert_eq!(report["exercises"], 1);
    assert_eq!(report["in_training"], 1);
    assert_eq!(report["canonical_fails"], 1);
    assert_eq!(report["trivial_passes"], 1);
    let set = std::fs::read_to_string(data.join("exercises.jsonl")).unwrap();
    let ex: serde_json::Value = serde_json::from_str(set.lines().next().unwrap()).unwrap();
    assert_eq!(ex["task_id"], "Exercise/mod.py:double");
    assert_eq!(ex["canonical_solution"], "    return 2 * x\n");
    assert_eq!(ex["source"], "mod.py:4");
    let cands = std::fs::read_to_string(data.join("exercises-candidates.jsonl")).unwrap();
    assert_eq!(cands.lines().count(), 4);
    assert!(cands.contains("\"verdict\":\"canonical_fails\""));
    assert!(
        cands.contains("NameError: name 'CONST' is not defined"),
        "{cands}"
    );
    assert!(data.join("exercises-report.json").is_file());
    // The harness scores completions against the set: the canonical body passes, `pass` fails.
    for (completion, passed) in [("    return 2 * x\n", 1), ("    pass\n", 0)] {
        let samples = dir.path().join("samples.jsonl");
        let s = serde_json::json!({"task_id": "Exercise/mod.py:double", "completion": completion});
        std::fs::write(&samples, format!("{s}\n")).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_canon"))
            .args([
                "-q",
                "eval",
                "humaneval",
                "--problems",
                data.join("exercises.jsonl").to_str().unwrap(),
                "--completions",
                samples.to_str().unwrap(),
            ])
            .env("CANON_HOME", dir.path())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains(&format!("{passed} passed")), "{out}");
    }
}
