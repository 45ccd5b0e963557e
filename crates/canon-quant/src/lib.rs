//! Weight formats and kernels: the GGUF container (reader and writer), llama.cpp's ggml block
//! formats with our own integer-dot kernels (`kernels`, scalar reference plus AVX2), LLM.int8()
//! (paper 22, `int8`), NF4 with double quantization (paper 27, `nf4`), and the thread pool the
//! kernels split rows over.
//!
//! This crate never names a model.

mod dequant_op;
pub mod gguf;
pub mod gguf_write;
pub mod int8;
pub mod kernels;
pub mod nf4;
pub mod pool;
mod qmatmul;

pub use int8::Int8Tensor;
pub use kernels::{Isa, Kind};
pub use nf4::Nf4Tensor;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The ggml tensor types a GGUF file may hold (numbering from ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    /// Plain signed bytes (ggml's `GGML_TYPE_I8`): Canon stores NF4/int8 payloads in it.
    I8,
}

impl GgmlType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            24 => Self::I8,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 | Self::I8 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q8_1 => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::I8 => 1,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::Q8K => 292,
        }
    }

    /// Bits per weight, for size reports.
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    pub(crate) fn candle(self) -> GgmlDType {
        match self {
            // Read by `dequantize` before reaching candle.
            Self::I8 => GgmlDType::F32,
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::BF16 => GgmlDType::BF16,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q8_1 => GgmlDType::Q8_1,
            Self::Q2K => GgmlDType::Q2K,
            Self::Q3K => GgmlDType::Q3K,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
            Self::Q8K => GgmlDType::Q8K,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("tensor data has {found} bytes, but {shape:?} in {dtype:?} needs {expected}")]
    Size {
        dtype: GgmlType,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("row length {row} is not a multiple of the {dtype:?} block size {block}")]
    Block {
        dtype: GgmlType,
        row: usize,
        block: usize,
    },
    #[error("{what}: expected {expected}, found {found}")]
    Layout {
        what: String,
        expected: usize,
        found: usize,
    },
    #[error("expected a 2-D tensor, found shape {0:?}")]
    Rank(Vec<usize>),
    #[error("row {index} requested from a table of {rows} rows")]
    Index { index: u32, rows: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Tensor bytes: owned, or a range of a memory-mapped file kept alive by the view.
#[derive(Debug, Clone)]
pub enum Bytes {
    Owned(Vec<u8>),
    Mapped {
        map: std::sync::Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

/// A ggml-block-quantized matrix (or vector) held in its file format.
#[derive(Debug)]
pub struct GgmlTensor {
    pub dtype: GgmlType,
    pub shape: Vec<usize>,
    bytes: Bytes,
    /// The panel layout the products read (`kernels::tile::packed`), built once on first use.
    packed: std::sync::OnceLock<Option<kernels::tile::packed::Packed>>,
}

impl GgmlTensor {
    /// Wraps raw ggml block bytes (copied); `shape` is outermost first, the last dimension is the row.
    pub fn from_bytes(dtype: GgmlType, shape: &[usize], bytes: &[u8]) -> Result<Self, QuantError> {
        Self::from_view(dtype, shape, Bytes::Owned(bytes.to_vec()))
    }

    /// Wraps ggml block bytes without copying them (e.g. a range of a mapped GGUF file).
    pub fn from_view(dtype: GgmlType, shape: &[usize], bytes: Bytes) -> Result<Self, QuantError> {
        let row = shape.last().copied().unwrap_or(1);
        if row % dtype.block_size() != 0 {
            return Err(QuantError::Block {
                dtype,
                row,
                block: dtype.block_size(),
            });
        }
        let n: usize = shape.iter().product();
        let expected = n / dtype.block_size() * dtype.type_size();
        if bytes.len() != expected {
            return Err(QuantError::Size {
                dtype,
                shape: shape.to_vec(),
                expected,
                found: bytes.len(),
            });
        }
        Ok(Self {
            dtype,
            shape: shape.to_vec(),
            bytes,
            packed: std::sync::OnceLock::new(),
        })
    }

    /// The raw ggml blocks.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Dequantizes to an f32 tensor of the same shape.
    pub fn dequantize(&self) -> Result<Tensor, QuantError> {
        if let Some(w) = self.as_matrix() {
            let mut out = vec![0.0f32; w.rows * w.cols];
            for (r, row) in out.chunks_mut(w.cols.max(1)).enumerate() {
                kernels::dequantize_row(w, r, row);
            }
            return Ok(Tensor::from_vec(out, self.shape.clone(), &Device::Cpu)?);
        }
        if self.dtype == GgmlType::I8 {
            let v: Vec<f32> = self.bytes.iter().map(|&b| b as i8 as f32).collect();
            return Ok(Tensor::from_vec(v, self.shape.clone(), &Device::Cpu)?);
        }
        // Other formats through candle's block types (which need an aligned copy).
        let storage = candle_core::quantized::QStorage::from_data(
            Cow::Borrowed(&self.bytes),
            &Device::Cpu,
            self.dtype.candle(),
        )?;
        Ok(QTensor::new(storage, self.shape.clone())?.dequantize(&Device::Cpu)?)
    }

    /// Dequantizes through candle's block types (any ggml format, not `I8`; an independent
    /// implementation: tests and benchmarks compare against it).
    pub fn dequantize_candle(&self) -> Result<Tensor, QuantError> {
        let storage = candle_core::quantized::QStorage::from_data(
            Cow::Borrowed(&self.bytes),
            &Device::Cpu,
            self.dtype.candle(),
        )?;
        Ok(QTensor::new(storage, self.shape.clone())?.dequantize(&Device::Cpu)?)
    }

    pub fn size_in_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Whether `matmul` runs on quantized kernels for this format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// Q4_K, Q5_K, Q6_K).
    pub fn has_kernel(&self) -> bool {
        self.as_matrix().is_some()
    }

    /// A 2-D view for the kernels, when the format has one.
    pub fn as_matrix(&self) -> Option<kernels::QMatrixRef<'_>> {
        let kind = Kind::of(self.dtype)?;
        let cols = *self.shape.last()?;
        let rows = self.shape.iter().rev().skip(1).product();
        Some(kernels::QMatrixRef {
            kind,
            rows,
            cols,
            bytes: &self.bytes,
        })
    }

    /// The weights in the tile kernel's panel layout, repacked on the first call (every product
    /// after that reads only this copy), or `None` where this CPU or format has no packed form
    /// (`kernels::tile::packed::packs`). Where the blocks are a view of a mapped file, the
    /// file's pages are released from memory as their rows are packed (`MADV_DONTNEED`: the
    /// kernel reads them back from the file if an embedding lookup or a dequantization needs
    /// them), so the packed copy replaces the file's blocks in memory instead of adding to them.
    pub fn packed(&self) -> Option<&kernels::tile::packed::Packed> {
        self.packed
            .get_or_init(|| {
                let w = self.as_matrix()?;
                let rb = w.row_bytes();
                let release = |r0: usize, r1: usize| {
                    if let Bytes::Mapped { map, start, .. } = &self.bytes {
                        // SAFETY: the mapping is read-only and file-backed: MADV_DONTNEED only
                        // drops this process's copies of the pages, and any later read faults
                        // them back in from the file unchanged. A failure leaves them resident.
                        #[cfg(unix)]
                        unsafe {
                            let _ = map.unchecked_advise_range(
                                memmap2::UncheckedAdvice::DontNeed,
                                start + r0 * rb,
                                (r1 - r0) * rb,
                            );
                        }
                        #[cfg(not(unix))]
                        let _ = (map, start, r0, r1, rb);
                    }
                };
                let p = kernels::tile::packed::Packed::pack_releasing(w, &release)?;
                // Once more over the whole tensor: the kernel's fault-around maps up to 64 KiB of
                // cached pages around each fault, so packing later rows mapped earlier ones back.
                release(0, w.rows);
                Some(p)
            })
            .as_ref()
    }

    /// Builds the packed layout now (`packed`), so that the first product does not pay for it.
    /// Returns the bytes it holds (0 where nothing is packed).
    pub fn prepack(&self) -> usize {
        self.packed().map_or(0, |p| p.bytes())
    }

    /// Rows `ids` of a 2-D tensor, dequantized: `[ids.len(), cols]` (an embedding lookup).
    pub fn dequantize_rows(&self, ids: &[u32]) -> Result<Tensor, QuantError> {
        let (rows, cols) = match self.shape.as_slice() {
            [r, c] => (*r, *c),
            s => return Err(QuantError::Rank(s.to_vec())),
        };
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(QuantError::Index { index: bad, rows });
        }
        let Some(w) = self.as_matrix() else {
            let all = self.dequantize()?;
            let idx = Tensor::new(ids, &Device::Cpu)?;
            return Ok(all.index_select(&idx, 0)?);
        };
        let mut out = vec![0.0f32; ids.len() * cols];
        let packed = self.packed.get().and_then(|p| p.as_ref());
        for (&i, row) in ids.iter().zip(out.chunks_mut(cols.max(1))) {
            // From the packed copy where it has the row (same bits), so that a lookup does not
            // fault the file's released pages back in.
            if !packed.is_some_and(|p| p.dequantize_row(i as usize, row)) {
                kernels::dequantize_row(w, i as usize, row);
            }
        }
        Ok(Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One Q4_1 block: d = 0.5, m = -1.0, nibbles 0..15 then 15..0 (low nibbles are elements 0..15).
    #[test]
    fn q4_1_dequantizes_as_the_format_defines() {
        let mut b = Vec::new();
        b.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&half::f16::from_f32(-1.0).to_le_bytes());
        for i in 0..16u8 {
            b.push(i | ((15 - i) << 4));
        }
        let t = GgmlTensor::from_bytes(GgmlType::Q4_1, &[1, 32], &b).unwrap();
        let v: Vec<f32> = t
            .dequantize()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..16 {
            assert_eq!(v[i], 0.5 * i as f32 - 1.0);
            assert_eq!(v[16 + i], 0.5 * (15 - i) as f32 - 1.0);
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(GgmlTensor::from_bytes(GgmlType::Q4_1, &[1, 32], &[0u8; 19]).is_err());
        assert!(GgmlTensor::from_bytes(GgmlType::Q8_0, &[1, 33], &[0u8; 34]).is_err());
    }
}
