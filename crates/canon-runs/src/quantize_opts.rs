//! `canon quantize`'s settings (with the `cli` feature also its argument struct, the doc comments
//! being the `--help` text): the checks of the output path, the GGUF file the model names, and
//! the re-quantization with its summary line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use canon_assets::FetchProgress;
use canon_models::ModelSpec;
use canon_models::gguf_out::{Method, requantize};

use crate::{Context, Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum QuantMethod {
    /// 4-bit NormalFloat, blocks of 64, double-quantized constants (QLoRA).
    Nf4,
    /// LLM.int8(): vector-wise int8 weights, outlier features in f32 at run time.
    Int8,
    /// ggml Q8_0: blocks of 32 int8 values with one f16 scale.
    #[cfg_attr(feature = "cli", value(name = "q8_0"))]
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

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon quantize --model smollm2 --method nf4 --out smollm2-nf4.gguf
  canon generate --model smollm2-nf4.gguf --prompt 'The capital of France is'")
)]
pub struct QuantizeArgs {
    /// Model to quantize: an alias (smollm2) or a .gguf file (LLaMA family).
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: String,
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub method: QuantMethod,
    /// Output .gguf file (written to a temporary file, then renamed).
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: PathBuf,
    /// LLM.int8() outlier threshold α stored in the file (int8 only).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = canon_quant::int8::THRESHOLD))]
    pub threshold: f32,
}

impl QuantizeArgs {
    /// Checks --out (a file name in an existing folder) and resolves --model to its GGUF file.
    pub fn input(&self, progress: &dyn FetchProgress) -> Result<PathBuf> {
        let dir = self
            .out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!(
                "--out {}: the folder {} does not exist",
                self.out.display(),
                dir.display()
            );
        }
        if self.out.is_dir() {
            bail!(
                "--out {} is a folder; expected a file name",
                self.out.display()
            );
        }
        Ok(match ModelSpec::parse(&self.model)?.resolve(progress)? {
            ModelSpec::Gguf(p) => p,
            ModelSpec::HfDir(d) => bail!(
                "--model {}: quantize reads GGUF files; this is a folder",
                d.display()
            ),
            ModelSpec::Alias(a) => bail!("alias '{a}' did not resolve to a file"),
        })
    }

    /// A note on the settings, if any (an infinite int8 threshold turns the outliers off).
    pub fn note(&self) -> Option<String> {
        (!self.threshold.is_finite() && self.method == QuantMethod::Int8).then(|| {
            format!(
                "note: threshold {} turns the outlier decomposition off",
                self.threshold
            )
        })
    }

    /// Re-quantizes `path` into --out; gives the summary line (size, bits per parameter, time).
    pub fn quantize(&self, path: &Path) -> Result<String> {
        let start = Instant::now();
        let r =
            requantize(path, &self.out, self.method.into(), self.threshold).with_context(|| {
                format!(
                    "cannot quantize {} into {}",
                    path.display(),
                    self.out.display()
                )
            })?;
        let size = std::fs::metadata(&self.out)?.len();
        let secs = start.elapsed().as_secs_f64();
        Ok(format!(
            "{}: {}, {:.1} MB ({} bytes), {:.3} bits/parameter overall ({:.3} in the {} quantized parameters), {:.1} s",
            self.out.display(),
            Method::from(self.method).name(),
            size as f64 / 1e6,
            size,
            size as f64 * 8.0 / r.params.max(1) as f64,
            r.quant_bytes as f64 * 8.0 / r.quant_params.max(1) as f64,
            r.quant_params,
            secs
        ))
    }
}
