//! `canon train`'s settings (with the `cli` feature also its argument struct, the doc comments
//! being the `--help` text) and the run folder they open: a new one from `--config` and `--out`,
//! or `--resume`'s, with the `--max-steps` and `--seed` overrides applied to the configuration.

use std::path::PathBuf;

use crate::{Context, Result, RunConfig, RunDir, bail};

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
