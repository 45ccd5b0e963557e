//! Synthetic "textbook" passages and exercises (Phi-1 §2.2): a generating model writes a short
//! explanation with code, or a function with a docstring and tests, on topics drawn from a list
//! (Phi-1 got diversity by varying topics and audiences in the prompt; so does this, at small
//! scale). Every generation is checked against the evaluation problems (exact, 13-gram, near; see
//! `dedup`) and against earlier generations (exact normalised-text duplicates); flagged ones are
//! dropped and counted. Exercises then run their own asserts in the sandbox (`verify`) and are
//! kept only when those pass and decide something.

use std::collections::HashSet;

use canon_infer::{GenerateRequest, SamplingConfig};
use serde::{Deserialize, Serialize};

use super::corpus::sha256_hex;
use super::dedup::{Decontaminator, normalise};
use crate::{Result, ScaleError};

pub mod verify;

use super::exercises::RunPrograms;
pub use verify::Verdict;

/// Basic-coding topics (the audience of Phi-1's "textbook" data).
pub const TOPICS: &[&str] = &[
    "reversing a list",
    "counting words in a string",
    "checking whether a number is prime",
    "binary search in a sorted list",
    "computing a factorial recursively",
    "merging two sorted lists",
    "removing duplicates while keeping order",
    "finding the maximum of a list without max()",
    "dictionaries for counting",
    "string slicing",
    "list comprehensions",
    "the Fibonacci sequence with a loop",
    "validating balanced parentheses with a stack",
    "converting Celsius to Fahrenheit",
    "summing the digits of a number",
    "finding common elements of two lists",
    "a simple class with methods",
    "reading numbers and computing an average",
    "checking whether a string is a palindrome",
    "sorting a list of tuples by the second item",
    "greatest common divisor with Euclid's algorithm",
    "flattening a nested list",
    "counting vowels in a string",
    "transposing a matrix stored as lists",
];

/// The topics of a `--topics` file: one a line, blank lines and `#` comments skipped.
pub fn read_topics(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ScaleError::Msg(format!("cannot read --topics {}: {e}", path.display())))?;
    let topics: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if topics.is_empty() {
        return Err(ScaleError::Msg(format!(
            "--topics {}: expected one topic a line, found none",
            path.display()
        )));
    }
    Ok(topics)
}

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynthKind {
    /// A short explanation followed by a Python example.
    Textbook,
    /// A Python function with a docstring, then assert-based tests.
    Exercise,
}

/// The user prompt for item `i` (topic and kind rotate: one pass over `topics` of textbook
/// passages, then one of exercises, and so on). `topics` is not empty.
pub fn prompt(topics: &[String], i: usize) -> (SynthKind, &str, String) {
    let topic = topics[i % topics.len()].as_str();
    let kind = if (i / topics.len()).is_multiple_of(2) {
        SynthKind::Textbook
    } else {
        SynthKind::Exercise
    };
    let text = match kind {
        SynthKind::Textbook => format!(
            "Write a short textbook section for a student learning Python about {topic}. \
             Explain the idea in two or three sentences, then give a small, well-commented \
             Python function that shows it."
        ),
        SynthKind::Exercise => format!(
            "Write a Python exercise about {topic}: one function with a clear docstring that \
             states the task, its solution, and three assert statements that test it. Reply \
             with Python code only."
        ),
    };
    (kind, topic, text)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthItem {
    pub index: usize,
    pub kind: SynthKind,
    pub topic: String,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SynthReport {
    pub kept: Vec<SynthItem>,
    /// (index, task index of the evaluation problem matched).
    pub contaminated: Vec<(usize, usize)>,
    pub duplicates: usize,
    pub empty: usize,
}

/// Generates a batch of requests to their texts, in order (the batched engine's
/// `generate_batch`, or a scripted stand-in).
pub type GenerateBatch<'a> = &'a mut dyn FnMut(&[GenerateRequest]) -> Result<Vec<String>>;

/// Items generated per batch: the engine's slots, and how often progress is reported.
pub const BATCH: usize = 8;

/// Generates `n` items on `topics` through `batch`, [`BATCH`] at a time; `wrap` turns a user prompt into the
/// model's prompt (its chat template). Drops empty outputs, exact duplicates and anything the
/// decontaminator flags. Item `i` samples with seed `seed + i`, so a batch gives what one-by-one
/// generation would.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    batch: GenerateBatch<'_>,
    topics: &[String],
    wrap: &dyn Fn(&str) -> std::result::Result<String, String>,
    n: usize,
    max_tokens: usize,
    seed: u64,
    deco: &Decontaminator,
    on_item: &mut dyn FnMut(usize),
) -> Result<SynthReport> {
    let mut rep = SynthReport::default();
    let mut seen = HashSet::new();
    for start in (0..n).step_by(BATCH) {
        let idx: Vec<usize> = (start..n.min(start + BATCH)).collect();
        let mut reqs = Vec::with_capacity(idx.len());
        for &i in &idx {
            let (_, _, user) = prompt(topics, i);
            let mut req = GenerateRequest::new(
                wrap(&user).map_err(|e| ScaleError::Data(format!("prompt {i}: {e}")))?,
                max_tokens,
            );
            req.sampling = SamplingConfig {
                temperature: 0.8,
                top_p: Some(0.95),
                seed: seed.wrapping_add(i as u64),
                ..SamplingConfig::default()
            };
            reqs.push(req);
        }
        let texts = batch(&reqs)
            .map_err(|e| ScaleError::Data(format!("generating items {start}..: {e}")))?;
        if texts.len() != reqs.len() {
            return Err(ScaleError::Data(format!(
                "the generator returned {} texts for {} prompts",
                texts.len(),
                reqs.len()
            )));
        }
        for (i, text) in idx.into_iter().zip(texts) {
            on_item(i);
            let (kind, topic, _) = prompt(topics, i);
            let text = text.trim().to_string();
            if text.is_empty() {
                rep.empty += 1;
                continue;
            }
            if !seen.insert(sha256_hex(&normalise(&text))) {
                rep.duplicates += 1;
                continue;
            }
            if let Some(m) = deco.check(&text) {
                rep.contaminated.push((i, m.problem));
                continue;
            }
            rep.kept.push(SynthItem {
                index: i,
                kind,
                topic: topic.to_string(),
                text,
            });
        }
    }
    Ok(rep)
}

/// One `canon data synth` run: `n` items of at most `max_tokens` tokens from `model`, into `out`.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOpts {
    pub out: std::path::PathBuf,
    /// The model's name as given (recorded in the report).
    pub model: String,
    pub n: usize,
    pub max_tokens: usize,
    pub seed: u64,
    /// Run each exercise's asserts in the sandbox and keep only those that pass and decide.
    pub verify: bool,
    /// The topics the prompts rotate through ([`TOPICS`] unless `--topics` names a file).
    pub topics: Vec<String>,
}

impl SynthOpts {
    /// The counts are positive (the message names the flags).
    pub fn check(&self) -> Result<()> {
        if self.n == 0 || self.max_tokens == 0 {
            return Err(ScaleError::Msg(
                "--n and --max-tokens must be positive".into(),
            ));
        }
        if self.topics.is_empty() {
            return Err(ScaleError::Msg("expected at least one topic".into()));
        }
        Ok(())
    }
}

/// One exercise's check, as `synth-exercises.jsonl` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExerciseCheck {
    pub index: usize,
    pub topic: String,
    /// `passed`, `failed`, `trivial`, `no_tests` or `no_function`.
    pub verdict: String,
    /// Why it failed: the exception, or `timed out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub text: String,
}

/// Checks the exercises among `items` with `run` and drops those whose verdict is not
/// [`Verdict::Passed`]; returns every exercise's check, in order.
pub fn keep_verified(
    items: &mut Vec<SynthItem>,
    run: RunPrograms<'_>,
) -> Result<Vec<ExerciseCheck>> {
    let replies: Vec<&str> = items
        .iter()
        .filter(|k| k.kind == SynthKind::Exercise)
        .map(|k| k.text.as_str())
        .collect();
    let mut verdicts = verify::verify(&replies, run)?.into_iter();
    let mut checks = Vec::new();
    let mut kept = Vec::with_capacity(items.len());
    for k in items.drain(..) {
        if k.kind != SynthKind::Exercise {
            kept.push(k);
            continue;
        }
        let v = verdicts
            .next()
            .ok_or_else(|| ScaleError::Msg(format!("no verdict for exercise {}", k.index)))?;
        checks.push(ExerciseCheck {
            index: k.index,
            topic: k.topic.clone(),
            verdict: v.key().into(),
            reason: match &v {
                Verdict::Failed(r) => Some(r.clone()),
                _ => None,
            },
            text: k.text.clone(),
        });
        if v.passed() {
            kept.push(k);
        }
    }
    *items = kept;
    Ok(checks)
}

/// Generates `o.n` items with `lm` through its chat template, checked against `benchmark`
/// ((task id, text) pairs: the evaluation problems); with `o.verify`, runs the exercises' tests
/// through `run` (the sandbox) and keeps the ones that pass and decide. Writes `synthetic.jsonl`,
/// `synth-exercises.jsonl` (every exercise's verdict, when checked) and `synth-report.json` into
/// `o.out` and returns the report. `on_item` sees each item's index.
pub fn run(
    o: &SynthOpts,
    lm: canon_models::LoadedLm,
    benchmark: &[(String, String)],
    on_item: &mut dyn FnMut(usize),
    run: Option<RunPrograms<'_>>,
) -> Result<serde_json::Value> {
    let texts: Vec<String> = benchmark.iter().map(|(_, t)| t.clone()).collect();
    let deco = Decontaminator::with_defaults(&texts);
    let tmpl = lm.chat_template.clone().ok_or_else(|| {
        ScaleError::Msg(format!(
            "{} has no chat template; synth needs a chat model",
            o.model
        ))
    })?;
    let wrap = move |user: &str| -> std::result::Result<String, String> {
        tmpl.render(&[canon_text::chat::Message::new("user", user)], true)
            .map_err(|e| format!("chat template: {e}"))
    };
    let engine = canon_infer::Engine::start(
        lm,
        canon_infer::EngineConfig {
            slots: BATCH,
            ..Default::default()
        },
    )
    .map_err(|e| ScaleError::Msg(format!("cannot start the engine: {e}")))?;
    let tok = engine.tokenizer().clone();
    let mut batch = |reqs: &[GenerateRequest]| -> Result<Vec<String>> {
        let mut rs = Vec::with_capacity(reqs.len());
        for r in reqs {
            let ids = tok
                .encode(&r.prompt, true)
                .map_err(|e| ScaleError::Data(format!("tokenizer: {e}")))?;
            let mut q = canon_infer::Request::new(ids, r.max_tokens);
            q.sampling = r.sampling.clone();
            rs.push(q);
        }
        let done = engine
            .generate_batch(rs)
            .map_err(|e| ScaleError::Data(e.to_string()))?;
        Ok(done.into_iter().map(|c| c.text).collect())
    };
    let t0 = std::time::Instant::now();
    let generated = generate(
        &mut batch,
        &o.topics,
        &wrap,
        o.n,
        o.max_tokens,
        o.seed,
        &deco,
        on_item,
    );
    engine.shutdown();
    let mut rep = generated?;
    let exercises = match (o.verify, run) {
        (true, Some(run)) => {
            let checks = keep_verified(&mut rep.kept, run)?;
            super::pipeline::write_jsonl(&o.out.join("synth-exercises.jsonl"), &checks)?;
            let mut counts = serde_json::Map::new();
            for key in ["passed", "failed", "trivial", "no_tests", "no_function"] {
                let n = checks.iter().filter(|c| c.verdict == key).count();
                counts.insert(key.into(), n.into());
            }
            counts.insert("checked".into(), checks.len().into());
            serde_json::Value::Object(counts)
        }
        (true, None) => {
            return Err(ScaleError::Msg(
                "exercise verification needs a sandbox runner".into(),
            ));
        }
        (false, _) => serde_json::json!("not checked (--no-verify)"),
    };
    super::pipeline::write_jsonl(&o.out.join("synthetic.jsonl"), &rep.kept)?;
    let summary = serde_json::json!({
        "model": o.model, "requested": o.n, "kept": rep.kept.len(),
        "duplicates": rep.duplicates, "empty": rep.empty,
        "contaminated": rep.contaminated.iter()
            .map(|(i, p)| serde_json::json!({"index": i, "task_id": benchmark[*p].0}))
            .collect::<Vec<_>>(),
        "exercises": exercises,
        "characters": rep.kept.iter().map(|k| k.text.len()).sum::<usize>(),
        "seconds": t0.elapsed().as_secs_f64(),
    });
    let path = o.out.join("synth-report.json");
    let text = serde_json::to_string_pretty(&summary)
        .map_err(|e| ScaleError::Msg(format!("synth report: {e}")))?;
    canon_fs::write_atomic(&path, text.as_bytes())
        .map_err(|e| ScaleError::Msg(format!("cannot write {}: {e}", path.display())))?;
    Ok(summary)
}

#[cfg(test)]
mod tests;
