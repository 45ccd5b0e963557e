//! `canon finetune --method gpt1-heads`: GPT-1 supervised fine-tuning (paper 2, §3.2–3.3) of a run that
//! `canon train --config configs/gpt1.toml` pretrained, on a task built from the Python standard
//! library of this machine, held out by file:
//! - `classify`: which module group (default `email/`+`http/` vs `json/`+`xml/`) a snippet comes
//!   from; inputs `[s] snippet [e]`;
//! - `similarity`: whether two snippets come from the same group; both orders `[s] a [d] b [e]`,
//!   states added;
//! - `choice`: which of `--choices` endings continues a snippet's first half; one
//!   `[s] context [d] ending [e]` per candidate, softmax across them.
//!
//! The loss is `L2 + 0.5·L1`, trained on the shared engine: `--out` receives `metrics.jsonl` (every
//! step and the held-out accuracy), `loss.png`, the fine-tuned weights with the optimizer state
//! (`finetuned.safetensors`, also the Ctrl-C checkpoint; `--resume` continues) and `task.json`. The settings and the task's examples are `canon_runs::heads`, the run
//! `canon_runs::heads_run`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use canon_runs::heads::FinetuneArgs;

use crate::Ctx;

/// A flag that Ctrl-C raises (the engine then checkpoints and stops).
pub fn ctrl_c_flag() -> anyhow::Result<Arc<AtomicBool>> {
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
pub fn say(ctx: &Ctx) -> impl Fn(String) + '_ {
    move |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    }
}

pub fn run(a: FinetuneArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let line = canon_runs::heads_run::run_gpt1(&a, ctx.threads, &stop_flag, &say(ctx))?;
    println!("{line}");
    Ok(())
}
