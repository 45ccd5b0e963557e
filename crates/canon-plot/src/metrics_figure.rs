//! Figures of run metrics and JSON-lines tables (`canon plot`): one metric of one or more runs
//! against step, tokens or time, or any two keys of a table, grouped by a third (bars when the
//! x key holds names).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Figure, PALETTE, PlotError, Result, Series, moving_average};

/// An input error with its message as is.
fn input(m: impl Into<String>) -> PlotError {
    PlotError::Input(m.into())
}

macro_rules! bail {
    ($($t:tt)*) => {
        return Err(PlotError::Input(format!($($t)*)))
    };
}

/// What to draw (the `canon plot` options).
#[derive(Debug, Clone, Default)]
pub struct FigureSpec {
    pub runs: Vec<PathBuf>,
    /// The metrics key of runs.
    pub metric: String,
    /// Runs: step, tokens or time (default step); tables: the x key.
    pub x: Option<String>,
    /// Trailing mean over this many points (1 = none).
    pub smooth: usize,
    pub log_x: bool,
    pub log_y: bool,
    pub title: Option<String>,
    /// Tables: the y key and the grouping key.
    pub y: Option<String>,
    pub group: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XAxis {
    /// Optimizer step.
    Step,
    /// Training tokens seen (runs written by this version on).
    Tokens,
    /// Wall-clock minutes of training (runs written by this version on).
    Time,
}

/// Parses a JSON-lines file into objects; a bad line is an error naming its number.
pub fn read_jsonl(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let mut rows = Vec::new();
    let io = |e: canon_fs::lines::LineError| PlotError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    for item in canon_fs::lines::lines(path).map_err(io)? {
        let (n, line) = item.map_err(io)?;
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

fn require_key(rows: &[Map<String, Value>], key: &str, file: &Path) -> Result<()> {
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
fn metrics_of(run: &Path) -> Result<(PathBuf, String)> {
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

/// The group name of a table row (`--group`'s value, or `y_key` without grouping).
fn group_of(a: &FigureSpec, r: &Map<String, Value>, y_key: &str) -> String {
    match &a.group {
        None => y_key.to_string(),
        Some(k) => match r.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "(none)".to_string(),
            Some(v) => format!("{k}={v}"),
        },
    }
}

/// A table whose x key holds strings: one bar per category (in the order of first appearance)
/// and group, the groups side by side.
fn categorical_figure(
    a: &FigureSpec,
    rows: &[Map<String, Value>],
    x_key: &str,
    y_key: &str,
    file: &Path,
) -> Result<Figure> {
    require_key(rows, y_key, file)?;
    if a.log_x || a.smooth > 1 {
        bail!(
            "{}: '{x_key}' holds names, not numbers: --log-x and --smooth need a numeric x",
            file.display()
        );
    }
    let mut cats: Vec<String> = Vec::new();
    let mut groups: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let (Some(Value::String(x)), Some(y)) = (r.get(x_key), num(r, y_key)) else {
            continue;
        };
        let i = match cats.iter().position(|c| c == x) {
            Some(i) => i,
            None => {
                cats.push(x.clone());
                cats.len() - 1
            }
        };
        let g = group_of(a, r, y_key);
        match groups.iter_mut().find(|(n, _)| *n == g) {
            Some((_, p)) => p.push((i as f64, y)),
            None => groups.push((g, vec![(i as f64, y)])),
        }
    }
    let mut fig = Figure::new(a.title.as_deref().unwrap_or(y_key))
        .x_title(x_key)
        .y_title(y_key)
        .x_categories(&cats);
    if a.log_y {
        fig = fig.log_y();
    }
    for (name, pts) in groups {
        let name = if a.group.is_some() {
            name
        } else {
            String::new()
        };
        fig = fig.series(Series::bars(&name, pts));
    }
    Ok(fig)
}

/// One metric of each run (a folder holding metrics.jsonl, or the file) against `a.x` (step,
/// tokens or time), one series per run.
pub fn runs_figure(a: &FigureSpec) -> Result<Figure> {
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

/// Two keys of a JSON-lines table, one series per value of `a.group`: lines with dots when the
/// x key holds numbers, grouped bars with the names on the x axis when it holds strings.
pub fn jsonl_figure(a: &FigureSpec, file: &Path) -> Result<Figure> {
    let x_key =
        a.x.clone()
            .ok_or_else(|| input("--jsonl needs --x KEY (the key for the x axis)"))?;
    let y_key =
        a.y.clone()
            .ok_or_else(|| input("--jsonl needs --y KEY (the key for the y axis)"))?;
    let rows = read_jsonl(file)?;
    if rows.is_empty() {
        bail!("{}: no lines", file.display());
    }
    if !rows
        .iter()
        .any(|r| r.get(&x_key).is_some_and(Value::is_number))
        && rows
            .iter()
            .any(|r| r.get(&x_key).is_some_and(Value::is_string))
    {
        return categorical_figure(a, &rows, &x_key, &y_key, file);
    }
    require_key(&rows, &x_key, file)?;
    require_key(&rows, &y_key, file)?;
    let mut groups: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in &rows {
        let (Some(x), Some(y)) = (num(r, &x_key), num(r, &y_key)) else {
            continue;
        };
        let g = group_of(a, r, &y_key);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(x: &str, y: &str, group: Option<&str>) -> FigureSpec {
        FigureSpec {
            x: Some(x.into()),
            y: Some(y.into()),
            group: group.map(Into::into),
            smooth: 1,
            ..FigureSpec::default()
        }
    }

    fn table(lines: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t.jsonl");
        std::fs::write(&f, lines).unwrap();
        (d, f)
    }

    #[test]
    fn string_x_gives_grouped_bars_in_first_seen_order() {
        let (_d, f) = table(concat!(
            "{\"method\":\"ReAct\",\"em\":0.3,\"setup\":\"prompted\"}\n",
            "{\"method\":\"Act\",\"em\":0.2,\"setup\":\"prompted\"}\n",
            "{\"method\":\"ReAct\",\"em\":0.5,\"setup\":\"fine-tuned\"}\n",
            "{\"method\":\"CoT\",\"em\":0.1,\"setup\":\"fine-tuned\"}\n",
            "{\"method\":\"Act\",\"setup\":\"fine-tuned\"}\n",
        ));
        let fig = jsonl_figure(&spec("method", "em", Some("setup")), &f).unwrap();
        assert_eq!(fig.x.categories, ["ReAct", "Act", "CoT"]);
        let names: Vec<&str> = fig.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["prompted", "fine-tuned"]);
        assert_eq!(fig.series[0].points, [(0.0, 0.3), (1.0, 0.2)]);
        assert_eq!(fig.series[1].points, [(0.0, 0.5), (2.0, 0.1)]);
        assert!(fig.to_svg().is_ok());
    }

    #[test]
    fn numeric_x_still_gives_lines_and_names_reject_log_x() {
        let (_d, f) = table("{\"k\":2,\"acc\":0.5}\n{\"k\":1,\"acc\":0.25}\n");
        let fig = jsonl_figure(&spec("k", "acc", None), &f).unwrap();
        assert!(fig.x.categories.is_empty());
        assert_eq!(fig.series[0].points, [(1.0, 0.25), (2.0, 0.5)]);
        let (_d2, g) = table("{\"m\":\"a\",\"acc\":0.5}\n");
        let mut s = spec("m", "acc", None);
        s.log_x = true;
        let e = jsonl_figure(&s, &g).unwrap_err().to_string();
        assert!(
            e.contains("'m' holds names") && e.contains("--log-x"),
            "{e}"
        );
    }
}
