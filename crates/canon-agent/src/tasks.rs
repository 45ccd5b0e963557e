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

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::seq::index::sample;
use serde::Deserialize;

use crate::fewshot::{Item, Task};
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
    fn the_input_options_label_shape_and_two_files_are_read() {
        let text = concat!(
            r#"{"split":"train","input":"2+2","options":["3","4"],"label":1}"#,
            "\n",
            r#"{"split":"test","input":"capital of France","target":"Paris"}"#,
            "\n"
        );
        let t = parse_jsonl("t", "t.jsonl", text).unwrap();
        assert_eq!(t.train[0].answer, "4");
        assert_eq!(t.train[0].options, ["3", "4"]);
        assert_eq!(t.test[0].answer, "Paris");
        assert!(t.test[0].options.is_empty());
        for (line, want) in [
            (
                r#"{"split":"test","input":"x","options":["a","b"],"label":2}"#,
                "0 to 1",
            ),
            (
                r#"{"split":"test","input":"x","options":["a","b"],"label":-1}"#,
                "found -1",
            ),
            (r#"{"split":"test","input":"x","label":0}"#, "no options"),
            (
                r#"{"split":"test","input":"x","target":"a","label":0,"options":["a","b"]}"#,
                "several",
            ),
            (
                r#"{"split":"test","input":"x","question":"y","target":"a"}"#,
                "both",
            ),
            (r#"{"input":"x","target":"a"}"#, "two files"),
            (
                r#"{"split":"test","prompt":"x","target":"a"}"#,
                "unknown field",
            ),
        ] {
            let e = parse_jsonl("t", "t.jsonl", line).unwrap_err().to_string();
            assert!(
                e.starts_with("t.jsonl:1:") && e.contains(want),
                "{line}: {e}"
            );
        }
        let d = tempfile::tempdir().unwrap();
        let (tr, te) = (d.path().join("train.jsonl"), d.path().join("test.jsonl"));
        std::fs::write(
            &tr,
            "{\"input\":\"a\",\"target\":\"b\"}\n{\"input\":\"c\",\"target\":\"d\"}\n",
        )
        .unwrap();
        std::fs::write(&te, "{\"input\":\"e\",\"target\":\"f\"}\n").unwrap();
        let t = load_jsonl_pair(&tr, &te).unwrap();
        assert_eq!(
            (t.train.len(), t.test.len(), t.name.as_str()),
            (2, 1, "test")
        );
    }

    #[test]
    fn too_many_options_name_the_limit_and_its_flag() {
        let opts: Vec<String> = (0..=DEFAULT_MAX_OPTIONS)
            .map(|i| format!("\"o{i}\""))
            .collect();
        let line = format!(
            r#"{{"split":"test","input":"x","options":[{}],"label":0}}"#,
            opts.join(",")
        );
        let e = parse_jsonl("t", "t.jsonl", &line).unwrap_err().to_string();
        assert!(
            e.contains("--max-options") && e.contains(&format!("at most {DEFAULT_MAX_OPTIONS}")),
            "{e}"
        );
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
