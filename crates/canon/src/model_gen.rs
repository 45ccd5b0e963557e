//! Loading a model named on the command line into what subcommands use.

use anyhow::Context;
use canon_infer::{LmGenerator, TextGenerator};
use canon_models::{LoadedEncoder, LoadedLm, ModelSpec, WeightMode};

use crate::Ctx;

pub fn load_lm(model: &str, ctx: &Ctx) -> anyhow::Result<LoadedLm> {
    let spec = ModelSpec::parse(model)?;
    let mode = if ctx.f32_weights {
        WeightMode::DequantizeF32
    } else {
        WeightMode::KeepQuantized
    };
    let mut lm = canon_models::load_causal_lm(&spec, mode, ctx.progress())
        .with_context(|| format!("cannot load model '{model}'"))?;
    if ctx.kv_f16 {
        lm.model
            .set_kv_f16(true)
            .with_context(|| format!("--cache-type f16 with model '{model}'"))?;
    }
    if let Some(dir) = &ctx.lora {
        let adapter = canon_models::peft::read_adapter(dir)?;
        let n = canon_models::peft::apply_adapter(lm.model.as_mut(), &adapter)
            .with_context(|| format!("cannot apply the adapter in {}", dir.display()))?;
        if !ctx.quiet {
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

pub fn load_encoder(model: &str, ctx: &Ctx) -> anyhow::Result<LoadedEncoder> {
    let spec = ModelSpec::parse(model)?;
    canon_models::load_encoder(&spec, ctx.progress())
        .with_context(|| format!("cannot load embedding model '{model}'"))
}

/// A `TextGenerator` over the named model (evaluation, agents).
pub fn load_generator(model: &str, ctx: &Ctx) -> anyhow::Result<Box<dyn TextGenerator>> {
    Ok(Box::new(LmGenerator::new(load_lm(model, ctx)?)))
}
