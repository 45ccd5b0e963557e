//! `canon eval fewshot`: K-shot in-context evaluation (paper 10, GPT-3) with `canon_agent::fewshot`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use canon_agent::fewshot::{FewShotConfig, NORMALISATIONS, evaluate};
use canon_agent::tasks;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon eval fewshot --model smollm2 --task man-commands --shots 4 --limit 200
  canon eval fewshot --model smollm2 --task mytask.jsonl --shots 8 --seed 3 --json
  canon eval fewshot --model smollm2 --task test.jsonl --train train.jsonl --shots 4

Tasks: man-commands (section-1 man page NAME lines: which command does this describe, 4 options),
or a JSONL file, one item a line: {\"input\": \"...\", \"options\": [\"...\", ...], \"label\": 1}
(multiple choice, label = index of the right option) or {\"input\": \"...\", \"target\": \"...\"}
(free-form), each with \"split\": \"train\"|\"test\" -- or without it, the test items in --task and
the demonstrations in --train. {\"question\", \"answer\", \"options\"?} lines are read too.
Prompts are 'Q: ...\\nA: answer' blocks; K demonstrations come from the train split, never the
test item. Multiple choice is scored by log-likelihood (sum, per-token mean, and unconditional:
log p(option|prompt) - log p(option|\"Answer:\")); free-form by greedy decoding and exact match.")]
pub struct FewShotArgs {
    /// Model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long)]
    pub model: String,
    /// `man-commands` or a JSONL task file.
    #[arg(long, value_name = "NAME|FILE.jsonl")]
    pub task: String,
    /// Demonstrations from this JSONL file (lines without a split are train items); --task then
    /// holds the test items.
    #[arg(long, value_name = "FILE.jsonl")]
    pub train: Option<PathBuf>,
    /// Most options a multiple-choice item may have (each option costs a forward pass).
    #[arg(long, default_value_t = tasks::DEFAULT_MAX_OPTIONS, value_name = "N")]
    pub max_options: usize,
    /// Demonstrations per prompt (K).
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Seed of the demonstration draw (and of the generated task's split).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Score only the first N test items.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Greedy tokens for free-form answers.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Man page folder for `man-commands`.
    #[arg(long, default_value = "/usr/share/man/man1", value_name = "DIR")]
    pub man_dir: PathBuf,
    /// Print one JSON object (accuracies and per-item picks).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: FewShotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    tasks::set_max_options(a.max_options);
    let task = if let Some(train) = &a.train {
        tasks::load_jsonl_pair(train, Path::new(&a.task))?
    } else if a.task == "man-commands" {
        tasks::man_commands(&a.man_dir, 200, a.seed)?
    } else if a.task.ends_with(".jsonl") || Path::new(&a.task).exists() {
        tasks::load_jsonl(Path::new(&a.task))?
    } else {
        anyhow::bail!(
            "--task: expected man-commands or a .jsonl file, found {:?}",
            a.task
        );
    };
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let pb = if ctx.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(0);
        if let Ok(s) =
            ProgressStyle::with_template("fewshot [{bar:40}] {pos}/{len} items ({eta} left)")
        {
            pb.set_style(s.progress_chars("=> "));
        }
        pb
    };
    let start = Instant::now();
    let cfg = FewShotConfig {
        shots: a.shots,
        seed: a.seed,
        limit: a.limit,
        max_new_tokens: a.max_new_tokens,
    };
    let r = evaluate(
        lm.model.as_ref(),
        &lm.tokenizer,
        &task,
        cfg,
        &mut |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
    )
    .with_context(|| format!("few-shot evaluation of {}", task.name))?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = serde_json::Value::String(lm.name.clone());
        v["seconds"] = serde_json::json!(secs);
        println!("{v}");
    } else {
        println!(
            "{} {}-shot on {} ({} items, {:.1} s):",
            lm.name, r.shots, r.task, r.items, secs
        );
        if r.multiple_choice {
            for (n, acc) in NORMALISATIONS.iter().zip(r.accuracy) {
                println!("  accuracy ({n:>13}): {:.1} %", 100.0 * acc);
            }
        } else {
            println!("  exact match: {:.1} %", 100.0 * r.accuracy[0]);
        }
    }
    Ok(())
}
