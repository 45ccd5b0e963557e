//! `canon align prm`: process vs outcome reward models, best-of-N (`canon_align::prm`).

use anyhow::Context;
use canon_train::StepReport;
use clap::Args;
use indicatif::ProgressBar;

use super::Common;

#[derive(Args, Debug)]
#[command(after_help = "Example (about 10 minutes on 2 cores):
  canon --threads 1 align prm --dir runs/prm --max-n 64")]
pub struct PrmArgs {
    #[command(flatten)]
    pub common: Common,
    /// Generator training steps (SFT on demonstrations with planted step errors).
    #[arg(long, default_value_t = 1500)]
    pub gen_steps: u64,
    /// Training steps of each verifier (PRM and ORM get the same budget).
    #[arg(long, default_value_t = 600)]
    pub verifier_steps: u64,
    #[arg(long, default_value_t = 2000)]
    pub train_problems: usize,
    /// Sampled solutions per training problem (the verifiers' data).
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    #[arg(long, default_value_t = 200)]
    pub test_problems: usize,
    /// Largest N of best-of-N (N = 1, 2, 4, …); also the samples per test problem.
    #[arg(long, default_value_t = 64)]
    pub max_n: usize,
    /// Random subsets per N.
    #[arg(long, default_value_t = 32)]
    pub trials: usize,
    /// Reuse the generator a previous run left in DIR/generator (retrain only the verifiers).
    #[arg(long)]
    pub reuse_generator: bool,
}

pub(super) fn run(a: PrmArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let o = canon_align::prm::PrmOpts {
        gen_steps: a.gen_steps,
        verifier_steps: a.verifier_steps,
        train_problems: a.train_problems,
        samples_per_train_problem: a.samples,
        test_problems: a.test_problems,
        max_n: a.max_n,
        trials: a.trials,
        reuse_generator: a.reuse_generator,
    };
    o.check().map_err(anyhow::Error::msg)?;
    let mut cb = |stage: &str, r: &StepReport| {
        if pb.message() != stage {
            pb.set_message(stage.to_string());
            let gen_stage = stage == "generator";
            pb.set_length(if gen_stage {
                a.gen_steps
            } else {
                a.verifier_steps
            });
        }
        pb.set_position(r.step);
        pb.set_prefix(format!("loss {:.4}", r.loss));
    };
    let c = &a.common;
    let (r, _) =
        canon_align::prm::run(&c.dir, c.seed, &o, &mut cb).context("PRM experiment failed")?;
    pb.finish_and_clear();
    print!("{r}");
    println!("  plot: {}", c.dir.join("best_of_n.png").display());
    Ok(())
}
