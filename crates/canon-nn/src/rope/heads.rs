//! Attention inputs for inference: per-head norm, RoPE, scale and the transpose in one pass.

use candle_core::Tensor;

use super::Rope;

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
    let Some((w, tables)) = operands(norm, rope, d, t)? else {
        return Ok(None);
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
            let rot = tables
                .as_ref()
                .map(|(rope, cos, sin, first)| (*rope, &cos[..], &sin[..], first + ti));
            prepare_row(xr, y, &mut normed, wd, rot, mul);
        }
    });
    drop(guard);
    Ok(Some(Tensor::from_vec(out, (b, h, t, d), x.device())?))
}

/// The norm weight as f32 data with its ε, and the rotation tables for positions
/// `offset..offset + t` with the table row of `offset`.
type Operands<'a> = (
    Option<(crate::fused::F32Data<'a>, f32)>,
    Option<(&'a Rope, super::TableRef, super::TableRef, usize)>,
);

/// What [`heads_prepared`] and [`row_prepared`] read besides the rows: `Ok(None)` when the norm
/// weight is not an f32 CPU vector of width `d`; an error when the positions lie beyond the
/// rotation's table.
fn operands<'a>(
    norm: Option<(&'a Tensor, f64)>,
    rope: Option<(&'a Rope, usize)>,
    d: usize,
    t: usize,
) -> crate::Result<Option<Operands<'a>>> {
    let w = match norm {
        Some((w, eps)) => match crate::fused::F32Data::new(w) {
            Some(wd) if wd.len() == d => Some((wd, eps as f32)),
            _ => return Ok(None),
        },
        None => None,
    };
    let tables = match rope {
        Some((r, offset)) => {
            r.check(d, offset, t)?;
            let (c, s, first) = r.tables(offset, t);
            Some((r, c, s, offset - first))
        }
        None => None,
    };
    Ok(Some((w, tables)))
}

/// One row of [`heads_prepared`]: RMS norm by `norm`, rotation by table row `rot.3`, then the
/// scale — the one place this arithmetic is written, so the batched decode rows
/// ([`row_prepared`]) give the bits the tensor path gives. `normed` is scratch of `d` floats when
/// both a norm and a rotation apply.
#[inline]
fn prepare_row(
    xr: &[f32],
    y: &mut [f32],
    normed: &mut [f32],
    norm: Option<(&[f32], f32)>,
    rot: Option<(&Rope, &[f32], &[f32], usize)>,
    mul: Option<f32>,
) {
    match (norm, rot) {
        (Some((g, eps)), Some((rope, cos, sin, row))) => {
            crate::norm::rms_row(xr, normed, g, eps);
            rope.rotate_row(normed, y, cos, sin, row);
        }
        (Some((g, eps)), None) => crate::norm::rms_row(xr, y, g, eps),
        (None, Some((rope, cos, sin, row))) => rope.rotate_row(xr, y, cos, sin, row),
        (None, None) => y.copy_from_slice(xr),
    }
    if let Some(m) = mul {
        y.iter_mut().for_each(|v| *v *= m);
    }
}

/// [`heads_prepared`] for one position given as a slice, as a decode step holds it: `x` is one
/// row of a projection's output, `heads` rows of width `d` back to back, and `y` (the same length)
/// receives them normed, rotated for position `pos` and scaled, with the same arithmetic (so the
/// same bits) as the tensor form gives for that row. `Ok(false)`, touching nothing, when the norm
/// weight is not an f32 CPU vector of width `d` (the caller then composes); an error when `x`
/// and `y` are not whole rows of width `d` or `pos` lies beyond the rotation's table.
pub fn row_prepared(
    x: &[f32],
    d: usize,
    norm: Option<(&Tensor, f64)>,
    rope: Option<(&Rope, usize)>,
    scale: Option<f64>,
    y: &mut [f32],
) -> crate::Result<bool> {
    if d == 0 || !x.len().is_multiple_of(d) || y.len() != x.len() {
        candle_core::bail!(
            "row_prepared: expected rows of width {d} in and out, found {} and {} values",
            x.len(),
            y.len()
        );
    }
    let Some((w, tables)) = operands(norm, rope, d, 1)? else {
        return Ok(false);
    };
    let wd: Option<(&[f32], f32)> = w.as_ref().map(|(wd, eps)| (&wd[..], *eps));
    let rot = tables
        .as_ref()
        .map(|(r, c, s, row)| (*r, &c[..], &s[..], *row));
    let mul = scale.map(|s| s as f32);
    let mut normed = vec![0.0f32; if wd.is_some() && rot.is_some() { d } else { 0 }];
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        prepare_row(xr, yr, &mut normed, wd, rot, mul);
    }
    Ok(true)
}
