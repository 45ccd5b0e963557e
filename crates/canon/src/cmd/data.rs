//! `canon data`: Phi-1's data pipeline (textbook-quality code). `filter` builds the corpus, labels,
//! classifier and filtered set; `compare` trains the same small model on unfiltered and filtered
//! data for the same number of tokens and compares held-out losses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use canon_scale::data::corpus::Origin;
use canon_scale::data::experiment::compare;
use canon_scale::data::opts::{CompareArgs, FilterArgs, SynthArgs};
pub use canon_scale::data::opts::{DataArgs, DataCommand};
use canon_scale::data::pipeline::{self, FilterEvent};
use indicatif::ProgressBar;

use super::write_atomic;
use crate::{Ctx, model_gen};

/// HumanEval's problems as (task id, prompt + canonical solution): the decontamination set.
fn humaneval_pairs(ctx: &Ctx) -> canon_eval::Result<Vec<(String, String)>> {
    let problems = canon_eval::humaneval::load_default(ctx.progress())?;
    let text = |p: &canon_eval::humaneval::Problem| format!("{}{}", p.prompt, p.canonical_solution);
    Ok(problems
        .iter()
        .map(|p| (p.task_id.clone(), text(p)))
        .collect())
}

pub fn run(a: DataArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.command {
        DataCommand::Filter(f) => filter(f, ctx),
        DataCommand::Compare(c) => compare_cmd(c, ctx),
        DataCommand::Synth(s) => synth_cmd(s, ctx),
    }
}

fn synth_cmd(a: SynthArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let o = a.opts()?;
    let benchmark = humaneval_pairs(ctx).context("cannot load HumanEval for decontamination")?;
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let t = "generating {bar:30} {pos}/{len} [{elapsed} < {eta}]";
    let bar = crate::progress::bar(ctx.quiet, a.n as u64, t);
    let summary = canon_scale::data::synth::run(&o, lm, &benchmark, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

// The pipeline's callbacks return canon_scale's error, whose training and model variants are large;
// they run once per batch, so the size does not matter here.
#[allow(clippy::result_large_err)]
fn filter(a: FilterArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let o = a.opts()?;
    let roots = [
        (super::train::python_stdlib_dir()?, Origin::Stdlib),
        (
            pipeline::site_packages_dir(&a.site_packages)?,
            Origin::SitePackages,
        ),
    ];
    // Decontamination against HumanEval prompts + canonical solutions.
    let mut humaneval = || -> canon_scale::Result<Vec<(String, String)>> {
        humaneval_pairs(ctx).map_err(|e| {
            canon_scale::ScaleError::Msg(format!(
                "cannot load HumanEval for decontamination (use --no-decontaminate to skip): {e}"
            ))
        })
    };
    let benchmark: Option<pipeline::Benchmark<'_>> = if a.no_decontaminate {
        None
    } else {
        Some(&mut humaneval)
    };
    let mut enc = None;
    let mut embed = |texts: &[String]| -> canon_scale::Result<Vec<Vec<f32>>> {
        if enc.is_none() {
            let e = model_gen::load_encoder(&a.embed_model, ctx)
                .map_err(|e| canon_scale::ScaleError::Msg(format!("{e:#}")))?;
            enc = Some(e);
        }
        let Some(e) = &enc else { return Ok(Vec::new()) };
        (e.embedder.embed(texts, 16)).map_err(|e| canon_scale::ScaleError::Msg(e.to_string()))
    };
    let mut judge = match &a.judge {
        Some(m) => Some(canon_scale::data::judge::LmJudge::new(
            model_gen::load_lm(m, ctx)?,
            a.judge_chars,
        )?),
        None => None,
    };
    let judge_dyn = judge
        .as_mut()
        .map(|j| j as &mut dyn canon_scale::data::judge::Judge);
    let bar = ProgressBar::hidden();
    let report = pipeline::run_filter(
        &o,
        &roots,
        benchmark,
        &mut embed,
        judge_dyn,
        &mut |e| match e {
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
        },
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn compare_cmd(a: CompareArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = a.config()?;
    let (arms, evals) = pipeline::compare_inputs(&a.data)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let bar = std::cell::RefCell::new(ProgressBar::hidden());
    let quiet = ctx.quiet;
    let res = compare(
        &cfg,
        &arms,
        &evals,
        &a.out,
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
