//! Rotary position embedding (Su et al., 2021, "RoFormer", paper 12).
//!
//! Idea: rotate each pair of query/key features by an angle proportional to the absolute position, so
//! that the dot product of a rotated query and key depends only on their relative position.
//! Equations (paper eq. 34): `f(x, m) = x ⊙ cos(mθ) + rot(x) ⊙ sin(mθ)`, `rot(x₁, x₂) = (−x₂, x₁)` per
//! pair, `θᵢ = base^(−2i/d)`, i = 0..d/2−1. Angles are `m · θᵢ` computed in f32, as the references do.
//!
//! Two pair layouts exist and a checkpoint is tied to one: `Interleaved` pairs `(2i, 2i+1)` (the
//! paper, Meta's LLaMA, every llama GGUF) and `HalfSplit` pairs `(i, i + d/2)` (GPT-NeoX, HF LLaMA).
//!
//! Shapes: `x: [b, heads, t, d]`, positions `offset .. offset + t`.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeLayout {
    Interleaved,
    HalfSplit,
}

/// Positions whose angles are kept in a table; later positions (a long context, e.g. Gemma 3's
/// 32,768) get theirs computed when a call reaches them, by the same f32 formula, so the values
/// are the same and the tables stay small (2 × 4,096 × d/2 floats: 4 MB at d = 256, against 67 MB
/// for a full table and its tensor copy).
pub const ROPE_TABLE_POSITIONS: usize = 4096;

/// The kept table grows to the positions calls have reached, in steps of this many (rounded up
/// to a power of two), instead of holding all [`ROPE_TABLE_POSITIONS`] from the start: a short
/// generation keeps 256 positions (0.25 MB at d = 256, against 4 MB).
const ROPE_TABLE_STEP: usize = 256;

/// `cos(mθᵢ)` and `sin(mθᵢ)` for the first `positions` positions, row-major `[m, i]`.
#[derive(Debug)]
struct Table {
    positions: usize,
    cos: TableRef,
    sin: TableRef,
}

#[derive(Debug, Clone)]
pub struct Rope {
    /// `θᵢ`, i = 0..d/2.
    inv_freq: std::sync::Arc<Vec<f32>>,
    /// The kept table, `m < min(max_pos, ROPE_TABLE_POSITIONS)`, grown on demand and shared by
    /// clones; every version holds the same numbers for the positions it has.
    table: std::sync::Arc<std::sync::RwLock<std::sync::Arc<Table>>>,
    pub layout: RopeLayout,
    pub dim: usize,
    pub max_pos: usize,
}

/// `cos(mθᵢ)` and `sin(mθᵢ)` for `m` in `positions`, row-major `[m, i]`.
fn angles(inv_freq: &[f32], positions: std::ops::Range<usize>) -> (Vec<f32>, Vec<f32>) {
    let n = positions.len() * inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for m in positions {
        for &f in inv_freq {
            let a = m as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

impl Rope {
    pub fn new(
        dim: usize,
        max_pos: usize,
        base: f32,
        layout: RopeLayout,
        _device: &Device,
    ) -> crate::Result<Self> {
        if !dim.is_multiple_of(2) || dim == 0 {
            candle_core::bail!(
                "rope: the rotated dimension must be even and positive, found {dim}"
            );
        }
        let half = dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        let table = Table {
            positions: 0,
            cos: std::sync::Arc::new(Vec::new()),
            sin: std::sync::Arc::new(Vec::new()),
        };
        Ok(Self {
            inv_freq: std::sync::Arc::new(inv_freq),
            table: std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(table))),
            layout,
            dim,
            max_pos,
        })
    }

    /// The same RoPE with each pair's frequency divided by `factors[i]` (`d/2` positive values):
    /// linear position interpolation (every factor `s`: position `m` turns as `m/s` did) and
    /// Llama 3's per-frequency factors (GGUF's `rope_freqs`, or computed from an HF
    /// `rope_scaling` of type `llama3`), as llama.cpp's `freq_factors` and transformers'
    /// scaled `inv_freq` apply them.
    pub fn with_freq_factors(mut self, factors: &[f32]) -> crate::Result<Self> {
        if factors.len() != self.inv_freq.len() {
            candle_core::bail!(
                "rope: expected {} frequency factors (head dim {} / 2), found {}",
                self.inv_freq.len(),
                self.dim,
                factors.len()
            );
        }
        if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            candle_core::bail!("rope: frequency factors must be positive and finite, found {bad}");
        }
        let inv: Vec<f32> = self
            .inv_freq
            .iter()
            .zip(factors)
            .map(|(t, f)| t / f)
            .collect();
        self.inv_freq = std::sync::Arc::new(inv);
        // The kept table (if any) was built from the old frequencies.
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(Table {
            positions: 0,
            cos: std::sync::Arc::new(Vec::new()),
            sin: std::sync::Arc::new(Vec::new()),
        });
        Ok(self)
    }

    /// Llama 3's per-frequency RoPE factors (transformers' `rope_type: "llama3"`): pairs whose
    /// wavelength `2π/θᵢ` exceeds `original_max_positions / low_freq_factor` turn `factor` times
    /// slower, those below `original_max_positions / high_freq_factor` are kept, and the ones
    /// between blend the two; the divisors of `θᵢ` (what llama.cpp's converter writes as
    /// `rope_freqs`).
    pub fn llama3_factors(
        dim: usize,
        base: f32,
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_positions: f32,
    ) -> Vec<f32> {
        let low_wavelen = original_max_positions / low_freq_factor;
        let high_wavelen = original_max_positions / high_freq_factor;
        (0..dim / 2)
            .map(|i| {
                let theta = 1.0 / base.powf((2 * i) as f32 / dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / theta;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (original_max_positions / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect()
    }

    /// The cos and sin tables for positions `offset..offset + t` and the position their first
    /// row stands for: the kept tables (first row 0) when they reach that far, else the range
    /// computed now (first row `offset`).
    fn tables(&self, offset: usize, t: usize) -> (TableRef, TableRef, usize) {
        let end = offset + t;
        let cap = self.max_pos.min(ROPE_TABLE_POSITIONS);
        if end <= cap {
            let kept = self.kept_table(end);
            return (kept.cos.clone(), kept.sin.clone(), 0);
        }
        let (c, s) = angles(&self.inv_freq, offset..end);
        (std::sync::Arc::new(c), std::sync::Arc::new(s), offset)
    }

    /// The kept table, grown to at least `end` positions (`end` ≤ the cap) if it is shorter.
    fn kept_table(&self, end: usize) -> std::sync::Arc<Table> {
        // A poisoned lock still holds a whole table (it is replaced, never edited in place).
        let current = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if end <= current.positions {
            return current;
        }
        let mut slot = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if end <= slot.positions {
            return slot.clone();
        }
        let cap = self.max_pos.min(ROPE_TABLE_POSITIONS);
        let positions = end
            .max(ROPE_TABLE_STEP)
            .next_power_of_two()
            .min(cap)
            .max(end);
        let (cos, sin) = angles(&self.inv_freq, 0..positions);
        let grown = std::sync::Arc::new(Table {
            positions,
            cos: std::sync::Arc::new(cos),
            sin: std::sync::Arc::new(sin),
        });
        *slot = grown.clone();
        grown
    }

    /// Rotates `x: [b, h, t, d]` for positions `offset..offset+t`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> crate::Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        if d != self.dim {
            candle_core::bail!("rope: expected head dim {}, found {d}", self.dim);
        }
        if offset + t > self.max_pos {
            candle_core::bail!(
                "rope: position {} is beyond the table of {} positions",
                offset + t,
                self.max_pos
            );
        }
        let half = d / 2;
        let (cos_t, sin_t, first) = self.tables(offset, t);
        if crate::fused::no_grad(&[x])
            && let Some(xs) = crate::fused::F32Data::new(x)
        {
            // Inference: one pass over the rows (in parallel for a prompt's), the same products
            // as the composed formula.
            let rows = crate::fused::par_rows(d);
            let xs: &[f32] = &xs;
            let out = canon_quant::pool::par_vec_f32(xs.len(), rows * d, &|c, out| {
                let xs = &xs[c * rows * d..][..out.len()];
                for (r, (xr, yr)) in xs.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
                    let row = offset + (c * rows + r) % t - first;
                    self.rotate_row(xr, yr, &cos_t, &sin_t, row);
                }
            });
            return Tensor::from_vec(out, (b, h, t, d), x.device());
        }
        if x.dtype() == candle_core::DType::F32 && x.device().is_cpu() {
            // Training: the same rotation as one op whose backward rotates the gradient back.
            return x.contiguous()?.apply_op1(RopeOp {
                cos: cos_t,
                sin: sin_t,
                layout: self.layout,
                offset: offset - first,
                t,
                half,
            });
        }
        self.apply_composed(x, offset)
    }

    /// Rotates one row `x` into `y` by the angles of table row `row` (`x` and `y` may not alias).
    #[inline]
    fn rotate_row(&self, x: &[f32], y: &mut [f32], cos_t: &[f32], sin_t: &[f32], row: usize) {
        let half = self.dim / 2;
        let cos = &cos_t[row * half..(row + 1) * half];
        let sin = &sin_t[row * half..(row + 1) * half];
        for i in 0..half {
            let (a, b) = match self.layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (x[a], x[b]);
            y[a] = x0 * cos[i] - x1 * sin[i];
            y[b] = x0 * sin[i] + x1 * cos[i];
        }
    }

    /// [`Rope::apply`] through composed candle ops (any dtype or device): the reference.
    pub fn apply_composed(&self, x: &Tensor, offset: usize) -> crate::Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        let half = d / 2;
        let dtype = x.dtype();
        let (cos_t, sin_t, first) = self.tables(offset, t);
        let rows = |v: &[f32]| {
            let r0 = (offset - first) * half;
            Tensor::from_slice(&v[r0..r0 + t * half], (t, half), x.device())?.to_dtype(dtype)
        };
        let cos = rows(&cos_t)?; // [t, d/2]
        let sin = rows(&sin_t)?;
        match self.layout {
            RopeLayout::Interleaved => {
                // [b, h, t, d] -> [b, h, t, d/2, 2]
                let xp = x.reshape((b, h, t, half, 2))?;
                let x0 = xp.narrow(4, 0, 1)?.squeeze(4)?; // [b, h, t, d/2]
                let x1 = xp.narrow(4, 1, 1)?.squeeze(4)?;
                let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Tensor::stack(&[y0, y1], 4)?.reshape((b, h, t, d))
            }
            RopeLayout::HalfSplit => {
                let x0 = x.narrow(3, 0, half)?;
                let x1 = x.narrow(3, half, half)?;
                let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Tensor::cat(&[y0, y1], 3)
            }
        }
    }
}

/// Attention inputs for inference in one parallel pass: `x: [b, h, t, d]` f32 on the CPU with
/// unit stride in its last dimension (a projection's `[b, t, h·d]` output viewed as heads, or a
/// contiguous tensor) becomes a new contiguous `[b, h, t, d]` whose rows are RMS-normed by
/// `norm` (weight `[d]`, ε) if given, rotated by `rope` for positions `offset..offset + t` if
/// given, and multiplied by `scale` if given — the rounding of [`crate::norm::RmsNorm::forward`],
/// [`Rope::apply`] and a scalar product applied one after the other, without their three
/// intermediate tensors and the transposing copy. `None` when a gradient is tracked or the tensor
/// does not fit (another dtype or device, a strided last dimension), for the caller to compose.
pub fn heads_prepared(
    x: &Tensor,
    norm: Option<(&Tensor, f64)>,
    rope: Option<(&Rope, usize)>,
    scale: Option<f64>,
) -> crate::Result<Option<Tensor>> {
    use candle_core::{DType, Storage};
    let mut tracked = vec![x];
    if let Some((w, _)) = norm {
        tracked.push(w);
    }
    if !crate::fused::no_grad(&tracked) || x.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    let (b, h, t, d) = x.dims4()?;
    let w = match norm {
        Some((w, eps)) => match crate::fused::F32Data::new(w) {
            Some(wd) if wd.len() == d => Some((wd, eps as f32)),
            _ => return Ok(None),
        },
        None => None,
    };
    let tables = match rope {
        Some((r, offset)) => {
            if d != r.dim {
                candle_core::bail!("rope: expected head dim {}, found {d}", r.dim);
            }
            if offset + t > r.max_pos {
                candle_core::bail!(
                    "rope: position {} is beyond the table of {} positions",
                    offset + t,
                    r.max_pos
                );
            }
            let (c, s, first) = r.tables(offset, t);
            Some((r, c, s, offset - first))
        }
        None => None,
    };
    let (guard, layout) = x.storage_and_layout();
    let data: &[f32] = match &*guard {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => v,
        _ => return Ok(None),
    };
    let st = layout.stride();
    if d > 1 && st[3] != 1 {
        return Ok(None);
    }
    let (sb, sh, stt, start) = (st[0], st[1], st[2], layout.start_offset());
    // The furthest element read must lie in the storage.
    let last = start + (b - 1) * sb + (h - 1) * sh + (t - 1) * stt + d;
    if b * h * t * d == 0 || last > data.len() {
        return Ok(None);
    }
    let mul = scale.map(|s| s as f32);
    let wd: Option<(&[f32], f32)> = w.as_ref().map(|(wd, eps)| (&wd[..], *eps));
    let rows = crate::fused::par_rows(d);
    let out = canon_quant::pool::par_vec_f32(b * h * t * d, rows * d, &|c, out| {
        let mut normed = vec![
            0.0f32;
            if wd.is_some() && tables.is_some() {
                d
            } else {
                0
            }
        ];
        for (r, y) in out.chunks_exact_mut(d).enumerate() {
            let row = c * rows + r;
            let (bi, hi, ti) = (row / (h * t), (row / t) % h, row % t);
            let at = start + bi * sb + hi * sh + ti * stt;
            let xr = &data[at..at + d];
            match (wd, &tables) {
                (Some((g, eps)), Some((rope, cos, sin, first))) => {
                    crate::norm::rms_row(xr, &mut normed, g, eps);
                    rope.rotate_row(&normed, y, cos, sin, first + ti);
                }
                (Some((g, eps)), None) => crate::norm::rms_row(xr, y, g, eps),
                (None, Some((rope, cos, sin, first))) => {
                    rope.rotate_row(xr, y, cos, sin, first + ti)
                }
                (None, None) => y.copy_from_slice(xr),
            }
            if let Some(m) = mul {
                y.iter_mut().for_each(|v| *v *= m);
            }
        }
    });
    drop(guard);
    Ok(Some(Tensor::from_vec(out, (b, h, t, d), x.device())?))
}

type TableRef = std::sync::Arc<Vec<f32>>;

/// RoPE on contiguous f32 `[.., t, d]` rows, with its backward: the rotation by `−mθ`,
/// `dx₀ = g₀ cos + g₁ sin`, `dx₁ = −g₀ sin + g₁ cos`.
struct RopeOp {
    cos: std::sync::Arc<Vec<f32>>,
    sin: std::sync::Arc<Vec<f32>>,
    layout: RopeLayout,
    offset: usize,
    t: usize,
    half: usize,
}

impl RopeOp {
    /// Rotates every row of `x` into `y` by `+mθ` (`sign` 1) or `−mθ` (`sign` −1).
    fn rotate(&self, x: &[f32], y: &mut [f32], sign: f32) {
        use rayon::prelude::*;
        let (d, half, t) = (2 * self.half, self.half, self.t);
        let rows_per_task = 64;
        y.par_chunks_mut(d * rows_per_task)
            .zip(x.par_chunks(d * rows_per_task))
            .enumerate()
            .for_each(|(c, (yc, xc))| {
                for (r, (xr, yr)) in xc.chunks_exact(d).zip(yc.chunks_exact_mut(d)).enumerate() {
                    let pos = self.offset + (c * rows_per_task + r) % t;
                    let cos = &self.cos[pos * half..(pos + 1) * half];
                    let sin = &self.sin[pos * half..(pos + 1) * half];
                    for i in 0..half {
                        let (a, b) = match self.layout {
                            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                            RopeLayout::HalfSplit => (i, i + half),
                        };
                        let (x0, x1, s) = (xr[a], xr[b], sign * sin[i]);
                        yr[a] = x0 * cos[i] - x1 * s;
                        yr[b] = x0 * s + x1 * cos[i];
                    }
                }
            });
    }
}

impl candle_core::CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope-train"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let _t = crate::profile::scope(crate::profile::Phase::Rope);
        let x = crate::train_ops::slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        self.rotate(x, &mut y, 1.0);
        Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = crate::profile::scope(crate::profile::Phase::Rope);
        let g = g.contiguous()?;
        let Some(gd) = crate::fused::F32Data::new(&g) else {
            candle_core::bail!("rope backward: expected a contiguous f32 gradient");
        };
        let mut dx = vec![0f32; gd.len()];
        self.rotate(&gd, &mut dx, -1.0);
        drop(gd);
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// The row permutation that turns an interleaved-layout projection into a half-split one (per head):
/// output row `j < d/2` takes input row `2j`, row `d/2 + j` takes `2j + 1`.
pub fn interleaved_to_half_split_rows(head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..head_dim)
        .map(|j| if j < half { 2 * j } else { 2 * (j - half) + 1 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::{Tol, assert_close, randn, to_vec};

    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        to_vec(a)
            .iter()
            .zip(to_vec(b))
            .map(|(x, y)| *x as f64 * y as f64)
            .sum()
    }

    /// Frequency factors divide each pair's angle: a linear factor `s` at position `m·s` gives
    /// plain RoPE's rotation at `m`; a wrong count or a non-positive factor is an error.
    #[test]
    fn frequency_factors_slow_the_rotation() {
        let d = 8;
        let plain = Rope::new(d, 64, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
        let slow = Rope::new(d, 64, 10000.0, RopeLayout::HalfSplit, &Device::Cpu)
            .unwrap()
            .with_freq_factors(&[4.0; 4])
            .unwrap();
        let x = randn(&[1, 1, 1, d], 3);
        let a = plain.apply(&x, 3).unwrap();
        let b = slow.apply(&x, 12).unwrap();
        assert_close(&b, &a, Tol::new(1e-5, 1e-5));
        let r = || Rope::new(d, 64, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
        assert!(r().with_freq_factors(&[1.0; 3]).is_err());
        assert!(r().with_freq_factors(&[1.0, 0.0, 1.0, 1.0]).is_err());
        assert!(r().with_freq_factors(&[1.0, f32::NAN, 1.0, 1.0]).is_err());
        // Llama 3's factors: high frequencies kept, low ones slowed by the factor, one blended.
        let f = Rope::llama3_factors(16, 50000.0, 8.0, 1.0, 4.0, 64.0);
        assert_eq!(f[0], 1.0);
        assert!(f[1] > 1.0 && f[1] < 8.0, "{f:?}");
        assert!(f[2..].iter().all(|&x| x == 8.0), "{f:?}");
    }

    /// The fused attention-input pass equals norm, RoPE and scale applied one after the other,
    /// bit for bit, on a projection's head view (`[b, t, h·d]` seen as `[b, h, t, d]`) and on a
    /// contiguous tensor, at an offset, with and without each part.
    #[test]
    fn heads_prepared_equals_norm_rope_scale_in_turn() {
        let (b, t, h, d) = (2, 37, 3, 16);
        let proj = randn(&[b, t, h * d], 5);
        let view = proj.reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap();
        let w = (randn(&[d], 6) * 0.3).unwrap();
        let norm = crate::norm::RmsNorm::new(w.clone(), 1e-6);
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let rope = Rope::new(d, 256, 10000.0, layout, &Device::Cpu).unwrap();
            for (x, offset) in [(view.clone(), 0), (view.contiguous().unwrap(), 11)] {
                let contiguous = x.contiguous().unwrap();
                let normed = norm.forward(&contiguous).unwrap();
                let rotated = rope.apply(&normed, offset).unwrap();
                let want = (&rotated * 0.7f64).unwrap();
                let got = heads_prepared(&x, Some((&w, 1e-6)), Some((&rope, offset)), Some(0.7))
                    .unwrap()
                    .expect("f32 CPU input takes the fused pass");
                assert!(got.is_contiguous());
                assert_eq!(to_vec(&got), to_vec(&want));
                let rope_only = heads_prepared(&x, None, Some((&rope, offset)), None)
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    to_vec(&rope_only),
                    to_vec(&rope.apply(&contiguous, offset).unwrap())
                );
                let norm_only = heads_prepared(&x, Some((&w, 1e-6)), None, None)
                    .unwrap()
                    .unwrap();
                assert_eq!(to_vec(&norm_only), to_vec(&normed));
                let copy = heads_prepared(&x, None, None, None).unwrap().unwrap();
                assert_eq!(to_vec(&copy), to_vec(&contiguous));
            }
            // A position past the table is an error, as for `apply`.
            assert!(heads_prepared(&view, None, Some((&rope, 250)), None).is_err());
        }
        // Gradients take the composed ops.
        let var = candle_core::Var::from_tensor(&view.contiguous().unwrap()).unwrap();
        assert!(
            heads_prepared(var.as_tensor(), None, None, None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_inference_loop_equals_the_composed_formula() {
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let rope = Rope::new(8, 64, 10000.0, layout, &Device::Cpu).unwrap();
            let x = randn(&[2, 3, 5, 8], 9);
            let fast = rope.apply(&x, 7).unwrap();
            let tracked = candle_core::Var::from_tensor(&x).unwrap();
            let composed = rope.apply(tracked.as_tensor(), 7).unwrap();
            assert_close(&fast, &composed.detach(), Tol::EXACT);
        }
    }

    /// The training op equals the composed formula forward and backward, and finite differences.
    #[test]
    fn the_training_op_equals_the_composed_formula_and_finite_differences() {
        use candle_core::Var;
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let rope = Rope::new(8, 64, 10000.0, layout, &Device::Cpu).unwrap();
            let x = Var::from_tensor(&randn(&[2, 3, 5, 8], 9)).unwrap();
            let w = randn(&[2, 3, 5, 8], 4);
            let ours = rope.apply(x.as_tensor(), 7).unwrap();
            let refr = rope.apply_composed(x.as_tensor(), 7).unwrap();
            assert_close(&ours, &refr, Tol::F32);
            let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&refr * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let x = x.as_tensor();
            assert_close(g1.get(x).unwrap(), g2.get(x).unwrap(), Tol::F32);
            let v = Var::from_tensor(&randn(&[1, 2, 3, 8], 2)).unwrap();
            crate::gradcheck::check_gradients(
                &[v],
                |t| (rope.apply(&t[0], 3)? * randn(&[1, 2, 3, 8], 5))?.sum_all(),
                1e-2,
                2e-3,
                2e-2,
            )
            .unwrap();
        }
    }

    #[test]
    fn score_depends_only_on_relative_position() {
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let rope = Rope::new(64, 5000, 10000.0, layout, &Device::Cpu).unwrap();
            let q = randn(&[1, 1, 1, 64], 1);
            let k = randn(&[1, 1, 1, 64], 2);
            let score =
                |m: usize, n: usize| dot(&rope.apply(&q, m).unwrap(), &rope.apply(&k, n).unwrap());
            for (m, n, s) in [(3, 10, 100), (0, 7, 4000), (50, 20, 1234)] {
                let a = score(m, n);
                let b = score(m + s, n + s);
                assert!(
                    (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                    "{layout:?} {m} {n} {s}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn preserves_norm_and_position_zero_is_identity() {
        let rope = Rope::new(64, 100, 10000.0, RopeLayout::Interleaved, &Device::Cpu).unwrap();
        let x = randn(&[2, 3, 4, 64], 3);
        assert_close(
            &rope.apply(&x.narrow(2, 0, 1).unwrap(), 0).unwrap(),
            &x.narrow(2, 0, 1).unwrap(),
            Tol::EXACT,
        );
        let y = rope.apply(&x, 17).unwrap();
        let nx = x.sqr().unwrap().sum(3).unwrap();
        let ny = y.sqr().unwrap().sum(3).unwrap();
        assert_close(&ny, &nx, Tol::new(1e-4, 1e-5));
    }

    #[test]
    fn matches_candle_fused_rope_in_both_layouts() {
        let (t, d) = (7, 32);
        let x = randn(&[2, 3, t, d], 5);
        for (layout, off) in [(RopeLayout::Interleaved, 0), (RopeLayout::HalfSplit, 5)] {
            let rope = Rope::new(d, 64, 10000.0, layout, &Device::Cpu).unwrap();
            let ours = rope.apply(&x, off).unwrap();
            let (c, s) = angles(&rope.inv_freq, off..off + t);
            let cos = Tensor::from_vec(c, (t, d / 2), &Device::Cpu).unwrap();
            let sin = Tensor::from_vec(s, (t, d / 2), &Device::Cpu).unwrap();
            let fused = match layout {
                RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin).unwrap(),
                RopeLayout::HalfSplit => candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap(),
            };
            assert_close(&ours, &fused, Tol::new(1e-6, 1e-6));
        }
    }

    /// Positions past the kept table (computed per call) rotate exactly as tabled ones would:
    /// inference loop, training op (forward and backward) and composed formula agree across the
    /// table's end, bit for bit with a rope whose table is the same numbers.
    #[test]
    fn positions_past_the_table_are_computed_the_same_way() {
        let (t, d) = (12, 16);
        let off = ROPE_TABLE_POSITIONS - 5;
        let rope = Rope::new(
            d,
            ROPE_TABLE_POSITIONS + 100,
            10000.0,
            RopeLayout::Interleaved,
            &Device::Cpu,
        )
        .unwrap();
        let x = randn(&[1, 2, t, d], 3);
        let inference = rope.apply(&x, off).unwrap();
        let (c, s) = angles(&rope.inv_freq, off..off + t);
        let cos = Tensor::from_vec(c, (t, d / 2), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(s, (t, d / 2), &Device::Cpu).unwrap();
        let reference = candle_nn::rotary_emb::rope_i(&x, &cos, &sin).unwrap();
        assert_close(&inference, &reference, Tol::new(1e-6, 1e-6));
        assert_close(
            &rope.apply_composed(&x, off).unwrap(),
            &reference,
            Tol::new(1e-6, 1e-6),
        );
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let y = rope.apply(v.as_tensor(), off).unwrap();
        assert_close(&y, &reference, Tol::new(1e-6, 1e-6));
        // The backward rotates back: the gradient of sum(y ⊙ y) is 2x (rotations keep norms).
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(v.as_tensor()).unwrap();
        assert_close(gx, &(x * 2.0).unwrap(), Tol::new(1e-5, 1e-5));
        assert!(
            rope.apply(&randn(&[1, 1, 1, d], 4), ROPE_TABLE_POSITIONS + 100)
                .is_err()
        );
    }

    /// The kept table grows with the positions reached (a power of two, at least 256, at most the
    /// cap) and a grown table gives the same rotation as a fresh rope that computes it at once.
    #[test]
    fn the_kept_table_grows_with_the_positions_reached() {
        let d = 8;
        let rope = Rope::new(d, 5000, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
        let kept = |r: &Rope| r.table.read().unwrap().positions;
        assert_eq!(kept(&rope), 0);
        let x = randn(&[1, 1, 3, d], 5);
        let early = rope.apply(&x, 10).unwrap();
        assert_eq!(kept(&rope), ROPE_TABLE_STEP);
        let clone = rope.clone();
        clone.apply(&x, 600).unwrap();
        assert_eq!(kept(&rope), 1024, "clones share the table");
        // Rows computed before and after growing are the same numbers.
        assert_close(&rope.apply(&x, 10).unwrap(), &early, Tol::new(0.0, 0.0));
        let fresh = Rope::new(d, 5000, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
        assert_close(
            &fresh.apply(&x, 600).unwrap(),
            &rope.apply(&x, 600).unwrap(),
            Tol::new(0.0, 0.0),
        );
        rope.apply(&x, ROPE_TABLE_POSITIONS - 3).unwrap();
        assert_eq!(kept(&rope), ROPE_TABLE_POSITIONS);
        let short = Rope::new(d, 300, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
        short.apply(&x, 297).unwrap();
        assert_eq!(kept(&short), 300, "never past max_pos");
    }

    #[test]
    fn layouts_are_equivalent_up_to_the_row_permutation() {
        let d = 16;
        let x = randn(&[1, 1, 3, d], 9);
        let perm = interleaved_to_half_split_rows(d);
        let idx = Tensor::from_vec(
            perm.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            d,
            &Device::Cpu,
        )
        .unwrap();
        let xp = x.index_select(&idx, 3).unwrap();
        let ri = Rope::new(d, 8, 10000.0, RopeLayout::Interleaved, &Device::Cpu).unwrap();
        let rh = Rope::new(d, 8, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
        let a = ri.apply(&x, 4).unwrap().index_select(&idx, 3).unwrap();
        let b = rh.apply(&xp, 4).unwrap();
        assert_close(&a, &b, Tol::new(1e-6, 1e-6));
    }
}
