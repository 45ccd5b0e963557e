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
