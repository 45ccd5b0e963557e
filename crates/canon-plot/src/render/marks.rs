//! What is drawn inside the plot rectangle: the series (clipped to it), and the legend box.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Clean, LEGEND_PX, Map, draw_err, font, rgb, text_size};
use crate::{Kind, Result, Rgb, Series};

/// The three axes' pixel maps (the right one drawn only where a series uses it).
#[derive(Clone, Copy)]
pub(super) struct Axes {
    pub x: Map,
    pub y: Map,
    pub y2: Map,
}

/// The series, bands first, then bars, then lines and dots, each in palette order; returns the
/// pixel positions they cover (the legend avoids the corner with most of them). `bars`: how many
/// bar series and each bar's width in pixels.
pub(super) fn draw_series<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    cleaned: &[(&Series, Clean)],
    colors: &[Rgb],
    axes: Axes,
    rect: (f64, f64, f64, f64),
    (n_bars, bar_px): (usize, f64),
) -> Result<Vec<(f64, f64)>> {
    let (xm, ym, y2m) = (axes.x, axes.y, axes.y2);
    let p = |x: f64, y: f64| (x.round() as i32, y.round() as i32);
    let mut points_px: Vec<(f64, f64)> = Vec::new();
    let order = [Kind::Band, Kind::Bars];
    let mut bar_index = 0usize;
    for pass in 0..3 {
        for (i, (s, c)) in cleaned.iter().enumerate() {
            let in_pass = match pass {
                0 => s.kind == order[0],
                1 => s.kind == order[1],
                _ => !order.contains(&s.kind),
            };
            if !in_pass {
                continue;
            }
            let m = if s.right_axis { y2m } else { ym };
            let color = rgb(colors[i]).mix(s.alpha);
            let px: Vec<(f64, f64)> = c.pts.iter().map(|&(x, y)| (xm.px(x), m.px(y))).collect();
            match s.kind {
                Kind::Band => {
                    let mut poly: Vec<(i32, i32)> = px
                        .iter()
                        .map(|&(x, y)| clamp_pt((x, y), rect))
                        .map(|(x, y)| p(x, y))
                        .collect();
                    for (j, &(x, _)) in c.pts.iter().enumerate().rev() {
                        let q = clamp_pt((xm.px(x), m.px(c.upper[j])), rect);
                        poly.push(p(q.0, q.1));
                        points_px.push(q);
                    }
                    points_px.extend(&px);
                    if poly.len() >= 3 {
                        root.draw(&Polygon::new(poly, color.filled()))
                            .map_err(draw_err)?;
                    }
                }
                Kind::Bars => {
                    let offset = (bar_index as f64 - (n_bars as f64 - 1.0) / 2.0) * bar_px;
                    bar_index += 1;
                    let base = if m.log {
                        rect.3
                    } else {
                        m.px(0.0).clamp(rect.1, rect.3)
                    };
                    for &(x, y) in &px {
                        let cx = x + offset;
                        let x0 = (cx - bar_px / 2.0).max(rect.0);
                        let x1 = (cx + bar_px / 2.0).min(rect.2);
                        let yy = y.clamp(rect.1, rect.3);
                        if x1 > x0 {
                            root.draw(&Rectangle::new(
                                [p(x0, yy.min(base)), p(x1, yy.max(base))],
                                color.filled(),
                            ))
                            .map_err(draw_err)?;
                            points_px.push((cx, yy));
                            points_px.push((cx, (yy + base) / 2.0));
                        }
                    }
                }
                Kind::Line { markers } => {
                    for run in clip_polyline(&px, rect) {
                        let pts: Vec<(i32, i32)> = run.iter().map(|&(x, y)| p(x, y)).collect();
                        line(root, &pts, color, s.width)?;
                    }
                    for wdw in px.windows(2) {
                        for k in 0..4 {
                            let t = k as f64 / 4.0;
                            points_px.push((
                                wdw[0].0 + t * (wdw[1].0 - wdw[0].0),
                                wdw[0].1 + t * (wdw[1].1 - wdw[0].1),
                            ));
                        }
                    }
                    points_px.extend(&px);
                    if markers {
                        dots(root, &px, rect, color, s.width + 2)?;
                    }
                }
                Kind::Scatter => {
                    dots(root, &px, rect, color, s.width + 2)?;
                    points_px.extend(&px);
                }
            }
        }
    }
    Ok(points_px)
}

pub(super) fn line<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    pts: &[(i32, i32)],
    color: RGBAColor,
    width: u32,
) -> Result<()> {
    if pts.len() < 2 {
        return Ok(());
    }
    let style = ShapeStyle {
        color,
        filled: false,
        stroke_width: width,
    };
    root.draw(&PathElement::new(pts.to_vec(), style))
        .map_err(draw_err)
}

fn dots<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    px: &[(f64, f64)],
    rect: (f64, f64, f64, f64),
    color: RGBAColor,
    radius: u32,
) -> Result<()> {
    for &(x, y) in px {
        if x >= rect.0 && x <= rect.2 && y >= rect.1 && y <= rect.3 {
            root.draw(&Circle::new(
                (x.round() as i32, y.round() as i32),
                radius,
                color.filled(),
            ))
            .map_err(draw_err)?;
        }
    }
    Ok(())
}

fn clamp_pt((x, y): (f64, f64), r: (f64, f64, f64, f64)) -> (f64, f64) {
    (x.clamp(r.0, r.2), y.clamp(r.1, r.3))
}

/// Liang–Barsky: the part of segment a→b inside the rectangle, if any.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    r: (f64, f64, f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (pk, qk) in [
        (-dx, a.0 - r.0),
        (dx, r.2 - a.0),
        (-dy, a.1 - r.1),
        (dy, r.3 - a.1),
    ] {
        if pk == 0.0 {
            if qk < 0.0 {
                return None;
            }
        } else {
            let t = qk / pk;
            if pk < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    (t0 <= t1).then_some((
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ))
}

/// Splits a polyline into the runs that lie inside the rectangle.
fn clip_polyline(px: &[(f64, f64)], r: (f64, f64, f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    for wdw in px.windows(2) {
        match clip_segment(wdw[0], wdw[1], r) {
            Some((a, b)) => {
                if cur.last() != Some(&a) {
                    if cur.len() >= 2 {
                        runs.push(std::mem::take(&mut cur));
                    }
                    cur.clear();
                    cur.push(a);
                }
                cur.push(b);
            }
            None => {
                if cur.len() >= 2 {
                    runs.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
        }
    }
    if cur.len() >= 2 {
        runs.push(cur);
    }
    runs
}

/// The legend box, in the corner of the plot that covers the fewest drawn points.
pub(super) fn legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    cleaned: &[(&Series, Clean)],
    colors: &[Rgb],
    rect: (f64, f64, f64, f64),
    points_px: &[(f64, f64)],
) -> Result<()> {
    let entries: Vec<(usize, &Series)> = cleaned
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| !s.name.is_empty())
        .map(|(i, (s, _))| (i, *s))
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let line_h = text_size("Ag", LEGEND_PX).1 + 6;
    let text_w = entries
        .iter()
        .map(|(_, s)| text_size(&s.name, LEGEND_PX).0)
        .max()
        .unwrap_or(0);
    let (bw, bh) = (
        (text_w + 52) as f64,
        (entries.len() as i32 * line_h + 10) as f64,
    );
    let inset = 10.0;
    let corners = [
        (rect.2 - inset - bw, rect.1 + inset),
        (rect.0 + inset, rect.1 + inset),
        (rect.2 - inset - bw, rect.3 - inset - bh),
        (rect.0 + inset, rect.3 - inset - bh),
    ];
    let covered = |&(x0, y0): &(f64, f64)| {
        points_px
            .iter()
            .filter(|&&(x, y)| x >= x0 && x <= x0 + bw && y >= y0 && y <= y0 + bh)
            .count()
    };
    let (x0, y0) = corners
        .iter()
        .min_by_key(|c| covered(c))
        .copied()
        .unwrap_or(corners[0]);
    let p = |x: f64, y: f64| (x.round() as i32, y.round() as i32);
    root.draw(&Rectangle::new(
        [p(x0, y0), p(x0 + bw, y0 + bh)],
        WHITE.mix(0.9).filled(),
    ))
    .map_err(draw_err)?;
    root.draw(&Rectangle::new(
        [p(x0, y0), p(x0 + bw, y0 + bh)],
        ShapeStyle {
            color: RGBColor(180, 180, 180).into(),
            filled: false,
            stroke_width: 1,
        },
    ))
    .map_err(draw_err)?;
    let style = TextStyle::from(font(LEGEND_PX))
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (row, (i, s)) in entries.iter().enumerate() {
        let cy = y0 + 5.0 + line_h as f64 * (row as f64 + 0.5);
        let color = rgb(colors[*i]);
        let sample_alpha = s.alpha.max(0.35);
        match s.kind {
            Kind::Line { markers } => {
                line(
                    root,
                    &[p(x0 + 8.0, cy), p(x0 + 36.0, cy)],
                    color.mix(sample_alpha),
                    s.width,
                )?;
                if markers {
                    root.draw(&Circle::new(p(x0 + 22.0, cy), s.width + 2, color.filled()))
                        .map_err(draw_err)?;
                }
            }
            Kind::Scatter => {
                root.draw(&Circle::new(
                    p(x0 + 22.0, cy),
                    s.width + 2,
                    color.mix(sample_alpha).filled(),
                ))
                .map_err(draw_err)?;
            }
            Kind::Bars | Kind::Band => {
                root.draw(&Rectangle::new(
                    [p(x0 + 12.0, cy - 6.0), p(x0 + 32.0, cy + 6.0)],
                    color.mix(sample_alpha).filled(),
                ))
                .map_err(draw_err)?;
            }
        }
        root.draw(&Text::new(s.name.clone(), p(x0 + 44.0, cy), style.clone()))
            .map_err(draw_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_clipped_to_the_rectangle() {
        let r = (0.0, 0.0, 10.0, 10.0);
        assert_eq!(
            clip_segment((-5.0, 5.0), (5.0, 5.0), r),
            Some(((0.0, 5.0), (5.0, 5.0)))
        );
        assert_eq!(clip_segment((-5.0, -5.0), (-1.0, 20.0), r), None);
        let runs = clip_polyline(&[(1.0, 1.0), (2.0, 2.0), (2.0, 20.0), (3.0, 3.0)], r);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0][0], (1.0, 1.0));
    }
}
