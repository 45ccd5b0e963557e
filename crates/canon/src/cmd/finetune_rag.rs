//! `canon finetune --method rag`: RAG's end-to-end fine-tuning (paper 9), query encoder and
//! generator through the marginal likelihood; the settings and the run are `canon_runs::rag`.

use std::sync::atomic::Ordering;

use canon_runs::rag::opts::FinetuneRagArgs;
use canon_runs::rag::{self, RagEvent};
use indicatif::ProgressBar;

use crate::Ctx;

pub fn run(a: FinetuneRagArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let job = a.job()?;
    let stop = crate::cmd::ctrl_c_flag()?;
    let mut bar = ProgressBar::hidden();
    let quiet = ctx.quiet;
    let s = rag::run(&job, ctx.progress(), &stop, &mut |e| match e {
        RagEvent::Note(s) if !quiet => eprintln!("canon: {s}"),
        RagEvent::Note(_) => {}
        RagEvent::EvalStart { when, n } => {
            bar = crate::progress::items(quiet, n, &format!("answers {when} training"));
        }
        RagEvent::EvalQuestion(i) => bar.set_position(i as u64),
        RagEvent::Evaluated { when, eval } => {
            bar.finish_and_clear();
            println!("{}", eval.line(when));
        }
        RagEvent::Start { step, max_steps } => {
            let t = "{bar:30} {pos}/{len} steps {msg} [{elapsed}<{eta}]";
            bar = crate::progress::bar(quiet, max_steps, t);
            bar.set_position(step);
        }
        RagEvent::Step(r) => {
            bar.set_position(r.step);
            let eval = r
                .eval_loss
                .map_or(String::new(), |e| format!(" eval {e:.3}"));
            bar.set_message(format!("loss {:.3}{eval}", r.loss));
        }
    })?;
    bar.finish_and_clear();
    let out = a.out.display();
    if s.interrupted || stop.load(Ordering::SeqCst) {
        println!(
            "interrupted at step {}: checkpoint, query-encoder/ and adapter/ in {out} (continue with --resume)",
            s.steps
        );
    } else {
        println!(
            "step {}: query-encoder/, adapter/ and summary.json in {out}",
            s.steps
        );
    }
    Ok(())
}
