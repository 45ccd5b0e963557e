//! The argument structs of the `canon` commands this crate runs (with the `cli` feature they
//! derive clap's `Args`, their doc comments being the `--help` text), with their checks and the
//! text printed from their results.

use std::path::Path;

use crate::{AgentError, Result};

pub mod agent;
pub mod cot;
pub mod fewshot;
pub mod toolformer;
pub mod webgpt;

/// Writes `text` to `path` atomically (a reader never sees a half-written file).
pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    canon_fs::write_atomic(path, text.as_bytes())
        .map_err(|e| AgentError::Task(format!("cannot write {}: {e}", path.display())))
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AgentError::Task(format!("cannot create {}: {e}", dir.display())))
}
