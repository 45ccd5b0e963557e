//! `canon scale`: predictable scaling (GPT-4 report). Trains a ladder of model sizes with one
//! recipe, fits L(C) = a·C^b + c, predicts a larger run before training it, trains it, and reports
//! the error with a plot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use canon_scale::ladder::{LadderConfig, RungPlan, RungResult};
use canon_scale::report::{self, Progress, SweepOutcome};
use canon_train::data::{self, Corpus};
use canon_train::{DataConfig, StepReport};
use clap::Args;
use indicatif::ProgressBar;

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon scale --config configs/scale.toml --out runs/scale
  canon scale --config configs/scale.toml --out runs/scale     # again: continues where it stopped
  canon scale --out runs/scale --replot                        # redraw scaling.png from report.json
  canon scale --config configs/scale.toml --out runs/scale --plan   # print the runs, train nothing

Files in --out: one run folder per rung (rung-0 ... and target/, each a normal `canon train` run
folder plus result.json), prediction.json (written before target/ is trained), report.md,
report.json and scaling.png (with [scale.capability], also capability.png: the capability law
measured on held-out addition problems).")]
pub struct ScaleArgs {
    /// A ladder configuration: [model], [data], [train] and a [scale] table.
    #[arg(long, required_unless_present = "replot")]
    pub config: Option<PathBuf>,
    /// The sweep folder (created, or continued).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the planned runs (parameters, tokens, compute) and stop.
    #[arg(long)]
    pub plan: bool,
    /// Redraw the plot and report of a finished sweep without training.
    #[arg(long, conflicts_with = "plan")]
    pub replot: bool,
}

pub(crate) fn load_docs(d: &DataConfig) -> anyhow::Result<Corpus> {
    let stdlib = || super::train::python_stdlib_dir();
    Ok(match d.corpus.as_str() {
        "python-stdlib" => data::python_stdlib(&stdlib()?, d.max_bytes)?,
        "python-docs" => data::python_docs(&stdlib()?, d.max_bytes)?,
        p => data::text_path(Path::new(p), d.max_bytes)
            .with_context(|| format!("data.corpus = '{p}'"))?,
    })
}

struct Bars {
    quiet: bool,
    bar: ProgressBar,
}

impl Bars {
    fn say(&self, s: &str) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("canon: {s}"));
        }
    }
}

impl Progress for Bars {
    fn run_start(&mut self, p: &RungPlan, index: usize, total: usize) {
        self.bar.finish_and_clear();
        let t = "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]";
        self.bar = crate::progress::bar(self.quiet, p.steps, t);
        self.bar
            .set_prefix(format!("{} ({}/{})", p.name, index + 1, total));
        self.say(&format!(
            "{}: {} parameters, {} steps, {} tokens, {:.3e} FLOPs",
            p.name, p.params, p.steps, p.tokens, p.compute
        ));
    }
    fn step(&mut self, r: &StepReport) {
        self.bar.set_position(r.step);
        self.bar
            .set_message(format!("loss {:.3} {:.0} tok/s", r.loss, r.tokens_per_s));
    }
    fn run_done(&mut self, r: &RungResult) {
        self.bar.finish_and_clear();
        self.say(&format!(
            "{} done: held-out loss {:.4} ({:.0} s)",
            r.name, r.final_loss, r.seconds
        ));
    }
    fn note(&mut self, line: &str) {
        self.say(line);
    }
}

pub fn run(a: ScaleArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.replot {
        let old = report::read_sweep(&a.out)
            .with_context(|| format!("{} holds no finished sweep", a.out.display()))?;
        // The analysis is recomputed from the saved runs and the saved prediction.
        let r = report::analyse(old.rungs, old.target, old.prediction)?;
        super::write_atomic(
            &a.out.join("report.json"),
            &serde_json::to_string_pretty(&r)?,
        )?;
        report::plot(&r, &a.out.join("scaling.png"))?;
        if r.capability.is_some() {
            report::plot_capability(&r, &a.out.join("capability.png"))?;
        }
        super::write_atomic(&a.out.join("report.md"), &report::markdown(&r))?;
        println!("{}", report::markdown(&r));
        return Ok(());
    }
    let Some(path) = a.config.as_ref() else {
        anyhow::bail!("give --config FILE (a ladder configuration)");
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let cfg = LadderConfig::parse(&text, &path.display().to_string())?;
    // With [scale.capability], the task's training problems are the ladder's training data.
    let corpus = match &cfg.scale.capability {
        Some(c) => Corpus {
            name: format!(
                "{} (0..={} operands, training problems)",
                c.task, c.max_operand
            ),
            docs: c.task()?.train_docs(),
        },
        None => load_docs(&cfg.data)?,
    };
    if !ctx.quiet {
        eprintln!(
            "canon: corpus {}: {} documents, {:.1} MB; {} threads",
            corpus.name,
            corpus.docs.len(),
            corpus.bytes() as f64 / 1e6,
            ctx.threads
        );
    }
    if a.plan {
        let tok = data::train_tokenizer(cfg.data.tokenizer, &corpus.docs, cfg.data.vocab_size)?;
        let (rungs, target) = cfg.plan(tok.get_vocab_size(true))?;
        println!(
            "| run | parameters | steps | tokens | compute (FLOPs) |\n|---|---:|---:|---:|---:|"
        );
        for p in rungs.iter().chain(std::iter::once(&target)) {
            println!(
                "| {} | {} | {} | {} | {:.3e} |",
                p.name, p.params, p.steps, p.tokens, p.compute
            );
        }
        let largest = rungs.last().map_or(1.0, |p| p.compute);
        let smallest = rungs.first().map_or(1.0, |p| p.compute);
        println!(
            "\nladder spans {:.0}× compute; the target is {:.1}× the largest rung",
            largest / smallest,
            target.compute / largest
        );
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let mut bars = Bars {
        quiet: ctx.quiet,
        bar: ProgressBar::hidden(),
    };
    match report::run_sweep(&cfg, &corpus.docs, &a.out, &stop, &mut bars)? {
        SweepOutcome::Interrupted => {
            bars.bar.finish_and_clear();
            eprintln!(
                "canon: interrupted; run the same command again to continue ({})",
                a.out.display()
            );
        }
        SweepOutcome::Done(r) => {
            println!("{}", report::markdown(&r));
            if !ctx.quiet {
                eprintln!(
                    "canon: report in {}, plot {}",
                    a.out.join("report.md").display(),
                    a.out.join("scaling.png").display()
                );
            }
        }
    }
    Ok(())
}
