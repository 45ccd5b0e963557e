//! `canon info --model M`: what a model file or folder holds, read from its headers (no weights
//! are loaded): architecture and shape, parameter count, weight formats, tokenizer. The settings
//! and the table are `canon_runs::model_opts`.

pub use canon_runs::model_opts::InfoArgs;

use crate::Ctx;

pub fn run(a: InfoArgs, ctx: &Ctx) -> anyhow::Result<()> {
    print!("{}", a.text(&a.info(ctx.progress())?));
    Ok(())
}
