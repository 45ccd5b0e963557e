//! `metrics.jsonl` (one JSON object per logged step) and the loss-curve PNG drawn from it.

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

const W: usize = 800;
const H: usize = 480;
const MARGIN: usize = 40;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; W * H * 3],
        }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    /// A line two pixels wide (Bresenham).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
}

/// Draws training loss (blue) and eval loss (red, with dots) against step, on a light grid with
/// one line per unit of loss. Written atomically.
pub fn plot_loss(lines: &[MetricsLine], path: &Path) -> Result<()> {
    let mut c = Canvas::new();
    let train: Vec<(f64, f64)> = lines
        .iter()
        .filter(|l| l.loss.is_finite())
        .map(|l| (l.step as f64, l.loss))
        .collect();
    let eval: Vec<(f64, f64)> = lines
        .iter()
        .filter_map(|l| l.eval_loss.map(|e| (l.step as f64, e)))
        .filter(|p| p.1.is_finite())
        .collect();
    let all = train.iter().chain(&eval);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let y0 = y0.floor().max(0.0);
    let y1 = y1.ceil().max(y0 + 1.0);
    let x1 = x1.max(x0 + 1.0);
    let (pw, ph) = ((W - 2 * MARGIN) as f64, (H - 2 * MARGIN) as f64);
    let map = |(x, y): (f64, f64)| -> (i64, i64) {
        (
            (MARGIN as f64 + (x - x0) / (x1 - x0) * pw) as i64,
            (MARGIN as f64 + (1.0 - (y - y0) / (y1 - y0)) * ph) as i64,
        )
    };
    // Grid: one horizontal line per unit of loss.
    let mut g = y0;
    while g <= y1 {
        let (_, yy) = map((x0, g));
        c.line(
            (MARGIN as i64, yy),
            ((W - MARGIN) as i64, yy),
            [225, 225, 225],
        );
        g += 1.0;
    }
    let axis = [60, 60, 60];
    c.line(map((x0, y0)), map((x1, y0)), axis);
    c.line(map((x0, y0)), map((x0, y1)), axis);
    for w in train.windows(2) {
        c.line(map(w[0]), map(w[1]), [31, 119, 180]);
    }
    for w in eval.windows(2) {
        c.line(map(w[0]), map(w[1]), [214, 39, 40]);
    }
    for &p in &eval {
        let (x, y) = map(p);
        for dx in -2..=2 {
            for dy in -2..=2 {
                c.set(x + dx, y + dy, [214, 39, 40]);
            }
        }
    }
    let tmp = path.with_extension("png.tmp");
    {
        let f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| io_err(&tmp, e))?;
        w.write_image_data(&c.px).map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}
