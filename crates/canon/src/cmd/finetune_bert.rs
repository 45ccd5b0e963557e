//! `canon finetune --method classifier`: BERT sequence classification (paper 3, §4) from a pretrained BERT — a
//! run of `canon train --config configs/bert.toml`, `minilm`, or an HF BERT folder — on the
//! standard-library module-group task GPT-1's fine-tuning uses (which group a source snippet comes
//! from, held out by file). `--from-scratch` trains the same architecture without the pretrained
//! weights (the baseline pre-training should beat). The settings and the task's examples are
//! `canon_runs::heads`, the run `canon_runs::heads_run`.

use canon_runs::heads::FinetuneBertArgs;

use crate::Ctx;
use crate::cmd::{say, stop_flag};

pub fn run(a: FinetuneBertArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let line =
        canon_runs::heads_run::run_bert(&a, ctx.progress(), ctx.threads, &stop_flag, &say(ctx))?;
    println!("{line}");
    Ok(())
}
