//! `metrics.jsonl` (one JSON object per logged step) and the loss figure drawn from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Result, io_err};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    pub loss: f64,
    pub tokens_per_s: f64,
    pub lr: f64,
    pub grad_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
    /// Training tokens processed up to and including this step (absent in older runs).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<u64>,
    /// Wall-clock seconds of training up to this step, across resumptions (absent in older runs).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub elapsed_s: Option<f64>,
    /// Other training terms and held-out metrics by name (GLaM's `moe_aux_loss`,
    /// Transformer-XL's `eval_loss_no_mem`, accuracies, BLEU), as top-level keys.
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, f64>,
    /// Per MoE layer, the fraction of tokens whose top-1 expert is each expert.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub expert_load: Vec<Vec<f32>>,
}

pub struct MetricsFile {
    path: PathBuf,
}

impl MetricsFile {
    /// Opens `path` for appending; lines beyond `keep_until_step` (written after the checkpoint a
    /// resumed run starts from) are dropped so the file describes one consistent history.
    pub fn open(path: &Path, keep_until_step: Option<u64>) -> Result<Self> {
        if let Some(s) = keep_until_step
            && path.is_file()
        {
            let kept: Vec<String> = read_lines(path)?
                .into_iter()
                .filter(|l| l.step <= s)
                .filter_map(|l| serde_json::to_string(&l).ok())
                .collect();
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(path, text).map_err(|e| io_err(path, e))?;
        } else if keep_until_step.is_none() {
            std::fs::write(path, "").map_err(|e| io_err(path, e))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, line: &MetricsLine) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io_err(&self.path, e))?;
        let s = serde_json::to_string(line).map_err(|e| io_err(&self.path, e))?;
        writeln!(f, "{s}").map_err(|e| io_err(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn read_lines(path: &Path) -> Result<Vec<MetricsLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| io_err(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Smoothing window for the train-loss line: about a twentieth of the logged points.
fn smoothing_window(n: usize) -> usize {
    (n / 20).clamp(1, 200)
}

/// Draws a run's `loss.png` (or `.svg`): train loss raw (faint) and smoothed, eval loss as a
/// line with points, the learning-rate schedule on the right axis, x = optimizer step. The
/// footnotes (run, seed, batch shape) are printed under it, followed by the tokens seen when the
/// metrics record them. Written atomically.
pub fn plot_loss(
    lines: &[MetricsLine],
    path: &Path,
    title: &str,
    footnotes: &[String],
) -> Result<()> {
    use canon_plot::{Figure, PALETTE, Series, moving_average};
    let train: Vec<(f64, f64)> = lines.iter().map(|l| (l.step as f64, l.loss)).collect();
    let eval: Vec<(f64, f64)> = lines
        .iter()
        .filter_map(|l| l.eval_loss.map(|e| (l.step as f64, e)))
        .collect();
    let lr: Vec<(f64, f64)> = lines.iter().map(|l| (l.step as f64, l.lr)).collect();
    let w = smoothing_window(train.len());
    let mut fig = Figure::new(title)
        .x_title("optimizer step")
        .y_title("loss (nats/token)")
        .y2_title("learning rate");
    if w > 1 {
        fig = fig
            .series(
                Series::line("train loss", train.clone())
                    .color(PALETTE[0])
                    .alpha(0.3)
                    .width(1),
            )
            .series(
                Series::line(
                    &format!("train loss, mean of last {w} logged"),
                    moving_average(&train, w),
                )
                .color(PALETTE[0]),
            );
    } else {
        fig = fig.series(Series::line("train loss", train).color(PALETTE[0]));
    }
    if !eval.is_empty() {
        fig = fig.series(Series::line_points("eval loss", eval).color(PALETTE[3]));
    }
    if !lr.is_empty() {
        fig = fig.series(
            Series::line("learning rate (right axis)", lr)
                .color(PALETTE[7])
                .width(1)
                .on_right(),
        );
    }
    for f in footnotes {
        fig = fig.footnote(f);
    }
    if let Some(last) = lines.last() {
        let mut f = format!("{} steps", last.step);
        if let Some(t) = last.tokens {
            f.push_str(&format!(", {} training tokens", thousands(t)));
        }
        if let Some(s) = last.elapsed_s {
            f.push_str(&format!(", {:.1} min of training", s / 60.0));
        }
        fig = fig.footnote(&f);
    }
    fig.save(path).map(|_| ()).map_err(|e| io_err(path, e))
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64, loss: f64, eval: Option<f64>) -> MetricsLine {
        MetricsLine {
            step,
            loss,
            tokens_per_s: 1000.0,
            lr: 1e-3,
            grad_norm: 1.0,
            eval_loss: eval,
            tokens: Some(step * 4096),
            elapsed_s: Some(step as f64),
            extra: Default::default(),
            expert_load: Vec::new(),
        }
    }

    #[test]
    fn loss_plot_names_its_parts() {
        let lines: Vec<MetricsLine> = (1..=100)
            .map(|s| line(s, 5.0 - s as f64 / 50.0, (s % 50 == 0).then_some(4.0)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("loss.svg");
        plot_loss(&lines, &svg, "run-a", &["seed 7".to_string()]).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for want in [
            "run-a",
            "train loss",
            "train loss, mean of last 5 logged",
            "eval loss",
            "learning rate (right axis)",
            "optimizer step",
            "seed 7",
            "100 steps, 409,600 training tokens, 1.7 min of training",
        ] {
            assert!(text.contains(want), "missing {want}");
        }
        let png = dir.path().join("loss.png");
        plot_loss(&lines[..1], &png, "one step", &[]).unwrap();
        assert!(png.is_file());
    }

    #[test]
    fn old_metrics_lines_without_tokens_still_parse() {
        let l: MetricsLine = serde_json::from_str(
            r#"{"step":3,"loss":2.5,"tokens_per_s":10.0,"lr":0.1,"grad_norm":1.0}"#,
        )
        .unwrap();
        assert_eq!((l.tokens, l.elapsed_s), (None, None));
        assert!(l.extra.is_empty());
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
