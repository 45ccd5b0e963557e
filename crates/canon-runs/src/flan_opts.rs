//! `canon flan build`'s settings (with the `cli` feature also its argument structs, the doc
//! comments being the `--help` text) and the build they run: a FLAN instruction mixture (paper
//! 15) from data on this machine, and the held-out cluster's zero-shot records.

use std::io::Write;
use std::path::PathBuf;

use canon_train::instruct::tasks::{Sources, build_tasks};
use canon_train::instruct::{Task, build_mixture, held_out_eval, mixing_rates, training_tasks};

use crate::{Context, Result, bail, python_stdlib_dir};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct FlanArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub command: FlanCommand,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
pub enum FlanCommand {
    /// Build the instruction mixture and the held-out evaluation set.
    Build(BuildArgs),
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon flan build --out mix.jsonl --eval-out heldout.jsonl
  canon flan build --held-out code --n 3000 --out mix.jsonl --eval-out code-eval.jsonl
  canon flan build --tasks docstring_to_name --n 600 --out doc.jsonl")
)]
pub struct BuildArgs {
    /// Training mixture to write (JSON lines {"prompt", "completion", "task", "cluster", "template"}).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE.jsonl"))]
    pub out: PathBuf,
    /// Zero-shot evaluation records of the held-out cluster ({"prompt", "options", "answer"}).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE.jsonl"))]
    pub eval_out: Option<PathBuf>,
    /// The cluster left out of training (code, translation, shell, language_id).
    #[cfg_attr(feature = "cli", arg(long, default_value = "language_id"))]
    pub held_out: String,
    /// Only these tasks in the mixture (comma-separated; default all outside the held-out cluster).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ','))]
    pub tasks: Vec<String>,
    /// Records in the mixture.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2000))]
    pub n: usize,
    /// Per-dataset cap of examples-proportional mixing (FLAN: 3000; 0 = no cap).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3000))]
    pub cap: usize,
    /// At most this many evaluation records per held-out task.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub eval_per_task: usize,
    /// Language-identification lines kept per language.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 60))]
    pub per_language: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seed: u64,
    /// Manual pages (default /usr/share/man).
    #[cfg_attr(feature = "cli", arg(long, default_value = "/usr/share/man"))]
    pub man_dir: PathBuf,
    /// glibc locale sources (default /usr/share/i18n/locales).
    #[cfg_attr(feature = "cli", arg(long, default_value = "/usr/share/i18n/locales"))]
    pub locales_dir: PathBuf,
}

fn write_jsonl<T: serde::Serialize>(path: &std::path::Path, rows: &[T]) -> Result<()> {
    canon_fs::write_atomic_with(path, |w| {
        for r in rows {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

impl BuildArgs {
    /// Builds the tasks, writes the mixture (and with --eval-out the held-out records), and gives
    /// the line that says what was written. With `say`, one line per task first: its cluster,
    /// examples, templates and mixing rate.
    pub fn build(&self, say: Option<&dyn Fn(String)>) -> Result<String> {
        let a = self;
        let src = Sources {
            stdlib: python_stdlib_dir()?,
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
        if let Some(say) = say {
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
                say(format!(
                    "{:<22} cluster {:<12} {:>5} examples, {} templates, {rate}",
                    t.name,
                    t.cluster,
                    t.examples.len(),
                    t.templates.len()
                ));
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
        Ok(msg)
    }
}
