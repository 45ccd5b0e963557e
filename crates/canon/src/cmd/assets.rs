//! `canon assets`: fetch, list or verify the pinned default assets (`canon_runs::assets_opts`).

pub use canon_runs::assets_opts::AssetsArgs;

use crate::Ctx;

pub fn run(a: AssetsArgs, ctx: &Ctx) -> anyhow::Result<()> {
    a.run(ctx.progress(), &mut |line| println!("{line}"))?;
    Ok(())
}
