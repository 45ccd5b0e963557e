//! `canon eval cot`: chain-of-thought prompting and self-consistency (paper 18) on any model:
//! greedy answers with and without rationales, then m sampled rationales per problem and their
//! majority vote, for every m asked. The settings, checks and report are
//! `canon_agent::opts::cot`.

use canon_agent::cot_run::run_cot;
pub use canon_agent::opts::cot::CotArgs;

use crate::{Ctx, model_gen};

pub fn run(a: CotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let plan = a.plan()?;
    if let Some((out, text)) = &plan.write {
        super::write_atomic(out, text)?;
        println!(
            "wrote {} problems to {}",
            plan.problems.len(),
            out.display()
        );
        return Ok(());
    }
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let engine = canon_infer::Engine::start(
        lm,
        canon_infer::EngineConfig {
            slots: plan.run.engine_slots(),
            ..Default::default()
        },
    )?;
    let pb = crate::progress::bar(
        a.json || ctx.quiet,
        plan.problems.len() as u64,
        "{bar:30} {pos}/{len} problems, {elapsed} (eta {eta})",
    );
    let rows = run_cot(&engine, &plan.problems, &plan.demos, &plan.run, &mut || {
        pb.inc(1)
    });
    pb.finish_and_clear();
    let context = engine.max_len();
    engine.shutdown();
    let rows = rows?;
    // One definition of a cut rationale: the summary's.
    let cut = canon_agent::cot_run::summarize(&rows, &[]).cut_greedy;
    if cut > 0 && !ctx.quiet {
        eprintln!(
            "warning: {cut} of {} greedy rationales stopped at the length limit (--max-tokens {}, or the context of {context} tokens for prompt and answer together) before a stop; their answers are read from what was written",
            rows.len(),
            a.max_tokens
        );
    }
    print!("{}", a.report(&rows));
    Ok(())
}
