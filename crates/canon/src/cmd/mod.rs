use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub mod agent;
pub mod align;
pub mod ask;
pub mod assets;
pub mod autoprompt;
pub mod browse;
pub mod chat;
pub mod cot;
pub mod data;
pub mod embed;
pub mod eval;
pub mod eval_rag;
pub mod fewshot;
pub mod finetune;
pub mod finetune_bert;
pub mod finetune_rag;
pub mod flan;
pub mod generate;
pub mod graph;
pub mod graph_summarize;
pub mod index;
pub mod info;
pub mod lora_finetune;
pub mod merge;
pub mod perplexity;
pub mod plot;
pub mod quantize;
pub mod scale;
pub mod serve;
pub mod tokenize;
pub mod toolformer;
pub mod train;
pub mod translate;
pub mod webgpt;
pub mod zero_shot;

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees a
/// half-written file.
pub(crate) fn write_atomic(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    canon_fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A flag that Ctrl-C raises (the engine then checkpoints and stops).
pub fn ctrl_c_flag() -> anyhow::Result<Arc<AtomicBool>> {
    use anyhow::Context;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// [`ctrl_c_flag`] for the library runs that ask for it.
pub fn stop_flag() -> canon_runs::Result<Arc<AtomicBool>> {
    ctrl_c_flag().map_err(|e| canon_runs::RunError::Msg(format!("{e:#}")))
}

/// `canon: LINE` on standard error unless `--quiet`.
pub fn say(ctx: &crate::Ctx) -> impl Fn(String) + '_ {
    move |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    }
}
