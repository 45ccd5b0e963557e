//! `canon quantize`: re-quantize a GGUF model's weights to NF4 (paper 27), LLM.int8() (paper 22) or
//! Q8_0, writing a GGUF file that `--model OUT` loads (`canon_models::gguf_out::requantize`; its
//! documentation describes the file format).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use canon_models::ModelSpec;
use canon_models::gguf_out::{Method, requantize};
use clap::{Args, ValueEnum};

use crate::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantMethod {
    /// 4-bit NormalFloat, blocks of 64, double-quantized constants (QLoRA).
    Nf4,
    /// LLM.int8(): vector-wise int8 weights, outlier features in f32 at run time.
    Int8,
    /// ggml Q8_0: blocks of 32 int8 values with one f16 scale.
    #[value(name = "q8_0")]
    Q8_0,
}

impl From<QuantMethod> for Method {
    fn from(m: QuantMethod) -> Self {
        match m {
            QuantMethod::Nf4 => Method::Nf4,
            QuantMethod::Int8 => Method::Int8,
            QuantMethod::Q8_0 => Method::Q8_0,
        }
    }
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
    pub method: QuantMethod,
    /// Output .gguf file (written to a temporary file, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// LLM.int8() outlier threshold α stored in the file (int8 only).
    #[arg(long, default_value_t = canon_quant::int8::THRESHOLD)]
    pub threshold: f32,
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
    if !args.threshold.is_finite() && args.method == QuantMethod::Int8 {
        // An infinite α is valid (plain vector-wise int8); say so.
        eprintln!(
            "note: threshold {} turns the outlier decomposition off",
            args.threshold
        );
    }

    let r =
        requantize(&path, &args.out, args.method.into(), args.threshold).with_context(|| {
            format!(
                "cannot quantize {} into {}",
                path.display(),
                args.out.display()
            )
        })?;
    let size = std::fs::metadata(&args.out)?.len();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {}, {:.1} MB ({} bytes), {:.3} bits/parameter overall ({:.3} in the {} quantized parameters), {:.1} s",
        args.out.display(),
        Method::from(args.method).name(),
        size as f64 / 1e6,
        size,
        size as f64 * 8.0 / r.params.max(1) as f64,
        r.quant_bytes as f64 * 8.0 / r.quant_params.max(1) as f64,
        r.quant_params,
        secs
    );
    Ok(())
}
