//! `canon eval`: evaluation commands. `humaneval` (paper 14, Codex): generate completions with a
//! model or read them from a file, run every sample in the sandbox, report pass@k. The
//! settings of humaneval and perplexity are `canon_eval::opts`, the command table
//! `canon_runs::eval_opts`.

use std::time::Instant;

use anyhow::Context;
use canon_eval::Sandbox;
use canon_eval::humaneval::{self, Sample};
use canon_eval::opts::HumanevalArgs;
pub use canon_runs::eval_opts::{EvalArgs, EvalCommand};
use indicatif::ProgressBar;

use crate::{Ctx, model_gen};

pub fn run(args: EvalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match args.command {
        EvalCommand::Humaneval(a) => humaneval_cmd(a, ctx),
        EvalCommand::Perplexity(a) => super::perplexity::run(a, ctx),
        EvalCommand::ZeroShot(a) => super::zero_shot::run(a, ctx),
        EvalCommand::Fewshot(a) => super::fewshot::run(a, ctx),
        EvalCommand::Rag(a) => super::eval_rag::run(a, ctx),
        EvalCommand::Cot(a) => super::cot::run(a, ctx),
    }
}

fn bar(ctx: &Ctx, len: usize, what: &str) -> ProgressBar {
    let t = "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)";
    let pb = crate::progress::bar(ctx.quiet, len as u64, t);
    pb.set_message(what.to_string());
    pb
}

fn humaneval_cmd(a: HumanevalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    humaneval::check_settings(a.samples_per_task, a.timeout).map_err(anyhow::Error::msg)?;
    let humaneval::Plan {
        problems,
        samples: samples_from_file,
        ks,
    } = humaneval::plan(
        a.problems.as_deref(),
        a.limit,
        a.completions.as_deref(),
        a.samples_per_task,
        &a.k,
        ctx.progress(),
    )?;

    // The sandbox first: a missing interpreter should stop us before minutes of generation.
    let sandbox = Sandbox::new(a.sandbox_config()).context("cannot set up the sandbox")?;

    let samples: Vec<Sample> = match samples_from_file {
        Some(s) => s,
        None => {
            let model = a
                .model
                .as_deref()
                .context("--model or --completions is required")?;
            let mut generator = model_gen::load_generator(model, ctx)?;
            let opts = a.generation_options();
            let pb = bar(ctx, problems.len() * a.samples_per_task, "generate");
            let s = humaneval::generate_completions(
                generator.as_mut(),
                &problems,
                &opts,
                &mut |_, _, _| {
                    pb.inc(1);
                    true
                },
            )?;
            pb.finish_and_clear();
            if let Some(path) = &a.save_completions {
                humaneval::write_completions(path, &s)?;
            }
            s
        }
    };

    let jobs = a.jobs.unwrap_or(ctx.threads).max(1);
    let pb = bar(ctx, samples.len(), "execute");
    let t0 = Instant::now();
    let results = humaneval::score(&sandbox, &problems, &samples, jobs, &|_| pb.inc(1))?;
    let seconds = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    if let Some(path) = &a.out {
        humaneval::write_results(path, &results)?;
    }
    let summary = humaneval::summarize(&results, &ks, seconds)?;
    if a.json {
        let mut j = summary.to_json();
        if let Some(obj) = j.as_object_mut() {
            obj.insert("jobs".into(), jobs.into());
            obj.insert(
                "sandbox".into(),
                serde_json::to_value(sandbox.facilities())?,
            );
        }
        println!("{j}");
    } else {
        print!("{}", summary.text(jobs));
    }
    Ok(())
}
