//! `canon flan build`: a FLAN instruction mixture (paper 15) from data on this machine — Python
//! standard-library docstrings, manual pages in several languages, glibc's calendar names — in four
//! task clusters, one of which is held out: the training mixture (`{"prompt", "completion"}` lines
//! for `canon finetune`) and the held-out cluster's classification examples with their options (for
//! `canon eval zero-shot`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_train::instruct::tasks::{Sources, build_tasks};
use canon_train::instruct::{Task, build_mixture, held_out_eval, mixing_rates, training_tasks};
use clap::{Args, Subcommand};

use crate::Ctx;

#[derive(Args, Debug)]
pub struct FlanArgs {
    #[command(subcommand)]
    pub command: FlanCommand,
}

#[derive(Subcommand, Debug)]
pub enum FlanCommand {
    /// Build the instruction mixture and the held-out evaluation set.
    Build(BuildArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon flan build --out mix.jsonl --eval-out heldout.jsonl
  canon flan build --held-out code --n 3000 --out mix.jsonl --eval-out code-eval.jsonl
  canon flan build --tasks docstring_to_name --n 600 --out doc.jsonl")]
pub struct BuildArgs {
    /// Training mixture to write (JSON lines {"prompt", "completion", "task", "cluster", "template"}).
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
    /// Zero-shot evaluation records of the held-out cluster ({"prompt", "options", "answer"}).
    #[arg(long, value_name = "FILE.jsonl")]
    pub eval_out: Option<PathBuf>,
    /// The cluster left out of training (code, translation, shell, language_id).
    #[arg(long, default_value = "language_id")]
    pub held_out: String,
    /// Only these tasks in the mixture (comma-separated; default all outside the held-out cluster).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Records in the mixture.
    #[arg(long, default_value_t = 2000)]
    pub n: usize,
    /// Per-dataset cap of examples-proportional mixing (FLAN: 3000; 0 = no cap).
    #[arg(long, default_value_t = 3000)]
    pub cap: usize,
    /// At most this many evaluation records per held-out task.
    #[arg(long, default_value_t = 200)]
    pub eval_per_task: usize,
    /// Language-identification lines kept per language.
    #[arg(long, default_value_t = 60)]
    pub per_language: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Manual pages (default /usr/share/man).
    #[arg(long, default_value = "/usr/share/man")]
    pub man_dir: PathBuf,
    /// glibc locale sources (default /usr/share/i18n/locales).
    #[arg(long, default_value = "/usr/share/i18n/locales")]
    pub locales_dir: PathBuf,
}

fn write_jsonl<T: serde::Serialize>(path: &std::path::Path, rows: &[T]) -> anyhow::Result<()> {
    canon_fs::write_atomic_with(path, |w| {
        for r in rows {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(a: FlanArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.command {
        FlanCommand::Build(b) => build(b, ctx),
    }
}

fn build(a: BuildArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let src = Sources {
        stdlib: crate::cmd::train::python_stdlib_dir()?,
        man: a.man_dir.clone(),
        locales: a.locales_dir.clone(),
    };
    let all = build_tasks(&src, a.per_language, a.seed)?;
    let mut tasks: Vec<Task> = all.clone();
    if !a.tasks.is_empty() {
        for t in &a.tasks {
            if !all.iter().any(|x| &x.name == t) {
                bail!(
                    "--tasks: unknown task '{t}' (tasks: {})",
                    all.iter()
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        // Keep the held-out cluster's tasks so the split stays defined.
        tasks.retain(|x| a.tasks.contains(&x.name) || x.cluster == a.held_out);
    }
    if !ctx.quiet {
        let train = training_tasks(&tasks, &a.held_out);
        let rates = mixing_rates(
            &train.iter().map(|t| t.examples.len()).collect::<Vec<_>>(),
            a.cap,
        );
        for t in &all {
            let rate = train
                .iter()
                .position(|x| x.name == t.name)
                .map_or("held out / not used".to_string(), |i| {
                    format!("rate {:.3}", rates[i])
                });
            eprintln!(
                "canon: {:<22} cluster {:<12} {:>5} examples, {} templates, {rate}",
                t.name,
                t.cluster,
                t.examples.len(),
                t.templates.len()
            );
        }
    }
    let mix = build_mixture(&tasks, &a.held_out, a.cap, a.n, a.seed)?;
    write_jsonl(&a.out, &mix)?;
    let mut msg = format!("{} training records in {}", mix.len(), a.out.display());
    if let Some(p) = &a.eval_out {
        let ev = held_out_eval(&all, &a.held_out, a.eval_per_task)?;
        write_jsonl(p, &ev)?;
        let chance: f64 =
            ev.iter().map(|r| 1.0 / r.options.len() as f64).sum::<f64>() / ev.len() as f64;
        msg.push_str(&format!(
            "; {} zero-shot records of cluster '{}' in {} (chance {:.1} %)",
            ev.len(),
            a.held_out,
            p.display(),
            100.0 * chance
        ));
    }
    println!("{msg}");
    Ok(())
}
