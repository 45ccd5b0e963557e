//! `canon eval fewshot`: K-shot in-context evaluation (paper 10, GPT-3) with `canon_agent::fewshot`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use canon_agent::fewshot::{FewShotConfig, NORMALISATIONS, evaluate};
use canon_agent::tasks;
use clap::Args;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
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
log p(option|prompt) - log p(option|\"Answer:\")); free-form by greedy decoding and exact match.")]
pub struct FewShotArgs {
    /// Model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long, required_unless_present_any = ["write_text", "write_task"])]
    pub model: Option<String>,
    /// A built-in task (man-commands, gettext-de, stdlib-module, icl-map) or a JSONL task file.
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
    /// Folder of German gettext catalogs for `gettext-de`.
    #[arg(
        long,
        default_value = "/usr/share/locale/de/LC_MESSAGES",
        value_name = "DIR"
    )]
    pub locale_dir: PathBuf,
    /// Python standard library folder for `stdlib-module` (default: python3's).
    #[arg(long, value_name = "DIR")]
    pub stdlib: Option<PathBuf>,
    /// Write the task's items as JSONL (the format --task FILE.jsonl reads) and stop.
    #[arg(long, value_name = "FILE")]
    pub write_task: Option<PathBuf>,
    /// icl-map only: write a training text of --sequences blocks of --demos demonstrations, each
    /// block with its own random mapping (seeded by --seed), and stop.
    #[arg(long, value_name = "FILE")]
    pub write_text: Option<PathBuf>,
    /// Blocks of the --write-text training text.
    #[arg(long, default_value_t = 20000)]
    pub sequences: usize,
    /// Demonstrations per block of the --write-text training text.
    #[arg(long, default_value_t = 20)]
    pub demos: usize,
    /// Print one JSON object (accuracies and per-item picks).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: FewShotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if let Some(out) = &a.write_text {
        if a.task != "icl-map" {
            anyhow::bail!("--write-text: expected --task icl-map, found {:?}", a.task);
        }
        if a.sequences == 0 || a.demos == 0 {
            anyhow::bail!("--sequences and --demos must be at least 1");
        }
        let text = tasks::icl_training_text(a.sequences, a.demos, a.seed);
        super::write_atomic(out, &text)?;
        println!(
            "wrote {} blocks of {} demonstrations ({} bytes) to {}",
            a.sequences,
            a.demos,
            text.len(),
            out.display()
        );
        return Ok(());
    }
    tasks::set_max_options(a.max_options);
    let task = if let Some(train) = &a.train {
        tasks::load_jsonl_pair(train, Path::new(&a.task))?
    } else if a.task == "man-commands" {
        tasks::man_commands(&a.man_dir, 200, a.seed)?
    } else if a.task == "gettext-de" {
        tasks::gettext_de(&a.locale_dir, 200, a.seed)?
    } else if a.task == "stdlib-module" {
        let dir = match &a.stdlib {
            Some(d) => d.clone(),
            None => super::train::python_stdlib_dir()?,
        };
        tasks::stdlib_module(&dir, 200, a.seed)?
    } else if a.task == "icl-map" {
        tasks::icl_task(40, 100, a.seed)?
    } else if a.task.ends_with(".jsonl") || Path::new(&a.task).exists() {
        tasks::load_jsonl(Path::new(&a.task))?
    } else {
        anyhow::bail!(
            "--task: expected man-commands, gettext-de, stdlib-module, icl-map or a .jsonl file, found {:?}",
            a.task
        );
    };
    if let Some(out) = &a.write_task {
        super::write_atomic(out, &tasks::task_jsonl(&task))?;
        println!(
            "wrote {} train and {} test items to {}",
            task.train.len(),
            task.test.len(),
            out.display()
        );
        return Ok(());
    }
    // Checked before the model loads (a test item's own question never counts as a demonstration,
    // which the evaluation checks item by item).
    if a.shots > task.train.len() {
        anyhow::bail!(
            "--shots {}: expected at most {} demonstrations, the train split of {} has {} items",
            a.shots,
            task.train.len(),
            task.name,
            task.train.len()
        );
    }
    let model = a.model.clone().unwrap_or_default();
    let lm = model_gen::load_lm(&model, ctx)?;
    let t = "fewshot [{bar:40}] {pos}/{len} items ({eta} left)";
    let pb = crate::progress::bar(ctx.quiet, 0, t);
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
