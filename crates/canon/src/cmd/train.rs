//! `canon train`: train a model family from scratch on text present on this machine, or resume a run.
//!
//! A run folder holds `config.toml` (the resolved configuration), `model.json`, `tokenizer.json`,
//! `checkpoint.safetensors`, `metrics.jsonl` and `loss.png`; `canon generate --model DIR` loads it.
//! The settings and the run folder they open are `canon_runs::train_opts`.

use canon_runs::Report;
use canon_runs::train_opts::{TrainArgs, TrainEvent, step_message, train};
use indicatif::ProgressBar;

use super::{say, stop_flag};
use crate::Ctx;

pub fn run(a: TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let say = say(ctx);
    let report = Report {
        say: &say,
        progress: ctx.progress(),
    };
    let mut bar = ProgressBar::hidden();
    let mut last_eval = None;
    let trained = train(&a, ctx.threads, report, &stop_flag, &mut |e| match e {
        TrainEvent::Start { step, stop_at } => {
            let t = "{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]";
            bar = crate::progress::bar(ctx.quiet, stop_at, t);
            bar.set_position(step);
        }
        TrainEvent::Step(r) => {
            last_eval = r.eval_loss.or(last_eval);
            bar.set_position(r.step);
            bar.set_message(step_message(r.loss, last_eval, r.tokens_per_s));
        }
    })?;
    bar.finish_and_clear();
    say(trained.line());
    Ok(())
}
