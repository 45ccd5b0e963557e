//! Writing GGUF files from a GGUF model: re-quantization (`canon quantize`: NF4, LLM.int8(),
//! Q8_0) and folding a LoRA adapter into its base (`canon merge`). Every tensor and all metadata
//! of the input are kept, so tokenizer and chat template survive.
//!
//! File format of a re-quantized model (GGUF v3, all metadata of the input kept, so tokenizer and chat template survive):
//! - `q8_0`: every 2-D tensor becomes ggml Q8_0 (as llama.cpp's `quantize q8_0`); norms stay f32.
//!   Any GGUF reader loads it.
//! - `nf4`, `int8`: the linear layers of the blocks (`blk.N.attn_{q,k,v,output}`,
//!   `blk.N.ffn_{gate,up,down}`) are replaced by Canon-specific tensors; embeddings, the output head
//!   and norms are copied unchanged (bitsandbytes too leaves them unquantized). For a weight `G`
//!   of shape `[rows, cols]`:
//!   - NF4 (`canon.quantization = "nf4"`): `G.nf4.codes` I8 `[rows, cols/2]` (two 4-bit indices per
//!     byte, high nibble first), `G.nf4.absmax_q` I8 `[rows·cols/64]` (dynamic-map indices of the
//!     mean-centred block absmax), `G.nf4.absmax_scale` F32 `[⌈rows·cols/64/256⌉]`,
//!     `G.nf4.absmax_mean` F32 `[1]`.
//!   - int8 (`canon.quantization = "int8"`, `canon.int8.threshold`): `G.int8` I8 `[rows, cols]`
//!     (`W8`) and `G.int8.scale` F32 `[rows]` (`c_w`).
//!
//!   Other GGUF tools do not know these tensors; Canon's loader (`canon_models::source`) does.

use std::collections::HashMap;
use std::path::Path;

use canon_nn::{Linear, Lora, Weight};
use canon_quant::gguf::{GgufFile, Value};
use canon_quant::gguf_write::{TensorOut, write_gguf};
use canon_quant::kernels::{Kind, scalar};
use canon_quant::{GgmlTensor, GgmlType, Int8Tensor, Nf4Tensor, nf4};

use crate::peft::Adapter;
use crate::source::llama_gguf_name;
use crate::{ModelError, Result};

/// A re-quantization format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// 4-bit NormalFloat, blocks of 64, double-quantized constants (QLoRA).
    Nf4,
    /// LLM.int8(): vector-wise int8 weights, outlier features in f32 at run time.
    Int8,
    /// ggml Q8_0: blocks of 32 int8 values with one f16 scale.
    Q8_0,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Nf4 => "nf4",
            Method::Int8 => "int8",
            Method::Q8_0 => "q8_0",
        }
    }
}

/// What a re-quantization did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Requantized {
    /// Parameters of the whole model.
    pub params: usize,
    /// Parameters that were quantized, and their bytes.
    pub quant_params: usize,
    pub quant_bytes: usize,
}

/// The GGUF names of the linear layers that `nf4`/`int8` replace.
fn is_block_linear(name: &str) -> bool {
    const LINEAR: &[&str] = &[
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];
    name.strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(_, tail)| LINEAR.contains(&tail))
}

/// One tensor of an output GGUF, owned.
struct Out {
    name: String,
    dtype: GgmlType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Writes `outs` with `metadata` to `path` (atomically, through `write_gguf`).
fn write_outs(path: &Path, metadata: &[(String, Value)], outs: &[Out]) -> Result<()> {
    let meta_refs: Vec<(&str, Value)> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let tensors: Vec<TensorOut<'_>> = outs
        .iter()
        .map(|o| TensorOut {
            name: &o.name,
            dtype: o.dtype,
            shape: &o.shape,
            data: &o.data,
        })
        .collect();
    write_gguf(path, &meta_refs, &tensors).map_err(|e| ModelError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Re-quantizes the GGUF model `input` with `method` (LLM.int8()'s outlier `threshold` for
/// `Int8`) into the GGUF file `out`.
pub fn requantize(input: &Path, out: &Path, method: Method, threshold: f32) -> Result<Requantized> {
    let file = GgufFile::open(input)?;
    let mut outs: Vec<Out> = Vec::with_capacity(file.tensors.len() * 4);
    let (mut params, mut quant_params, mut quant_bytes) = (0usize, 0usize, 0usize);
    for info in &file.tensors {
        let n: usize = info.shape.iter().product();
        params += n;
        let src = GgmlTensor::from_view(info.dtype, &info.shape, file.tensor_view(info))?;
        let copy = |outs: &mut Vec<Out>| {
            outs.push(Out {
                name: info.name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                data: src.bytes().to_vec(),
            })
        };
        let floats =
            || -> Result<Vec<f32>> { Ok(src.dequantize()?.flatten_all()?.to_vec1::<f32>()?) };
        match method {
            Method::Q8_0 if info.shape.len() == 2 && info.shape[1].is_multiple_of(32) => {
                let mut data = Vec::new();
                scalar::quantize_row(Kind::Q8_0, &floats()?, &mut data);
                quant_params += n;
                quant_bytes += data.len();
                outs.push(Out {
                    name: info.name.clone(),
                    dtype: GgmlType::Q8_0,
                    shape: info.shape.clone(),
                    data,
                });
            }
            Method::Nf4 if is_block_linear(&info.name) && info.shape.len() == 2 => {
                let (rows, cols) = (info.shape[0], info.shape[1]);
                if !cols.is_multiple_of(2) {
                    return Err(ModelError::Input(format!(
                        "tensor {}: NF4 needs an even row length, found {cols}",
                        info.name
                    )));
                }
                let q = Nf4Tensor::quantize(&floats()?, rows, cols, true)?;
                let nf4::Absmax::Double(dq) = &q.absmax else {
                    return Err(ModelError::Input(
                        "internal: NF4 constants were not double-quantized".into(),
                    ));
                };
                quant_params += n;
                quant_bytes += q.size_in_bytes();
                let g = &info.name;
                outs.push(Out {
                    name: format!("{g}.nf4.codes"),
                    dtype: GgmlType::I8,
                    shape: vec![rows, cols / 2],
                    data: q.codes.to_vec(),
                });
                outs.push(Out {
                    name: format!("{g}.nf4.absmax_q"),
                    dtype: GgmlType::I8,
                    shape: vec![dq.q.len()],
                    data: dq.q.to_vec(),
                });
                outs.push(Out {
                    name: format!("{g}.nf4.absmax_scale"),
                    dtype: GgmlType::F32,
                    shape: vec![dq.scale.len()],
                    data: f32_bytes(&dq.scale),
                });
                outs.push(Out {
                    name: format!("{g}.nf4.absmax_mean"),
                    dtype: GgmlType::F32,
                    shape: vec![1],
                    data: f32_bytes(&[dq.mean]),
                });
            }
            Method::Int8 if is_block_linear(&info.name) && info.shape.len() == 2 => {
                let (rows, cols) = (info.shape[0], info.shape[1]);
                let q = Int8Tensor::quantize(&floats()?, rows, cols, threshold, false)?;
                quant_params += n;
                quant_bytes += q.size_in_bytes();
                outs.push(Out {
                    name: format!("{}.int8", info.name),
                    dtype: GgmlType::I8,
                    shape: vec![rows, cols],
                    data: q.q.to_vec(),
                });
                outs.push(Out {
                    name: format!("{}.int8.scale", info.name),
                    dtype: GgmlType::F32,
                    shape: vec![rows],
                    data: f32_bytes(&q.scale),
                });
            }
            _ => copy(&mut outs),
        }
    }

    let mut metadata: Vec<(String, Value)> = file
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("canon.") && k.as_str() != "general.alignment")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let name = method.name();
    match method {
        Method::Q8_0 => {
            // llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0.
            metadata.retain(|(k, _)| k != "general.file_type");
            metadata.push(("general.file_type".into(), Value::U32(7)));
        }
        Method::Nf4 => {
            metadata.push(("canon.quantization".into(), Value::String(name.into())));
            metadata.push(("canon.nf4.block_size".into(), Value::U32(nf4::BLOCK as u32)));
            metadata.push((
                "canon.nf4.absmax_block_size".into(),
                Value::U32(nf4::DQ_BLOCK as u32),
            ));
        }
        Method::Int8 => {
            metadata.push(("canon.quantization".into(), Value::String(name.into())));
            metadata.push(("canon.int8.threshold".into(), Value::F32(threshold)));
        }
    }
    write_outs(out, &metadata, &outs)?;
    Ok(Requantized {
        params,
        quant_params,
        quant_bytes,
    })
}

/// Folds `adapter` (read from `adapter_dir`) into the GGUF model `base`, writing `out`: each
/// adapted matrix becomes `W₀ + (α/r)·B A` in f32 through `Linear::merged` (the one LoRA merge);
/// every other tensor and all metadata are copied.
pub fn merge_adapter(base: &Path, adapter: &Adapter, adapter_dir: &Path, out: &Path) -> Result<()> {
    let file = GgufFile::open(base)?;
    // GGUF tensor name → adapter module.
    let mut wanted: HashMap<String, &str> = adapter
        .modules
        .keys()
        .map(|m| (llama_gguf_name(&format!("{m}.weight")), m.as_str()))
        .collect();
    let mut outs = Vec::with_capacity(file.tensors.len());
    for info in &file.tensors {
        let bytes = file.tensor_bytes(info);
        let Some(module) = wanted.remove(&info.name) else {
            outs.push(Out {
                name: info.name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                data: bytes.to_vec(),
            });
            continue;
        };
        let (a, b) = &adapter.modules[module];
        let base = GgmlTensor::from_bytes(info.dtype, &info.shape, bytes)?.dequantize()?;
        let (out_f, in_f) = base.dims2()?;
        if a.dims() != [adapter.rank, in_f] || b.dims() != [out_f, adapter.rank] {
            return Err(ModelError::Input(format!(
                "{}: module '{module}' is [{out_f}, {in_f}] in the model, but the adapter has A {:?} \
                 and B {:?}",
                adapter_dir.display(),
                a.dims(),
                b.dims()
            )));
        }
        let mut layer = Linear::new(Weight::Dense(base), None);
        layer.set_lora(Lora {
            a: a.clone(),
            b: b.clone(),
            scale: adapter.scale,
            dropout: None,
        })?;
        let merged = layer.merged()?.weight.to_dense()?;
        let data: Vec<u8> = merged
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        outs.push(Out {
            name: info.name.clone(),
            dtype: GgmlType::F32,
            shape: info.shape.clone(),
            data,
        });
    }
    if let Some((gname, module)) = wanted.into_iter().next() {
        return Err(ModelError::Input(format!(
            "{}: the adapter targets '{module}' (tensor {gname}), which {} does not have",
            adapter_dir.display(),
            base.display()
        )));
    }
    let metadata: Vec<(String, canon_quant::gguf::Value)> = file
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write_outs(out, &metadata, &outs)
}
