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

/// The (command, description) of a man page's NAME section, from roff source.
pub fn man_name_line(roff: &str) -> Option<(String, String)> {
    let mut lines = roff.lines();
    lines.find(|l| {
        let l = l.trim();
        (l.starts_with(".SH") || l.starts_with(".Sh")) && l.to_ascii_uppercase().contains("NAME")
    })?;
    let body: Vec<&str> = lines
        .take_while(|l| !l.starts_with(".SH") && !l.starts_with(".Sh"))
        .filter(|l| !l.starts_with('.') && !l.starts_with('\'') && !l.trim().is_empty())
        .collect();
    let text = body.join(" ");
    let (name, desc) = text.split_once("\\-")?;
    let name = name.trim().replace("\\", "");
    let desc = desc
        .trim()
        .replace("\\(em", "-")
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\fI", "")
        .replace("\\fP", "")
        .replace("\\&", "")
        .replace("\\ ", " ");
    if name.is_empty()
        || name.contains(',')
        || name.contains(' ')
        || desc.len() < 8
        || desc.contains('\\')
    {
        return None;
    }
    Some((name, desc))
}

/// Builds items from (command, description) pairs: each gets its command and three distractors.
pub fn man_items(pairs: &[(String, String)], seed: u64) -> Vec<Item> {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<&String> = pairs.iter().map(|(n, _)| n).collect();
    let mut items = Vec::new();
    if names.len() < 4 {
        return items;
    }
    for (i, (name, desc)) in pairs.iter().enumerate() {
        let mut options = vec![name.clone()];
        for j in sample(&mut rng, names.len(), names.len()).into_iter() {
            if options.len() == 4 {
                break;
            }
            if j != i && !options.contains(names[j]) {
                options.push(names[j].clone());
            }
        }
        options.shuffle(&mut rng);
        items.push(Item {
            question: format!("Which command does this describe: {desc}?"),
            options,
            answer: name.clone(),
        });
    }
    items
}

/// The `man-commands` task from `dir` (e.g. `/usr/share/man/man1`): pages sorted by name,
/// shuffled with `seed`, `train` items for demonstrations and the rest as test items.
pub fn man_commands(dir: &Path, train: usize, seed: u64) -> Result<Task> {
    let io = |source| AgentError::Io {
        path: dir.display().to_string(),
        error: source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .collect();
    files.sort();
    let mut pairs = Vec::new();
    let mut seen = HashSet::new();
    for f in files {
        let Ok(file) = std::fs::File::open(&f) else {
            continue;
        };
        let mut text = String::new();
        if flate2::read::GzDecoder::new(file)
            .take(64 * 1024)
            .read_to_string(&mut text)
            .is_err()
        {
            continue;
        }
        if let Some((name, desc)) = man_name_line(&text)
            && seen.insert(name.clone())
            && seen.insert(desc.clone())
        {
            pairs.push((name, desc));
        }
    }
    let mut items = man_items(&pairs, seed);
    items.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(1)));
    if items.len() <= train {
        return Err(AgentError::Task(format!(
            "{}: expected more than {train} man pages with a NAME line, found {}",
            dir.display(),
            items.len()
        )));
    }
    let test = items.split_off(train);
    Ok(Task {
        name: "man-commands".into(),
        train: items,
        test,
    })
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

/// The (original, translation) pairs of a GNU gettext `.mo` catalog (either byte order). The
/// header entry (empty msgid), entries with a context (`ctxt\x04id`) and plural entries
/// (`id\0plural`) are skipped, as are strings that are not UTF-8.
pub fn parse_mo(bytes: &[u8], label: &str) -> Result<Vec<(String, String)>> {
    let bad =
        |what: &str| AgentError::Task(format!("{label}: expected a gettext .mo catalog, {what}"));
    let word = |at: usize, le: bool| -> Result<usize> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                bad(&format!(
                    "the file ends at byte {} inside its tables",
                    bytes.len()
                ))
            })?;
        Ok(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        } as usize)
    };
    let le = match bytes.get(0..4) {
        Some([0xde, 0x12, 0x04, 0x95]) => true,
        Some([0x95, 0x04, 0x12, 0xde]) => false,
        _ => return Err(bad("found no magic number 0x950412de")),
    };
    let n = word(8, le)?;
    let (originals, translations) = (word(12, le)?, word(16, le)?);
    if n > bytes.len() / 8 {
        return Err(bad(&format!("found {n} strings in {} bytes", bytes.len())));
    }
    let string = |table: usize, i: usize| -> Result<Option<String>> {
        let len = word(table + 8 * i, le)?;
        let off = word(table + 8 * i + 4, le)?;
        let raw = bytes
            .get(off..off.saturating_add(len))
            .ok_or_else(|| bad(&format!("string {i} lies outside the file")))?;
        Ok(std::str::from_utf8(raw).ok().map(str::to_string))
    };
    let mut out = Vec::new();
    for i in 0..n {
        let (Some(id), Some(tr)) = (string(originals, i)?, string(translations, i)?) else {
            continue;
        };
        if id.is_empty() || id.contains('\u{4}') || id.contains('\0') || tr.contains('\0') {
            continue;
        }
        out.push((id, tr));
    }
    Ok(out)
}

/// Whether a UI string pair makes a clean question: one line of 2–40 characters with a letter,
/// no format directives, markup or accelerator marks, and a translation that differs.
fn plain_ui_pair(id: &str, tr: &str) -> bool {
    let plain = |s: &str| {
        let n = s.chars().count();
        (2..=40).contains(&n)
            && s.chars().any(char::is_alphabetic)
            && !s.chars().any(|c| {
                matches!(
                    c,
                    '%' | '\n' | '\t' | '{' | '}' | '<' | '>' | '_' | '&' | '$' | '\\' | '"'
                )
            })
            && s.trim() == s
    };
    plain(id) && plain(tr) && id != tr
}

/// The `gettext-de` task: the German for an English UI string, from every `.mo` catalog of `dir`
/// (e.g. `/usr/share/locale/de/LC_MESSAGES`): clean one-line pairs (see `plain_ui_pair`), an
/// English string whose catalogs disagree on the German dropped, at most one English string per
/// German one; four options (the translation and three others), `train` demonstration items.
pub fn gettext_de(dir: &Path, train: usize, seed: u64) -> Result<Task> {
    let io = |source| AgentError::Io {
        path: dir.display().to_string(),
        error: source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mo"))
        .collect();
    files.sort();
    let mut by_id: std::collections::BTreeMap<String, HashSet<String>> = Default::default();
    for f in &files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        // A catalog that does not parse is skipped: one broken file should not lose the task.
        let Ok(pairs) = parse_mo(&bytes, &f.display().to_string()) else {
            continue;
        };
        for (id, tr) in pairs {
            if plain_ui_pair(&id, &tr) {
                by_id.entry(id).or_default().insert(tr);
            }
        }
    }
    let mut used = HashSet::new();
    let pairs: Vec<(String, String)> = by_id
        .into_iter()
        .filter(|(_, t)| t.len() == 1)
        .filter_map(|(id, t)| t.into_iter().next().map(|t| (id, t)))
        .filter(|(_, t)| used.insert(t.clone()))
        .collect();
    let items = choice_items(
        &pairs,
        &|en| format!("What is the German for \"{en}\"?"),
        seed,
    );
    split_task(
        "gettext-de",
        items,
        train,
        seed,
        &format!("English/German UI strings in {}", dir.display()),
    )
}

/// The `stdlib-module` task: which module of the Python standard library in `dir` defines a
/// public function (names defined by several modules dropped), four modules as options.
pub fn stdlib_module(dir: &Path, train: usize, seed: u64) -> Result<Task> {
    let pairs: Vec<(String, String)> = crate::autoprompt::stdlib_function_facts(dir)?
        .into_iter()
        .map(|f| (f.subject, f.object))
        .collect();
    let items = choice_items(
        &pairs,
        &|f| format!("Which Python standard library module defines the function {f}?"),
        seed,
    );
    split_task(
        "stdlib-module",
        items,
        train,
        seed,
        &format!("functions in {}", dir.display()),
    )
}

/// Keys of the in-context mapping task: a question's first letter decides its answer.
pub const ICL_KEYS: &[u8] = b"abcdefgh";
/// Letters that follow the key in a question and do not matter to the answer.
pub const ICL_NOISE: &[u8] = b"ijklmnopqrstuvwxyz";

/// A mapping drawn at random: the answer of each key, the key followed by its digit (`c7`; keys
/// may share a digit). Repeating the key puts the digit right after a token that names it, the
/// pattern an induction head completes, so a small model can learn to read the mapping from the
/// demonstrations within a short training run.
fn icl_mapping(rng: &mut StdRng) -> Vec<String> {
    ICL_KEYS
        .iter()
        .map(|&k| format!("{}{}", char::from(k), rng.random_range(0..10u8)))
        .collect()
}

/// A question: a key and two noise letters (`cqx`); returns the key's index and the question.
fn icl_question(rng: &mut StdRng) -> (usize, String) {
    let k = rng.random_range(0..ICL_KEYS.len());
    icl_question_with(k, rng)
}

/// A question on key `k`.
fn icl_question_with(k: usize, rng: &mut StdRng) -> (usize, String) {
    let mut q = String::from(char::from(ICL_KEYS[k]));
    for _ in 0..2 {
        q.push(char::from(ICL_NOISE[rng.random_range(0..ICL_NOISE.len())]));
    }
    (k, q)
}

/// Training text for in-context learning: `sequences` blocks, each `demos` demonstrations
/// (`Q: cqx\nA: c7\n\n`, the few-shot prompt format) of its own randomly drawn mapping from the
/// first letter to a digit, blocks separated by a `===` line. Only the demonstrations of the same
/// block tell which digit a key has, so the model can learn the task only in context.
///
/// `keys` sets how many distinct keys a block's questions use, drawn per block between its
/// bounds (a random subset of the 8; `8..=8` uses them all): fewer keys make a block "bursty"
/// (Chan et al., 2022), each key recurring more often, so more of the block's digits can be read
/// from its earlier demonstrations.
pub fn icl_training_text(
    sequences: usize,
    demos: usize,
    keys: std::ops::RangeInclusive<usize>,
    seed: u64,
) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let all_keys = keys == (ICL_KEYS.len()..=ICL_KEYS.len());
    let mut s = String::new();
    for _ in 0..sequences {
        let m = icl_mapping(&mut rng);
        let subset: Vec<usize> = if all_keys {
            (0..ICL_KEYS.len()).collect()
        } else {
            let n = rng.random_range(keys.clone());
            let mut ks: Vec<usize> = (0..ICL_KEYS.len()).collect();
            ks.shuffle(&mut rng);
            ks.truncate(n);
            ks
        };
        for _ in 0..demos {
            // Every key by default (the stream of the original texts, which drew keys this way).
            let (k, q) = if all_keys {
                icl_question(&mut rng)
            } else {
                let k = subset[rng.random_range(0..subset.len())];
                icl_question_with(k, &mut rng)
            };
            s.push_str(&format_demo(&Item {
                question: q,
                options: Vec::new(),
                answer: m[k].clone(),
            }));
        }
        s.push_str("===\n\n");
    }
    s
}

/// The `icl-map` task: one mapping drawn from `seed` (held out from training, whose text is drawn
/// from another seed), `train` demonstration items and `test` items, all with distinct questions;
/// free-form answers (the key and its digit, `c7`).
pub fn icl_task(train: usize, test: usize, seed: u64) -> Result<Task> {
    let distinct = ICL_KEYS.len() * ICL_NOISE.len() * ICL_NOISE.len();
    if train + test > distinct {
        return Err(AgentError::Task(format!(
            "icl-map: expected at most {distinct} items, asked for {}",
            train + test
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1C1_7A5C);
    let m = icl_mapping(&mut rng);
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    while items.len() < train + test {
        let (k, q) = icl_question(&mut rng);
        if seen.insert(q.clone()) {
            items.push(Item {
                question: q,
                options: Vec::new(),
                answer: m[k].clone(),
            });
        }
    }
    let test_items = items.split_off(train);
    Ok(Task {
        name: "icl-map".into(),
        train: items,
        test: test_items,
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

#[cfg(test)]
mod tests;
