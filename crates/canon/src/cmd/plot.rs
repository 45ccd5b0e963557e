//! `canon plot`: one metric of one or more runs on one figure (a change against its baseline), or
//! any two keys of a JSON-lines table, to PNG or SVG.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value};

use canon_plot::{Figure, PALETTE, Series, moving_average};

use crate::Ctx;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XAxis {
    /// Optimizer step.
    Step,
    /// Training tokens seen (runs written by this version on).
    Tokens,
    /// Wall-clock minutes of training (runs written by this version on).
    Time,
}

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
    let (fig, what) = match &a.jsonl {
        Some(file) => (jsonl_figure(&a, file)?, file.display().to_string()),
        None => {
            if a.runs.is_empty() {
                bail!(
                    "expected at least one RUN folder (or --jsonl FILE --x KEY --y KEY); see canon plot --help"
                );
            }
            (runs_figure(&a)?, format!("{} run(s)", a.runs.len()))
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

/// Parses a JSON-lines file into objects; a bad line is an error naming its number.
fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Map<String, Value>>> {
    let mut rows = Vec::new();
    for item in canon_fs::lines::lines(path)? {
        let (n, line) = item?;
        let i = n - 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(m)) => rows.push(m),
            Ok(other) => bail!(
                "{} line {}: expected a JSON object, found {}",
                path.display(),
                i + 1,
                kind(&other)
            ),
            Err(e) => bail!("{} line {}: not valid JSON ({e})", path.display(), i + 1),
        }
    }
    Ok(rows)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The keys holding a number in at least one row, sorted.
fn numeric_keys(rows: &[Map<String, Value>]) -> Vec<String> {
    let keys: BTreeSet<&String> = rows
        .iter()
        .flat_map(|r| r.iter().filter(|(_, v)| v.is_number()).map(|(k, _)| k))
        .collect();
    keys.into_iter().cloned().collect()
}

fn require_key(rows: &[Map<String, Value>], key: &str, file: &Path) -> anyhow::Result<()> {
    if rows
        .iter()
        .any(|r| r.get(key).is_some_and(Value::is_number))
    {
        return Ok(());
    }
    let keys = numeric_keys(rows);
    if keys.is_empty() {
        bail!("{}: no numeric keys in any line", file.display());
    }
    bail!(
        "{}: no numeric '{key}' in any line; available keys: {}",
        file.display(),
        keys.join(", ")
    )
}

fn num(row: &Map<String, Value>, key: &str) -> Option<f64> {
    row.get(key).and_then(Value::as_f64)
}

/// A run argument's metrics file and its legend name.
fn metrics_of(run: &Path) -> anyhow::Result<(PathBuf, String)> {
    if run.is_file() {
        let name = run
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| run.display().to_string());
        return Ok((run.to_path_buf(), name));
    }
    if !run.is_dir() {
        bail!(
            "{}: no such run folder (expected a folder with metrics.jsonl, or a metrics.jsonl file)",
            run.display()
        );
    }
    let m = run.join("metrics.jsonl");
    if !m.is_file() {
        bail!(
            "{}: no metrics.jsonl in this folder (expected a run folder written by canon train or canon finetune)",
            run.display()
        );
    }
    let name = run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string());
    Ok((m, name))
}

fn runs_figure(a: &PlotArgs) -> anyhow::Result<Figure> {
    let x = match a.x.as_deref().unwrap_or("step") {
        "step" => XAxis::Step,
        "tokens" => XAxis::Tokens,
        "time" => XAxis::Time,
        other => bail!("--x for runs: expected step, tokens or time, found '{other}'"),
    };
    if a.y.is_some() || a.group.is_some() {
        bail!("--y and --group go with --jsonl FILE; for runs use --metric");
    }
    let (x_key, x_title, x_scale) = match x {
        XAxis::Step => ("step", "optimizer step", 1.0),
        XAxis::Tokens => ("tokens", "training tokens", 1.0),
        XAxis::Time => ("elapsed_s", "training time (minutes)", 1.0 / 60.0),
    };
    let metric = a.metric.as_str();
    let mut fig = Figure::new(a.title.as_deref().unwrap_or(metric))
        .x_title(x_title)
        .y_title(metric);
    if a.log_x {
        fig = fig.log_x();
    }
    if a.log_y {
        fig = fig.log_y();
    }
    let mut names: Vec<String> = Vec::new();
    for (i, run) in a.runs.iter().enumerate() {
        let (file, mut name) = metrics_of(run)?;
        if names.contains(&name) {
            name = run.display().to_string();
        }
        names.push(name.clone());
        let rows = read_jsonl(&file)?;
        if rows.is_empty() {
            bail!(
                "{}: no metrics lines yet (has the run logged a step?)",
                file.display()
            );
        }
        require_key(&rows, metric, &file)?;
        if !rows.iter().any(|r| num(r, x_key).is_some()) {
            bail!(
                "{}: no '{x_key}' key for --x {} (runs record tokens and elapsed_s from this version on); available keys: {}",
                file.display(),
                a.x.as_deref().unwrap_or("step"),
                numeric_keys(&rows).join(", ")
            );
        }
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((num(r, x_key)? * x_scale, num(r, metric)?)))
            .collect();
        let color = PALETTE[i % PALETTE.len()];
        let sparse = metric.starts_with("eval") || pts.len() <= 30;
        if a.smooth > 1 {
            fig = fig
                .series(
                    Series::line("", pts.clone())
                        .color(color)
                        .alpha(0.25)
                        .width(1),
                )
                .series(
                    Series::line(
                        &format!("{name} (mean of {})", a.smooth),
                        moving_average(&pts, a.smooth),
                    )
                    .color(color),
                );
        } else if sparse {
            fig = fig.series(Series::line_points(&name, pts).color(color));
        } else {
            fig = fig.series(Series::line(&name, pts).color(color));
        }
    }
    Ok(fig)
}

fn jsonl_figure(a: &PlotArgs, file: &Path) -> anyhow::Result<Figure> {
    let x_key =
        a.x.clone()
            .context("--jsonl needs --x KEY (the key for the x axis)")?;
    let y_key =
        a.y.clone()
            .context("--jsonl needs --y KEY (the key for the y axis)")?;
    let rows = read_jsonl(file)?;
    if rows.is_empty() {
        bail!("{}: no lines", file.display());
    }
    require_key(&rows, &x_key, file)?;
    require_key(&rows, &y_key, file)?;
    let mut groups: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in &rows {
        let (Some(x), Some(y)) = (num(r, &x_key), num(r, &y_key)) else {
            continue;
        };
        let g = match &a.group {
            None => y_key.clone(),
            Some(k) => match r.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "(none)".to_string(),
                Some(v) => format!("{k}={v}"),
            },
        };
        match groups.iter_mut().find(|(n, _)| *n == g) {
            Some((_, p)) => p.push((x, y)),
            None => groups.push((g, vec![(x, y)])),
        }
    }
    if let Some(k) = &a.group
        && !rows.iter().any(|r| r.contains_key(k))
    {
        let keys: BTreeSet<&String> = rows.iter().flat_map(|r| r.keys()).collect();
        bail!(
            "{}: no '{k}' key for --group in any line; keys: {}",
            file.display(),
            keys.into_iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let mut fig = Figure::new(a.title.as_deref().unwrap_or(&y_key))
        .x_title(&x_key)
        .y_title(&y_key);
    if a.log_x {
        fig = fig.log_x();
    }
    if a.log_y {
        fig = fig.log_y();
    }
    for (name, mut pts) in groups {
        pts.sort_by(|p, q| p.0.total_cmp(&q.0));
        let pts = if a.smooth > 1 {
            moving_average(&pts, a.smooth)
        } else {
            pts
        };
        let name = if a.group.is_some() {
            name
        } else {
            String::new()
        };
        fig = fig.series(Series::line_points(&name, pts));
    }
    Ok(fig)
}
