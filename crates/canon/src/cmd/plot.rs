//! `canon plot`: one metric of one or more runs on one figure (a change against its baseline), or
//! any two keys of a JSON-lines table, to PNG or SVG.

use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_plot::metrics_figure::{FigureSpec, jsonl_figure, runs_figure};
use clap::Args;

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon plot runs/gpt2-small                              # its train loss against step
  canon plot runs/base runs/change --metric eval_loss --out compare.svg
  canon plot runs/base --metric tokens_per_s --x time --smooth 20
  canon plot runs/a runs/b --x tokens --log-x --log-y --out scaling.png
  canon plot --jsonl results.jsonl --x k --y accuracy --group model --out shots.png

A RUN is a run folder holding metrics.jsonl (what canon train and canon finetune write) or a
metrics.jsonl file itself. --metric takes any numeric key of those lines: loss, eval_loss, lr,
grad_norm, tokens_per_s, and the extra terms a run records (eval_acc, moe_aux_loss, ...).")]
pub struct PlotArgs {
    /// Run folders (or their metrics.jsonl files); each becomes one legend entry.
    #[arg(value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The metrics key to plot against --x.
    #[arg(long, default_value = "loss")]
    pub metric: String,
    /// The x axis: step, tokens or time for runs (default step); a key with --jsonl.
    #[arg(long, value_name = "AXIS|KEY")]
    pub x: Option<String>,
    /// Trailing mean over N logged points; the raw values stay as a faint line.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub smooth: usize,
    /// Logarithmic x axis.
    #[arg(long)]
    pub log_x: bool,
    /// Logarithmic y axis.
    #[arg(long)]
    pub log_y: bool,
    /// Output file: .png or .svg.
    #[arg(long, default_value = "plot.png")]
    pub out: PathBuf,
    /// Figure title (default: the metric's name).
    #[arg(long)]
    pub title: Option<String>,
    /// A JSON-lines table to plot instead of runs (with --x KEY and --y KEY).
    #[arg(long, value_name = "FILE", conflicts_with = "runs")]
    pub jsonl: Option<PathBuf>,
    /// With --jsonl: the key for y.
    #[arg(long, value_name = "KEY", requires = "jsonl")]
    pub y: Option<String>,
    /// With --jsonl: one series per distinct value of this key.
    #[arg(long, value_name = "KEY", requires = "jsonl")]
    pub group: Option<String>,
}

pub fn run(a: PlotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let command = footnote_command();
    let spec = FigureSpec {
        runs: a.runs.clone(),
        metric: a.metric.clone(),
        x: a.x.clone(),
        smooth: a.smooth,
        log_x: a.log_x,
        log_y: a.log_y,
        title: a.title.clone(),
        y: a.y.clone(),
        group: a.group.clone(),
    };
    let (fig, what) = match &a.jsonl {
        Some(file) => (jsonl_figure(&spec, file)?, file.display().to_string()),
        None => {
            if a.runs.is_empty() {
                bail!(
                    "expected at least one RUN folder (or --jsonl FILE --x KEY --y KEY); see canon plot --help"
                );
            }
            (runs_figure(&spec)?, format!("{} run(s)", a.runs.len()))
        }
    };
    let report = fig
        .footnote(&command)
        .save(&a.out)
        .with_context(|| format!("cannot write the figure {}", a.out.display()))?;
    if !ctx.quiet {
        eprint!("wrote {} from {what}", a.out.display());
        if report.skipped > 0 {
            eprint!(
                " ({} points not drawn: not finite or ≤ 0 on a log axis)",
                report.skipped
            );
        }
        eprintln!();
    }
    Ok(())
}

/// "canon plot ARGS…" as typed, for the figure's footnote.
fn footnote_command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("canon {}", args.join(" "))
}
