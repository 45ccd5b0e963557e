//! `canon autoprompt` and `canon fewshot` end to end on a tiny random GGUF model; bad input ends
//! with one clear error line.

use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

mod common;
use common::{canon, one_error};

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
    one_error(
        &run(&["--dev-fraction", "0"]),
        "--dev-fraction: expected a share",
    );
    one_error(&run(&["--accumulation", "0"]), "must be positive");
    one_error(
        &run(&["--init-ids", "1,2"]),
        "--init-ids: expected 5 ids (one per [T]), found 2",
    );
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

#[test]
fn fewshot_builtin_tasks_run_and_bad_input_gives_one_line() {
    let d = tempfile::tempdir().unwrap();
    let o = canon(&["eval", "fewshot", "--help"], d.path());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && help.contains("canon eval fewshot --model smollm2 --task gettext-de")
            && help.contains("--task icl-map --write-text"),
        "{help}"
    );
    let model = d.path().join("tiny.gguf");
    write_tiny_llama(&model, &TinyLlama::default()).unwrap();
    let m = model.to_str().unwrap();

    // icl-map: the task file round-trips through --task FILE.jsonl and runs on a model.
    let task = d.path().join("icl.jsonl");
    let o = canon(
        &[
            "eval",
            "fewshot",
            "--task",
            "icl-map",
            "--seed",
            "3",
            "--write-task",
            task.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = canon(
        &[
            "eval",
            "fewshot",
            "--model",
            m,
            "--task",
            task.to_str().unwrap(),
            "--shots",
            "2",
            "--limit",
            "3",
            "--max-new-tokens",
            "3",
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["items"].as_u64(), v["shots"].as_u64()),
        (Some(3), Some(2))
    );
    let text = d.path().join("train.txt");
    let o = canon(
        &[
            "eval",
            "fewshot",
            "--task",
            "icl-map",
            "--write-text",
            text.to_str().unwrap(),
            "--sequences",
            "3",
            "--demos",
            "4",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = std::fs::read_to_string(&text).unwrap();
    assert_eq!(
        (t.matches("Q: ").count(), t.matches("===").count()),
        (12, 3)
    );

    // Bad input: one error line each, naming what was expected and found.
    let missing = d.path().join("missing.jsonl");
    one_error(
        &canon(
            &[
                "eval",
                "fewshot",
                "--model",
                m,
                "--task",
                missing.to_str().unwrap(),
            ],
            d.path(),
        ),
        "missing.jsonl",
    );
    let bad = d.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"split\":\"train\",\"question\":\"a\",\"answer\":\"x\"}\n{\"split\":\"test\",\"question\":\n",
    )
    .unwrap();
    one_error(
        &canon(
            &[
                "eval",
                "fewshot",
                "--model",
                m,
                "--task",
                bad.to_str().unwrap(),
            ],
            d.path(),
        ),
        "bad.jsonl:2:",
    );
    let small = d.path().join("small.jsonl");
    std::fs::write(
        &small,
        "{\"split\":\"train\",\"question\":\"a\",\"answer\":\"x\"}\n{\"split\":\"test\",\"question\":\"b\",\"answer\":\"y\"}\n",
    )
    .unwrap();
    one_error(
        &canon(
            &[
                "eval",
                "fewshot",
                "--model",
                "no-such-model",
                "--task",
                small.to_str().unwrap(),
                "--shots",
                "3",
            ],
            d.path(),
        ),
        "--shots 3: expected at most 1 demonstrations",
    );
    let nodir = d.path().join("no-locale");
    one_error(
        &canon(
            &[
                "eval",
                "fewshot",
                "--model",
                m,
                "--task",
                "gettext-de",
                "--locale-dir",
                nodir.to_str().unwrap(),
            ],
            d.path(),
        ),
        "no-locale",
    );
    one_error(
        &canon(
            &["eval", "fewshot", "--model", m, "--task", "capitals"],
            d.path(),
        ),
        "--task: expected",
    );
    one_error(
        &canon(
            &[
                "eval",
                "fewshot",
                "--task",
                "man-commands",
                "--write-text",
                "x.txt",
            ],
            d.path(),
        ),
        "--write-text: expected --task icl-map",
    );
    for keys in ["0-3", "5-2", "9", "a-b"] {
        one_error(
            &canon(
                &[
                    "eval",
                    "fewshot",
                    "--task",
                    "icl-map",
                    "--write-text",
                    "x.txt",
                    "--block-keys",
                    keys,
                ],
                d.path(),
            ),
            "--block-keys: expected N or MIN-MAX",
        );
    }
    one_error(
        &canon(
            &["eval", "cot", "--model", m, "--max-value", "10"],
            d.path(),
        ),
        "--max-value",
    );
}
