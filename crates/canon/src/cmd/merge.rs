//! `canon merge`: fold a LoRA adapter into its base model (paper 13, §4.1 — no extra inference
//! latency). The output GGUF keeps every tensor and all metadata of the input; each adapted matrix
//! is replaced by `W₀ + (α/r)·B A` in f32 (`Linear::merged`, the one LoRA merge).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use canon_models::ModelSpec;
use canon_models::gguf_out::merge_adapter;
use canon_models::peft::read_adapter;
use clap::Args;

use crate::Ctx;

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
    merge_adapter(&path, &adapter, &args.lora, &args.out)?;
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
