//! `canon eval fewshot`'s settings (with the `cli` feature also its argument struct, the doc
//! comments being the `--help` text): the task they name, the files `--write-text`/`--write-task`
//! write, the checks before a model loads, and the printed report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::fewshot::{FewShotConfig, FewShotReport, NORMALISATIONS, Task};
use crate::{AgentError, Result, tasks};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon eval fewshot --model smollm2 --task man-commands --shots 4 --limit 200
  canon eval fewshot --model smollm2 --task mytask.jsonl --shots 8 --seed 3 --json
  canon eval fewshot --model smollm2 --task test.jsonl --train train.jsonl --shots 4
  canon eval fewshot --model smollm2 --task gettext-de --shots 8 --limit 50
  canon eval fewshot --model smollm2 --task stdlib-module --shots 4 --limit 50
  canon eval fewshot --model runs/icl-small --task icl-map --shots 4 --seed 1
  canon eval fewshot --task icl-map --write-text runs/icl-data/train.txt --sequences 30000 --seed 1000

Tasks: man-commands (section-1 man page NAME lines: which command does this describe, 4 options),
gettext-de (the German for an English UI string, from the machine's .mo catalogs, 4 options),
stdlib-module (which Python standard library module defines a function, 4 options),
icl-map (a randomly drawn mapping, chosen by --seed, from a question's first letter to a digit:
'Q: cqx\nA: c7'; the demonstrations are the only way to know it), or a JSONL file, one item a
line: {\"input\": \"...\", \"options\": [\"...\", ...], \"label\": 1} (multiple choice, label = index of
the right option) or {\"input\": \"...\", \"target\": \"...\"} (free-form), each with
\"split\": \"train\"|\"test\" -- or without it, the test items in --task and the demonstrations in
--train. {\"question\", \"answer\", \"options\"?} lines are read too.
Prompts are 'Q: ...\\nA: answer' blocks; K demonstrations come from the train split, never the
test item. Multiple choice is scored by log-likelihood (sum, per-token mean, and unconditional:
log p(option|prompt) - log p(option|\"Answer:\")); free-form by greedy decoding and exact match.")
)]
pub struct FewShotArgs {
    /// Model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[cfg_attr(feature = "cli", arg(long, required_unless_present_any = ["write_text", "write_task"]))]
    pub model: Option<String>,
    /// A built-in task (man-commands, gettext-de, stdlib-module, icl-map) or a JSONL task file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "NAME|FILE.jsonl"))]
    pub task: String,
    /// Demonstrations from this JSONL file (lines without a split are train items); --task then
    /// holds the test items.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE.jsonl"))]
    pub train: Option<PathBuf>,
    /// Most options a multiple-choice item may have (each option costs a forward pass).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = tasks::DEFAULT_MAX_OPTIONS, value_name = "N"))]
    pub max_options: usize,
    /// Demonstrations per prompt (K).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub shots: usize,
    /// Seed of the demonstration draw (and of the generated task's split).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Score only the first N test items.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub limit: Option<usize>,
    /// Greedy tokens for free-form answers.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub max_new_tokens: usize,
    /// Man page folder for `man-commands`.
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "/usr/share/man/man1", value_name = "DIR")
    )]
    pub man_dir: PathBuf,
    /// Folder of German gettext catalogs for `gettext-de`.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            default_value = "/usr/share/locale/de/LC_MESSAGES",
            value_name = "DIR"
        )
    )]
    pub locale_dir: PathBuf,
    /// Python standard library folder for `stdlib-module` (default: python3's).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub stdlib: Option<PathBuf>,
    /// Write the task's items as JSONL (the format --task FILE.jsonl reads) and stop.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub write_task: Option<PathBuf>,
    /// icl-map only: write a training text of --sequences blocks of --demos demonstrations, each
    /// block with its own random mapping (seeded by --seed), and stop.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub write_text: Option<PathBuf>,
    /// Blocks of the --write-text training text.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 20000))]
    pub sequences: usize,
    /// Demonstrations per block of the --write-text training text.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 20))]
    pub demos: usize,
    /// Distinct keys per block of the --write-text training text, MIN-MAX (or N), drawn per
    /// block: fewer keys make blocks "bursty", each key recurring more often (8 uses all).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "8", value_name = "MIN-MAX")
    )]
    pub block_keys: String,
    /// Print one JSON object (accuracies and per-item picks).
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

impl FewShotArgs {
    /// `--write-text`: the icl-map training text, the file and the line saying what was written.
    pub fn icl_text(&self) -> Result<Option<(PathBuf, String, String)>> {
        let Some(out) = &self.write_text else {
            return Ok(None);
        };
        if self.task != "icl-map" {
            return Err(AgentError::Task(format!(
                "--write-text: expected --task icl-map, found {:?}",
                self.task
            )));
        }
        if self.sequences == 0 || self.demos == 0 {
            return Err(AgentError::Task(
                "--sequences and --demos must be at least 1".into(),
            ));
        }
        let n = tasks::ICL_KEYS.len();
        let bad = || {
            AgentError::Task(format!(
                "--block-keys: expected N or MIN-MAX with 1 <= MIN <= MAX <= {n}, found {:?}",
                self.block_keys
            ))
        };
        let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        let (lo, hi) = match self.block_keys.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(&self.block_keys)?, num(&self.block_keys)?),
        };
        if lo == 0 || lo > hi || hi > n {
            return Err(bad());
        }
        let text = tasks::icl_training_text(self.sequences, self.demos, lo..=hi, self.seed);
        let line = format!(
            "wrote {} blocks of {} demonstrations ({} bytes) to {}",
            self.sequences,
            self.demos,
            text.len(),
            out.display()
        );
        Ok(Some((out.clone(), text, line)))
    }

    /// The task `--task` (and `--train`) name, with `--max-options` set; `stdlib` gives Python's
    /// standard library folder when `--stdlib` is not given.
    pub fn load_task(&self, stdlib: &dyn Fn() -> Result<PathBuf>) -> Result<Task> {
        let a = self;
        tasks::set_max_options(a.max_options);
        if let Some(train) = &a.train {
            tasks::load_jsonl_pair(train, Path::new(&a.task))
        } else if a.task == "man-commands" {
            tasks::man_commands(&a.man_dir, 200, a.seed)
        } else if a.task == "gettext-de" {
            tasks::gettext_de(&a.locale_dir, 200, a.seed)
        } else if a.task == "stdlib-module" {
            let dir = match &a.stdlib {
                Some(d) => d.clone(),
                None => stdlib()?,
            };
            tasks::stdlib_module(&dir, 200, a.seed)
        } else if a.task == "icl-map" {
            tasks::icl_task(40, 100, a.seed)
        } else if a.task.ends_with(".jsonl") || Path::new(&a.task).exists() {
            tasks::load_jsonl(Path::new(&a.task))
        } else {
            Err(AgentError::Task(format!(
                "--task: expected man-commands, gettext-de, stdlib-module, icl-map or a .jsonl file, found {:?}",
                a.task
            )))
        }
    }

    /// `--write-task`: the task as JSONL, the file and the line saying what was written.
    pub fn task_file(&self, task: &Task) -> Option<(PathBuf, String, String)> {
        let out = self.write_task.as_ref()?;
        let line = format!(
            "wrote {} train and {} test items to {}",
            task.train.len(),
            task.test.len(),
            out.display()
        );
        Some((out.clone(), tasks::task_jsonl(task), line))
    }

    /// The run's settings, checked against the task before the model loads (a test item's own
    /// question never counts as a demonstration, which the evaluation checks item by item).
    pub fn config(&self, task: &Task) -> Result<FewShotConfig> {
        if self.shots > task.train.len() {
            return Err(AgentError::Task(format!(
                "--shots {}: expected at most {} demonstrations, the train split of {} has {} items",
                self.shots,
                task.train.len(),
                task.name,
                task.train.len()
            )));
        }
        Ok(FewShotConfig {
            shots: self.shots,
            seed: self.seed,
            limit: self.limit,
            max_new_tokens: self.max_new_tokens,
        })
    }

    /// The printed report: one JSON object with `--json`, else the accuracies.
    pub fn report(&self, model: &str, r: &FewShotReport, secs: f64) -> String {
        if self.json {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["model"] = serde_json::Value::String(model.to_string());
            v["seconds"] = serde_json::json!(secs);
            return format!("{v}\n");
        }
        report_text(model, r, secs)
    }
}

/// The accuracy lines of a run (three normalisations for multiple choice, else exact match).
pub fn report_text(model: &str, r: &FewShotReport, secs: f64) -> String {
    let mut s = format!(
        "{} {}-shot on {} ({} items, {:.1} s):\n",
        model, r.shots, r.task, r.items, secs
    );
    if r.multiple_choice {
        for (n, acc) in NORMALISATIONS.iter().zip(r.accuracy) {
            let _ = writeln!(s, "  accuracy ({n:>13}): {:.1} %", 100.0 * acc);
        }
    } else {
        let _ = writeln!(s, "  exact match: {:.1} %", 100.0 * r.accuracy[0]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines() {
        let mut r = FewShotReport {
            task: "t".into(),
            shots: 2,
            seed: 0,
            items: 4,
            multiple_choice: true,
            accuracy: [0.5, 0.25, 1.0],
            results: vec![],
        };
        assert_eq!(
            report_text("m", &r, 1.25),
            "m 2-shot on t (4 items, 1.2 s):\n  accuracy (          sum): 50.0 %\n  accuracy (         mean): 25.0 %\n  accuracy (unconditional): 100.0 %\n"
        );
        r.multiple_choice = false;
        assert!(report_text("m", &r, 1.0).ends_with("  exact match: 50.0 %\n"));
    }
}
