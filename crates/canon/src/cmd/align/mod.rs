//! `canon align`: learning from feedback in miniature (papers 20, 21, 29, 30). The stages live in
//! `canon_align`; these files hold the arguments, the progress bars and the printing, one file per
//! subcommand group: `rlhf` (sft, rm, dpo, ppo), `rlaif`, `prm`, `w2s`.

mod prm;
mod rlaif;
mod rlhf;
mod w2s;

use std::path::PathBuf;

use canon_align::pipeline;
use canon_train::StepReport;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;

use crate::Ctx;

pub use prm::PrmArgs;
pub use rlaif::RlaifArgs;
pub use rlhf::{DpoArgs, PpoArgs, RmArgs, SftArgs};
pub use w2s::W2sArgs;

#[derive(Args, Debug)]
#[command(after_help = "Examples (one thread is fastest for these tiny models):
  canon --threads 1 align sft --dir runs/align
  canon --threads 1 align rm --dir runs/align
  canon --threads 1 align dpo --dir runs/align
  canon --threads 1 align ppo --dir runs/align --value rm
  canon --threads 1 align prm --dir runs/prm
  canon --threads 1 align rlaif --dir runs/align --model smollm2 --pairs 120
  canon --threads 1 align w2s --out runs/w2s")]
pub struct AlignArgs {
    #[command(subcommand)]
    pub command: AlignCommand,
}

#[derive(Subcommand, Debug)]
pub enum AlignCommand {
    /// Train the SFT policy (a small GPT from scratch) on mixed-quality demonstrations.
    Sft(SftArgs),
    /// Train the reward model on K-way rankings of SFT samples (pairwise loss).
    Rm(RmArgs),
    /// DPO from the SFT policy on the reward model's preference pairs.
    Dpo(DpoArgs),
    /// PPO (or PPO-ptx) from the SFT policy against the reward model.
    Ppo(PpoArgs),
    /// Process vs outcome reward models vs majority vote: best-of-N on multi-step sums.
    Prm(PrmArgs),
    /// PRM800K's best-of-N protocol over a scored-samples file (the paper's evaluation).
    PrmEval(crate::cmd::prm_eval::PrmEvalArgs),
    /// RLAIF: an LLM labels training pairs; reward models on AI vs gold labels, PPO with each,
    /// and direct RLAIF (the LLM's 1–10 rating as the reward); win rates by the gold judge.
    Rlaif(RlaifArgs),
    /// Weak-to-strong: PGR on three gettext classification tasks, with and without the
    /// auxiliary confidence loss.
    W2s(W2sArgs),
    /// Redraw a PPO run's ppo.png and ppo_stats.png from its metrics.jsonl.
    PlotPpo {
        /// The PPO run folder (e.g. runs/align/ppo).
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
    },
}

/// The options every stage shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Work folder: sft/, rm/, dpo/, ppo/, rlaif/ live here.
    #[arg(long, value_name = "DIR", default_value = "runs/align")]
    pub dir: PathBuf,
    /// Seed of the prompt split, the data and the initialisation (keep it across stages).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

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
        AlignCommand::PrmEval(a) => crate::cmd::prm_eval::run(a),
        AlignCommand::Prm(a) => prm::run(a, &pb),
    }
}
