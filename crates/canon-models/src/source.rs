//! Where weights come from: a GGUF file (llama.cpp names) or safetensors files (HF names). Models ask
//! for tensors by their HF name and the shape the config implies; each source maps the name, checks
//! the shape, and converts to what the layer holds. An error names the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use canon_nn::Weight;
use canon_quant::gguf::GgufFile;
use canon_quant::nf4::{Absmax, DoubleQuant};
use canon_quant::{Bytes, GgmlTensor, GgmlType, Int8Tensor, Nf4Tensor};
use memmap2::Mmap;

use crate::{ModelError, Result};

/// How quantized weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// Dequantize to f32 at load: the arithmetic of transformers' f32 reference.
    #[default]
    DequantizeF32,
    /// Keep ggml blocks as stored.
    KeepQuantized,
}

pub trait WeightSource {
    /// The file(s), for error messages.
    fn describe(&self) -> String;
    fn has(&self, name: &str) -> bool;
    /// A float tensor (f32) with exactly `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// A matrix for a `Linear`, kept quantized when the source is and the mode asks for it.
    fn weight(&self, name: &str, shape: &[usize], mode: WeightMode) -> Result<Weight> {
        let _ = mode;
        Ok(Weight::Dense(self.tensor(name, shape)?))
    }
    /// Rows `start .. start + rows` of the matrix `name` of shape `shape` (a fused projection,
    /// split at load), kept quantized when the source can keep whole rows in their format.
    fn weight_rows(
        &self,
        name: &str,
        shape: &[usize],
        start: usize,
        rows: usize,
        mode: WeightMode,
    ) -> Result<Weight> {
        let w = self.weight(name, shape, mode)?.to_dense()?;
        Ok(Weight::Dense(w.narrow(0, start, rows)?.contiguous()?))
    }
}

/// Detached views of another source's tensors: same storage (no copy), no autograd tracking. A
/// model built from a `VarStore` through it runs inference without recording a graph — decoding
/// with a KV cache then writes in place instead of concatenating tracked tensors, whose history
/// would otherwise be kept alive step after step. It sees the variables' current values (the
/// optimizer updates their storage in place).
pub struct Detached<'a>(pub &'a dyn WeightSource);

impl WeightSource for Detached<'_> {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn has(&self, name: &str) -> bool {
        self.0.has(name)
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.0.tensor(name, shape)?.detach())
    }
}

fn check_shape(file: &str, name: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected != found {
        return Err(ModelError::Shape {
            file: file.to_string(),
            name: name.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// Maps HF LLaMA names to llama.cpp's GGUF names.
pub fn llama_gguf_name(hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("model.layers.")
        && let Some((layer, tail)) = rest.split_once('.')
    {
        let g = match tail {
            "input_layernorm.weight" => "attn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            // Qwen2's biases
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            // Phi-3's fused projections (llama.cpp keeps gate and up stacked in `ffn_up`)
            "self_attn.qkv_proj.weight" => "attn_qkv.weight",
            "mlp.gate_up_proj.weight" => "ffn_up.weight",
            // Gemma 3 (Canon's names for the extra norms)
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "self_attn.post_norm.weight" => "post_attention_norm.weight",
            "mlp.post_norm.weight" => "post_ffw_norm.weight",
            other => other,
        };
        return format!("blk.{layer}.{g}");
    }
    match hf {
        "model.embed_tokens.weight" => "token_embd.weight",
        "model.norm.weight" => "output_norm.weight",
        "lm_head.weight" => "output.weight",
        other => other,
    }
    .to_string()
}

pub struct GgufSource {
    pub file: GgufFile,
    map: fn(&str) -> String,
}

impl GgufSource {
    pub fn new(file: GgufFile, map: fn(&str) -> String) -> Self {
        Self { file, map }
    }

    fn ggml(&self, name: &str, shape: &[usize]) -> Result<GgmlTensor> {
        let gname = (self.map)(name);
        let info = self
            .file
            .tensor_info(&gname)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.describe(),
                name: gname.clone(),
            })?;
        check_shape(&self.describe(), &gname, shape, &info.shape)?;
        Ok(GgmlTensor::from_view(
            info.dtype,
            &info.shape,
            self.file.tensor_view(info),
        )?)
    }
}

impl GgufSource {
    /// A tensor's bytes, checked against `shape` and `dtype`.
    fn part(&self, gname: &str, dtype: GgmlType, shape: &[usize]) -> Result<Bytes> {
        let info = self
            .file
            .tensor_info(gname)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.describe(),
                name: gname.to_string(),
            })?;
        check_shape(&self.describe(), gname, shape, &info.shape)?;
        if info.dtype != dtype {
            return Err(ModelError::Config {
                file: self.describe(),
                message: format!("tensor '{gname}' is {:?}; expected {dtype:?}", info.dtype),
            });
        }
        Ok(self.file.tensor_view(info))
    }

    fn part_f32(&self, gname: &str, len: usize) -> Result<Vec<f32>> {
        let b = self.part(gname, GgmlType::F32, &[len])?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Canon's NF4 / int8 tensors for weight `gname` (see `canon quantize`), if the file has them.
    fn canon_quantized(&self, gname: &str, shape: &[usize]) -> Result<Option<Weight>> {
        let [rows, cols] = shape else {
            return Ok(None);
        };
        let (rows, cols) = (*rows, *cols);
        if self
            .file
            .tensor_info(&format!("{gname}.nf4.codes"))
            .is_some()
        {
            let n = rows * cols;
            let nb = n.div_ceil(canon_quant::nf4::BLOCK);
            let codes = self.part(
                &format!("{gname}.nf4.codes"),
                GgmlType::I8,
                &[rows, cols / 2],
            )?;
            let q = self.part(&format!("{gname}.nf4.absmax_q"), GgmlType::I8, &[nb])?;
            let scale = self.part_f32(
                &format!("{gname}.nf4.absmax_scale"),
                nb.div_ceil(canon_quant::nf4::DQ_BLOCK),
            )?;
            let mean = self.part_f32(&format!("{gname}.nf4.absmax_mean"), 1)?[0];
            let absmax = Absmax::Double(DoubleQuant { q, scale, mean });
            let t = Nf4Tensor::from_parts(rows, cols, codes, absmax)?;
            return Ok(Some(Weight::Nf4(Arc::new(t))));
        }
        if self.file.tensor_info(&format!("{gname}.int8")).is_some() {
            let q = self.part(&format!("{gname}.int8"), GgmlType::I8, &[rows, cols])?;
            let scale = self.part_f32(&format!("{gname}.int8.scale"), rows)?;
            let threshold = self
                .file
                .get("canon.int8.threshold")
                .and_then(|v| v.as_f64())
                .map_or(canon_quant::int8::THRESHOLD, |v| v as f32);
            let t = Int8Tensor::from_parts(rows, cols, q, scale, threshold)?;
            return Ok(Some(Weight::Int8(Arc::new(t))));
        }
        Ok(None)
    }
}

impl WeightSource for GgufSource {
    fn describe(&self) -> String {
        self.file.path.display().to_string()
    }
    fn has(&self, name: &str) -> bool {
        let g = (self.map)(name);
        self.file.tensor_info(&g).is_some()
            || self.file.tensor_info(&format!("{g}.nf4.codes")).is_some()
            || self.file.tensor_info(&format!("{g}.int8")).is_some()
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(w) = self.canon_quantized(&(self.map)(name), shape)? {
            return Ok(w.to_dense()?);
        }
        Ok(self.ggml(name, shape)?.dequantize()?)
    }
    fn weight(&self, name: &str, shape: &[usize], mode: WeightMode) -> Result<Weight> {
        if let Some(w) = self.canon_quantized(&(self.map)(name), shape)? {
            return Ok(match mode {
                WeightMode::KeepQuantized => w,
                WeightMode::DequantizeF32 => Weight::Dense(w.to_dense()?),
            });
        }
        let q = self.ggml(name, shape)?;
        let float = matches!(q.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        Ok(match mode {
            WeightMode::KeepQuantized if !float => {
                // Repacked into the tile kernels' panel layout here, once, where this CPU has
                // it (the file's blocks are then released from memory): the first product
                // does not pay for it.
                q.prepack();
                Weight::Ggml(Arc::new(q))
            }
            _ => Weight::Dense(q.dequantize()?),
        })
    }
    fn weight_rows(
        &self,
        name: &str,
        shape: &[usize],
        start: usize,
        rows: usize,
        mode: WeightMode,
    ) -> Result<Weight> {
        let gname = (self.map)(name);
        let (Some(info), [total, cols]) = (self.file.tensor_info(&gname), shape) else {
            let w = self.weight(name, shape, mode)?.to_dense()?;
            return Ok(Weight::Dense(w.narrow(0, start, rows)?.contiguous()?));
        };
        check_shape(&self.describe(), &gname, shape, &info.shape)?;
        if start + rows > *total {
            return Err(ModelError::Config {
                file: self.describe(),
                message: format!(
                    "tensor '{gname}': rows {start}..{} asked, it has {total}",
                    start + rows
                ),
            });
        }
        // A row is whole blocks (`from_view` checks it), so a run of rows is a byte range.
        let dtype = info.dtype;
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let bytes = match self.file.tensor_view(info) {
            Bytes::Mapped { map, start: s, .. } => Bytes::Mapped {
                map,
                start: s + start * row_bytes,
                len: rows * row_bytes,
            },
            Bytes::Owned(v) => Bytes::Owned(
                v.get(start * row_bytes..(start + rows) * row_bytes)
                    .ok_or_else(|| ModelError::Config {
                        file: self.describe(),
                        message: format!("tensor '{gname}' is shorter than its shape"),
                    })?
                    .to_vec(),
            ),
        };
        let q = GgmlTensor::from_view(dtype, &[rows, *cols], bytes)?;
        let float = matches!(q.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        Ok(match mode {
            WeightMode::KeepQuantized if !float => {
                q.prepack();
                Weight::Ggml(Arc::new(q))
            }
            _ => Weight::Dense(q.dequantize()?),
        })
    }
}

/// One or more safetensors files (sharded checkpoints use `model.safetensors.index.json`).
pub struct SafetensorsSource {
    files: Vec<(PathBuf, Mmap, usize)>,
    /// name → (file index, tensor info)
    index: HashMap<String, (usize, safetensors::tensor::TensorInfo)>,
    /// A prefix every name carries in this checkpoint (e.g. `bert.`), stripped on lookup.
    prefix: String,
}

impl SafetensorsSource {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = std::fs::File::open(p).map_err(|e| ModelError::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            // SAFETY: read-only mapping of a file we do not modify.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            let (header, meta) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Config {
                    file: p.display().to_string(),
                    message: format!("not a valid safetensors file: {e}"),
                })?;
            for (name, info) in meta.tensors() {
                index.insert(name, (i, info.clone()));
            }
            files.push((p.clone(), mmap, header + 8));
        }
        Ok(Self {
            files,
            index,
            prefix: String::new(),
        })
    }

    /// Opens a model folder: `model.safetensors`, or the shards listed in its index file.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Self::open(&[single]);
        }
        let idx = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&idx).map_err(|_| ModelError::Io {
            path: dir.display().to_string(),
            message: "expected model.safetensors or model.safetensors.index.json in the folder"
                .into(),
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: idx.display().to_string(),
            message: e.to_string(),
        })?;
        let mut shards: Vec<String> = v["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Config {
                file: idx.display().to_string(),
                message: "no weight_map object".into(),
            })?
            .values()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        Self::open(&paths)
    }

    /// Uses `prefix` when the checkpoint's names carry it (e.g. `bert.` in a BertForX checkpoint).
    pub fn detect_prefix(&mut self, probe: &str, prefixes: &[&str]) {
        if self.index.contains_key(probe) {
            return;
        }
        for p in prefixes {
            if self.index.contains_key(&format!("{p}{probe}")) {
                self.prefix = p.to_string();
                return;
            }
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }
}

impl WeightSource for SafetensorsSource {
    fn describe(&self) -> String {
        self.files
            .iter()
            .map(|f| f.0.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(&format!("{}{name}", self.prefix))
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let (fi, info) = self
            .index
            .get(&full)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.describe(),
                name: full.clone(),
            })?;
        let (path, mmap, base) = &self.files[*fi];
        let file = path.display().to_string();
        check_shape(&file, &full, shape, &info.shape)?;
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            other => {
                return Err(ModelError::Config {
                    file,
                    message: format!("tensor '{full}' has dtype {other:?}; expected a float type"),
                });
            }
        };
        let (s, e) = info.data_offsets;
        let bytes = mmap
            .get(base + s..base + e)
            .ok_or_else(|| ModelError::Config {
                file: file.clone(),
                message: format!("tensor '{full}' lies beyond the end of the file"),
            })?;
        let t = Tensor::from_raw_buffer(bytes, dtype, &info.shape, &Device::Cpu)?;
        Ok(t.to_dtype(DType::F32)?)
    }
}
