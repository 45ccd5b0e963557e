//! `canon merge`: fold a LoRA adapter into its base model (paper 13, §4.1 — no extra inference
//! latency). The output GGUF keeps every tensor and all metadata of the input; each adapted matrix
//! is replaced by `W₀ + (α/r)·B A` in f32 (`Linear::merged`, the one LoRA merge).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use canon_models::ModelSpec;
use canon_models::peft::read_adapter;
use canon_models::source::llama_gguf_name;
use canon_nn::{Linear, Lora, Weight};
use canon_quant::gguf::GgufFile;
use canon_quant::{GgmlTensor, GgmlType};
use clap::Args;

use crate::Ctx;
use crate::cmd::quantize::{Out, write_outs};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon merge --model smollm2 --lora my-adapter/ --out smollm2-merged.gguf
  canon generate --model smollm2-merged.gguf --prompt 'Hello'    # same as --model smollm2 --lora my-adapter/")]
pub struct MergeArgs {
    /// Base model: an alias (smollm2) or a .gguf file (LLaMA family).
    #[arg(long)]
    pub model: String,
    /// Adapter folder in PEFT's layout (adapter_config.json + adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub lora: PathBuf,
    /// Output .gguf file (written to a temporary file, then renamed).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: MergeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() || args.out.is_dir() {
        bail!(
            "--out {}: expected a file name in an existing folder",
            args.out.display()
        );
    }
    let path = match ModelSpec::parse(&args.model)?.resolve(ctx.progress())? {
        ModelSpec::Gguf(p) => p,
        other => bail!("--model: merge reads GGUF files, found {other:?}"),
    };
    let start = Instant::now();
    let adapter = read_adapter(&args.lora)?;
    let file = GgufFile::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
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
            bail!(
                "{}: module '{module}' is [{out_f}, {in_f}] in the model, but the adapter has A {:?} and B {:?}",
                args.lora.display(),
                a.dims(),
                b.dims()
            );
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
        bail!(
            "{}: the adapter targets '{module}' (tensor {gname}), which {} does not have",
            args.lora.display(),
            path.display()
        );
    }
    let metadata: Vec<(String, canon_quant::gguf::Value)> = file
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write_outs(&args.out, &metadata, &outs)?;
    let size = std::fs::metadata(&args.out)?.len();
    if !ctx.quiet {
        eprintln!(
            "merged {} LoRA modules (rank {}, scale {}) into {}: {:.1} MB in {:.1} s",
            adapter.modules.len(),
            adapter.rank,
            adapter.scale,
            args.out.display(),
            size as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
