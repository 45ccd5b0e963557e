//! What the `canon agent`, `eval cot`, `autoprompt` and `fewshot` CLI tests share: running the
//! binary without downloads and checking for one clear error line.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn canon(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .env("CANON_HOME", home)
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .output()
        .expect("run canon")
}

pub fn one_error(o: &Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !e.contains("panicked"), "{e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].contains(needle), "{}", lines[0]);
}
