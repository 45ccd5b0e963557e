//! Few-shot tasks: a user's JSONL file, or a task built from data on this machine.
//!
//! JSONL: one object per line, either `{"input": "...", "options": ["...", ...], "label": 1}`
//! (multiple choice; `label` indexes `options`) or `{"input": "...", "target": "..."}` (free-form),
//! each with `"split": "train"|"test"` — or without it, when the train and test items are two
//! files. The older shape `{"question", "answer", "options"?}` (`answer` one of the options) is
//! read too. Items may have at most [`max_options`] options.
//!
//! `man-commands`: the NAME line of every section-1 man page (`ls \- list directory contents`)
//! becomes "which command does this describe", with the command and three other commands as
//! options.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::fewshot::{Item, Task, format_demo};
use crate::{AgentError, Result};

/// One JSONL line in either accepted shape: `{"input", "options", "label"}` /
/// `{"input", "target"}`, or `{"question", "answer", "options"?}`; `split` optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default)]
    label: Option<i64>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    answer: Option<String>,
}

/// Default for [`set_max_options`]: multiple-choice items with more options are refused.
pub const DEFAULT_MAX_OPTIONS: usize = 64;

static MAX_OPTIONS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_OPTIONS);

/// Sets the most options a multiple-choice item may have (the CLI's `--max-options`): every
/// option is scored with its own forward pass, so the count bounds the work per item.
pub fn set_max_options(n: usize) {
    MAX_OPTIONS.store(n.max(2), Ordering::Relaxed);
}

/// The current options limit.
pub fn max_options() -> usize {
    MAX_OPTIONS.load(Ordering::Relaxed)
}

/// What the lines of a file are, when they carry no `split` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitDefault {
    /// Every line must say `"split": "train"|"test"`.
    Required,
    /// Lines without a `split` are demonstrations (a separate train file).
    Train,
    /// Lines without a `split` are test items (a separate test file).
    Test,
}

const SHAPES: &str = "{\"input\", \"options\", \"label\"} (multiple choice), {\"input\", \"target\"} (free-form) or {\"question\", \"answer\", \"options\"?}, each with an optional \"split\": \"train\"|\"test\"";

/// Parses a JSONL task whose lines carry their split; errors name the line.
pub fn parse_jsonl(name: &str, path_label: &str, text: &str) -> Result<Task> {
    let (train, test) = parse_lines(path_label, text, SplitDefault::Required)?;
    finish(name, path_label, train, test)
}

fn finish(name: &str, path_label: &str, train: Vec<Item>, test: Vec<Item>) -> Result<Task> {
    if test.is_empty() {
        return Err(AgentError::Task(format!(
            "{path_label}: expected at least one test item (\"split\": \"test\", or a separate test file), found none"
        )));
    }
    Ok(Task {
        name: name.to_string(),
        train,
        test,
    })
}

/// The items of one file as (train, test).
fn parse_lines(
    path_label: &str,
    text: &str,
    default: SplitDefault,
) -> Result<(Vec<Item>, Vec<Item>)> {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let err = |line: usize, message: String| AgentError::Jsonl {
        path: path_label.to_string(),
        line,
        message,
    };
    let max = max_options();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(raw)
            .map_err(|e| err(n, format!("expected {SHAPES}, found {e}")))?;
        let question = match (l.input, l.question) {
            (Some(q), None) | (None, Some(q)) => q,
            (Some(_), Some(_)) => {
                return Err(err(
                    n,
                    "expected one of \"input\" or \"question\", found both".into(),
                ));
            }
            (None, None) => {
                return Err(err(
                    n,
                    format!("expected {SHAPES}, found neither \"input\" nor \"question\""),
                ));
            }
        };
        if l.options.len() > max {
            return Err(err(
                n,
                format!(
                    "expected at most {max} options (the limit, --max-options), found {}",
                    l.options.len()
                ),
            ));
        }
        if l.options.len() == 1 {
            return Err(err(n, "expected at least 2 options, found 1".into()));
        }
        let answer = match (l.label, l.target, l.answer) {
            (Some(k), None, None) => {
                if l.options.is_empty() {
                    return Err(err(
                        n,
                        "expected \"options\" with a \"label\", found no options".into(),
                    ));
                }
                usize::try_from(k)
                    .ok()
                    .and_then(|k| l.options.get(k))
                    .cloned()
                    .ok_or_else(|| {
                        err(
                            n,
                            format!(
                                "expected \"label\" to index the {} options (0 to {}), found {k}",
                                l.options.len(),
                                l.options.len() - 1
                            ),
                        )
                    })?
            }
            (None, Some(a), None) | (None, None, Some(a)) => {
                if !l.options.is_empty() && !l.options.contains(&a) {
                    return Err(err(
                        n,
                        format!("answer {a:?} is not one of the options {:?}", l.options),
                    ));
                }
                a
            }
            (None, None, None) => {
                return Err(err(
                    n,
                    "expected a \"label\" (multiple choice) or a \"target\"/\"answer\", found none"
                        .into(),
                ));
            }
            _ => {
                return Err(err(
                    n,
                    "expected one of \"label\", \"target\" or \"answer\", found several".into(),
                ));
            }
        };
        let item = Item {
            question,
            options: l.options,
            answer,
        };
        match (l.split.as_deref(), default) {
            (Some("train"), _) | (None, SplitDefault::Train) => train.push(item),
            (Some("test"), _) | (None, SplitDefault::Test) => test.push(item),
            (None, SplitDefault::Required) => {
                return Err(err(
                    n,
                    "expected a \"split\": \"train\"|\"test\" field (or give the train and test items as two files), found none".into(),
                ));
            }
            (Some(other), _) => {
                return Err(err(
                    n,
                    format!("expected split \"train\" or \"test\", found {other:?}"),
                ));
            }
        }
    }
    Ok((train, test))
}

/// Reads a JSONL task file whose lines carry their split.
pub fn load_jsonl(path: &Path) -> Result<Task> {
    let text = canon_fs::lines::read_text(path)?;
    parse_jsonl(&stem(path), &path.display().to_string(), &text)
}

/// Reads a task given as two files: demonstrations from `train`, test items from `test` (lines
/// may still carry a `split`, which then wins).
pub fn load_jsonl_pair(train: &Path, test: &Path) -> Result<Task> {
    let (mut tr, mut te) = parse_lines(
        &train.display().to_string(),
        &canon_fs::lines::read_text(train)?,
        SplitDefault::Train,
    )?;
    let (tr2, te2) = parse_lines(
        &test.display().to_string(),
        &canon_fs::lines::read_text(test)?,
        SplitDefault::Test,
    )?;
    tr.extend(tr2);
    te.extend(te2);
    finish(&stem(test), &test.display().to_string(), tr, te)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "task".into())
}

/// Multiple-choice items from (subject, answer) pairs: each item asks `question(subject)` with its
/// answer and three other pairs' answers (distinct) as options, in a seeded order. Pairs are used
/// in the order given; an item is skipped when fewer than three distinct distractors exist.
pub fn choice_items(
    pairs: &[(String, String)],
    question: &dyn Fn(&str) -> String,
    seed: u64,
) -> Vec<Item> {
    let mut rng = StdRng::seed_from_u64(seed);
    let answers: Vec<&String> = {
        let mut seen = HashSet::new();
        pairs
            .iter()
            .map(|(_, a)| a)
            .filter(|a| seen.insert(a.as_str()))
            .collect()
    };
    let mut items = Vec::new();
    if answers.len() < 4 {
        return items;
    }
    for (subject, answer) in pairs {
        let mut options = vec![answer.clone()];
        for j in sample(&mut rng, answers.len(), answers.len()).into_iter() {
            if options.len() == 4 {
                break;
            }
            if !options.contains(answers[j]) {
                options.push(answers[j].clone());
            }
        }
        options.shuffle(&mut rng);
        items.push(Item {
            question: question(subject),
            options,
            answer: answer.clone(),
        });
    }
    items
}

/// Shuffles `items` with `seed`, keeps `train` for demonstrations and the rest as test items.
fn split_task(
    name: &str,
    mut items: Vec<Item>,
    train: usize,
    seed: u64,
    what: &str,
) -> Result<Task> {
    items.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(1)));
    if items.len() <= train {
        return Err(AgentError::Task(format!(
            "{name}: expected more than {train} {what}, found {}",
            items.len()
        )));
    }
    let test = items.split_off(train);
    Ok(Task {
        name: name.into(),
        train: items,
        test,
    })
}

/// Writes a task as JSONL in the format [`parse_jsonl`] reads (train items first).
pub fn task_jsonl(task: &Task) -> String {
    let mut s = String::new();
    for (split, items) in [("train", &task.train), ("test", &task.test)] {
        for it in items.iter() {
            let mut v =
                serde_json::json!({"split": split, "question": it.question, "answer": it.answer});
            if !it.options.is_empty() {
                v["options"] = serde_json::json!(it.options);
            }
            s.push_str(&v.to_string());
            s.push('\n');
        }
    }
    s
}

mod icl;
mod machine;

pub use icl::*;
pub use machine::*;

#[cfg(test)]
mod tests;
