//! `canon finetune --method classifier`: BERT sequence classification (paper 3, §4) from a pretrained BERT — a
//! run of `canon train --config configs/bert.toml`, `minilm`, or an HF BERT folder — on the
//! standard-library module-group task GPT-1's fine-tuning uses (which group a source snippet comes
//! from, held out by file). `--from-scratch` trains the same architecture without the pretrained
//! weights (the baseline pre-training should beat).

use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_train::bert_finetune::{BertFinetuneConfig, BertFinetuneReport, BertFinetuner};
use canon_train::bert_pretrain::open_pretrained;
use canon_train::finetune::{
    Snippet, TaskExample, TaskRun, majority_baseline, module_group_task, task_files,
};
use canon_train::trainer::Outcome;
use clap::Args;

use crate::Ctx;
use crate::cmd::finetune::ctrl_c_flag;

/// The classifier's weights, optimizer state, step and data order in `--out` (the Ctrl-C
/// checkpoint; `--resume` continues from it).
const CHECKPOINT_FILE: &str = "classifier.safetensors";

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon train --config configs/bert.toml --out runs/bert
  canon --threads 2 finetune --method classifier --model runs/bert --out runs/bert-ft
  canon --threads 2 finetune --method classifier --model minilm --out runs/minilm-ft")]
pub struct FinetuneBertArgs {
    /// A BERT run folder, `minilm`, or an HF BERT folder.
    #[arg(long, value_name = "RUN_DIR|minilm|DIR")]
    pub model: String,
    /// Folder for metrics.jsonl, loss.png and the checkpoint.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The task (only `stdlib-groups` for now).
    #[arg(long, default_value = "stdlib-groups")]
    pub task: String,
    /// Standard-library directories of class 0 (comma-separated).
    #[arg(long, default_value = "email,http", value_delimiter = ',')]
    pub group_a: Vec<String>,
    /// Standard-library directories of class 1 (comma-separated).
    #[arg(long, default_value = "json,xml", value_delimiter = ',')]
    pub group_b: Vec<String>,
    #[arg(long, default_value_t = 256)]
    pub snippet_bytes: usize,
    /// Optimizer steps.
    #[arg(long = "max-steps", visible_alias = "steps", default_value_t = 200)]
    pub steps: u64,
    /// Peak learning rate (linear warmup over 10 % of the steps, then linear decay to 0).
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Longest input in tokens, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 200)]
    pub eval_max: usize,
    /// Ignore the pretrained weights (same architecture and vocabulary, random initialisation).
    #[arg(long)]
    pub from_scratch: bool,
    /// Continue the run in --out (after Ctrl-C, or with a larger --max-steps) from its checkpoint.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(a: FinetuneBertArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
    if a.task != "stdlib-groups" {
        bail!("unknown --task '{}'; expected stdlib-groups", a.task);
    }
    if a.snippet_bytes == 0 {
        bail!("--snippet-bytes must be positive");
    }
    let dir = super::train_bert::model_dir(&a.model, ctx)?;
    let p = open_pretrained(&dir)
        .with_context(|| format!("cannot load the pretrained model {}", dir.display()))?;
    let stdlib = crate::cmd::train::python_stdlib_dir()?;
    let (train_s, test_s) = module_group_task(
        &stdlib,
        &[a.group_a.clone(), a.group_b.clone()],
        a.snippet_bytes,
    )?;
    let encode = |s: &[Snippet]| -> anyhow::Result<Vec<TaskExample>> {
        s.iter()
            .map(|s| {
                let enc = p
                    .tokenizer
                    .encode(s.text.as_str(), false)
                    .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
                Ok(TaskExample {
                    parts: vec![enc.get_ids().to_vec()],
                    label: s.label,
                })
            })
            .collect()
    };
    let (train, test) = (encode(&train_s)?, encode(&test_s)?);
    let count = |v: &[TaskExample], l: u32| v.iter().filter(|e| e.label == l).count();
    let baseline = majority_baseline(&test);
    say(format!(
        "task: {} vs {}: {} train snippets ({} / {}), {} held-out ({} / {}) from other files; majority-class baseline {:.1} %",
        a.group_a.join("+"),
        a.group_b.join("+"),
        train.len(),
        count(&train, 0),
        count(&train, 1),
        test.len(),
        count(&test, 0),
        count(&test, 1),
        100.0 * baseline
    ));
    let cfg = BertFinetuneConfig {
        lr: a.lr,
        steps: a.steps,
        warmup: (a.steps / 10).max(1),
        batch_size: a.batch_size,
        max_len: a.max_len,
        seed: a.seed,
        eval_every: a.eval_every,
        eval_max: a.eval_max,
        ..Default::default()
    };
    let mut ft = BertFinetuner::new(&p, 2, cfg, a.from_scratch)?;
    say(format!(
        "{}: {} layers, width {}; {} pretrained tensors copied ({}), {} parameters, {} threads",
        dir.display(),
        p.config.num_hidden_layers,
        p.config.hidden_size,
        ft.copied.len(),
        if a.from_scratch {
            "--from-scratch"
        } else {
            "the classifier is new"
        },
        ft.params.iter().map(|p| p.var.elem_count()).sum::<usize>(),
        ctx.threads
    ));
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let files = task_files(&a.out, CHECKPOINT_FILE);
    if a.resume {
        ft.resume(&files.checkpoint)
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
    }
    let stop = ctrl_c_flag()?;
    let quiet = ctx.quiet;
    let t0 = std::time::Instant::now();
    let run = TaskRun {
        files: Some(&files),
        stop: &stop,
        block_size: a.max_len,
    };
    let (outcome, acc) = ft.run_on_engine(&train, &test, run, &mut |r| {
        let r = BertFinetuneReport::of(r);
        if !quiet && (r.step.is_multiple_of(10) || r.eval_accuracy.is_some()) {
            eprintln!(
                "canon: step {} loss {:.4}{}",
                r.step,
                r.loss,
                r.eval_accuracy.map_or(String::new(), |x| format!(
                    " held-out accuracy {:.1} %",
                    100.0 * x
                ))
            );
        }
    })?;
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
        "held-out accuracy {:.1} % on {} snippets (majority-class baseline {:.1} %); {:.0} s; metrics in {}",
        100.0 * acc,
        test.len(),
        100.0 * baseline,
        t0.elapsed().as_secs_f64(),
        files.metrics.display()
    );
    Ok(())
}
