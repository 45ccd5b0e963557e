//! Loading the models a command names: the global settings that concern loading (`--f32`,
//! `--cache-type f16`, `--lora DIR`, `--quiet`) in one value that libraries and commands share.

use std::path::PathBuf;

use canon_infer::{LmGenerator, TextGenerator};
use canon_models::{LoadedEncoder, LoadedLm, ModelSpec, WeightMode};

use crate::{Context, Result};

/// How models are loaded.
#[derive(Debug, Clone, Default)]
pub struct Loader {
    /// Dequantize GGUF weights to f32 at load.
    pub f32_weights: bool,
    /// The language model's KV cache stores f16.
    pub kv_f16: bool,
    /// A LoRA adapter (PEFT layout) attached to the loaded language model.
    pub lora: Option<PathBuf>,
    /// No progress messages on stderr.
    pub quiet: bool,
}

impl Loader {
    /// Where asset-fetch progress goes.
    pub fn progress(&self) -> &'static dyn canon_assets::FetchProgress {
        if self.quiet {
            &canon_assets::Quiet
        } else {
            &canon_assets::Stderr
        }
    }

    /// The same settings with weights dequantized to f32 (what a gradient through them needs).
    pub fn dense(&self) -> Loader {
        Loader {
            f32_weights: true,
            ..self.clone()
        }
    }

    /// The causal language model `model` names (alias, .gguf, HF folder, run folder), with the
    /// adapter attached and the cache type set.
    pub fn lm(&self, model: &str) -> Result<LoadedLm> {
        let spec = ModelSpec::parse(model)?;
        let mode = if self.f32_weights {
            WeightMode::DequantizeF32
        } else {
            WeightMode::KeepQuantized
        };
        let mut lm = canon_models::load_causal_lm(&spec, mode, self.progress())
            .with_context(|| format!("cannot load model '{model}'"))?;
        if self.kv_f16 {
            lm.model
                .set_kv_f16(true)
                .with_context(|| format!("--cache-type f16 with model '{model}'"))?;
        }
        if let Some(dir) = &self.lora {
            let adapter = canon_models::peft::read_adapter(dir)?;
            let n = canon_models::peft::apply_adapter(lm.model.as_mut(), &adapter)
                .with_context(|| format!("cannot apply the adapter in {}", dir.display()))?;
            if !self.quiet {
                eprintln!(
                    "LoRA: {n} modules from {} (rank {}, scale {})",
                    dir.display(),
                    adapter.rank,
                    adapter.scale
                );
            }
        }
        Ok(lm)
    }

    /// The embedding model `model` names (alias or HF-style BERT folder).
    pub fn encoder(&self, model: &str) -> Result<LoadedEncoder> {
        canon_models::load_encoder_named(model, self.progress())
            .with_context(|| format!("cannot load embedding model '{model}'"))
    }

    /// A `TextGenerator` over the language model `model` names (evaluation, agents).
    pub fn generator(&self, model: &str) -> Result<Box<dyn TextGenerator>> {
        Ok(Box::new(LmGenerator::new(self.lm(model)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_keeps_the_other_settings_and_a_missing_model_is_named() {
        let l = Loader {
            kv_f16: true,
            lora: Some(PathBuf::from("adapter")),
            quiet: true,
            ..Loader::default()
        };
        let d = l.dense();
        assert!(d.f32_weights && d.kv_f16 && d.quiet);
        assert_eq!(d.lora, l.lora);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.gguf");
        let e = crate::chain(&l.lm(missing.to_str().unwrap()).err().unwrap());
        assert!(e.contains("missing.gguf"), "{e}");
    }
}
