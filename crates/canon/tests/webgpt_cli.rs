//! `canon browse` and `canon agent webgpt` end to end without downloads: the browser on the example
//! site, the oracle's recorded episodes, a model evaluation and the reward model for best-of-n on
//! a tiny random GGUF model.

use std::path::Path;

use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

mod common;
use common::{canon, one_error};

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

#[test]
fn webgpt_reward_model_trains_and_rescores_both_ways() {
    let d = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/react");
    let model = d.path().join("tiny.gguf");
    write_tiny_llama(
        &model,
        &TinyLlama {
            context_length: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let (data, model) = (data.to_str().unwrap(), model.to_str().unwrap());
    let dir = |n: &str| d.path().join(n).to_str().unwrap().to_string();
    let base = ["agent", "webgpt", "--data", data, "--model", model];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        canon(&args, d.path())
    };
    // Oracle-wide episodes of three training questions, answers through the chat template.
    let samples = dir("samples");
    let o = run(&[
        "--episodes",
        "oracle-wide",
        "--answer-chat",
        "--split",
        "train",
        "--limit",
        "3",
        "--n",
        "2",
        "--answer-tokens",
        "4",
        "--out",
        &samples,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Comparisons and a head over the tiny model's features.
    let rm = dir("rm");
    let o = run(&["--train-reward-model", &samples, "--out", &rm]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmp = std::fs::read_to_string(Path::new(&rm).join("comparisons.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(cmp.lines().next().unwrap()).unwrap();
    for k in [
        "question",
        "quotes",
        "answer_a",
        "answer_b",
        "preferred",
        "how",
    ] {
        assert!(first.get(k).is_some(), "{k}: {first}");
    }
    assert!(Path::new(&rm).join("reward_model.json").is_file());
    // The same samples scored both ways; the reward model's picks are written.
    let again = dir("again");
    let o = run(&[
        "--rescore",
        &samples,
        "--scorer",
        "reward-model",
        "--reward-model",
        &rm,
        "--n",
        "1,2",
        "--out",
        &again,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&again).join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(s["scorer"], "reward model");
    assert_eq!(s["by_scorer"]["heuristic"].as_array().unwrap().len(), 2);
    assert_eq!(s["by_scorer"]["reward model"].as_array().unwrap().len(), 2);
    // A missing reward model and a reward-model scorer without one: one clear error each.
    one_error(
        &run(&["--reward-model", &dir("nowhere"), "--out", &dir("x")]),
        "expected a reward model at",
    );
    one_error(
        &run(&["--scorer", "reward-model", "--out", &dir("x")]),
        "expected --reward-model DIR",
    );
    std::fs::write(Path::new(&rm).join("reward_model.json"), "not json").unwrap();
    one_error(
        &run(&[
            "--rescore",
            &samples,
            "--reward-model",
            &rm,
            "--out",
            &dir("x"),
        ]),
        "expected a reward model in",
    );
}
