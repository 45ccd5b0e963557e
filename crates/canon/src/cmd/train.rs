//! `canon train`: train a model family from scratch on text present on this machine, or resume a run.
//!
//! A run folder holds `config.toml` (the resolved configuration), `model.json`, `tokenizer.json`,
//! `checkpoint.safetensors`, `metrics.jsonl` and `loss.png`; `canon generate --model DIR` loads it.
//! The settings and the run folder they open are `canon_runs::train_opts`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use canon_runs::train_opts::{OpenedRun, TrainArgs, done_line, interrupted_line, step_message};
use canon_runs::{Report, RunConfig, RunDir};
use canon_train::{Engine, LmObjective, Objective, Outcome, StepReport, Trainer};

use crate::Ctx;

pub fn run(a: TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.bf16 {
        canon_nn::train_ops::set_bf16_products(true)?;
    }
    let OpenedRun {
        dir,
        config_path,
        value,
        resuming,
    } = a.open()?;
    let quiet = ctx.quiet;
    let say = move |s: String| {
        if !quiet {
            eprintln!("canon: {s}");
        }
    };
    let report = Report {
        say: &say,
        progress: ctx.progress(),
    };
    let cfg = RunConfig::parse(&value, &config_path)?;
    if let RunConfig::Causal(mut cfg) = cfg {
        let data = canon_runs::causal::prepare(&mut cfg, &dir, resuming, report)?;
        let mut trainer = Trainer::new(&cfg.model, cfg.train.clone())?;
        let mut obj = LmObjective::new(&*trainer.model, &data, &cfg.train);
        obj.check()?;
        return drive(&mut trainer.engine, &mut obj, &dir, resuming, &a, ctx);
    }
    dir.create()?;
    let (params, train_cfg, mut obj) =
        canon_runs::setup(cfg, &config_path, &dir, resuming, report)?;
    dir.write_config(&value)?;
    let mut engine = Engine::new(params, train_cfg)?;
    drive(&mut engine, &mut *obj, &dir, resuming, &a, ctx)
}

/// Resumes if asked, then trains with a progress bar until the step limit or Ctrl-C, and prints a
/// summary.
fn drive(
    engine: &mut Engine,
    obj: &mut dyn Objective,
    dir: &RunDir,
    resuming: bool,
    a: &TrainArgs,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
    let files = dir.engine_files();
    let dir = dir.path();
    if resuming {
        engine.resume(obj, &files.checkpoint)?;
        say(format!("resumed at step {}", engine.step));
    }
    say(format!(
        "{} parameters, {} threads{}",
        engine.num_params(),
        ctx.threads,
        if canon_nn::train_ops::bf16_products() {
            ", bf16 products"
        } else {
            ""
        }
    ));

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let max_steps = engine.cfg.max_steps;
    let stop_at = a.stop_at.unwrap_or(max_steps).min(max_steps);
    let t = "{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]";
    let bar = crate::progress::bar(ctx.quiet, stop_at, t);
    bar.set_position(engine.step);
    let mut last_eval = None;
    let mut last_metrics: Vec<(String, f64)> = Vec::new();
    let mut tps = Vec::new();
    let mut last: Option<StepReport> = None;
    let outcome = engine.run(obj, stop_at, &stop, &files, &mut |r| {
        if r.eval_loss.is_some() {
            last_eval = r.eval_loss;
            last_metrics = r.eval.clone();
        }
        tps.push(r.tokens_per_s);
        bar.set_position(r.step);
        bar.set_message(step_message(r.loss, last_eval, r.tokens_per_s));
        last = Some(r.clone());
    })?;
    bar.finish_and_clear();
    tps.sort_by(|a, b| a.total_cmp(b));
    let median = tps.get(tps.len() / 2).copied().unwrap_or(0.0);
    say(match outcome {
        Outcome::Interrupted => interrupted_line(engine.step, dir),
        Outcome::Finished => done_line(
            engine.step,
            last.as_ref().map(|r| r.loss),
            last_eval,
            &last_metrics,
            median,
            dir,
        ),
    });
    Ok(())
}
