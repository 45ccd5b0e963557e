//! Task data of GPT-1 fine-tuning (and of the encoders' classifiers): code snippets of the Python
//! standard library grouped by package, similarity pairs and multiple-choice endings built from
//! them, and the majority-class baseline.

use std::path::{Path, PathBuf};

use canon_nn::SplitMix64;

use super::*;

/// Fraction of `test` in its most frequent class (the majority-class baseline).
pub fn majority_baseline(test: &[TaskExample]) -> f64 {
    if test.is_empty() {
        return 0.0;
    }
    let mut counts = std::collections::BTreeMap::new();
    for e in test {
        *counts.entry(e.label).or_insert(0usize) += 1;
    }
    *counts.values().max().unwrap_or(&0) as f64 / test.len() as f64
}

/// Cuts `text` at line boundaries into pieces of at least `target` bytes (the last, shorter piece is
/// kept if it is at least `target / 2`); pieces with no non-blank line are dropped.
pub fn snippets(text: &str, target: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let push = |s: &mut String, out: &mut Vec<String>| {
        if s.lines().any(|l| !l.trim().is_empty()) {
            out.push(std::mem::take(s));
        } else {
            s.clear();
        }
    };
    for line in text.split_inclusive('\n') {
        cur.push_str(line);
        if cur.len() >= target {
            push(&mut cur, &mut out);
        }
    }
    if cur.len() >= target / 2 {
        push(&mut cur, &mut out);
    }
    out
}

fn py_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for e in rd {
        let p = e.map_err(|e| io_err(dir, e))?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "__pycache__") {
                py_files(&p, out)?;
            }
        } else if p.extension().is_some_and(|x| x == "py") {
            out.push(p);
        }
    }
    Ok(())
}

/// The module-group task: snippets of every `.py` file under `root/<dir>` for each `dir` of
/// `groups[label]`, split by file into `(train, test)`: in each group, files sorted by path, every
/// fourth file (indices 1, 5, 9, …) is held out.
pub fn module_group_task(
    root: &Path,
    groups: &[Vec<String>],
    snippet_bytes: usize,
) -> Result<(Vec<Snippet>, Vec<Snippet>)> {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, dirs) in groups.iter().enumerate() {
        let mut files = Vec::new();
        for d in dirs {
            let p = root.join(d);
            if !p.is_dir() {
                return Err(TrainError::Data(format!(
                    "module group directory {} does not exist",
                    p.display()
                )));
            }
            py_files(&p, &mut files)?;
        }
        files.sort();
        if files.len() < 2 {
            return Err(TrainError::Data(format!(
                "group {label} ({}) has {} .py files; a file-level split needs at least 2",
                dirs.join("+"),
                files.len()
            )));
        }
        for (i, f) in files.iter().enumerate() {
            let bytes = std::fs::read(f).map_err(|e| io_err(f, e))?;
            let text = String::from_utf8_lossy(&bytes);
            let dest = if i % 4 == 1 { &mut test } else { &mut train };
            dest.extend(snippets(&text, snippet_bytes).into_iter().map(|s| Snippet {
                text: s,
                label: label as u32,
                file: f.clone(),
            }));
        }
    }
    Ok((train, test))
}

/// A labelled example as text (before tokenization); `parts` as in [`TaskExample`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextExample {
    pub parts: Vec<String>,
    pub label: u32,
}

/// The similarity task over labelled snippets: for each snippet, in order, a partner drawn
/// uniformly from the same group (label 1, "same") or from the other groups (label 0) with equal
/// probability, never itself nor a snippet of the same file. Seeded, so train and test are fixed.
pub fn similarity_pairs(snips: &[Snippet], seed: u64) -> Result<Vec<TextExample>> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(snips.len());
    for (i, a) in snips.iter().enumerate() {
        let same = rng.next_f64() < 0.5;
        let pool: Vec<&Snippet> = snips
            .iter()
            .enumerate()
            .filter(|&(j, b)| j != i && b.file != a.file && (b.label == a.label) == same)
            .map(|(_, b)| b)
            .collect();
        if pool.is_empty() {
            continue;
        }
        let b = pool[rng.below(pool.len())];
        out.push(TextExample {
            parts: vec![a.text.clone(), b.text.clone()],
            label: same as u32,
        });
    }
    if out.is_empty() {
        return Err(TrainError::Data(
            "the similarity task needs snippets from at least two files and two groups".into(),
        ));
    }
    Ok(out)
}

/// The multiple-choice task over snippets (the Story Cloze shape): each snippet of at least four
/// lines is cut in half by lines; the context is the first half, the right ending the second half,
/// and `choices − 1` wrong endings are second halves of snippets from other files. The right
/// ending's position is drawn uniformly. Seeded.
pub fn ending_choices(snips: &[Snippet], choices: usize, seed: u64) -> Result<Vec<TextExample>> {
    if choices < 2 {
        return Err(TrainError::Data(format!(
            "multiple choice needs at least 2 candidates, found {choices}"
        )));
    }
    let halves: Vec<(String, String, &Path)> = snips
        .iter()
        .filter_map(|s| {
            let lines: Vec<&str> = s.text.split_inclusive('\n').collect();
            (lines.len() >= 4).then(|| {
                let h = lines.len() / 2;
                (lines[..h].concat(), lines[h..].concat(), s.file.as_path())
            })
        })
        .collect();
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(halves.len());
    for (i, (ctx, end, file)) in halves.iter().enumerate() {
        let others: Vec<usize> = (0..halves.len())
            .filter(|&j| j != i && halves[j].2 != *file)
            .collect();
        if others.len() < choices - 1 {
            continue;
        }
        let mut wrong = Vec::with_capacity(choices - 1);
        while wrong.len() < choices - 1 {
            let j = others[rng.below(others.len())];
            if !wrong.contains(&j) {
                wrong.push(j);
            }
        }
        let right = rng.below(choices);
        let mut cands: Vec<String> = wrong.iter().map(|&j| halves[j].1.clone()).collect();
        cands.insert(right, end.clone());
        let mut parts = vec![ctx.clone()];
        parts.extend(cands);
        out.push(TextExample {
            parts,
            label: right as u32,
        });
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!(
            "no snippet of at least 4 lines has {} wrong endings from other files",
            choices - 1
        )));
    }
    Ok(out)
}
