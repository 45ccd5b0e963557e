//! Synthetic "textbook" passages and exercises (Phi-1 §2.2): a generating model writes a short
//! explanation with code, or a function with a docstring and tests, on topics drawn from a list
//! (Phi-1 got diversity by varying topics and audiences in the prompt; so does this, at small
//! scale). Every generation is checked against the evaluation problems (exact, 13-gram, near; see
//! `dedup`) and against earlier generations (exact normalised-text duplicates); flagged ones are
//! dropped and counted.

use std::collections::HashSet;

use canon_infer::{GenerateRequest, SamplingConfig, TextGenerator};
use serde::{Deserialize, Serialize};

use super::corpus::sha256_hex;
use super::dedup::{Decontaminator, normalise};
use crate::{Result, ScaleError};

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

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynthKind {
    /// A short explanation followed by a Python example.
    Textbook,
    /// A Python function with a docstring, then assert-based tests.
    Exercise,
}

/// The user prompt for item `i` (topic and kind rotate).
pub fn prompt(i: usize) -> (SynthKind, &'static str, String) {
    let topic = TOPICS[i % TOPICS.len()];
    let kind = if (i / TOPICS.len()).is_multiple_of(2) {
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

/// Generates `n` items with `generator`; `wrap` turns a user prompt into the model's prompt
/// (its chat template). Drops empty outputs, exact duplicates and anything the decontaminator
/// flags.
pub fn generate(
    generator: &mut dyn TextGenerator,
    wrap: &dyn Fn(&str) -> std::result::Result<String, String>,
    n: usize,
    max_tokens: usize,
    seed: u64,
    deco: &Decontaminator,
    on_item: &mut dyn FnMut(usize),
) -> Result<SynthReport> {
    let mut rep = SynthReport::default();
    let mut seen = HashSet::new();
    for i in 0..n {
        let (kind, topic, user) = prompt(i);
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
        let g = generator
            .generate(&req)
            .map_err(|e| ScaleError::Data(format!("generation {i}: {e}")))?;
        on_item(i);
        let text = g.text.trim().to_string();
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
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_infer::{FinishReason, Generation};

    /// Replays fixed outputs.
    struct Scripted(Vec<String>, usize);

    impl TextGenerator for Scripted {
        fn generate(&mut self, _req: &GenerateRequest) -> canon_infer::Result<Generation> {
            let t = self.0[self.1 % self.0.len()].clone();
            self.1 += 1;
            Ok(Generation {
                prompt_tokens: Vec::new(),
                tokens: Vec::new(),
                text: t,
                finish_reason: FinishReason::Stop,
                logprobs: None,
                prefill_ms: 0.0,
                decode_ms: 0.0,
            })
        }
    }

    #[test]
    fn contaminated_and_duplicate_generations_are_dropped() {
        let problem =
            "def add(x, y):\n    \"\"\"Add two numbers x and y.\"\"\"\n    return x + y\n";
        let deco = Decontaminator::with_defaults(&[problem.to_string()]);
        let mut g = Scripted(
            vec![
                "def rev(xs):\n    \"\"\"Reverse xs.\"\"\"\n    return xs[::-1]\n".into(),
                "def rev(xs):\n    \"\"\"Reverse xs.\"\"\"\n    return xs[::-1]\n".into(), // duplicate
                format!("Here is code:\n{problem}"), // contaminated
                "   ".into(),                        // empty
                "def sq(n):\n    return n * n\n".into(),
            ],
            0,
        );
        let mut calls = 0;
        let rep = generate(&mut g, &|s| Ok(s.to_string()), 5, 50, 1, &deco, &mut |_| {
            calls += 1
        })
        .unwrap();
        assert_eq!(calls, 5);
        assert_eq!(rep.kept.len(), 2);
        assert_eq!(rep.duplicates, 1);
        assert_eq!(rep.contaminated, vec![(2, 0)]);
        assert_eq!(rep.empty, 1);
        assert_eq!(rep.kept[1].index, 4);
    }

    #[test]
    fn prompts_rotate_topics_and_kinds() {
        let (k0, t0, _) = prompt(0);
        let (k1, t1, _) = prompt(1);
        let (k2, _, p2) = prompt(TOPICS.len());
        assert_eq!(k0, SynthKind::Textbook);
        assert_ne!(t0, t1);
        assert_eq!(k1, SynthKind::Textbook);
        assert_eq!(k2, SynthKind::Exercise);
        assert!(p2.contains("assert"));
    }
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
}

impl SynthOpts {
    /// The counts are positive (the message names the flags).
    pub fn check(&self) -> Result<()> {
        if self.n == 0 || self.max_tokens == 0 {
            return Err(ScaleError::Msg(
                "--n and --max-tokens must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Generates `o.n` items with `lm` through its chat template, checked against `benchmark`
/// ((task id, text) pairs: the evaluation problems), writes `synthetic.jsonl` and
/// `synth-report.json` into `o.out` and returns the report. `on_item` sees each item's index.
pub fn run(
    o: &SynthOpts,
    lm: canon_models::LoadedLm,
    benchmark: &[(String, String)],
    on_item: &mut dyn FnMut(usize),
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
    let mut generator = canon_infer::LmGenerator::new(lm);
    let t0 = std::time::Instant::now();
    let rep = generate(
        &mut generator,
        &wrap,
        o.n,
        o.max_tokens,
        o.seed,
        &deco,
        on_item,
    )?;
    super::pipeline::write_jsonl(&o.out.join("synthetic.jsonl"), &rep.kept)?;
    let summary = serde_json::json!({
        "model": o.model, "requested": o.n, "kept": rep.kept.len(),
        "duplicates": rep.duplicates, "empty": rep.empty,
        "contaminated": rep.contaminated.iter()
            .map(|(i, p)| serde_json::json!({"index": i, "task_id": benchmark[*p].0}))
            .collect::<Vec<_>>(),
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
mod opts_tests {
    use super::*;

    #[test]
    fn counts_must_be_positive() {
        let mut o = SynthOpts {
            out: "out".into(),
            model: "m".into(),
            n: 1,
            max_tokens: 8,
            seed: 0,
        };
        assert!(o.check().is_ok());
        o.n = 0;
        let e = o.check().unwrap_err().to_string();
        assert_eq!(e, "--n and --max-tokens must be positive");
    }
}
