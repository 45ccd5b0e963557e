//! Loading a model named on the command line: `canon_runs::Loader` with the global flags.

use canon_infer::TextGenerator;
use canon_models::{LoadedEncoder, LoadedLm};

use crate::Ctx;

pub fn load_lm(model: &str, ctx: &Ctx) -> anyhow::Result<LoadedLm> {
    Ok(ctx.loader().lm(model)?)
}

pub fn load_encoder(model: &str, ctx: &Ctx) -> anyhow::Result<LoadedEncoder> {
    Ok(ctx.loader().encoder(model)?)
}

/// A `TextGenerator` over the named model (evaluation, agents).
pub fn load_generator(model: &str, ctx: &Ctx) -> anyhow::Result<Box<dyn TextGenerator>> {
    Ok(ctx.loader().generator(model)?)
}
