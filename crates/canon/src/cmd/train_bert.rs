//! Model folders named on the command line (`minilm` or a path), shared by the BERT commands.

use std::path::PathBuf;

use crate::Ctx;

/// `minilm` → the cached asset folder; anything else is a path.
pub(crate) fn model_dir(spec: &str, ctx: &Ctx) -> anyhow::Result<PathBuf> {
    Ok(canon_runs::model_dir(spec, ctx.progress())?)
}
