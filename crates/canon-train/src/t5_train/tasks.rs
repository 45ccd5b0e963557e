//! Text-to-text tasks for T5's multitask stage (paper 8, §2.4 and §3.5.2): every task is a list of
//! `(prefix, input, target)` records, so one model trains on all of them with one loss; tasks are
//! told apart only by their text prefix.
//!
//! Tasks built from data on this machine:
//! - `function_name`: the first line of a Python standard-library function's docstring → the
//!   function's name (`"function name: Return the value of the named header."` → `get`…).
//! - `stdlib_group`: a snippet of standard-library source → the package it comes from, as text
//!   (`"stdlib group: …"` → `"email"` or `"http"`; classification as text, like T5's GLUE tasks).
//! - `translate_en_de`: an English message of a gettext catalog → its German translation
//!   (`"translate English to German: File not found"` → `"Datei nicht gefunden"`, T5's own prefix),
//!   over the pairs and the hash split of `configs/transformer-mt.toml`, so the test split is the
//!   Transformer's test split.
//! - `jsonl:PATH`: any records, one JSON object per line with `input` and `target` (and optional
//!   `prefix`, `task`); an unreadable line or a record without a target is an error naming file and
//!   line.
//!
//! Train and test are split by source file (every fourth file of the sorted list is held out), so no
//! test example shares a file with a training example.
//!
//! Mixing (§3.5.2, "examples-proportional mixing"): task `m` with `e_m` training examples is sampled
//! with rate `min(e_m, K) / Σ_n min(e_n, K)`; `K = 0` means no limit.

use std::path::{Path, PathBuf};

use canon_nn::SplitMix64;

use crate::finetune::module_group_task;
use crate::{Result, TrainError, io_err};

/// One text-to-text example before tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRecord {
    pub task: String,
    pub prefix: String,
    pub input: String,
    pub target: String,
    /// Where it came from (`file:line`), for error messages.
    pub origin: String,
}

/// A tokenized example: source and target ids, each ending with EOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
}

/// Examples-proportional mixing with limit `K`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    /// Cumulative rates, ending at 1.
    cumulative: Vec<f64>,
}

impl Mixture {
    /// Rates `min(e_m, K) / Σ min(e_n, K)` (`cap = 0`: no limit). Errors when a task is empty.
    pub fn new(sizes: &[usize], cap: usize) -> Result<Self> {
        if sizes.is_empty() || sizes.contains(&0) {
            return Err(TrainError::Data(format!(
                "every task needs training examples; sizes {sizes:?}"
            )));
        }
        let mut acc = 0.0;
        let mut cumulative: Vec<f64> = crate::instruct::mixing_rates(sizes, cap)
            .iter()
            .map(|r| {
                acc += r;
                acc
            })
            .collect();
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Ok(Self { cumulative })
    }

    pub fn rates(&self) -> Vec<f64> {
        let mut prev = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let r = c - prev;
                prev = c;
                r
            })
            .collect()
    }

    /// A task index drawn at the mixing rates.
    pub fn pick(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cumulative.len() - 1)
    }
}

fn py_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for e in rd {
        let p = e.map_err(|e| io_err(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if !matches!(
                name,
                "__pycache__" | "site-packages" | "test" | "tests" | "idle_test"
            ) && !name.starts_with('.')
            {
                py_files(&p, out)?;
            }
        } else if name.ends_with(".py") {
            out.push(p);
        }
    }
    Ok(())
}

/// `(name, summary)` of every function in `src` whose body starts with a docstring: the summary is
/// the docstring's first non-empty line, up to its first full stop.
pub fn docstring_functions(src: &str) -> Vec<(String, String, usize)> {
    let lines: Vec<&str> = src.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(rest) = t
            .strip_prefix("def ")
            .or_else(|| t.strip_prefix("async def "))
        else {
            continue;
        };
        let Some(name) = rest.split('(').next().map(str::trim) else {
            continue;
        };
        if name.is_empty()
            || name.starts_with("__")
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        // The signature ends at the first line (from the def) that ends with ':' (comments aside).
        let Some(end) = (i..lines.len().min(i + 12)).find(|&j| {
            let l = lines[j].split('#').next().unwrap_or("").trim_end();
            l.ends_with(':')
        }) else {
            continue;
        };
        let Some(bi) = (end + 1..lines.len()).find(|&j| !lines[j].trim().is_empty()) else {
            continue;
        };
        let b = lines[bi].trim_start();
        let b = b.strip_prefix('r').unwrap_or(b);
        let Some(doc) = b.strip_prefix("\"\"\"").or_else(|| b.strip_prefix("'''")) else {
            continue;
        };
        let first = if doc.trim().is_empty() {
            lines.get(bi + 1).map_or("", |l| l.trim())
        } else {
            doc.trim()
        };
        let first = first
            .trim_end_matches("\"\"\"")
            .trim_end_matches("'''")
            .trim();
        let summary = match first.find(". ") {
            Some(k) => &first[..=k],
            None => first,
        };
        if summary.split_whitespace().count() >= 3 {
            out.push((name.to_string(), summary.to_string(), i + 1));
        }
    }
    out
}

/// The `function_name` task over the standard library under `root`: `(train, test)`.
pub fn function_name_task(root: &Path) -> Result<(Vec<TextRecord>, Vec<TextRecord>)> {
    let mut files = Vec::new();
    py_files(root, &mut files)?;
    files.sort();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, f) in files.iter().enumerate() {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let dest = if i % 4 == 1 { &mut test } else { &mut train };
        for (name, summary, line) in docstring_functions(&text) {
            dest.push(TextRecord {
                task: "function_name".into(),
                prefix: "function name: ".into(),
                input: summary,
                target: name,
                origin: format!("{}:{line}", f.display()),
            });
        }
    }
    if train.is_empty() || test.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: found no documented functions for the function_name task",
            root.display()
        )));
    }
    Ok((train, test))
}

/// The `stdlib_group` task: snippets of about `snippet_bytes` from the packages `groups`, the
/// target being the package's name.
pub fn stdlib_group_task(
    root: &Path,
    groups: &[&str],
    snippet_bytes: usize,
) -> Result<(Vec<TextRecord>, Vec<TextRecord>)> {
    let g: Vec<Vec<String>> = groups.iter().map(|s| vec![s.to_string()]).collect();
    let (train, test) = module_group_task(root, &g, snippet_bytes)?;
    let rec = |s: crate::finetune::Snippet| TextRecord {
        task: "stdlib_group".into(),
        prefix: "stdlib group: ".into(),
        // One line: newlines and indentation runs collapse to single spaces.
        input: s.text.split_whitespace().collect::<Vec<_>>().join(" "),
        target: groups[s.label as usize].to_string(),
        origin: s.file.display().to_string(),
    };
    Ok((
        train.into_iter().map(rec).collect(),
        test.into_iter().map(rec).collect(),
    ))
}

/// T5's prefix for English→German.
pub const EN_DE_PREFIX: &str = "translate English to German: ";

/// The `translate_en_de` task: `(train, test)` records from the gettext pairs of `cfg` (its train
/// and test splits; the validation split is left out).
pub fn translation_task(
    cfg: &crate::translation::TranslationDataConfig,
) -> Result<(Vec<TextRecord>, Vec<TextRecord>)> {
    cfg.validate().map_err(TrainError::Data)?;
    let pairs = crate::translation::load_pairs(cfg)?;
    let dir = cfg.catalog_dir().display().to_string();
    let records = |pairs: Vec<(String, String)>, split: &str| -> Vec<TextRecord> {
        pairs
            .into_iter()
            .enumerate()
            .map(|(i, (src, tgt))| TextRecord {
                task: "translate_en_de".into(),
                prefix: EN_DE_PREFIX.into(),
                input: src,
                target: tgt,
                origin: format!("{dir} ({split} pair {})", i + 1),
            })
            .collect()
    };
    Ok((records(pairs.train, "train"), records(pairs.test, "test")))
}

/// Records from a JSON-lines file (see the module header); blank lines are skipped.
pub fn jsonl_records(path: &Path, default_task: &str) -> Result<Vec<TextRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TrainError::Data(format!("{at}: not a JSON object: {e}")))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let input = field("input")
            .ok_or_else(|| TrainError::Data(format!("{at}: record has no \"input\" string")))?;
        let target = field("target")
            .ok_or_else(|| TrainError::Data(format!("{at}: record has no \"target\" string")))?;
        if target.trim().is_empty() {
            return Err(TrainError::Data(format!("{at}: the target is empty")));
        }
        out.push(TextRecord {
            task: field("task").unwrap_or_else(|| default_task.to_string()),
            prefix: field("prefix").unwrap_or_default(),
            input,
            target,
            origin: at,
        });
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!("{}: no records", path.display())));
    }
    Ok(out)
}

/// Splits records into `(train, test)`: every fourth record (indices 1, 5, 9, …) is held out.
pub fn split_every_fourth(records: Vec<TextRecord>) -> (Vec<TextRecord>, Vec<TextRecord>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, r) in records.into_iter().enumerate() {
        if i % 4 == 1 {
            test.push(r);
        } else {
            train.push(r);
        }
    }
    (train, test)
}
