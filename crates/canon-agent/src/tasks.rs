//! Few-shot tasks: a user's JSONL file, or a task built from data on this machine.
//!
//! JSONL: one object per line, `{"split": "train"|"test", "question": "...", "answer": "...",
//! "options": ["...", ...]}` (`options` optional; when given, `answer` must be one of them).
//!
//! `man-commands`: the NAME line of every section-1 man page (`ls \- list directory contents`)
//! becomes "which command does this describe", with the command and three other commands as
//! options.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::fewshot::{Item, Task, format_demo};
use crate::{AgentError, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    split: String,
    question: String,
    answer: String,
    #[serde(default)]
    options: Vec<String>,
}

/// Parses a JSONL task; errors name the line.
pub fn parse_jsonl(name: &str, path_label: &str, text: &str) -> Result<Task> {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let err = |line: usize, message: String| AgentError::Jsonl {
        path: path_label.to_string(),
        line,
        message,
    };
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(raw).map_err(|e| {
            err(
                n,
                format!(
                    "expected {{\"split\", \"question\", \"answer\", \"options\"?}}, found {e}"
                ),
            )
        })?;
        if !l.options.is_empty() && !l.options.contains(&l.answer) {
            return Err(err(
                n,
                format!(
                    "answer {:?} is not one of the options {:?}",
                    l.answer, l.options
                ),
            ));
        }
        if l.options.len() == 1 {
            return Err(err(n, "expected at least 2 options, found 1".into()));
        }
        let item = Item {
            question: l.question,
            options: l.options,
            answer: l.answer,
        };
        match l.split.as_str() {
            "train" => train.push(item),
            "test" => test.push(item),
            other => {
                return Err(err(
                    n,
                    format!("expected split \"train\" or \"test\", found {other:?}"),
                ));
            }
        }
    }
    if test.is_empty() {
        return Err(AgentError::Task(format!(
            "{path_label}: expected at least one line with \"split\": \"test\", found none"
        )));
    }
    Ok(Task {
        name: name.to_string(),
        train,
        test,
    })
}

/// Reads a JSONL task file.
pub fn load_jsonl(path: &Path) -> Result<Task> {
    let text = canon_fs::lines::read_text(path)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "task".into());
    parse_jsonl(&name, &path.display().to_string(), &text)
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
        source,
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

/// Keys of the in-context mapping task: a question's first letter decides its answer.
pub const ICL_KEYS: &[u8] = b"abcdefgh";
/// Letters that follow the key in a question and do not matter to the answer.
pub const ICL_NOISE: &[u8] = b"ijklmnopqrstuvwxyz";

/// A mapping drawn at random: the answer digit of each key (keys may share a digit).
fn icl_mapping(rng: &mut StdRng) -> Vec<char> {
    ICL_KEYS
        .iter()
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// A question: a key and two noise letters (`cqx`); returns the key's index and the question.
fn icl_question(rng: &mut StdRng) -> (usize, String) {
    let k = rng.random_range(0..ICL_KEYS.len());
    let mut q = String::from(char::from(ICL_KEYS[k]));
    for _ in 0..2 {
        q.push(char::from(ICL_NOISE[rng.random_range(0..ICL_NOISE.len())]));
    }
    (k, q)
}

/// Training text for in-context learning: `sequences` blocks, each `demos` demonstrations
/// (`Q: cqx\nA: 7\n\n`, the few-shot prompt format) of its own randomly drawn mapping from the
/// first letter to a digit, blocks separated by a `===` line. Only the demonstrations of the same
/// block tell which digit a key has, so the model can learn the task only in context.
pub fn icl_training_text(sequences: usize, demos: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = String::new();
    for _ in 0..sequences {
        let m = icl_mapping(&mut rng);
        for _ in 0..demos {
            let (k, q) = icl_question(&mut rng);
            s.push_str(&format_demo(&Item {
                question: q,
                options: Vec::new(),
                answer: m[k].to_string(),
            }));
        }
        s.push_str("===\n\n");
    }
    s
}

/// The `icl-map` task: one mapping drawn from `seed` (held out from training, whose text is drawn
/// from another seed), `train` demonstration items and `test` items, all with distinct questions;
/// free-form answers (one digit).
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
                answer: m[k].to_string(),
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
mod tests {
    use super::*;

    #[test]
    fn jsonl_errors_name_the_line() {
        let ok = r#"{"split":"train","question":"a","answer":"x","options":["x","y"]}"#;
        let text = format!("{ok}\n\n{{not json\n");
        let e = parse_jsonl("t", "t.jsonl", &text).unwrap_err().to_string();
        assert!(e.starts_with("t.jsonl:3:"), "{e}");
        let text = format!(
            "{ok}\n{}\n",
            r#"{"split":"test","question":"b","answer":"z","options":["x","y"]}"#
        );
        let e = parse_jsonl("t", "t.jsonl", &text).unwrap_err().to_string();
        assert!(
            e.starts_with("t.jsonl:2:") && e.contains("not one of"),
            "{e}"
        );
        let text = r#"{"split":"dev","question":"b","answer":"z"}"#;
        let e = parse_jsonl("t", "t.jsonl", text).unwrap_err().to_string();
        assert!(e.contains("\"dev\""), "{e}");
        let e = parse_jsonl("t", "t.jsonl", ok).unwrap_err().to_string();
        assert!(e.contains("no"), "{e}");
        let text = format!(
            "{ok}\n{}\n",
            r#"{"split":"test","question":"b","answer":"free"}"#
        );
        let t = parse_jsonl("t", "t.jsonl", &text).unwrap();
        assert_eq!((t.train.len(), t.test.len()), (1, 1));
        assert!(t.test[0].options.is_empty());
    }

    #[test]
    fn man_name_lines_are_parsed_from_roff() {
        let roff = ".TH LS 1\n.SH NAME\nls \\- list directory contents\n.SH SYNOPSIS\n.B ls\n";
        assert_eq!(
            man_name_line(roff),
            Some(("ls".into(), "list directory contents".into()))
        );
        let several = ".SH NAME\nbzip2, bunzip2 \\- a block-sorting file compressor\n.SH X\n";
        assert_eq!(man_name_line(several), None);
        assert_eq!(man_name_line(".SH SYNOPSIS\nfoo\n"), None);
    }

    #[test]
    fn man_items_have_four_distinct_options_including_the_answer() {
        let pairs: Vec<(String, String)> = (0..10)
            .map(|i| (format!("cmd{i}"), format!("does thing number {i}")))
            .collect();
        let items = man_items(&pairs, 1);
        assert_eq!(items.len(), 10);
        for it in &items {
            assert_eq!(it.options.len(), 4);
            assert!(it.options.contains(&it.answer));
            let set: HashSet<_> = it.options.iter().collect();
            assert_eq!(set.len(), 4);
        }
    }
}
