//! The settings of the two task fine-tunings on the standard-library module-group task (with the
//! `cli` feature also their argument structs, the doc comments being the `--help` text):
//! `canon finetune --method gpt1-heads` (GPT-1's task heads, paper 2) and
//! `--method classifier` (a BERT classifier, paper 3); the engine configurations and the encoded
//! train/held-out examples they run on.

use std::path::{Path, PathBuf};

use canon_train::bert_finetune::BertFinetuneConfig;
use canon_train::finetune::{
    FinetuneConfig, Snippet, TaskExample, TaskKind, TextExample, ending_choices, majority_baseline,
    module_group_task, similarity_pairs,
};

use crate::{Result, bail, err};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon train --config configs/gpt1.toml --out runs/gpt1
  canon --threads 2 finetune --method gpt1-heads --model runs/gpt1 --out runs/gpt1-ft
  canon finetune --method gpt1-heads --model runs/gpt1 --task similarity --out runs/gpt1-sim
  canon finetune --method gpt1-heads --model runs/gpt1 --task choice --choices 2 --out runs/gpt1-mc")
)]
pub struct FinetuneArgs {
    /// The task and its input transformation.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Task::Classify))]
    pub task: Task,
    /// Candidates per multiple-choice question (the right ending and wrong ones).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2))]
    pub choices: usize,
    /// The pretrained GPT run folder (from `canon train`).
    #[cfg_attr(
        feature = "cli",
        arg(long = "model", visible_alias = "pretrained", value_name = "DIR")
    )]
    pub pretrained: PathBuf,
    /// Folder for metrics.jsonl, the fine-tuned weights and task.json.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub out: PathBuf,
    /// Standard-library directories of class 0 (comma-separated).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "email,http", value_delimiter = ',')
    )]
    pub group_a: Vec<String>,
    /// Standard-library directories of class 1 (comma-separated).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "json,xml", value_delimiter = ',')
    )]
    pub group_b: Vec<String>,
    /// Snippet size in bytes (cut at line boundaries).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 256))]
    pub snippet_bytes: usize,
    /// Optimizer steps.
    #[cfg_attr(
        feature = "cli",
        arg(long = "max-steps", visible_alias = "steps", default_value_t = 300)
    )]
    pub steps: u64,
    /// Peak learning rate (linear warmup over 10 % of the steps, then linear decay to 0).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5e-4))]
    pub lr: f64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 8))]
    pub batch_size: usize,
    /// Weight of the auxiliary language-modelling loss (the paper's λ).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.5))]
    pub lambda: f64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seed: u64,
    /// Held-out accuracy every this many steps (on at most --eval-max snippets; all at the end).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 25))]
    pub eval_every: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub eval_max: usize,
    /// Continue the run in --out (after Ctrl-C, or with a larger --max-steps) from its checkpoint.
    #[cfg_attr(feature = "cli", arg(long))]
    pub resume: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Task {
    /// Which module group a snippet comes from.
    Classify,
    /// Whether two snippets come from the same module group.
    Similarity,
    /// Which candidate ending continues a snippet.
    Choice,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon train --config configs/bert.toml --out runs/bert
  canon --threads 2 finetune --method classifier --model runs/bert --out runs/bert-ft
  canon --threads 2 finetune --method classifier --model minilm --out runs/minilm-ft")
)]
pub struct FinetuneBertArgs {
    /// A BERT run folder, `minilm`, or an HF BERT folder.
    #[cfg_attr(feature = "cli", arg(long, value_name = "RUN_DIR|minilm|DIR"))]
    pub model: String,
    /// Folder for metrics.jsonl, loss.png and the checkpoint.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub out: PathBuf,
    /// The task (only `stdlib-groups` for now).
    #[cfg_attr(feature = "cli", arg(long, default_value = "stdlib-groups"))]
    pub task: String,
    /// Standard-library directories of class 0 (comma-separated).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "email,http", value_delimiter = ',')
    )]
    pub group_a: Vec<String>,
    /// Standard-library directories of class 1 (comma-separated).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "json,xml", value_delimiter = ',')
    )]
    pub group_b: Vec<String>,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 256))]
    pub snippet_bytes: usize,
    /// Optimizer steps.
    #[cfg_attr(
        feature = "cli",
        arg(long = "max-steps", visible_alias = "steps", default_value_t = 200)
    )]
    pub steps: u64,
    /// Peak learning rate (linear warmup over 10 % of the steps, then linear decay to 0).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5e-5))]
    pub lr: f64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub batch_size: usize,
    /// Longest input in tokens, [CLS] and [SEP] included.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 128))]
    pub max_len: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seed: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 50))]
    pub eval_every: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub eval_max: usize,
    /// Ignore the pretrained weights (same architecture and vocabulary, random initialisation).
    #[cfg_attr(feature = "cli", arg(long))]
    pub from_scratch: bool,
    /// Continue the run in --out (after Ctrl-C, or with a larger --max-steps) from its checkpoint.
    #[cfg_attr(feature = "cli", arg(long))]
    pub resume: bool,
}

/// Encoded train and held-out examples, and the held-out majority-class accuracy.
pub struct TaskData {
    pub train: Vec<TaskExample>,
    pub test: Vec<TaskExample>,
    pub baseline: f64,
}

impl TaskData {
    /// Examples per label, `a / b / ...`.
    pub fn counts(v: &[TaskExample], labels: usize) -> String {
        (0..labels as u32)
            .map(|l| v.iter().filter(|e| e.label == l).count().to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// Token ids of `text` (no special tokens).
fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    tok.encode(text, false)
        .map(|enc| enc.get_ids().to_vec())
        .map_err(|e| err!("tokenizer: {e}"))
}

/// The module-group snippets of the Python standard library in `stdlib`, held out by file.
fn snippets(
    stdlib: &Path,
    groups: [&[String]; 2],
    bytes: usize,
) -> Result<(Vec<Snippet>, Vec<Snippet>)> {
    if bytes == 0 {
        bail!("--snippet-bytes must be positive");
    }
    Ok(module_group_task(
        stdlib,
        &[groups[0].to_vec(), groups[1].to_vec()],
        bytes,
    )?)
}

impl FinetuneArgs {
    /// The fine-tuning loop's settings (warmup over 10 % of the steps).
    pub fn config(&self) -> FinetuneConfig {
        FinetuneConfig {
            lambda: self.lambda,
            lr: self.lr,
            steps: self.steps,
            warmup: (self.steps / 10).max(1),
            batch_size: self.batch_size,
            seed: self.seed,
            eval_every: self.eval_every,
            eval_max: self.eval_max,
            ..FinetuneConfig::default()
        }
    }

    /// The head the task trains.
    pub fn kind(&self) -> TaskKind {
        match self.task {
            Task::Classify => TaskKind::Classification { classes: 2 },
            Task::Similarity => TaskKind::Similarity { classes: 2 },
            Task::Choice => TaskKind::MultipleChoice {
                choices: self.choices,
            },
        }
    }

    /// Checks the settings that need no file.
    pub fn check(&self) -> Result<()> {
        if self.snippet_bytes == 0 {
            bail!("--snippet-bytes must be positive");
        }
        Ok(())
    }

    /// The task's examples from the standard library in `stdlib`, in GPT-1's input
    /// transformations, encoded with `tok`.
    pub fn task_data(&self, stdlib: &Path, tok: &tokenizers::Tokenizer) -> Result<TaskData> {
        let groups = [&self.group_a[..], &self.group_b[..]];
        let (train_s, test_s) = snippets(stdlib, groups, self.snippet_bytes)?;
        let texts = |s: &[Snippet], seed: u64| -> Result<Vec<TextExample>> {
            Ok(match self.task {
                Task::Classify => s
                    .iter()
                    .map(|s| TextExample {
                        parts: vec![s.text.clone()],
                        label: s.label,
                    })
                    .collect(),
                Task::Similarity => similarity_pairs(s, seed)?,
                Task::Choice => ending_choices(s, self.choices, seed)?,
            })
        };
        let encode_all = |v: Vec<TextExample>| -> Result<Vec<TaskExample>> {
            v.into_iter()
                .map(|e| {
                    let parts = e
                        .parts
                        .iter()
                        .map(|p| encode(tok, p))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(TaskExample {
                        parts,
                        label: e.label,
                    })
                })
                .collect()
        };
        let train = encode_all(texts(&train_s, self.seed)?)?;
        let test = encode_all(texts(&test_s, self.seed ^ 0x7E57)?)?;
        let baseline = majority_baseline(&test);
        Ok(TaskData {
            train,
            test,
            baseline,
        })
    }

    /// The task line printed before training.
    pub fn task_note(&self, stdlib: &Path, d: &TaskData) -> String {
        let labels = self.kind().labels();
        format!(
            "task {:?} over {} vs {} in {}: {} train examples ({}), {} held-out ({}) from other \
             files; majority-class baseline {:.1} %",
            self.task,
            self.group_a.join("+"),
            self.group_b.join("+"),
            stdlib.display(),
            d.train.len(),
            TaskData::counts(&d.train, labels),
            d.test.len(),
            TaskData::counts(&d.test, labels),
            100.0 * d.baseline
        )
    }
}

impl FinetuneBertArgs {
    /// Checks the settings that need no file.
    pub fn check(&self) -> Result<()> {
        if self.task != "stdlib-groups" {
            bail!("unknown --task '{}'; expected stdlib-groups", self.task);
        }
        if self.snippet_bytes == 0 {
            bail!("--snippet-bytes must be positive");
        }
        Ok(())
    }

    /// The fine-tuning loop's settings (warmup over 10 % of the steps).
    pub fn config(&self) -> BertFinetuneConfig {
        BertFinetuneConfig {
            lr: self.lr,
            steps: self.steps,
            warmup: (self.steps / 10).max(1),
            batch_size: self.batch_size,
            max_len: self.max_len,
            seed: self.seed,
            eval_every: self.eval_every,
            eval_max: self.eval_max,
            ..Default::default()
        }
    }

    /// The module-group snippets from the standard library in `stdlib`, encoded with `tok`.
    pub fn task_data(&self, stdlib: &Path, tok: &tokenizers::Tokenizer) -> Result<TaskData> {
        let groups = [&self.group_a[..], &self.group_b[..]];
        let (train_s, test_s) = snippets(stdlib, groups, self.snippet_bytes)?;
        let encode_all = |s: &[Snippet]| -> Result<Vec<TaskExample>> {
            s.iter()
                .map(|s| {
                    Ok(TaskExample {
                        parts: vec![encode(tok, &s.text)?],
                        label: s.label,
                    })
                })
                .collect()
        };
        let (train, test) = (encode_all(&train_s)?, encode_all(&test_s)?);
        let baseline = majority_baseline(&test);
        Ok(TaskData {
            train,
            test,
            baseline,
        })
    }

    /// The task line printed before training.
    pub fn task_note(&self, d: &TaskData) -> String {
        format!(
            "task: {} vs {}: {} train snippets ({}), {} held-out ({}) from other files; \
             majority-class baseline {:.1} %",
            self.group_a.join("+"),
            self.group_b.join("+"),
            d.train.len(),
            TaskData::counts(&d.train, 2),
            d.test.len(),
            TaskData::counts(&d.test, 2),
            100.0 * d.baseline
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_counts() {
        let ex = |label| TaskExample {
            parts: vec![vec![1]],
            label,
        };
        let v = vec![ex(0), ex(1), ex(1)];
        assert_eq!(TaskData::counts(&v, 2), "1 / 2");
        assert_eq!(TaskData::counts(&v, 3), "1 / 2 / 0");
    }
}
