//! `canon autoprompt`: AutoPrompt's gradient-guided trigger search (paper 11) for fact retrieval,
//! against a hand-written prompt: the settings and facts are `canon_runs::autoprompt_opts`, the
//! model loads in `canon_runs::autoprompt`, the experiment is `canon_agent::autoprompt_run`.

use canon_agent::autoprompt_run::{self, Event};
use canon_runs::autoprompt_opts::{AutopromptArgs, report_text};
use indicatif::ProgressBar;

use crate::Ctx;

pub fn run(a: AutopromptArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (facts, o) = a.facts_and_opts()?;
    let m = canon_runs::autoprompt::slot_model(&ctx.loader(), &a.model)?;
    let mut pb = ProgressBar::hidden();
    let r = autoprompt_run::run(&m, facts, &o, &mut |e| match e {
        Event::Note(s) if !ctx.quiet => eprintln!("canon: {s}"),
        Event::Note(_) => {}
        Event::Phase(what, len) => {
            pb = crate::progress::bar(
                ctx.quiet,
                len as u64,
                &format!("{what} [{{bar:40}}] {{pos}}/{{len}} {{msg}} ({{eta}} left)"),
            )
        }
        Event::Pos(i) => pb.set_position(i as u64),
        Event::Done => pb.finish_and_clear(),
        Event::Step(s) => {
            pb.set_position(s.step as u64 + 1);
            pb.set_message(format!("batch log-lik {:.3}", s.after));
            // Without a terminal (a log file), one line a step.
            if pb.is_hidden() && !ctx.quiet {
                eprintln!(
                    "canon: step {}/{}: trigger {} {:?} -> {:?}, batch log-likelihood {:.3} -> {:.3}",
                    s.step + 1,
                    a.steps,
                    s.position,
                    (m.token)(s.from),
                    (m.token)(s.to),
                    s.before,
                    s.after
                );
            }
        }
    })?;
    if a.json {
        println!("{}", r.to_json());
        return Ok(());
    }
    print!("{}", report_text(&r, a.seed));
    Ok(())
}
