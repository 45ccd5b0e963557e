//! `canon train`'s settings (with the `cli` feature also its argument struct, the doc comments
//! being the `--help` text) and the run folder they open: a new one from `--config` and `--out`,
//! or `--resume`'s, with the `--max-steps` and `--seed` overrides applied to the configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use canon_train::{Engine, LmObjective, Objective, Outcome, StepReport, Trainer};

use crate::{Context, Report, Result, RunConfig, RunDir, bail};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon train --config configs/gpt2.toml --out runs/gpt2
  canon train --config configs/nanogpt-bench.toml --max-steps 50 --threads 2 --out /tmp/bench
  canon train --config configs/nanogpt-bench.toml --bf16 --max-steps 200 --out /tmp/bench-bf16
  canon train --resume runs/gpt2 --max-steps 4000
  canon generate --model runs/gpt2 --prompt \"def \" --max-tokens 200")
)]
pub struct TrainArgs {
    /// A run configuration (TOML with [model], [data] and [train] tables).
    #[cfg_attr(
        feature = "cli",
        arg(long, conflicts_with = "resume", required_unless_present = "resume")
    )]
    pub config: Option<PathBuf>,
    /// The run folder to create.
    #[cfg_attr(
        feature = "cli",
        arg(long, required_unless_present = "resume", conflicts_with = "resume")
    )]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub resume: Option<PathBuf>,
    /// Total optimizer steps (overrides train.max_steps; the schedule spans this many).
    #[cfg_attr(feature = "cli", arg(long))]
    pub max_steps: Option<u64>,
    /// Stop (with a checkpoint) after this many steps without changing the schedule.
    #[cfg_attr(feature = "cli", arg(long, value_name = "STEP"))]
    pub stop_at: Option<u64>,
    /// Seed for initialisation and data order (overrides train.seed; new runs only).
    #[cfg_attr(feature = "cli", arg(long, conflicts_with = "resume"))]
    pub seed: Option<u64>,
    /// Mixed precision: the matrix products round their operands to bfloat16 and accumulate in
    /// f32 (AVX512_BF16's vdpbf16ps); weights, gradients and AdamW stay f32. Off by default;
    /// refused on CPUs without the instructions. Give it again on --resume to continue alike.
    #[cfg_attr(feature = "cli", arg(long))]
    pub bf16: bool,
}

/// The run folder a `canon train` command works in, and its configuration.
pub struct OpenedRun {
    pub dir: RunDir,
    /// Where the configuration was read from (named in its errors).
    pub config_path: PathBuf,
    /// The configuration with the command line's overrides.
    pub value: toml::Value,
    pub resuming: bool,
}

impl TrainArgs {
    /// Opens the run folder: `--resume`'s (its config.toml), or a new one in `--out` (refused
    /// when it holds a checkpoint already) from `--config`; then applies `--max-steps` and `--seed`.
    pub fn open(&self) -> Result<OpenedRun> {
        let (dir, config_path, mut value, resuming) = match (&self.resume, &self.config, &self.out)
        {
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
        if let Some(n) = self.max_steps {
            RunConfig::set_train_key(&mut value, "max_steps", toml::Value::Integer(n as i64))?;
        }
        if let Some(s) = self.seed {
            RunConfig::set_train_key(&mut value, "seed", toml::Value::Integer(s as i64))?;
        }
        Ok(OpenedRun {
            dir,
            config_path,
            value,
            resuming,
        })
    }
}

/// What the training loop reports to the command: where the run starts and stops (for the
/// progress bar), then each step.
pub enum TrainEvent<'a> {
    Start { step: u64, stop_at: u64 },
    Step(&'a StepReport),
}

/// What a `canon train` run did.
#[derive(Debug, Clone)]
pub struct Trained {
    pub outcome: Outcome,
    /// The step the run stopped at.
    pub step: u64,
    /// The last step's report.
    pub last: Option<StepReport>,
    /// The last evaluation's loss and metrics.
    pub last_eval: Option<f64>,
    pub last_metrics: Vec<(String, f64)>,
    /// The median of the steps' tokens per second.
    pub median_tps: f64,
    pub dir: PathBuf,
}

impl Trained {
    /// The run's summary line: [`done_line`] or [`interrupted_line`].
    pub fn line(&self) -> String {
        match self.outcome {
            Outcome::Interrupted => interrupted_line(self.step, &self.dir),
            Outcome::Finished => done_line(
                self.step,
                self.last.as_ref().map(|r| r.loss),
                self.last_eval,
                &self.last_metrics,
                self.median_tps,
                &self.dir,
            ),
        }
    }
}

/// `canon train`: opens the run folder, sets its family up, resumes from its checkpoint when
/// asked, and trains on the engine until the step limit (`--stop-at`, `train.max_steps`) or until
/// the flag `stop()` returns (called once the run is set up; the binary's Ctrl-C) is raised; a
/// checkpoint is written either way. `report.say` gets the setup's lines and the parameter
/// count; `on` the start and each step. `threads` is only reported.
pub fn train(
    a: &TrainArgs,
    threads: usize,
    report: Report<'_>,
    stop: &dyn Fn() -> Result<Arc<AtomicBool>>,
    on: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<Trained> {
    if a.bf16 {
        canon_nn::train_ops::set_bf16_products(true).map_err(|e| crate::err!("{e}"))?;
    }
    let OpenedRun {
        dir,
        config_path,
        value,
        resuming,
    } = a.open()?;
    // One flag for the run (ctrlc takes one handler): the setup's own training (ERNIE's TransE)
    // and the engine's share it.
    let flag = std::cell::OnceCell::new();
    let stop_once = || -> Result<Arc<AtomicBool>> {
        if let Some(f) = flag.get() {
            return Ok(Arc::clone(f));
        }
        let f = stop()?;
        Ok(Arc::clone(flag.get_or_init(|| f)))
    };
    let run = Drive {
        dir: &dir,
        resuming,
        stop_at: a.stop_at,
        threads,
        report,
        stop: &stop_once,
    };
    let cfg = RunConfig::parse(&value, &config_path)?;
    if let RunConfig::Causal(mut cfg) = cfg {
        let data = crate::causal::prepare(&mut cfg, &dir, resuming, report)?;
        let mut trainer = Trainer::new(&cfg.model, cfg.train.clone())?;
        let mut obj = LmObjective::new(&*trainer.model, &data, &cfg.train);
        obj.check()?;
        return run.drive(&mut trainer.engine, &mut obj, on);
    }
    dir.create()?;
    // Written first, so that a run stopped inside its setup (ERNIE's TransE) can be resumed.
    dir.write_config(&value)?;
    let (params, train_cfg, mut obj) =
        crate::setup(cfg, &config_path, &dir, resuming, report, &stop_once)?;
    let mut engine = Engine::new(params, train_cfg)?;
    run.drive(&mut engine, &mut *obj, on)
}

/// A run on the engine, once its objective is set up.
struct Drive<'a> {
    dir: &'a RunDir,
    resuming: bool,
    stop_at: Option<u64>,
    threads: usize,
    report: Report<'a>,
    stop: &'a dyn Fn() -> Result<Arc<AtomicBool>>,
}

impl Drive<'_> {
    fn drive(
        &self,
        engine: &mut Engine,
        obj: &mut dyn Objective,
        on: &mut dyn FnMut(TrainEvent<'_>),
    ) -> Result<Trained> {
        let files = self.dir.engine_files();
        if self.resuming {
            engine.resume(obj, &files.checkpoint)?;
            self.report.say(format!("resumed at step {}", engine.step));
        }
        let bf16 = if canon_nn::train_ops::bf16_products() {
            ", bf16 products"
        } else {
            ""
        };
        self.report.say(format!(
            "{} parameters, {} threads{bf16}",
            engine.num_params(),
            self.threads,
        ));
        let max_steps = engine.cfg.max_steps;
        let stop_at = self.stop_at.unwrap_or(max_steps).min(max_steps);
        let stop = (self.stop)()?;
        on(TrainEvent::Start {
            step: engine.step,
            stop_at,
        });
        let (mut last_eval, mut last_metrics) = (None, Vec::new());
        let mut tps = Vec::new();
        let mut last: Option<StepReport> = None;
        let outcome = engine.run(obj, stop_at, &stop, &files, &mut |r| {
            if r.eval_loss.is_some() {
                last_eval = r.eval_loss;
                last_metrics = r.eval.clone();
            }
            tps.push(r.tokens_per_s);
            on(TrainEvent::Step(r));
            last = Some(r.clone());
        })?;
        tps.sort_by(|a, b| a.total_cmp(b));
        Ok(Trained {
            outcome,
            step: engine.step,
            last,
            last_eval,
            last_metrics,
            median_tps: tps.get(tps.len() / 2).copied().unwrap_or(0.0),
            dir: self.dir.path().to_path_buf(),
        })
    }
}

/// The line of a run that Ctrl-C stopped at `step`.
pub fn interrupted_line(step: u64, dir: &std::path::Path) -> String {
    format!(
        "interrupted: checkpoint at step {step} in {}; continue with canon train --resume {}",
        dir.display(),
        dir.display()
    )
}

/// The line of a finished run: last train loss, last eval loss and metrics, the median tokens/s.
pub fn done_line(
    step: u64,
    loss: Option<f64>,
    eval: Option<f64>,
    metrics: &[(String, f64)],
    median_tps: f64,
    dir: &std::path::Path,
) -> String {
    format!(
        "done: step {step}, train loss {}, eval loss {}{}, median {median_tps:.0} tokens/s; run folder {}",
        loss.map_or("-".into(), |l| format!("{l:.4}")),
        eval.map_or("-".into(), |e| format!("{e:.4}")),
        metrics
            .iter()
            .map(|(k, v)| format!(", {k} {v:.4}"))
            .collect::<String>(),
        dir.display()
    )
}

/// The progress bar's message: train loss, the last eval loss if any, tokens/s.
pub fn step_message(loss: f64, eval: Option<f64>, tokens_per_s: f64) -> String {
    format!(
        "loss {loss:.3}{} {tokens_per_s:.0} tok/s",
        eval.map_or(String::new(), |e| format!(" eval {e:.3}"))
    )
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn run_lines_read_plainly() {
        let d = std::path::Path::new("runs/x");
        assert_eq!(
            done_line(5, Some(1.5), None, &[("acc".into(), 0.5)], 99.6, d),
            "done: step 5, train loss 1.5000, eval loss -, acc 0.5000, median 100 tokens/s; run folder runs/x"
        );
        assert_eq!(
            step_message(2.0, Some(1.0), 10.0),
            "loss 2.000 eval 1.000 10 tok/s"
        );
        assert!(interrupted_line(3, d).ends_with("canon train --resume runs/x"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_needs_config_and_out_or_resume() {
        let a = TrainArgs {
            config: None,
            out: Some(PathBuf::from("runs/x")),
            resume: None,
            max_steps: None,
            stop_at: None,
            seed: None,
            bf16: false,
        };
        let e = a.open().err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("give --config FILE --out DIR, or --resume DIR")
        );
    }
}
