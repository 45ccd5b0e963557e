//! `canon merge`: fold a LoRA adapter into its base model (paper 13, §4.1 — no extra inference
//! latency). The output GGUF keeps every tensor and all metadata of the input; each adapted matrix
//! is replaced by `W₀ + (α/r)·B A` in f32 (`Linear::merged`, the one LoRA merge). The settings
//! and the merge are `canon_runs::model_opts`.

pub use canon_runs::model_opts::MergeArgs;

use crate::Ctx;

pub fn run(args: MergeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let line = args.merge(ctx.progress())?;
    if !ctx.quiet {
        eprintln!("{line}");
    }
    Ok(())
}
