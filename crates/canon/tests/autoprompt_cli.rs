//! `canon autoprompt` (paper 11) without downloads: its help, and one clear error line for each
//! kind of bad input, on a tiny random GGUF model and a small folder of Python modules.

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
fn autoprompt_has_help_and_rejects_bad_input_with_one_line() {
    let d = tempfile::tempdir().unwrap();
    let o = canon(&["autoprompt", "--help"], d.path());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && help.contains("canon autoprompt --model smollm2"));

    let model = d.path().join("tiny.gguf");
    write_tiny_llama(&model, &TinyLlama::default()).unwrap();
    let m = model.to_str().unwrap();
    let lib = d.path().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("json.py"), "def dumps(obj):\n    pass\n").unwrap();
    std::fs::write(lib.join("os.py"), "def getcwd():\n    pass\n").unwrap();
    let s = lib.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["autoprompt", "--model", m, "--stdlib", s, "--steps", "1"];
        args.extend_from_slice(extra);
        canon(&args, d.path())
    };
    one_error(&run(&["--relation", "capitals"]), "--relation: expected");
    one_error(
        &run(&["--template", "[X] [T]"]),
        "exactly one [X] and one [P]",
    );
    one_error(&run(&["--template", "[X] [P]"]), "at least one [T]");
    one_error(&run(&["--test-fraction", "1.5"]), "--test-fraction");
    // The tiny model's byte vocabulary has no one-token module names: every fact is dropped.
    one_error(&run(&[]), "expected facts whose object is one token");
    let nodir = d.path().join("missing");
    one_error(
        &canon(
            &[
                "autoprompt",
                "--model",
                m,
                "--relation",
                "man-section",
                "--man-dir",
                nodir.to_str().unwrap(),
            ],
            d.path(),
        ),
        "expected a man page folder",
    );
}

/// `canon eval cot --write-text`: the generator's problems as a training text whose prefixes are
/// the zero-shot prompts (paper 18's trained-model comparison reads it as `data.corpus`).
#[test]
fn cot_training_text_starts_each_target_at_the_zero_shot_prompt() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("r.txt");
    let o = canon(
        &[
            "eval",
            "cot",
            "--generate",
            "3",
            "--steps",
            "2-2",
            "--write-text",
            out.to_str().unwrap(),
            "--text-format",
            "rationale",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    let blocks: Vec<&str> = text.trim_end().split("\n\n").collect();
    assert_eq!(blocks.len(), 3);
    for b in blocks {
        let (q, a) = b.split_once("\nA: ").unwrap();
        assert!(q.starts_with("Q: ") && q.ends_with("now?"), "{q}");
        assert!(
            a.starts_with("Let's think step by step. ") && a.contains(" = "),
            "{a}"
        );
        assert!(a.contains("The answer is "), "{a}");
    }
    let o = canon(
        &[
            "eval",
            "cot",
            "--generate",
            "3",
            "--write-text",
            out.to_str().unwrap(),
            "--text-format",
            "essay",
        ],
        d.path(),
    );
    one_error(&o, "--text-format: expected rationale or direct");
}
