//! `canon finetune --method gpt1-heads`: GPT-1 supervised fine-tuning (paper 2, §3.2–3.3) of a run that
//! `canon train --config configs/gpt1.toml` pretrained, on a task built from the Python standard
//! library of this machine, held out by file:
//! - `classify`: which module group (default `email/`+`http/` vs `json/`+`xml/`) a snippet comes
//!   from; inputs `[s] snippet [e]`;
//! - `similarity`: whether two snippets come from the same group; both orders `[s] a [d] b [e]`,
//!   states added;
//! - `choice`: which of `--choices` endings continues a snippet's first half; one
//!   `[s] context [d] ending [e]` per candidate, softmax across them.
//!
//! The loss is `L2 + 0.5·L1`, trained on the shared engine: `--out` receives `metrics.jsonl` (every
//! step and the held-out accuracy), `loss.png`, the fine-tuned weights with the optimizer state
//! (`finetuned.safetensors`, also the Ctrl-C checkpoint; `--resume` continues) and `task.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use canon_models::family::RUN_TOKENIZER_FILE;
use canon_train::finetune::{
    FINETUNED_FILE, FinetuneConfig, FinetuneReport, Finetuner, Snippet, TaskExample, TaskKind,
    TaskRun, TextExample, ending_choices, majority_baseline, module_group_task, similarity_pairs,
    task_files,
};
use canon_train::trainer::Outcome;
use clap::{Args, ValueEnum};

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon train --config configs/gpt1.toml --out runs/gpt1
  canon --threads 2 finetune --method gpt1-heads --model runs/gpt1 --out runs/gpt1-ft
  canon finetune --method gpt1-heads --model runs/gpt1 --task similarity --out runs/gpt1-sim
  canon finetune --method gpt1-heads --model runs/gpt1 --task choice --choices 2 --out runs/gpt1-mc")]
pub struct FinetuneArgs {
    /// The task and its input transformation.
    #[arg(long, value_enum, default_value_t = Task::Classify)]
    pub task: Task,
    /// Candidates per multiple-choice question (the right ending and wrong ones).
    #[arg(long, default_value_t = 2)]
    pub choices: usize,
    /// The pretrained GPT run folder (from `canon train`).
    #[arg(long = "model", visible_alias = "pretrained", value_name = "DIR")]
    pub pretrained: PathBuf,
    /// Folder for metrics.jsonl, the fine-tuned weights and task.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Standard-library directories of class 0 (comma-separated).
    #[arg(long, default_value = "email,http", value_delimiter = ',')]
    pub group_a: Vec<String>,
    /// Standard-library directories of class 1 (comma-separated).
    #[arg(long, default_value = "json,xml", value_delimiter = ',')]
    pub group_b: Vec<String>,
    /// Snippet size in bytes (cut at line boundaries).
    #[arg(long, default_value_t = 256)]
    pub snippet_bytes: usize,
    /// Optimizer steps.
    #[arg(long = "max-steps", visible_alias = "steps", default_value_t = 300)]
    pub steps: u64,
    /// Peak learning rate (linear warmup over 10 % of the steps, then linear decay to 0).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Weight of the auxiliary language-modelling loss (the paper's λ).
    #[arg(long, default_value_t = 0.5)]
    pub lambda: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Held-out accuracy every this many steps (on at most --eval-max snippets; all at the end).
    #[arg(long, default_value_t = 25)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 200)]
    pub eval_max: usize,
    /// Continue the run in --out (after Ctrl-C, or with a larger --max-steps) from its checkpoint.
    #[arg(long)]
    pub resume: bool,
}

/// A flag that Ctrl-C raises (the engine then checkpoints and stops).
pub fn ctrl_c_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// Which module group a snippet comes from.
    Classify,
    /// Whether two snippets come from the same module group.
    Similarity,
    /// Which candidate ending continues a snippet.
    Choice,
}

pub fn run(a: FinetuneArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
    if a.snippet_bytes == 0 {
        bail!("--snippet-bytes must be positive");
    }
    let cfg = FinetuneConfig {
        lambda: a.lambda,
        lr: a.lr,
        steps: a.steps,
        warmup: (a.steps / 10).max(1),
        batch_size: a.batch_size,
        seed: a.seed,
        eval_every: a.eval_every,
        eval_max: a.eval_max,
        ..FinetuneConfig::default()
    };
    let kind = match a.task {
        Task::Classify => TaskKind::Classification { classes: 2 },
        Task::Similarity => TaskKind::Similarity { classes: 2 },
        Task::Choice => TaskKind::MultipleChoice { choices: a.choices },
    };
    let mut ft = if a.resume {
        let ft = Finetuner::load(&a.out, cfg)
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
        if ft.kind != kind {
            bail!(
                "--resume: {} holds a {:?} task, not {kind:?}",
                a.out.display(),
                ft.kind
            );
        }
        ft
    } else {
        Finetuner::from_run(&a.pretrained, kind, cfg)
            .with_context(|| format!("cannot load the pretrained run {}", a.pretrained.display()))?
    };
    let tok_path = a.pretrained.join(RUN_TOKENIZER_FILE);
    let tok = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", tok_path.display()))?;

    let stdlib = crate::cmd::train::python_stdlib_dir()?;
    let (train_s, test_s) = module_group_task(
        &stdlib,
        &[a.group_a.clone(), a.group_b.clone()],
        a.snippet_bytes,
    )?;
    let texts = |s: &[Snippet], seed: u64| -> anyhow::Result<Vec<TextExample>> {
        Ok(match a.task {
            Task::Classify => s
                .iter()
                .map(|s| TextExample {
                    parts: vec![s.text.clone()],
                    label: s.label,
                })
                .collect(),
            Task::Similarity => similarity_pairs(s, seed)?,
            Task::Choice => ending_choices(s, a.choices, seed)?,
        })
    };
    let encode = |v: Vec<TextExample>| -> anyhow::Result<Vec<TaskExample>> {
        v.into_iter()
            .map(|e| {
                let parts = e
                    .parts
                    .iter()
                    .map(|p| {
                        tok.encode(p.as_str(), false)
                            .map(|enc| enc.get_ids().to_vec())
                            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(TaskExample {
                    parts,
                    label: e.label,
                })
            })
            .collect()
    };
    let train = encode(texts(&train_s, a.seed)?)?;
    let test = encode(texts(&test_s, a.seed ^ 0x7E57)?)?;
    let labels = kind.labels();
    let counts = |v: &[TaskExample]| -> String {
        (0..labels as u32)
            .map(|l| v.iter().filter(|e| e.label == l).count().to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let baseline = majority_baseline(&test);
    say(format!(
        "task {:?} over {} vs {} in {}: {} train examples ({}), {} held-out ({}) from other files; \
         majority-class baseline {:.1} %",
        a.task,
        a.group_a.join("+"),
        a.group_b.join("+"),
        stdlib.display(),
        train.len(),
        counts(&train),
        test.len(),
        counts(&test),
        100.0 * baseline
    ));
    say(format!(
        "{} parameters (3 task tokens and W_y added), λ = {}, {} threads",
        ft.params.iter().map(|p| p.var.elem_count()).sum::<usize>(),
        a.lambda,
        ctx.threads
    ));

    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let files = task_files(&a.out, FINETUNED_FILE);
    let stop = ctrl_c_flag()?;
    let quiet = ctx.quiet;
    let run = TaskRun {
        files: Some(&files),
        stop: &stop,
        block_size: ft.base.max_seq_len,
    };
    let (outcome, acc) = ft.run_on_engine(&train, &test, run, &mut |r| {
        let r = FinetuneReport::of(r);
        if !quiet && (r.step.is_multiple_of(10) || r.eval_accuracy.is_some()) {
            eprintln!(
                "canon: step {} loss {:.4} (clf {:.4}, lm {:.4}){}",
                r.step,
                r.loss,
                r.clf_loss,
                r.lm_loss,
                r.eval_accuracy.map_or(String::new(), |x| format!(
                    " held-out accuracy {:.1} %",
                    100.0 * x
                ))
            );
        }
    })?;
    ft.save(&a.out)
        .with_context(|| format!("cannot save the fine-tuned model in {}", a.out.display()))?;
    if outcome == Outcome::Interrupted {
        println!(
            "interrupted: checkpoint at step {} in {}; continue with the same command and --resume",
            ft.step,
            a.out.display()
        );
        return Ok(());
    }
    let acc = match acc {
        Some(x) => x,
        None => ft.accuracy(&test)?,
    };
    println!(
        "held-out accuracy {:.1} % on {} examples (majority-class baseline {:.1} %); metrics, \
         loss.png and fine-tuned weights in {}",
        100.0 * acc,
        test.len(),
        100.0 * baseline,
        a.out.display()
    );
    Ok(())
}
