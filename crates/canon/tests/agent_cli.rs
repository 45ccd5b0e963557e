//! `canon agent` end to end without downloads: the tools, and the ReAct loop on a tiny random GGUF
//! model, whose constrained actions must all parse. Bad input ends with one clear error line.
//! The browser and WebGPT are in `webgpt_cli.rs`, `eval cot` in `cot_cli.rs`, `autoprompt` and
//! `fewshot` in `prompting_cli.rs`.

use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

mod common;
use common::{canon, one_error};

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
