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

mod heads;
pub use heads::{heads_prepared, row_prepared};

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

    /// Checks that rows of width `d` at positions `offset..offset + t` can be rotated.
    fn check(&self, d: usize, offset: usize, t: usize) -> crate::Result<()> {
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
        Ok(())
    }

    /// Rotates `x: [b, h, t, d]` for positions `offset..offset+t`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> crate::Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        self.check(d, offset, t)?;
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
mod tests;
