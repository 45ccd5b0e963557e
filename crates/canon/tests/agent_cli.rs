//! `canon agent` and `canon toolformer` end to end without downloads: the tools, the browser on the
//! example site, and the ReAct loop on a tiny random GGUF model, whose constrained actions must all
//! parse; `canon eval cot` and `canon autoprompt` on the same model. Bad input ends with one clear
//! error line.

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
fn tools_answer_and_fail_as_observations() {
    let d = tempfile::tempdir().unwrap();
    let o = canon(
        &[
            "agent",
            "tools",
            "--call",
            "calculator",
            "--args",
            "{\"expression\": \"1/3 + 1/6\"}",
        ],
        d.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["text"], "1/2 (= 0.5)");
    let o = canon(
        &[
            "agent",
            "tools",
            "--call",
            "calculator",
            "--args",
            "{\"expression\": \"1/0\"}",
        ],
        d.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success() && v["ok"] == false && v["text"] == "error: division by zero");
    let o = canon(&["agent", "tools"], d.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(names.starts_with(&["calculator", "calendar"]), "{names:?}");
    one_error(
        &canon(&["agent", "tools", "--index", "/nonexistent/ix"], d.path()),
        "--index",
    );
}

#[test]
fn browser_runs_commands_on_the_example_site() {
    let d = tempfile::tempdir().unwrap();
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/browse-site");
    let cmds = d.path().join("cmds.txt");
    std::fs::write(&cmds, "Search leap year\nClicked on link 0\nQuote: 2024-02-28 plus 2 days is 2024-03-01\nJump\nEnd: Answer\n").unwrap();
    let o = canon(
        &[
            "agent",
            "browse",
            "--site",
            site.to_str().unwrap(),
            "--question",
            "q?",
            "--commands",
            cmds.to_str().unwrap(),
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["quotes"][0]["url"], "tools.html");
    assert_eq!(v["ended"], "Answer");
    assert!(
        v["steps"][3]["observation"]
            .as_str()
            .unwrap()
            .starts_with("error: expected a command")
    );
    assert!(
        v["answer_prompt"]
            .as_str()
            .unwrap()
            .contains("[1] Tools (tools.html): 2024-02-28 plus 2 days is 2024-03-01")
    );
    // best-of-n answers from the answer prompt (a tiny random model: the scores, not the text)
    let model = d.path().join("tiny.gguf");
    write_tiny_llama(
        &model,
        &TinyLlama {
            context_length: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let o = canon(
        &[
            "agent",
            "browse",
            "--site",
            site.to_str().unwrap(),
            "--question",
            "q?",
            "--commands",
            cmds.to_str().unwrap(),
            "--json",
            "--model",
            model.to_str().unwrap(),
            "--n",
            "3",
            "--answer-tokens",
            "8",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let scores: Vec<f64> = v["answers"]["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 3);
    let best = v["answers"]["best"].as_u64().unwrap() as usize;
    assert!(scores.iter().all(|s| *s <= scores[best]));
    assert_eq!(
        scores.iter().position(|s| *s == scores[best]),
        Some(best),
        "ties go to the first"
    );
    // The model drives: every command it writes is one the browser accepts (the grammar follows
    // the state), and the action budget ends the episode.
    let o = canon(
        &[
            "agent",
            "browse",
            "--site",
            site.to_str().unwrap(),
            "--question",
            "When is 2024-02-28 plus 2 days?",
            "--json",
            "--model",
            model.to_str().unwrap(),
            "--drive",
            "--max-actions",
            "5",
            "--answer-tokens",
            "8",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 5, "{steps:?}");
    for s in steps {
        let obs = s["observation"].as_str().unwrap();
        assert!(!obs.starts_with("error:"), "{s}");
    }
    assert_eq!(v["ended"], "Answer");
    assert_eq!(v["answers"]["answers"].as_array().unwrap().len(), 1);
    one_error(
        &canon(
            &[
                "agent",
                "browse",
                "--site",
                site.to_str().unwrap(),
                "--question",
                "q",
                "--drive",
            ],
            d.path(),
        ),
        "required arguments",
    );
    one_error(
        &canon(
            &[
                "agent",
                "browse",
                "--site",
                "/nonexistent/site",
                "--question",
                "q",
            ],
            d.path(),
        ),
        "--site",
    );
}

#[test]
fn react_on_a_tiny_model_emits_only_parseable_actions() {
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
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("pages.jsonl"), "{\"title\":\"ls\",\"text\":\"ls is a command: list directory contents. The command ls is provided by the package coreutils.\"}\n{\"title\":\"coreutils\",\"text\":\"coreutils is a Debian package: GNU core utilities. Its version is 9.1-1.\"}\n").unwrap();
    let q = |split: &str, id: &str| {
        format!(
            "{{\"id\":\"{id}\",\"split\":\"{split}\",\"kind\":\"cmd_version\",\"entity\":\"ls\",\"question\":\"What is the version of the package that provides the command ls?\",\"answer\":\"9.1-1\",\"path\":[\"Search[ls]\",\"Search[coreutils]\",\"Finish[9.1-1]\"],\"facts\":[\"a\",\"b\",\"c\"]}}\n"
        )
    };
    std::fs::write(
        data.join("questions.jsonl"),
        q("train", "a") + &q("test", "b") + &q("test", "c"),
    )
    .unwrap();
    let out = d.path().join("t.jsonl");
    let o = canon(
        &[
            "agent",
            "react",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--mode",
            "all",
            "--shots",
            "1",
            "--max-steps",
            "2",
            "--max-tokens",
            "8",
            "--parallel",
            "2",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["scores"].as_array().unwrap().len(), 3);
    let eps: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(eps.len(), 6);
    let actions: Vec<&str> = eps
        .iter()
        .flat_map(|e| e["steps"].as_array().unwrap())
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert!(!actions.is_empty());
    for e in &eps {
        for s in e["steps"].as_array().unwrap() {
            let obs = s["observation"].as_str().unwrap();
            assert!(
                !obs.starts_with("Invalid action"),
                "a constrained action did not parse: {s}"
            );
        }
    }
    one_error(
        &canon(&["agent", "react", "--data", "/nonexistent/d"], d.path()),
        "pages.jsonl",
    );
    one_error(
        &canon(
            &[
                "agent",
                "react",
                "--data",
                data.to_str().unwrap(),
                "--mode",
                "think",
            ],
            d.path(),
        ),
        "expected a mode",
    );
}

/// `canon eval cot` (paper 18) on the tiny random model: the figures' shape (not their values),
/// the generator's problems file read back, and one error line for bad input.
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
    one_error(
        &canon(
            &["eval", "cot", "--model", m, "--max-value", "10"],
            d.path(),
        ),
        "--max-value",
    );
}

#[test]
fn webgpt_oracle_records_and_a_model_evaluation() {
    let d = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/react");
    let out = d.path().join("wg");
    let o = canon(
        &[
            "agent",
            "webgpt",
            "--data",
            data.to_str().unwrap(),
            "--oracle",
            "--split",
            "train",
            "--limit",
            "12",
            "--out",
            out.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = std::fs::read_to_string(out.join("demos.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = recs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 12 * 5, "{}", rows.len());
    // Every command record is a state ending at "Next action:"; answers cite a reference.
    assert!(rows.iter().all(|r| {
        let p = r["prompt"].as_str().unwrap();
        p.ends_with("Next action:") || p.ends_with("Answer:")
    }));
    assert!(
        rows.iter()
            .any(|r| r["completion"].as_str().unwrap().ends_with("[2]\n"))
    );
    // A tiny random model browses two test questions: it runs to the end and writes the table.
    let model = d.path().join("tiny.gguf");
    write_tiny_llama(
        &model,
        &TinyLlama {
            context_length: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let o = canon(
        &[
            "agent",
            "webgpt",
            "--data",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--style",
            "plain",
            "--limit",
            "2",
            "--n",
            "1,2",
            "--max-actions",
            "3",
            "--answer-tokens",
            "4",
            "--out",
            out.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["questions"], 2);
    assert_eq!(s["best_of_n"].as_array().unwrap().len(), 2);
    let outcomes = std::fs::read_to_string(out.join("outcomes.jsonl")).unwrap();
    for l in outcomes.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        for t in v["turns"].as_array().unwrap() {
            assert!(
                !t["observation"].as_str().unwrap().starts_with("error:"),
                "{t}"
            );
        }
        assert_eq!(v["answers"]["answers"].as_array().unwrap().len(), 2);
    }
    one_error(
        &canon(
            &[
                "agent",
                "webgpt",
                "--data",
                data.to_str().unwrap(),
                "--out",
                "x",
            ],
            d.path(),
        ),
        "--model",
    );
    one_error(
        &canon(
            &[
                "agent",
                "webgpt",
                "--data",
                data.to_str().unwrap(),
                "--oracle",
                "--split",
                "dev",
                "--out",
                "x",
            ],
            d.path(),
        ),
        "split \"dev\"",
    );
}
