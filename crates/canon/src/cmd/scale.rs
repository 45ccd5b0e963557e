//! `canon scale`: predictable scaling (GPT-4 report). Trains a ladder of model sizes with one
//! recipe, fits L(C) = a·C^b + c, predicts a larger run before training it, trains it, and reports
//! the error with a plot.

use canon_scale::ladder::{RungPlan, RungResult};
use canon_scale::opts;
pub use canon_scale::opts::ScaleArgs;
use canon_scale::report::{self, Progress, SweepOutcome};
use canon_train::StepReport;
use canon_train::data;
use indicatif::ProgressBar;

use crate::Ctx;

/// Python's standard library folder, for the corpora that read it.
fn stdlib() -> Result<std::path::PathBuf, String> {
    canon_runs::python_stdlib_dir().map_err(|e| e.to_string())
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
        println!("{}", a.replot()?);
        return Ok(());
    }
    let cfg = a.ladder()?;
    let corpus = opts::corpus(&cfg, &stdlib)?;
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
        print!("{}", opts::plan_table(&rungs, &target));
        return Ok(());
    }
    let stop = super::ctrl_c_flag()?;
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
