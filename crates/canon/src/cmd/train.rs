//! `canon train`: train a model family from scratch on text present on this machine, or resume a run.
//!
//! A run folder holds `config.toml` (the resolved configuration), `model.json`, `tokenizer.json`,
//! `checkpoint.safetensors`, `metrics.jsonl` and `loss.png`; `canon generate --model DIR` loads it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use canon_runs::{Report, RunConfig, RunDir};
use canon_train::{Engine, LmObjective, Objective, Outcome, StepReport, Trainer};
use clap::Args;

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon train --config configs/gpt2.toml --out runs/gpt2
  canon train --config configs/nanogpt-bench.toml --max-steps 50 --threads 2 --out /tmp/bench
  canon train --config configs/nanogpt-bench.toml --bf16 --max-steps 200 --out /tmp/bench-bf16
  canon train --resume runs/gpt2 --max-steps 4000
  canon generate --model runs/gpt2 --prompt \"def \" --max-tokens 200")]
pub struct TrainArgs {
    /// A run configuration (TOML with [model], [data] and [train] tables).
    #[arg(long, conflicts_with = "resume", required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// The run folder to create.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Total optimizer steps (overrides train.max_steps; the schedule spans this many).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop (with a checkpoint) after this many steps without changing the schedule.
    #[arg(long, value_name = "STEP")]
    pub stop_at: Option<u64>,
    /// Seed for initialisation and data order (overrides train.seed; new runs only).
    #[arg(long, conflicts_with = "resume")]
    pub seed: Option<u64>,
    /// Mixed precision: the matrix products round their operands to bfloat16 and accumulate in
    /// f32 (AVX512_BF16's vdpbf16ps); weights, gradients and AdamW stay f32. Off by default;
    /// refused on CPUs without the instructions. Give it again on --resume to continue alike.
    #[arg(long)]
    pub bf16: bool,
}

/// The Python standard library's folder (used by the commands that read it as data).
pub(crate) use canon_runs::python_stdlib_dir;

pub fn run(a: TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.bf16 {
        canon_nn::train_ops::set_bf16_products(true)?;
    }
    let (dir, config_path, mut value, resuming) = match (&a.resume, &a.config, &a.out) {
        (Some(dir), _, _) => {
            let run = RunDir::new(dir);
            let cfg = run
                .read_config_value()
                .with_context(|| format!("{} is not a run folder", dir.display()))?;
            (run.clone(), run.config_path(), cfg, true)
        }
        (None, Some(config), Some(out)) => {
            let cfg = RunConfig::read_value(config)?;
            let run = RunDir::new(out);
            if run.has_checkpoint() {
                bail!(
                    "{} already holds a run; continue it with --resume {} or choose another --out",
                    out.display(),
                    out.display()
                );
            }
            (run, config.clone(), cfg, false)
        }
        _ => bail!("give --config FILE --out DIR, or --resume DIR"),
    };
    if let Some(n) = a.max_steps {
        RunConfig::set_train_key(&mut value, "max_steps", toml::Value::Integer(n as i64))?;
    }
    if let Some(s) = a.seed {
        RunConfig::set_train_key(&mut value, "seed", toml::Value::Integer(s as i64))?;
    }
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
        bar.set_message(format!(
            "loss {:.3}{} {:.0} tok/s",
            r.loss,
            last_eval.map_or(String::new(), |e| format!(" eval {e:.3}")),
            r.tokens_per_s
        ));
        last = Some(r.clone());
    })?;
    bar.finish_and_clear();
    tps.sort_by(|a, b| a.total_cmp(b));
    let median = tps.get(tps.len() / 2).copied().unwrap_or(0.0);
    match outcome {
        Outcome::Interrupted => say(format!(
            "interrupted: checkpoint at step {} in {}; continue with canon train --resume {}",
            engine.step,
            dir.display(),
            dir.display()
        )),
        Outcome::Finished => say(format!(
            "done: step {}, train loss {}, eval loss {}{}, median {:.0} tokens/s; run folder {}",
            engine.step,
            last.as_ref()
                .map_or("-".into(), |r| format!("{:.4}", r.loss)),
            last_eval.map_or("-".into(), |e| format!("{e:.4}")),
            last_metrics
                .iter()
                .map(|(k, v)| format!(", {k} {v:.4}"))
                .collect::<String>(),
            median,
            dir.display()
        )),
    }
    Ok(())
}
