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

use canon_runs::heads::FinetuneArgs;

use super::{say, stop_flag};
use crate::Ctx;

pub fn run(a: FinetuneArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let line = canon_runs::heads_run::run_gpt1(&a, ctx.threads, &stop_flag, &say(ctx))?;
    println!("{line}");
    Ok(())
}
