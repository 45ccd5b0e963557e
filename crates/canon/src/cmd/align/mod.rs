//! `canon align`: learning from feedback in miniature (papers 20, 21, 29, 30). The stages live in
//! `canon_align`, their settings and flags in `canon_align::opts`; these files hold the progress
//! bars and the printing, one file per subcommand group: `rlhf` (sft, rm, dpo, ppo), `rlaif`,
//! `prm` (and prm-eval), `w2s`.

mod prm;
mod rlaif;
mod rlhf;
mod w2s;

use canon_align::opts::{AlignArgs, AlignCommand};
use canon_align::pipeline;
use canon_train::StepReport;
use indicatif::ProgressBar;

use crate::Ctx;

/// A progress bar whose message, length and position follow `(stage, pos, len)` updates.
pub(super) fn bar(ctx: &Ctx) -> ProgressBar {
    let t = "{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left) {prefix}";
    crate::progress::bar(ctx.quiet, 0, t)
}

pub(super) fn step_cb<'a>(
    pb: &'a ProgressBar,
    stage: &'a str,
    len: u64,
) -> impl FnMut(&StepReport) + 'a {
    pb.set_message(stage.to_string());
    pb.set_length(len);
    move |r: &StepReport| {
        pb.set_length(pb.length().unwrap_or(0).max(r.step));
        pb.set_position(r.step);
        pb.set_prefix(format!("loss {:.4}", r.loss));
    }
}

pub fn run(a: AlignArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let pb = bar(ctx);
    match a.command {
        AlignCommand::Sft(a) => rlhf::sft(a, &pb),
        AlignCommand::Rm(a) => rlhf::rm(a, &pb),
        AlignCommand::Dpo(a) => rlhf::dpo(a, &pb),
        AlignCommand::Ppo(a) => rlhf::ppo(a, &pb),
        AlignCommand::Rlaif(a) => rlaif::run(a, ctx, &pb),
        AlignCommand::W2s(a) => w2s::run(a, ctx),
        AlignCommand::PlotPpo { run } => {
            let name = run.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            for p in pipeline::plot_ppo(&run.join("metrics.jsonl"), &run, &name)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        AlignCommand::PrmEval(a) => prm::eval(a),
        AlignCommand::Prm(a) => prm::run(a, &pb),
    }
}
