//! A held-out exercise set with unit tests (Phi-1 evaluates its models on exercises, not only on
//! loss): functions of the corpus whose docstrings carry doctest examples (`extract`), turned into
//! HumanEval-shaped problems. The prompt is the function's imports, signature and docstring; the
//! canonical solution is its body; the test runs the docstring's examples with Python's own
//! `doctest` against the candidate.
//!
//! A candidate becomes an exercise only when its tests can decide (`select`): the canonical body
//! passes (twice, so a nondeterministic example is dropped), a body that returns `None` fails, and
//! the function does not appear in what an arm trains on (exact, shared 13-gram or near duplicate;
//! see `dedup`). `build` does it for a `canon data filter` folder. The programs are run by the
//! caller (the HumanEval sandbox), so this module only reads text.

use std::collections::HashSet;

use canon_eval::Outcome;
use canon_eval::humaneval::Problem;
use serde::{Deserialize, Serialize};

use super::dedup::Decontaminator;

mod extract;
pub use extract::{candidates, doctest_check};

/// One exercise: a HumanEval problem (prompt = imports, signature and docstring; canonical
/// solution = the function's body; test = `check(candidate)` running the docstring's examples)
/// and where it came from. One line of `exercises.jsonl`, which `canon eval humaneval
/// --problems` reads as problems.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exercise {
    #[serde(flatten)]
    pub problem: Problem,
    /// `path` of the file (relative to its root) and the function's first line (1-based).
    pub source: String,
}

impl Exercise {
    /// The program the HumanEval harness runs for `completion`.
    pub fn program(&self, completion: &str) -> String {
        canon_eval::humaneval::program(&self.problem, completion)
    }

    /// The text an arm must not have trained on: the function itself.
    pub fn function_text(&self) -> String {
        let p = &self.problem.prompt;
        let head = p.find("def ").map_or("", |i| &p[i..]);
        format!("{head}{}", self.problem.canonical_solution)
    }
}

/// A completion that should fail any test that decides anything.
pub const TRIVIAL_BODY: &str = "    return None\n";

/// Why a candidate did not become an exercise (counted in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Kept,
    /// The canonical body failed its own tests (a name from elsewhere in its module, an import
    /// the sandbox lacks, output that depends on the machine).
    CanonicalFails,
    /// The canonical body passed once and failed once.
    Nondeterministic,
    /// A body that returns `None` passes too: the tests decide nothing.
    TrivialPasses,
    /// The function is in the text an arm trains on.
    InTraining,
    /// The prompt is longer than the limit (a model's context must hold it).
    LongPrompt,
}

/// Runs a batch of programs to their outcomes, in order (the HumanEval sandbox's `run_many`).
pub type RunPrograms<'a> = &'a mut dyn FnMut(&[String]) -> crate::Result<Vec<Outcome>>;

/// Decides each candidate: a prompt over `max_prompt_chars` characters first, then
/// `in_training` (flagged by the decontaminator built from the candidates), then the runs. `run` gets one batch: for every candidate still in, its
/// canonical program twice and its trivial one once. Each verdict comes with the canonical
/// body's first failure (`failed: NameError: ...`, `timed out`), if it had one.
pub fn select(
    cands: &[Exercise],
    training: &[String],
    max_prompt_chars: usize,
    run: RunPrograms<'_>,
) -> crate::Result<Vec<(Verdict, Option<String>)>> {
    let mut verdict: Vec<Verdict> = cands
        .iter()
        .map(|c| {
            if c.problem.prompt.chars().count() > max_prompt_chars {
                Verdict::LongPrompt
            } else {
                Verdict::Kept
            }
        })
        .collect();
    let texts: Vec<String> = cands.iter().map(Exercise::function_text).collect();
    let d = Decontaminator::with_defaults(&texts);
    for t in training {
        for m in d.check_all(t) {
            if verdict[m.problem] == Verdict::Kept {
                verdict[m.problem] = Verdict::InTraining;
            }
        }
    }
    let live: Vec<usize> = (0..cands.len())
        .filter(|&i| verdict[i] == Verdict::Kept)
        .collect();
    let mut programs = Vec::with_capacity(live.len() * 3);
    for &i in &live {
        let c = &cands[i];
        programs.push(c.program(&c.problem.canonical_solution));
        programs.push(c.program(&c.problem.canonical_solution));
        programs.push(c.program(TRIVIAL_BODY));
    }
    let outcomes = run(&programs)?;
    if outcomes.len() != programs.len() {
        return Err(crate::ScaleError::Msg(format!(
            "exercises: {} programs run but {} outcomes returned",
            programs.len(),
            outcomes.len()
        )));
    }
    let mut out: Vec<(Verdict, Option<String>)> = verdict.into_iter().map(|v| (v, None)).collect();
    for (k, &i) in live.iter().enumerate() {
        let o = &outcomes[3 * k..3 * k + 3];
        out[i].0 = match (o[0].passed(), o[1].passed()) {
            (false, false) => Verdict::CanonicalFails,
            (true, false) | (false, true) => Verdict::Nondeterministic,
            (true, true) if o[2].passed() => Verdict::TrivialPasses,
            (true, true) => Verdict::Kept,
        };
        out[i].1 = o[..2]
            .iter()
            .find(|o| !o.passed())
            .map(Outcome::result_string);
    }
    Ok(out)
}

/// One candidate's line of `exercises-candidates.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateRow {
    pub task_id: String,
    pub source: String,
    pub verdict: Verdict,
    /// The canonical body's failure, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// What `build` made: the exercises (manifest order) and, for every candidate, its verdict.
pub struct Built {
    pub exercises: Vec<Exercise>,
    /// Every candidate, in manifest order.
    pub candidates: Vec<CandidateRow>,
    pub report: serde_json::Value,
}

/// The exercise set of a `canon data filter` folder: the files of `manifest.jsonl` (with
/// `held_out_only`, only the held-out ones: every tenth, as the filter split them), read again
/// from their roots (`root_of`) and checked against the manifest's SHA-256 (a file changed since
/// is skipped and counted); the candidates of every file, deduplicated by function text;
/// `select`ed against the text of every arm (`snippets.jsonl`'s training pool and
/// `synthetic.jsonl`), so that no arm has seen an exercise's function, with `run` (prompts of at
/// most `max_prompt_chars` characters); then at most
/// `max` of the kept ones (0: all), a seeded sample kept in manifest order.
pub fn build(
    data: &std::path::Path,
    root_of: &dyn Fn(super::corpus::Origin) -> crate::Result<std::path::PathBuf>,
    held_out_only: bool,
    max_prompt_chars: usize,
    max: usize,
    seed: u64,
    run: RunPrograms<'_>,
) -> crate::Result<Built> {
    use super::corpus::{ManifestEntry, sha256_hex};
    let mpath = data.join("manifest.jsonl");
    let text = std::fs::read_to_string(&mpath).map_err(|e| crate::ScaleError::Io {
        path: format!(
            "cannot read {} (run canon data filter first)",
            mpath.display()
        ),
        message: e.to_string(),
    })?;
    let mut manifest = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let m: ManifestEntry = serde_json::from_str(l).map_err(|e| crate::ScaleError::Io {
            path: format!("{} line {}: not a manifest entry", mpath.display(), i + 1),
            message: e.to_string(),
        })?;
        manifest.push(m);
    }
    let (mut read, mut changed) = (0usize, 0usize);
    let mut cands: Vec<Exercise> = Vec::new();
    let mut seen_text = HashSet::new();
    let mut seen_id = HashSet::new();
    let mut held_out = HashSet::new();
    for (i, m) in manifest.iter().enumerate() {
        let held = i.is_multiple_of(10);
        if held_out_only && !held {
            continue;
        }
        let path = root_of(m.origin)?.join(&m.path);
        let Ok(t) = std::fs::read_to_string(&path) else {
            changed += 1;
            continue;
        };
        if sha256_hex(&t) != m.sha256 {
            changed += 1;
            continue;
        }
        read += 1;
        for mut c in candidates(&m.path, &t) {
            if !seen_text.insert(super::dedup::normalise(&c.function_text())) {
                continue;
            }
            if !seen_id.insert(c.problem.task_id.clone()) {
                let line = c.source.rsplit(':').next().unwrap_or("");
                c.problem.task_id = format!("{}@{line}", c.problem.task_id);
            }
            if held {
                held_out.insert(cands.len());
            }
            cands.push(c);
        }
    }
    let (arms, _) = super::pipeline::compare_inputs(data)?;
    let mut training: Vec<String> = Vec::new();
    let mut seen_doc = HashSet::new();
    for d in arms.into_iter().flat_map(|a| a.docs) {
        if seen_doc.insert(super::corpus::sha256_hex(&d)) {
            training.push(d);
        }
    }
    let decided = select(&cands, &training, max_prompt_chars, run)?;
    let verdict: Vec<Verdict> = decided.iter().map(|d| d.0).collect();
    let mut kept: Vec<usize> = (0..cands.len())
        .filter(|&i| verdict[i] == Verdict::Kept)
        .collect();
    let passing = kept.len();
    if max > 0 && kept.len() > max {
        let mut rng = canon_nn::SplitMix64::new(seed);
        for i in (1..kept.len()).rev() {
            kept.swap(i, rng.below(i + 1));
        }
        kept.truncate(max);
        kept.sort_unstable();
    }
    let count = |v: Verdict| verdict.iter().filter(|&&x| x == v).count();
    let report = serde_json::json!({
        "files": if held_out_only { "held-out" } else { "all" },
        "manifest_files": manifest.len(),
        "files_read": read,
        "files_changed_or_missing": changed,
        "candidates": cands.len(),
        "long_prompt": count(Verdict::LongPrompt),
        "max_prompt_chars": max_prompt_chars,
        "in_training": count(Verdict::InTraining),
        "canonical_fails": count(Verdict::CanonicalFails),
        "nondeterministic": count(Verdict::Nondeterministic),
        "trivial_passes": count(Verdict::TrivialPasses),
        "passing": passing,
        "exercises": kept.len(),
        "exercises_from_held_out_files": kept.iter().filter(|i| held_out.contains(*i)).count(),
        "max": max,
        "seed": seed,
        "training_texts": training.len(),
    });
    let rows = cands
        .iter()
        .zip(decided)
        .map(|(c, (verdict, failure))| CandidateRow {
            task_id: c.problem.task_id.clone(),
            source: c.source.clone(),
            verdict,
            failure,
        })
        .collect();
    Ok(Built {
        exercises: kept.into_iter().map(|i| cands[i].clone()).collect(),
        candidates: rows,
        report,
    })
}

#[cfg(test)]
mod tests;
