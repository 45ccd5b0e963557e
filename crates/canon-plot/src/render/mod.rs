//! Layout and drawing on a plotters backend: our own axes (ticks from [`crate::ticks`]), grid,
//! series clipped to the plot rectangle, legend in the emptiest corner, title and footnotes.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform, register_font};

use crate::ticks::{self, Ticks};
use crate::{Axis, Figure, Kind, PALETTE, PlotError, Result, Rgb, Series};

/// DejaVu Sans (Bitstream Vera licence, see fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../../fonts/DejaVuSans.ttf");
const FAMILY: &str = "canon-dejavu-sans";

const TITLE_PX: f64 = 22.0;
const AXIS_TITLE_PX: f64 = 16.0;
const TICK_PX: f64 = 13.0;
const LEGEND_PX: f64 = 13.0;
const FOOT_PX: f64 = 12.0;

/// What rendering left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Points not drawn: a coordinate that is NaN or infinite, or ≤ 0 on a log axis.
    pub skipped: usize,
    /// Of those, the ones that were ≤ 0 on a log axis.
    pub non_positive_on_log: usize,
}

fn ensure_font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| "the embedded DejaVu Sans font did not load".to_string())
    })
    .clone()
    .map_err(PlotError::Draw)
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

fn font(px: f64) -> FontDesc<'static> {
    (FAMILY, px).into_font()
}

fn text_size(text: &str, px: f64) -> (i32, i32) {
    match font(px).box_size(text) {
        Ok((w, h)) => (w as i32, h as i32),
        // Layout cannot fail for a loaded font; estimate if it ever does.
        Err(_) => ((text.chars().count() as f64 * px * 0.6) as i32, px as i32),
    }
}

fn rgb(c: Rgb) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

fn check_size(fig: &Figure) -> Result<(u32, u32)> {
    let (w, h) = fig.size;
    if !(200..=8000).contains(&w) || !(150..=8000).contains(&h) {
        return Err(PlotError::Size(w, h));
    }
    Ok((w, h))
}

pub(crate) fn svg(fig: &Figure) -> Result<(String, Report)> {
    ensure_font()?;
    let size = check_size(fig)?;
    let mut out = String::new();
    let report = {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        let r = draw(&root, fig)?;
        root.present().map_err(draw_err)?;
        r
    };
    Ok((out, report))
}

pub(crate) fn png(fig: &Figure) -> Result<(Vec<u8>, Report)> {
    ensure_font()?;
    let (w, h) = check_size(fig)?;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    let report = {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let r = draw(&root, fig)?;
        root.present().map_err(draw_err)?;
        r
    };
    let mut bytes = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut bytes, w, h);
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        enc.set_compression(::png::Compression::Best);
        let mut wr = enc.write_header().map_err(draw_err)?;
        wr.write_image_data(&buf).map_err(draw_err)?;
    }
    Ok((bytes, report))
}

/// One axis mapped onto pixels.
#[derive(Clone, Copy)]
struct Map {
    lo: f64,
    hi: f64,
    log: bool,
    p0: f64,
    p1: f64,
}

impl Map {
    fn px(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.p0 + t * (self.p1 - self.p0)
    }
}

/// A series' drawable points (finite, positive on log axes), with band tops.
struct Clean {
    pts: Vec<(f64, f64)>,
    upper: Vec<f64>,
}

fn valid(v: f64, log: bool) -> bool {
    v.is_finite() && (!log || v > 0.0)
}

fn clean_series(s: &Series, xlog: bool, ylog: bool, report: &mut Report) -> Clean {
    let mut pts = Vec::new();
    let mut upper = Vec::new();
    for (i, &(x, y)) in s.points.iter().enumerate() {
        let hi = if s.kind == Kind::Band {
            s.upper.get(i).copied().unwrap_or(f64::NAN)
        } else {
            y
        };
        let finite = x.is_finite() && y.is_finite() && hi.is_finite();
        if finite && valid(x, xlog) && valid(y, ylog) && valid(hi, ylog) {
            pts.push((x, y));
            upper.push(hi);
        } else {
            report.skipped += 1;
            if finite {
                report.non_positive_on_log += 1;
            }
        }
    }
    Clean { pts, upper }
}

fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((a, b)) => Some((a.min(v), b.max(v))),
    })
}

fn axis_ticks(axis: &Axis, data: Option<(f64, f64)>, max_ticks: usize) -> Ticks {
    if let Some((lo, hi)) = axis.range
        && lo < hi
        && (!axis.log || lo > 0.0)
    {
        return if axis.log {
            ticks::log_exact(lo, hi, max_ticks)
        } else {
            ticks::linear_exact(lo, hi, max_ticks)
        };
    }
    let (lo, hi) = data.unwrap_or((if axis.log { 1.0 } else { 0.0 }, 10.0));
    if axis.log {
        ticks::log(lo, hi, max_ticks)
    } else {
        ticks::linear(lo, hi, max_ticks)
    }
}

/// Smallest gap between distinct x values of the bar series (1 when there is none).
fn bar_spacing(series: &[(&Series, Clean)]) -> f64 {
    let mut xs: Vec<f64> = series
        .iter()
        .filter(|(s, _)| s.kind == Kind::Bars)
        .flat_map(|(_, c)| c.pts.iter().map(|p| p.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    xs.windows(2)
        .map(|w| w[1] - w[0])
        .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.min(d))))
        .unwrap_or(1.0)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> Result<Report> {
    let (w, h) = (fig.size.0 as i32, fig.size.1 as i32);
    root.fill(&WHITE).map_err(draw_err)?;
    let mut report = Report::default();

    let has_right = fig.series.iter().any(|s| s.right_axis);
    let cleaned: Vec<(&Series, Clean)> = fig
        .series
        .iter()
        .map(|s| {
            let ylog = if s.right_axis { fig.y2.log } else { fig.y.log };
            (s, clean_series(s, fig.x.log, ylog, &mut report))
        })
        .collect();
    let any_bars = cleaned.iter().any(|(s, _)| s.kind == Kind::Bars);
    let spacing = bar_spacing(&cleaned);

    // Data extents.
    let mut x_ext = extent(cleaned.iter().flat_map(|(_, c)| c.pts.iter().map(|p| p.0)));
    if any_bars && !fig.x.log {
        x_ext = x_ext.map(|(a, b)| (a - spacing / 2.0, b + spacing / 2.0));
    }
    let y_ext = |right: bool, log: bool| {
        let e = extent(
            cleaned
                .iter()
                .filter(|(s, _)| s.right_axis == right)
                .flat_map(|(_, c)| c.pts.iter().map(|p| p.1).chain(c.upper.iter().copied())),
        );
        let bars = cleaned
            .iter()
            .any(|(s, c)| s.right_axis == right && s.kind == Kind::Bars && !c.pts.is_empty());
        match e {
            Some((a, b)) if bars && !log => Some((a.min(0.0), b.max(0.0))),
            e => e,
        }
    };
    let y_data = y_ext(false, fig.y.log);
    let y2_data = y_ext(true, fig.y2.log);

    // Vertical layout.
    let title_h = if fig.title.is_empty() {
        0
    } else {
        text_size(&fig.title, TITLE_PX).1 + 12
    };
    let top = 14 + title_h;
    let tick_h = text_size("0123456789", TICK_PX).1;
    let foot_line = text_size("Ag", FOOT_PX).1 + 4;
    let mut footnotes = fig.footnotes.clone();
    if report.skipped > 0 {
        footnotes.push(if report.non_positive_on_log > 0 {
            format!(
                "{} not drawn: not finite, or ≤ 0 on a log axis ({} of them)",
                points(report.skipped),
                report.non_positive_on_log
            )
        } else {
            format!("{} not drawn: NaN or infinite", points(report.skipped))
        });
    }
    let xt_h = if fig.x.title.is_empty() {
        0
    } else {
        text_size(&fig.x.title, AXIS_TITLE_PX).1 + 8
    };
    let bottom = h - (10 + footnotes.len() as i32 * foot_line + xt_h + tick_h + 12);
    let plot_h = (bottom - top).max(40);
    let max_y_ticks = ((plot_h / 45) as usize).clamp(3, 10);
    let yt = axis_ticks(&fig.y, y_data, max_y_ticks);
    let y2t = axis_ticks(&fig.y2, y2_data, max_y_ticks);

    // Horizontal layout.
    let widest = |t: &Ticks| {
        t.major
            .iter()
            .map(|(_, s)| text_size(s, TICK_PX).0)
            .max()
            .unwrap_or(0)
    };
    let side_title = |a: &Axis| {
        if a.title.is_empty() {
            0
        } else {
            text_size(&a.title, AXIS_TITLE_PX).1 + 10
        }
    };
    let left = 14 + side_title(&fig.y) + widest(&yt) + 10;
    let right = if has_right {
        w - (14 + side_title(&fig.y2) + widest(&y2t) + 10)
    } else {
        w - 24
    };
    let plot_w = (right - left).max(40);

    // x ticks: as many as fit without labels touching.
    let xt = if !fig.x.categories.is_empty() {
        let n = fig.x.categories.len();
        Ticks {
            lo: -0.5,
            hi: n as f64 - 0.5,
            major: fig
                .x
                .categories
                .iter()
                .enumerate()
                .map(|(i, s)| (i as f64, s.clone()))
                .collect(),
            minor: Vec::new(),
        }
    } else {
        let mut max_x = ((plot_w / 70) as usize).clamp(2, 12);
        loop {
            let t = axis_ticks(&fig.x, x_ext, max_x);
            let need: i32 = t
                .major
                .iter()
                .map(|(_, s)| text_size(s, TICK_PX).0 + 14)
                .sum();
            if need <= plot_w || max_x <= 2 {
                break t;
            }
            max_x -= 1;
        }
    };

    let xm = Map {
        lo: xt.lo,
        hi: xt.hi,
        log: fig.x.log && fig.x.categories.is_empty(),
        p0: left as f64,
        p1: right as f64,
    };
    let ym = Map {
        lo: yt.lo,
        hi: yt.hi,
        log: fig.y.log,
        p0: bottom as f64,
        p1: top as f64,
    };
    let y2m = Map {
        lo: y2t.lo,
        hi: y2t.hi,
        log: fig.y2.log,
        ..ym
    };
    let rect = (left as f64, top as f64, right as f64, bottom as f64);
    let p = |x: f64, y: f64| (x.round() as i32, y.round() as i32);

    // Grid.
    let minor_grid = RGBColor(240, 240, 240);
    let major_grid = RGBColor(222, 222, 222);
    for &v in &xt.minor {
        let x = xm.px(v);
        line(root, &[p(x, rect.1), p(x, rect.3)], minor_grid.into(), 1)?;
    }
    for &v in &yt.minor {
        let y = ym.px(v);
        line(root, &[p(rect.0, y), p(rect.2, y)], minor_grid.into(), 1)?;
    }
    if fig.x.categories.is_empty() {
        for (v, _) in &xt.major {
            let x = xm.px(*v);
            line(root, &[p(x, rect.1), p(x, rect.3)], major_grid.into(), 1)?;
        }
    }
    for (v, _) in &yt.major {
        let y = ym.px(*v);
        line(root, &[p(rect.0, y), p(rect.2, y)], major_grid.into(), 1)?;
    }

    // Series: bands first, then bars, then lines and dots, each in palette order.
    let colors: Vec<Rgb> = fig
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| s.color.unwrap_or(PALETTE[i % PALETTE.len()]))
        .collect();
    let n_bars = cleaned.iter().filter(|(s, _)| s.kind == Kind::Bars).count();
    let bar_px = if any_bars {
        let gap = if fig.x.log {
            40.0
        } else {
            (xm.px(xm.lo + spacing) - xm.px(xm.lo)).abs()
        };
        (0.8 * gap / n_bars.max(1) as f64).max(1.0)
    } else {
        0.0
    };
    let points_px = draw_series(
        root,
        &cleaned,
        &colors,
        Axes {
            x: xm,
            y: ym,
            y2: y2m,
        },
        rect,
        (n_bars, bar_px),
    )?;
    if cleaned.iter().all(|(_, c)| c.pts.is_empty()) {
        let style = TextStyle::from(font(AXIS_TITLE_PX))
            .color(&RGBColor(120, 120, 120))
            .pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new(
            "no data to plot",
            (
                ((rect.0 + rect.2) / 2.0) as i32,
                ((rect.1 + rect.3) / 2.0) as i32,
            ),
            style,
        ))
        .map_err(draw_err)?;
    }

    // Frame, ticks and tick labels.
    let ink = RGBColor(60, 60, 60);
    let frame = [
        p(rect.0, rect.1),
        p(rect.2, rect.1),
        p(rect.2, rect.3),
        p(rect.0, rect.3),
        p(rect.0, rect.1),
    ];
    line(root, &frame, ink.into(), 1)?;
    let tick_style = TextStyle::from(font(TICK_PX)).color(&ink);
    for (v, s) in &xt.major {
        let x = xm.px(*v);
        line(root, &[p(x, rect.3), p(x, rect.3 + 5.0)], ink.into(), 1)?;
        root.draw(&Text::new(
            s.clone(),
            p(x, rect.3 + 8.0),
            tick_style.pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(draw_err)?;
    }
    for (v, s) in &yt.major {
        let y = ym.px(*v);
        line(root, &[p(rect.0 - 5.0, y), p(rect.0, y)], ink.into(), 1)?;
        root.draw(&Text::new(
            s.clone(),
            p(rect.0 - 8.0, y),
            tick_style.pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    if has_right {
        for (v, s) in &y2t.major {
            let y = y2m.px(*v);
            line(root, &[p(rect.2, y), p(rect.2 + 5.0, y)], ink.into(), 1)?;
            root.draw(&Text::new(
                s.clone(),
                p(rect.2 + 8.0, y),
                tick_style.pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
    }

    // Titles.
    let axis_style = TextStyle::from(font(AXIS_TITLE_PX)).color(&BLACK);
    if !fig.x.title.is_empty() {
        root.draw(&Text::new(
            fig.x.title.clone(),
            p((rect.0 + rect.2) / 2.0, rect.3 + 12.0 + tick_h as f64),
            axis_style.pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(draw_err)?;
    }
    let ymid = (rect.1 + rect.3) / 2.0;
    if !fig.y.title.is_empty() {
        let (tw, _) = text_size(&fig.y.title, AXIS_TITLE_PX);
        root.draw(&Text::new(
            fig.y.title.clone(),
            (14, (ymid + tw as f64 / 2.0) as i32),
            axis_style.transform(FontTransform::Rotate270),
        ))
        .map_err(draw_err)?;
    }
    if has_right && !fig.y2.title.is_empty() {
        let (tw, th) = text_size(&fig.y2.title, AXIS_TITLE_PX);
        root.draw(&Text::new(
            fig.y2.title.clone(),
            (w - 14, (ymid - tw as f64 / 2.0) as i32),
            axis_style.transform(FontTransform::Rotate90),
        ))
        .map_err(draw_err)?;
        let _ = th;
    }
    if !fig.title.is_empty() {
        root.draw(&Text::new(
            fig.title.clone(),
            (w / 2, 14),
            TextStyle::from(font(TITLE_PX))
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(draw_err)?;
    }
    let foot_style = TextStyle::from(font(FOOT_PX)).color(&RGBColor(90, 90, 90));
    let mut fy = h - 10 - footnotes.len() as i32 * foot_line;
    for f in &footnotes {
        root.draw(&Text::new(
            f.clone(),
            (14, fy),
            foot_style.pos(Pos::new(HPos::Left, VPos::Top)),
        ))
        .map_err(draw_err)?;
        fy += foot_line;
    }

    legend(root, &cleaned, &colors, rect, &points_px)?;
    Ok(report)
}

fn points(n: usize) -> String {
    if n == 1 {
        "1 point".to_string()
    } else {
        format!("{n} points")
    }
}

mod marks;
use marks::{Axes, draw_series, legend, line};
