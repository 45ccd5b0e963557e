//! `canon data`: Phi-1's data pipeline (textbook-quality code). `filter` builds the corpus, labels,
//! classifier and filtered set; `compare` trains the same small model on unfiltered and filtered
//! data for the same number of tokens and compares held-out losses; `exercises` builds the
//! held-out exercise set that `canon eval humaneval --problems` scores. The settings are
//! `canon_scale::data::opts`, the filter and synthesis runs `canon_runs::data_run`.

use canon_runs::data_run;
use canon_scale::data::experiment::compare;
use canon_scale::data::opts::{CompareArgs, ExercisesArgs, FilterArgs, SynthArgs};
pub use canon_scale::data::opts::{DataArgs, DataCommand};
use canon_scale::data::pipeline::{self, FilterEvent};
use indicatif::ProgressBar;

use super::write_atomic;
use crate::Ctx;

pub fn run(a: DataArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.command {
        DataCommand::Filter(f) => filter(f, ctx),
        DataCommand::Compare(c) => compare_cmd(c, ctx),
        DataCommand::Synth(s) => synth_cmd(s, ctx),
        DataCommand::Exercises(e) => exercises_cmd(e, ctx),
    }
}

fn exercises_cmd(a: ExercisesArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let bar = ProgressBar::hidden();
    if !ctx.quiet {
        bar.set_draw_target(crate::progress::target());
        bar.set_style(crate::progress::style(
            "running {bar:30} {pos}/{len} [{elapsed} < {eta}]",
        ));
    }
    let report = data_run::exercises(&a, &|done, n| {
        bar.set_length(n as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn synth_cmd(a: SynthArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let inputs = data_run::synth_inputs(&a, &ctx.loader())?;
    let t = "generating {bar:30} {pos}/{len} [{elapsed} < {eta}]";
    let bar = crate::progress::bar(ctx.quiet, a.n as u64, t);
    let summary = data_run::synth(&a, inputs, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn filter(a: FilterArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let bar = ProgressBar::hidden();
    let report = data_run::filter(&a, &ctx.loader(), &mut |e| match e {
        FilterEvent::Note(s) if !ctx.quiet => eprintln!("canon: {s}"),
        FilterEvent::Note(_) => {}
        FilterEvent::Embedded(0, n) if !ctx.quiet => {
            bar.set_length(n as u64);
            bar.set_draw_target(crate::progress::target());
            bar.set_style(crate::progress::style(
                "embedding {bar:30} {pos}/{len} [{elapsed} < {eta}]",
            ));
        }
        FilterEvent::Embedded(done, n) | FilterEvent::Judged(done, n) if done > 0 => {
            bar.set_position(done as u64);
            if done == n {
                bar.finish_and_clear();
            }
        }
        FilterEvent::Judged(0, n) if !ctx.quiet => {
            bar.reset();
            bar.set_length(n as u64);
            bar.set_draw_target(crate::progress::target());
            bar.set_style(crate::progress::style(
                "judging {bar:30} {pos}/{len} [{elapsed} < {eta}]",
            ));
        }
        FilterEvent::Embedded(..) | FilterEvent::Judged(..) => {}
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn compare_cmd(a: CompareArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = a.config()?;
    let (arms, evals) = pipeline::compare_inputs(&a.data)?;
    let stop = super::ctrl_c_flag()?;
    let bar = std::cell::RefCell::new(ProgressBar::hidden());
    let quiet = ctx.quiet;
    let res = compare(
        &cfg,
        &arms,
        &evals,
        &a.out,
        a.seeds,
        &stop,
        &mut |name, steps| {
            let t = "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]";
            let b = crate::progress::bar(quiet, steps, t);
            b.set_prefix(name.to_string());
            bar.replace(b).finish_and_clear();
        },
        &mut |r| {
            let b = bar.borrow();
            b.set_position(r.step);
            b.set_message(format!("loss {:.3}", r.loss));
        },
    )?;
    bar.borrow().finish_and_clear();
    let Some(res) = res else {
        eprintln!("canon: interrupted; run the same command again to continue");
        return Ok(());
    };
    let md = pipeline::compare_table(&res);
    write_atomic(&a.out.join("compare.md"), &md)?;
    println!("{md}");
    Ok(())
}
