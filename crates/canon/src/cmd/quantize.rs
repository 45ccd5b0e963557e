//! `canon quantize`: re-quantize a GGUF model's weights to NF4 (paper 27), LLM.int8() (paper 22) or
//! Q8_0, writing a GGUF file that `--model OUT` loads.
//!
//! File format (GGUF v3, all metadata of the input kept, so tokenizer and chat template survive):
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

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use canon_models::ModelSpec;
use canon_quant::gguf::{GgufFile, Value};
use canon_quant::gguf_write::{TensorOut, write_gguf};
use canon_quant::kernels::{Kind, scalar};
use canon_quant::{GgmlTensor, GgmlType, Int8Tensor, Nf4Tensor, nf4};
use clap::{Args, ValueEnum};

use crate::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// 4-bit NormalFloat, blocks of 64, double-quantized constants (QLoRA).
    Nf4,
    /// LLM.int8(): vector-wise int8 weights, outlier features in f32 at run time.
    Int8,
    /// ggml Q8_0: blocks of 32 int8 values with one f16 scale.
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon quantize --model smollm2 --method nf4 --out smollm2-nf4.gguf
  canon generate --model smollm2-nf4.gguf --prompt 'The capital of France is'")]
pub struct QuantizeArgs {
    /// Model to quantize: an alias (smollm2) or a .gguf file (LLaMA family).
    #[arg(long)]
    pub model: String,
    #[arg(long, value_enum)]
    pub method: Method,
    /// Output .gguf file (written to a temporary file, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// LLM.int8() outlier threshold α stored in the file (int8 only).
    #[arg(long, default_value_t = canon_quant::int8::THRESHOLD)]
    pub threshold: f32,
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
pub(crate) struct Out {
    pub name: String,
    pub dtype: GgmlType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Writes `outs` with `metadata` to `path` (atomically, through `write_gguf`).
pub(crate) fn write_outs(
    path: &Path,
    metadata: &[(String, Value)],
    outs: &[Out],
) -> anyhow::Result<()> {
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
    write_gguf(path, &meta_refs, &tensors)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn run(args: QuantizeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "--out {}: the folder {} does not exist",
            args.out.display(),
            dir.display()
        );
    }
    if args.out.is_dir() {
        bail!(
            "--out {} is a folder; expected a file name",
            args.out.display()
        );
    }
    let path = match ModelSpec::parse(&args.model)?.resolve(ctx.progress())? {
        ModelSpec::Gguf(p) => p,
        ModelSpec::HfDir(d) => bail!(
            "--model {}: quantize reads GGUF files; this is a folder",
            d.display()
        ),
        ModelSpec::Alias(a) => bail!("alias '{a}' did not resolve to a file"),
    };
    let start = Instant::now();
    let file = GgufFile::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if !args.threshold.is_finite() && args.method == Method::Int8 {
        // An infinite α is valid (plain vector-wise int8); say so.
        eprintln!(
            "note: threshold {} turns the outlier decomposition off",
            args.threshold
        );
    }

    let mut outs: Vec<Out> = Vec::with_capacity(file.tensors.len() * 4);
    let (mut params, mut quant_params, mut quant_bytes) = (0usize, 0usize, 0usize);
    for info in &file.tensors {
        let n: usize = info.shape.iter().product();
        params += n;
        let src = GgmlTensor::from_view(info.dtype, &info.shape, file.tensor_view(info))
            .with_context(|| format!("tensor {}", info.name))?;
        let copy = |outs: &mut Vec<Out>| {
            outs.push(Out {
                name: info.name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                data: src.bytes().to_vec(),
            })
        };
        let floats = || -> anyhow::Result<Vec<f32>> {
            Ok(src.dequantize()?.flatten_all()?.to_vec1::<f32>()?)
        };
        match args.method {
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
                    bail!(
                        "tensor {}: NF4 needs an even row length, found {cols}",
                        info.name
                    );
                }
                let q = Nf4Tensor::quantize(&floats()?, rows, cols, true)?;
                let nf4::Absmax::Double(dq) = &q.absmax else {
                    bail!("internal: NF4 constants were not double-quantized");
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
                let q = Int8Tensor::quantize(&floats()?, rows, cols, args.threshold, false)?;
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
    let method = match args.method {
        Method::Nf4 => "nf4",
        Method::Int8 => "int8",
        Method::Q8_0 => "q8_0",
    };
    match args.method {
        Method::Q8_0 => {
            // llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0.
            metadata.retain(|(k, _)| k != "general.file_type");
            metadata.push(("general.file_type".into(), Value::U32(7)));
        }
        Method::Nf4 => {
            metadata.push(("canon.quantization".into(), Value::String(method.into())));
            metadata.push(("canon.nf4.block_size".into(), Value::U32(nf4::BLOCK as u32)));
            metadata.push((
                "canon.nf4.absmax_block_size".into(),
                Value::U32(nf4::DQ_BLOCK as u32),
            ));
        }
        Method::Int8 => {
            metadata.push(("canon.quantization".into(), Value::String(method.into())));
            metadata.push(("canon.int8.threshold".into(), Value::F32(args.threshold)));
        }
    }
    write_outs(&args.out, &metadata, &outs)?;
    let size = std::fs::metadata(&args.out)?.len();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {method}, {:.1} MB ({} bytes), {:.3} bits/parameter overall ({:.3} in the {} quantized parameters), {:.1} s",
        args.out.display(),
        size as f64 / 1e6,
        size,
        size as f64 * 8.0 / params.max(1) as f64,
        quant_bytes as f64 * 8.0 / quant_params.max(1) as f64,
        quant_params,
        secs
    );
    Ok(())
}
