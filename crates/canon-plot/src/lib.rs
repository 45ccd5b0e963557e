//! Figures for Canon: line, scatter, bar and band plots with ticks, tick labels, axis titles, a
//! legend, a title and footnote lines, on linear or log axes, with an optional second y axis on
//! the right. Rendered with `plotters` to PNG or SVG (chosen by the file extension) and written
//! atomically. Text uses DejaVu Sans, embedded in the crate, so no system font is needed.
//!
//! Non-finite values (and values ≤ 0 on a log axis) are skipped; the count comes back in
//! [`Report`] and is printed as a footnote line so a reader knows the figure is missing points.
//!
//! ```no_run
//! use canon_plot::{Figure, Series};
//!
//! let loss: Vec<(f64, f64)> = (1..=100).map(|s| (s as f64, 3.0 / (s as f64).sqrt())).collect();
//! let report = Figure::new("Training loss")
//!     .x_title("step")
//!     .y_title("loss (nats/token)")
//!     .log_y()
//!     .series(Series::line("train", loss.clone()).alpha(0.3))
//!     .series(Series::line("train (smoothed)", canon_plot::moving_average(&loss, 10)))
//!     .series(Series::scatter("eval", vec![(50.0, 0.5), (100.0, 0.35)]))
//!     .footnote("model: gpt2-small · seed 0")
//!     .save("loss.png".as_ref())?;
//! assert_eq!(report.skipped, 0);
//! # Ok::<(), canon_plot::PlotError>(())
//! ```

pub mod metrics_figure;
mod render;
pub mod ticks;

use std::path::{Path, PathBuf};

pub use render::Report;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: expected a .png or .svg file name, found extension '{found}'")]
    Extension { path: PathBuf, found: String },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
    #[error("drawing the figure: {0}")]
    Draw(String),
    #[error("figure size {0}x{1}: expected at least 200x150 pixels and at most 8000x8000")]
    Size(u32, u32),
}

pub type Result<T> = std::result::Result<T, PlotError>;

/// An RGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

/// The colours given to series in order (the common "tab10" palette).
pub const PALETTE: [Rgb; 10] = [
    Rgb(31, 119, 180),
    Rgb(255, 127, 14),
    Rgb(44, 160, 44),
    Rgb(214, 39, 40),
    Rgb(148, 103, 189),
    Rgb(140, 86, 75),
    Rgb(227, 119, 194),
    Rgb(127, 127, 127),
    Rgb(188, 189, 34),
    Rgb(23, 190, 207),
];

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Points joined in order; `markers` also draws a dot at each point.
    Line { markers: bool },
    /// Dots only.
    Scatter,
    /// Vertical bars from 0 (or from the bottom of a log axis) to each y; bar series sharing an
    /// x are drawn side by side.
    Bars,
    /// A filled region between a lower and an upper curve (min/max, confidence interval).
    Band,
}

/// One series: its legend name (empty: not in the legend), its points and how it is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub kind: Kind,
    /// `(x, y)`; for a band `(x, lower)`.
    pub points: Vec<(f64, f64)>,
    /// Band only: the upper curve, one value per point.
    pub upper: Vec<f64>,
    /// `None`: the next palette colour.
    pub color: Option<Rgb>,
    /// Opacity 0..=1 (bands default to 0.2, the rest to 1).
    pub alpha: f64,
    /// Line width in pixels.
    pub width: u32,
    /// Plotted against the second (right) y axis.
    pub right_axis: bool,
}

impl Series {
    fn new(name: &str, kind: Kind, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.to_string(),
            kind,
            points,
            upper: Vec::new(),
            color: None,
            alpha: 1.0,
            width: 2,
            right_axis: false,
        }
    }
    /// Points joined by a line.
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, Kind::Line { markers: false }, points)
    }
    /// Points joined by a line, with a dot at each point.
    pub fn line_points(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, Kind::Line { markers: true }, points)
    }
    /// Dots.
    pub fn scatter(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, Kind::Scatter, points)
    }
    /// Bars at each x (use [`Figure::x_categories`] for named bars at x = 0, 1, 2, …).
    pub fn bars(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, Kind::Bars, points)
    }
    /// A filled band: `(x, lower, upper)` per point.
    pub fn band(name: &str, points: Vec<(f64, f64, f64)>) -> Self {
        let mut s = Self::new(
            name,
            Kind::Band,
            points.iter().map(|&(x, lo, _)| (x, lo)).collect(),
        );
        s.upper = points.iter().map(|&(_, _, hi)| hi).collect();
        s.alpha = 0.2;
        s
    }
    pub fn color(mut self, c: Rgb) -> Self {
        self.color = Some(c);
        self
    }
    pub fn alpha(mut self, a: f64) -> Self {
        self.alpha = a.clamp(0.0, 1.0);
        self
    }
    pub fn width(mut self, w: u32) -> Self {
        self.width = w.max(1);
        self
    }
    /// Plots this series against the second y axis (see [`Figure::y2_title`]).
    pub fn on_right(mut self) -> Self {
        self.right_axis = true;
        self
    }
}

/// One axis: its title, scale and optional fixed range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Axis {
    pub title: String,
    pub log: bool,
    /// Shown range; `None`: the data's range plus a margin. Points outside are clipped.
    pub range: Option<(f64, f64)>,
    /// x only: names for x = 0, 1, 2, … (bar charts); replaces the numeric tick labels.
    pub categories: Vec<String>,
}

/// A figure: title, axes, series and footnote lines. Build with the methods, then [`save`],
/// [`to_svg`] or [`to_png`].
///
/// [`save`]: Figure::save
/// [`to_svg`]: Figure::to_svg
/// [`to_png`]: Figure::to_png
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    /// The second y axis, on the right; used when a series is [`Series::on_right`].
    pub y2: Axis,
    pub series: Vec<Series>,
    /// Lines printed small under the plot (model, seed, command, token count).
    pub footnotes: Vec<String>,
    /// Width and height in pixels.
    pub size: (u32, u32),
}

impl Figure {
    /// An empty 960×600 figure with this title.
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_string(),
            x: Axis::default(),
            y: Axis::default(),
            y2: Axis::default(),
            series: Vec::new(),
            footnotes: Vec::new(),
            size: (960, 600),
        }
    }
    pub fn x_title(mut self, t: &str) -> Self {
        self.x.title = t.to_string();
        self
    }
    pub fn y_title(mut self, t: &str) -> Self {
        self.y.title = t.to_string();
        self
    }
    /// Title of the right-hand axis (for series marked [`Series::on_right`]).
    pub fn y2_title(mut self, t: &str) -> Self {
        self.y2.title = t.to_string();
        self
    }
    pub fn log_x(mut self) -> Self {
        self.x.log = true;
        self
    }
    pub fn log_y(mut self) -> Self {
        self.y.log = true;
        self
    }
    pub fn log_y2(mut self) -> Self {
        self.y2.log = true;
        self
    }
    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x.range = Some((lo, hi));
        self
    }
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y.range = Some((lo, hi));
        self
    }
    /// Named x positions 0, 1, 2, … (for bar charts).
    pub fn x_categories<S: AsRef<str>>(mut self, names: &[S]) -> Self {
        self.x.categories = names.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }
    pub fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }
    pub fn footnote(mut self, line: &str) -> Self {
        self.footnotes.push(line.to_string());
        self
    }
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// Renders to SVG text.
    pub fn to_svg(&self) -> Result<(String, Report)> {
        render::svg(self)
    }

    /// Renders to PNG bytes.
    pub fn to_png(&self) -> Result<(Vec<u8>, Report)> {
        render::png(self)
    }

    /// Renders to `path` (`.png` or `.svg`), written to a temporary file and renamed into place.
    pub fn save(&self, path: &Path) -> Result<Report> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let (bytes, report) = match ext.as_str() {
            "png" => self.to_png()?,
            "svg" => {
                let (s, r) = self.to_svg()?;
                (s.into_bytes(), r)
            }
            _ => {
                return Err(PlotError::Extension {
                    path: path.to_path_buf(),
                    found: ext,
                });
            }
        };
        write_atomic(path, &bytes)?;
        Ok(report)
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    canon_fs::write_atomic(path, bytes).map_err(|e| PlotError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Trailing moving average over the last `window` finite points (fewer at the start); non-finite
/// points are passed through unchanged and do not enter the mean. `window` ≤ 1 returns the input.
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    if window <= 1 {
        return points.to_vec();
    }
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut sum = 0.0;
    points
        .iter()
        .map(|&(x, y)| {
            if !y.is_finite() {
                return (x, y);
            }
            recent.push_back(y);
            sum += y;
            if recent.len() > window {
                sum -= recent.pop_front().unwrap_or(0.0);
            }
            (x, sum / recent.len() as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_trailing_and_skips_nan() {
        let p = [
            (0.0, 1.0),
            (1.0, 3.0),
            (2.0, f64::NAN),
            (3.0, 5.0),
            (4.0, 7.0),
        ];
        let m = moving_average(&p, 2);
        assert_eq!(m[0], (0.0, 1.0));
        assert_eq!(m[1], (1.0, 2.0));
        assert!(m[2].1.is_nan());
        assert_eq!(m[3], (3.0, 4.0));
        assert_eq!(m[4], (4.0, 6.0));
        assert_eq!(moving_average(&p[..2], 1), p[..2].to_vec());
    }
}
