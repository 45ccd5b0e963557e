//! BERT's linear layers on 8-bit weights: each weight row rounded to ggml's Q8_0 blocks (32
//! values sharing one f16 scale, `d = max|w| / 127`), and each product's input rounded to 8-bit
//! blocks of 32 as well, multiplied by the integer kernels that run the language models
//! (`canon_quant::kernels::tile::packed`: AVX-512 VNNI, or AVX2).
//!
//! This is the embedding counterpart of llama.cpp's Q8_0 and of sentence-transformers' int8
//! exports: about four times the f32 GEMM's multiply-adds per second on the CPUs measured, and
//! sentence vectors at a cosine of 0.998 or more to the f32 model's (see the tests and README). Where the CPU has neither kernel, the rounded weights are kept in f32 instead, so the
//! same weights run on the f32 path (activations then stay unrounded).

use std::sync::Arc;

use candle_core::Tensor;
use canon_nn::{Linear, Weight};
use canon_quant::kernels::tile::packed::{self, Packed};
use canon_quant::kernels::{Kind, QK, QMatrixRef, scalar};

use crate::{ModelError, Result};

/// One layer's products: Q, K and V stacked into one `[3d, d]` matrix (so one product writes the
/// `[rows, 3d]` buffer attention reads), the attention output, and the feed-forward's two.
#[derive(Debug)]
pub(super) struct LayerQ8 {
    pub qkv: Packed,
    pub o: Packed,
    pub fc1: Packed,
    pub fc2: Packed,
}

/// Rows of `w: [n, k]` rounded to Q8_0 blocks: the ggml bytes.
fn q8_0_bytes(w: &[f32], k: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(w.len() / QK * Kind::Q8_0.block_bytes());
    for row in w.chunks_exact(k) {
        scalar::quantize_row(Kind::Q8_0, row, &mut out);
    }
    out
}

/// The f32 values that Q8_0 `bytes` (`rows` rows of `k`) stand for.
fn dequantized(bytes: &[u8], rows: usize, k: usize) -> Vec<f32> {
    let row_bytes = k / QK * Kind::Q8_0.block_bytes();
    let mut out = vec![0f32; rows * k];
    for (o, b) in out.chunks_exact_mut(k).zip(bytes.chunks_exact(row_bytes)) {
        scalar::dequantize_row(Kind::Q8_0, b, o);
    }
    out
}

/// Whether `l` can be rounded: a dense weight whose input width is a multiple of 32, no adapter.
pub(super) fn check(l: &Linear) -> Result<()> {
    let Weight::Dense(w) = &l.weight else {
        return Err(ModelError::Input(
            "expected dense f32 weights to round to 8 bits, found weights already quantized".into(),
        ));
    };
    if l.lora.is_some() {
        return Err(ModelError::Input(
            "expected a plain linear layer to round to 8 bits, found a LoRA adapter on it".into(),
        ));
    }
    let (_, k) = w.dims2()?;
    if !k.is_multiple_of(QK) {
        return Err(ModelError::Input(format!(
            "expected layer widths that are multiples of {QK} for 8-bit weights, found {k}"
        )));
    }
    Ok(())
}

/// A dense f32 weight's values, `[n, k]`.
fn dense(l: &Linear) -> Result<(Vec<f32>, usize, usize)> {
    check(l)?;
    let Weight::Dense(w) = &l.weight else {
        return Err(ModelError::Input(
            "internal: weight not dense after the check".into(),
        ));
    };
    let (n, k) = w.dims2()?;
    let v: Vec<f32> = w
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    Ok((v, n, k))
}

/// Rounds the weights of `group` (layers sharing their input width, stacked in this order) to
/// Q8_0; replaces each layer's f32 weight by the rounded values; returns the stacked matrix
/// packed for the integer kernels, or `None` where this CPU does not pack Q8_0.
pub(super) fn round_group(group: &mut [&mut Linear]) -> Result<Option<Packed>> {
    let mut stacked = Vec::new();
    let (mut rows, mut width) = (0usize, None);
    for l in group.iter_mut() {
        let (w, n, k) = dense(l)?;
        if *width.get_or_insert(k) != k {
            return Err(ModelError::Input(format!(
                "expected stacked layers of one input width, found {k} after {width:?}"
            )));
        }
        let bytes = q8_0_bytes(&w, k);
        let back = dequantized(&bytes, n, k);
        let dev = match &l.weight {
            Weight::Dense(t) => t.device().clone(),
            _ => candle_core::Device::Cpu,
        };
        l.weight = Weight::Dense(Tensor::from_vec(back, (n, k), &dev)?);
        stacked.extend_from_slice(&bytes);
        rows += n;
    }
    let k = width.unwrap_or(QK);
    if !packed::packs(Kind::Q8_0) {
        return Ok(None);
    }
    Ok(Packed::pack(QMatrixRef {
        kind: Kind::Q8_0,
        rows,
        cols: k,
        bytes: &stacked,
    }))
}

/// The packed layers, or `None` where any product does not pack (then every layer runs on the
/// rounded f32 weights).
pub(super) fn layers(parts: Vec<[Option<Packed>; 4]>) -> Option<Arc<Vec<LayerQ8>>> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let [Some(qkv), Some(o), Some(fc1), Some(fc2)] = p else {
            return None;
        };
        out.push(LayerQ8 { qkv, o, fc1, fc2 });
    }
    Some(Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{batch, tiny};
    use canon_nn::Activation;
    use canon_quant::kernels::Kind;
    use canon_quant::kernels::tile::packed;
    use canon_testkit::{Tol, assert_close, to_vec};

    /// Σ|a − b| over Σ|b|.
    fn rel_l1(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).sum();
        num / b.iter().map(|y| f64::from(y.abs())).sum::<f64>()
    }

    #[test]
    fn eight_bit_weights_stay_near_f32_and_every_path_uses_the_rounded_weights() {
        let (bert, _) = tiny(false, Activation::Gelu);
        let (ids, types, mask) = batch();
        let f32_out = bert
            .forward_inference(&ids, Some(&types), &mask)
            .unwrap()
            .unwrap();
        let f32_composed = bert.forward_composed(&ids, Some(&types), &mask).unwrap();
        let mut q = bert.clone();
        q.use_q8_weights().unwrap();
        assert_eq!(q.runs_q8(), packed::packs(Kind::Q8_0));
        let q_out = q
            .forward_inference(&ids, Some(&types), &mask)
            .unwrap()
            .unwrap();
        let q_composed = q.forward_composed(&ids, Some(&types), &mask).unwrap();
        let (f, qo, fc, qc) = (
            to_vec(&f32_out),
            to_vec(&q_out),
            to_vec(&f32_composed),
            to_vec(&q_composed),
        );
        // Rounding moved the result, by about what 8 bits per block allow (hidden states are
        // layer-normalised, so of order 1).
        let moved = rel_l1(&qo, &f);
        assert!(
            moved > 0.0 && moved < 0.03,
            "8-bit vs f32: relative L1 {moved}"
        );
        // The composed (differentiable) pass runs the rounded weights too: it moved as far from
        // f32, and stays next to the 8-bit inference pass (only the products' inputs differ).
        let composed_moved = rel_l1(&qc, &fc);
        assert!(
            composed_moved > 0.0,
            "the composed pass kept the f32 weights"
        );
        let gap = rel_l1(&qc, &qo);
        assert!(
            gap < 0.03,
            "8-bit inference vs composed on rounded weights: {gap}"
        );
        if !q.runs_q8() {
            // No integer kernels: the inference pass is the f32 one on the rounded weights.
            assert_close(&q_out, &q_composed, Tol::F32);
        }
        // One sequence alone: the products share the threads instead of the sequences.
        let one = |t: &candle_core::Tensor| t.narrow(0, 0, 1).unwrap();
        let alone = q
            .forward_inference(&one(&ids), None, &one(&mask))
            .unwrap()
            .unwrap();
        let in_batch = q.forward_inference(&ids, None, &mask).unwrap().unwrap();
        assert_close(&alone, &one(&in_batch), Tol::EXACT);
    }

    #[test]
    fn rounding_refuses_trainable_weights_and_changes_nothing() {
        let (bert, _) = tiny(true, Activation::Gelu);
        let (ids, _, mask) = batch();
        let before = to_vec(&bert.forward_composed(&ids, None, &mask).unwrap());
        let mut q = bert.clone();
        let err = q.use_q8_weights().unwrap_err().to_string();
        assert!(err.contains("trainable"), "{err}");
        assert!(!q.runs_q8());
        let after = to_vec(&q.forward_composed(&ids, None, &mask).unwrap());
        assert_eq!(before, after);
    }
}
