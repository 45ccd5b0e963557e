//! `canon align rlaif`: an LLM labels the preference pairs (`canon_align::rlaif_run`).

use anyhow::Context;
use canon_align::opts::RlaifArgs;
use canon_align::rlaif::LmLabeller;
use canon_align::rlaif_remote::RemoteLabeller;
use indicatif::ProgressBar;

use crate::Ctx;

pub(super) fn run(a: RlaifArgs, ctx: &Ctx, pb: &ProgressBar) -> anyhow::Result<()> {
    let o = a.opts().map_err(anyhow::Error::msg)?;
    let mut on = |stage: &str, pos: u64, len: u64| {
        if pb.message() != stage {
            pb.set_message(stage.to_string());
        }
        pb.set_length(len);
        pb.set_position(pos);
    };
    let c = &a.common;
    let (r, calls, rationale) = match &a.url {
        Some(url) => {
            let mut labeller = RemoteLabeller::new(url, &a.remote_model)?;
            if a.cot_tokens > 0 {
                labeller = labeller.with_chain_of_thought(a.cot_tokens)?;
            }
            let r = canon_align::rlaif_run::run(&c.dir, c.seed, &mut labeller, &o, &mut on)
                .context("RLAIF experiment failed")?;
            (r, labeller.calls, labeller.rationales.first().cloned())
        }
        None => {
            let spec = canon_models::ModelSpec::parse(&a.model)?;
            let mode = canon_models::WeightMode::DequantizeF32;
            let lm = canon_models::load_causal_lm(&spec, mode, ctx.progress())
                .with_context(|| format!("cannot load the labeller {}", a.model))?;
            let mut labeller = LmLabeller::new(&lm)?;
            if a.cot_tokens > 0 {
                labeller = labeller.with_chain_of_thought(a.cot_tokens)?;
            }
            let r = canon_align::rlaif_run::run(&c.dir, c.seed, &mut labeller, &o, &mut on)
                .context("RLAIF experiment failed")?;
            (r, labeller.calls, labeller.rationales.first().cloned())
        }
    };
    pb.finish_and_clear();
    print!("{}", r.table());
    println!("  labeller prompts evaluated: {calls}");
    if let Some(why) = rationale {
        println!("  first rationale: {why:?}");
    }
    println!(
        "  report and plot: {}/rlaif/{{report.json, rlaif.png}}",
        c.dir.display()
    );
    Ok(())
}
