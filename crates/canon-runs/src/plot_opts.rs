//! `canon plot`'s settings (with the `cli` feature also its argument struct, the doc comments
//! being the `--help` text) and the figure they describe.

use std::path::PathBuf;

use canon_plot::metrics_figure::{FigureSpec, jsonl_figure, runs_figure};
use canon_plot::{Figure, PlotError, Result};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon plot runs/gpt2-small                              # its train loss against step
  canon plot runs/base runs/change --metric eval_loss --out compare.svg
  canon plot runs/base --metric tokens_per_s --x time --smooth 20
  canon plot runs/a runs/b --x tokens --log-x --log-y --out scaling.png
  canon plot --jsonl results.jsonl --x k --y accuracy --group model --out shots.png

A RUN is a run folder holding metrics.jsonl (what canon train and canon finetune write) or a
metrics.jsonl file itself. --metric takes any numeric key of those lines: loss, eval_loss, lr,
grad_norm, tokens_per_s, and the extra terms a run records (eval_acc, moe_aux_loss, ...).")
)]
pub struct PlotArgs {
    /// Run folders (or their metrics.jsonl files); each becomes one legend entry.
    #[cfg_attr(feature = "cli", arg(value_name = "RUN"))]
    pub runs: Vec<PathBuf>,
    /// The metrics key to plot against --x.
    #[cfg_attr(feature = "cli", arg(long, default_value = "loss"))]
    pub metric: String,
    /// The x axis: step, tokens or time for runs (default step); a key with --jsonl.
    #[cfg_attr(feature = "cli", arg(long, value_name = "AXIS|KEY"))]
    pub x: Option<String>,
    /// Trailing mean over N logged points; the raw values stay as a faint line.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N", default_value_t = 1))]
    pub smooth: usize,
    /// Logarithmic x axis.
    #[cfg_attr(feature = "cli", arg(long))]
    pub log_x: bool,
    /// Logarithmic y axis.
    #[cfg_attr(feature = "cli", arg(long))]
    pub log_y: bool,
    /// Output file: .png or .svg.
    #[cfg_attr(feature = "cli", arg(long, default_value = "plot.png"))]
    pub out: PathBuf,
    /// Figure title (default: the metric's name).
    #[cfg_attr(feature = "cli", arg(long))]
    pub title: Option<String>,
    /// A JSON-lines table to plot instead of runs (with --x KEY and --y KEY).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "FILE", conflicts_with = "runs")
    )]
    pub jsonl: Option<PathBuf>,
    /// With --jsonl: the key for y.
    #[cfg_attr(feature = "cli", arg(long, value_name = "KEY", requires = "jsonl"))]
    pub y: Option<String>,
    /// With --jsonl: one series per distinct value of this key.
    #[cfg_attr(feature = "cli", arg(long, value_name = "KEY", requires = "jsonl"))]
    pub group: Option<String>,
}

impl PlotArgs {
    /// What to draw.
    pub fn spec(&self) -> FigureSpec {
        FigureSpec {
            runs: self.runs.clone(),
            metric: self.metric.clone(),
            x: self.x.clone(),
            smooth: self.smooth,
            log_x: self.log_x,
            log_y: self.log_y,
            title: self.title.clone(),
            y: self.y.clone(),
            group: self.group.clone(),
        }
    }

    /// The figure of the runs or the --jsonl table, and what it was drawn from (for the note).
    pub fn figure(&self) -> Result<(Figure, String)> {
        let spec = self.spec();
        Ok(match &self.jsonl {
            Some(file) => (jsonl_figure(&spec, file)?, file.display().to_string()),
            None => {
                if self.runs.is_empty() {
                    return Err(PlotError::Input(
                        "expected at least one RUN folder (or --jsonl FILE --x KEY --y KEY); see canon plot --help".into(),
                    ));
                }
                (runs_figure(&spec)?, format!("{} run(s)", self.runs.len()))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_run_is_an_error() {
        let a = PlotArgs {
            runs: vec![],
            metric: "loss".into(),
            x: None,
            smooth: 1,
            log_x: false,
            log_y: false,
            out: "plot.png".into(),
            title: None,
            jsonl: None,
            y: None,
            group: None,
        };
        assert_eq!(a.spec().metric, "loss");
        let e = a.figure().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("expected at least one RUN folder"), "{e}");
    }
}
