//! `canon eval cot` end to end on a tiny random GGUF model, and the CoT training text.

use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

mod common;
use common::{canon, one_error};

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
    // Rationales that ended at the 6-token limit are counted, per problem and in all, and a
    // warning says so.
    let cut = per
        .iter()
        .filter(|p| p["greedy_cot_cut"].as_bool().unwrap())
        .count();
    assert_eq!(v["cut_greedy_cot"].as_u64().unwrap() as usize, cut, "{v}");
    assert!(v["cut_sampled"].as_u64().unwrap() <= 9, "{v}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.contains("warning:") && err.contains("length limit"),
        cut > 0,
        "{err}"
    );

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
