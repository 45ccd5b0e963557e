//! FLAN instruction tuning (Wei et al., 2021, paper 15): tasks phrased as natural-language
//! instructions through several templates each, classification tasks with an `OPTIONS:` block and
//! scored by rank classification, examples-proportional mixing with a per-dataset cap, and task
//! clusters of which one is held out for zero-shot evaluation.
//!
//! - `Template`: an input and a target pattern with `{field}` placeholders (`{options}` is the
//!   options block). Some templates "turn the task around" (their target is an input field).
//! - `format_options`: `OPTIONS:\n- a\n- b` (FLAN's `format_options`).
//! - `mixing_rates`: `min(n_i, cap) / Σ_j min(n_j, cap)` (FLAN's `mixing_rate_num_examples` with
//!   `maximum = 3000`).
//! - `build_mixture`: draws records (task by mixing rate, example and template uniformly) from the
//!   tasks outside the held-out cluster; `held_out_eval` renders the held-out cluster's
//!   classification examples with their options for zero-shot scoring.
//! - `tasks`: the tasks this repository builds from data on the machine.

pub mod tasks;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use canon_nn::SplitMix64;
use serde::Serialize;

use crate::{Result, TrainError};

/// One pattern: `input` and `target` with `{field}` placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    pub input: &'static str,
    pub target: &'static str,
}

/// One example: named text fields, and for a classification task its options (the target is one
/// of them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    pub fields: BTreeMap<String, String>,
    pub options: Vec<String>,
}

impl Example {
    pub fn new(fields: &[(&str, &str)]) -> Self {
        Self {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            options: Vec::new(),
        }
    }

    pub fn with_options(mut self, options: Vec<String>) -> Self {
        self.options = options;
        self
    }
}

/// A dataset phrased as instructions.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub cluster: String,
    pub templates: Vec<Template>,
    pub examples: Vec<Example>,
}

/// FLAN's options block.
pub fn format_options(options: &[String]) -> String {
    let mut s = String::from("OPTIONS:");
    for o in options {
        s.push_str("\n- ");
        s.push_str(o);
    }
    s
}

/// Fills `{name}` placeholders from `ex` (`{options}`: the options block). Errors name an unknown
/// placeholder or an unclosed brace.
pub fn fill(pattern: &str, ex: &Example) -> Result<String> {
    let mut out = String::with_capacity(pattern.len() + 64);
    let mut rest = pattern;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let j = after
            .find('}')
            .ok_or_else(|| TrainError::Data(format!("template '{pattern}': unclosed '{{'")))?;
        let key = &after[..j];
        if key == "options" {
            if ex.options.is_empty() {
                return Err(TrainError::Data(format!(
                    "template '{pattern}' has {{options}} but the example has none"
                )));
            }
            out.push_str(&format_options(&ex.options));
        } else {
            let v = ex.fields.get(key).ok_or_else(|| {
                TrainError::Data(format!(
                    "template '{pattern}': no field '{key}' (the example has {:?})",
                    ex.fields.keys().collect::<Vec<_>>()
                ))
            })?;
            out.push_str(v);
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `(input, target)` of `ex` under `t`.
pub fn render(t: &Template, ex: &Example) -> Result<(String, String)> {
    Ok((fill(t.input, ex)?, fill(t.target, ex)?))
}

/// Examples-proportional mixing with a cap (T5 §3.5.2, FLAN): dataset `i` is drawn with
/// probability `min(n_i, cap) / Σ_j min(n_j, cap)`; `cap = 0` means no cap. The one mixing rule of
/// the workspace (FLAN mixtures and T5's multi-task training both use it).
pub fn mixing_rates(sizes: &[usize], cap: usize) -> Vec<f64> {
    let capped: Vec<f64> = sizes
        .iter()
        .map(|&n| if cap == 0 { n } else { n.min(cap) } as f64)
        .collect();
    let total: f64 = capped.iter().sum();
    if total == 0.0 {
        return vec![0.0; sizes.len()];
    }
    capped.iter().map(|c| c / total).collect()
}

/// Index drawn from `rates` (which sum to 1).
pub fn draw(rng: &mut SplitMix64, rates: &[f64]) -> usize {
    let u = rng.next_f64();
    let mut acc = 0.0;
    for (i, r) in rates.iter().enumerate() {
        acc += r;
        if u < acc {
            return i;
        }
    }
    rates.iter().rposition(|&r| r > 0.0).unwrap_or(0)
}

/// A training record of the mixture (`{"prompt", "completion"}` plus where it came from).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixRecord {
    pub prompt: String,
    pub completion: String,
    pub task: String,
    pub cluster: String,
    pub template: usize,
}

/// A zero-shot evaluation record: the prompt, the options and the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRecord {
    pub prompt: String,
    pub options: Vec<String>,
    pub answer: String,
    pub task: String,
    pub cluster: String,
}

/// Prompts end with a newline; the completion follows it (the model continues the line after).
fn as_prompt(input: &str) -> String {
    format!("{input}\n")
}

/// The tasks outside `held_out` (their clusters' names must differ from it).
pub fn training_tasks<'a>(tasks: &'a [Task], held_out: &str) -> Vec<&'a Task> {
    tasks.iter().filter(|t| t.cluster != held_out).collect()
}

/// Draws `n` training records from the tasks outside cluster `held_out`, by examples-proportional
/// mixing with `cap`; the example and the template of each record are drawn uniformly.
pub fn build_mixture(
    tasks: &[Task],
    held_out: &str,
    cap: usize,
    n: usize,
    seed: u64,
) -> Result<Vec<MixRecord>> {
    if !tasks.iter().any(|t| t.cluster == held_out) {
        let clusters: std::collections::BTreeSet<&str> =
            tasks.iter().map(|t| t.cluster.as_str()).collect();
        return Err(TrainError::Data(format!(
            "held-out cluster '{held_out}' has no task (clusters: {})",
            clusters.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let train: Vec<&Task> = training_tasks(tasks, held_out)
        .into_iter()
        .filter(|t| !t.examples.is_empty() && !t.templates.is_empty())
        .collect();
    if train.is_empty() {
        return Err(TrainError::Data(
            "no training task outside the held-out cluster".into(),
        ));
    }
    let rates = mixing_rates(
        &train.iter().map(|t| t.examples.len()).collect::<Vec<_>>(),
        cap,
    );
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = train[draw(&mut rng, &rates)];
        let ex = &t.examples[rng.below(t.examples.len())];
        let k = rng.below(t.templates.len());
        let (input, target) = render(&t.templates[k], ex)?;
        out.push(MixRecord {
            prompt: as_prompt(&input),
            completion: target,
            task: t.name.clone(),
            cluster: t.cluster.clone(),
            template: k,
        });
    }
    Ok(out)
}

/// The held-out cluster's classification examples (those with options), each rendered with one
/// of its task's option-bearing templates in turn, at most `per_task` per task.
pub fn held_out_eval(tasks: &[Task], held_out: &str, per_task: usize) -> Result<Vec<EvalRecord>> {
    let mut out = Vec::new();
    for t in tasks.iter().filter(|t| t.cluster == held_out) {
        let tmpls: Vec<&Template> = t
            .templates
            .iter()
            .filter(|tp| tp.input.contains("{options}"))
            .collect();
        if tmpls.is_empty() {
            continue;
        }
        for (i, ex) in t
            .examples
            .iter()
            .filter(|e| !e.options.is_empty())
            .take(per_task)
            .enumerate()
        {
            let (input, target) = render(tmpls[i % tmpls.len()], ex)?;
            if !ex.options.contains(&target) {
                return Err(TrainError::Data(format!(
                    "task {}: the target '{target}' is not one of the options {:?}",
                    t.name, ex.options
                )));
            }
            out.push(EvalRecord {
                prompt: as_prompt(&input),
                options: ex.options.clone(),
                answer: target,
                task: t.name.clone(),
                cluster: t.cluster.clone(),
            });
        }
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!(
            "held-out cluster '{held_out}' has no classification example to score"
        )));
    }
    Ok(out)
}

/// Rank classification: the option with the highest score, where an option's score is the sum of
/// its tokens' log-probabilities, divided by its token count when `length_normalize`. Ties go to
/// the first.
pub fn rank_classify(logprobs: &[Vec<f64>], length_normalize: bool) -> usize {
    let score = |lp: &Vec<f64>| {
        let s: f64 = lp.iter().sum();
        if length_normalize && !lp.is_empty() {
            s / lp.len() as f64
        } else {
            s
        }
    };
    let mut best = 0;
    for (i, lp) in logprobs.iter().enumerate() {
        if score(lp) > score(&logprobs[best]) {
            best = i;
        }
    }
    best
}
