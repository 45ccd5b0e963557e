//! `canon align`: learning from feedback in miniature (papers 20, 21, 29, 30). The stages live in
//! `canon_align`; this file holds the arguments, the progress bars and the printing.

use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_align::pipeline::{self, DpoOpts, PpoOpts, RewardKind, RmOpts, SftOpts, ValueInit};
use canon_align::ppo::PpoConfig;
use canon_align::rlaif_run::{RlaifOpts, SoftRmOpts};
use canon_train::StepReport;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;

use crate::Ctx;

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

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  canon align sft --dir runs/align --steps 1500")]
pub struct SftArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1500)]
    pub steps: u64,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Demonstrations per training prompt.
    #[arg(long, default_value_t = 4)]
    pub per_prompt: usize,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  canon align rm --dir runs/align --k 4 --train-prompts 1000")]
pub struct RmArgs {
    #[command(flatten)]
    pub common: Common,
    /// Responses sampled and ranked per prompt (K); C(K,2) comparisons each.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    #[arg(long, default_value_t = 1000)]
    pub train_prompts: usize,
    #[arg(long, default_value_t = 200)]
    pub val_prompts: usize,
    /// Prompts per batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  canon align dpo --dir runs/align --beta 0.1 --steps 300")]
pub struct DpoArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Pairs per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// DPO's β (strength of the implicit KL constraint).
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
}

/// PPO settings shared by `ppo` and `rlaif`.
#[derive(Args, Debug, Clone)]
pub struct PpoKnobs {
    #[arg(long, default_value_t = 4)]
    pub minibatches: usize,
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Per-token KL coefficient β (the starting value with --kl-target).
    #[arg(long, default_value_t = 0.05)]
    pub beta: f64,
    /// Adaptive KL (Ziegler et al.): steer β toward this mean KL per response, in nats.
    #[arg(long, value_name = "NATS")]
    pub kl_target: Option<f64>,
    /// Adaptive KL: the controller's horizon, in responses.
    #[arg(long, default_value_t = 10_000.0)]
    pub kl_horizon: f64,
    /// The value function: `rm` (a separate model initialised from the reward model, as
    /// InstructGPT) or `head` (a zero-initialised head on the policy's trunk).
    #[arg(long, default_value = "rm", value_parser = ["rm", "head"])]
    pub value: String,
    /// Whiten each rollout's per-token rewards (std 1, mean kept) before GAE.
    #[arg(long)]
    pub whiten_rewards: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon align ppo --dir runs/align --rollouts 40
  canon align ppo --dir runs/align --name ppo-head --value head --whiten-rewards
  canon align ppo --dir runs/align --name ppo-ptx --ptx-coef 1
  canon align ppo --dir runs/align --name ppo-gold --reward gold")]
pub struct PpoArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub knobs: PpoKnobs,
    /// Sub-folder of --dir for this run.
    #[arg(long, default_value = "ppo")]
    pub name: String,
    /// Rollouts (each: --rollout-prompts samples, then epochs × minibatches optimizer steps).
    #[arg(long, default_value_t = 40)]
    pub rollouts: u64,
    #[arg(long, default_value_t = 64)]
    pub rollout_prompts: usize,
    /// PPO-ptx: weight of the LM loss on the pretraining (demonstration) text; 0 = plain PPO.
    #[arg(long, default_value_t = 0.0)]
    pub ptx_coef: f64,
    /// The reward: `rm` (the trained reward model) or `gold` (the judge itself, an upper bound).
    #[arg(long, default_value = "rm", value_parser = ["rm", "gold"])]
    pub reward: String,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example (SFT and RM stages first; about 15 minutes on 2 cores):
  canon --threads 1 align rlaif --dir runs/align --model smollm2 --pairs 120 --rollouts 12"
)]
pub struct RlaifArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub knobs: PpoKnobs,
    /// The labeller: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Training pairs labelled by the judge and by the labeller (both orders).
    #[arg(long, default_value_t = 120)]
    pub pairs: usize,
    /// Reward-model epochs over the pairs (both reward models).
    #[arg(long, default_value_t = 4)]
    pub rm_epochs: u64,
    #[arg(long, default_value_t = 16)]
    pub rm_batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub rm_lr: f64,
    /// PPO rollouts of every arm.
    #[arg(long, default_value_t = 12)]
    pub rollouts: u64,
    #[arg(long, default_value_t = 32)]
    pub rollout_prompts: usize,
    /// Skip direct RLAIF (it calls the labeller on every rollout response).
    #[arg(long)]
    pub no_d_rlaif: bool,
}

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

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  canon align w2s --out runs/w2s --per-class 600 --seeds 5")]
pub struct W2sArgs {
    /// Output folder (w2s.json, w2s.png).
    #[arg(long, value_name = "DIR", default_value = "runs/w2s")]
    pub out: PathBuf,
    /// Folder of the gettext catalogs.
    #[arg(long, default_value = "/usr/share/locale")]
    pub locale_dir: PathBuf,
    /// Texts per class and task (at most).
    #[arg(long, default_value_t = 600)]
    pub per_class: usize,
    /// Random splits averaged per task.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// The strong model's encoder: an alias (minilm) or an HF-style BERT folder.
    #[arg(long, default_value = "minilm")]
    pub encoder: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A progress bar whose message, length and position follow `(stage, pos, len)` updates.
fn bar(ctx: &Ctx) -> ProgressBar {
    let t = "{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left) {prefix}";
    crate::progress::bar(ctx.quiet, 0, t)
}

fn step_cb<'a>(pb: &'a ProgressBar, stage: &'a str, len: u64) -> impl FnMut(&StepReport) + 'a {
    pb.set_message(stage.to_string());
    pb.set_length(len);
    move |r: &StepReport| {
        pb.set_length(pb.length().unwrap_or(0).max(r.step));
        pb.set_position(r.step);
        pb.set_prefix(format!("loss {:.4}", r.loss));
    }
}

fn ppo_opts(k: &PpoKnobs, name: &str, rollouts: u64, prompts: usize, ptx: f64) -> PpoOpts {
    let cfg = PpoConfig {
        rollout_prompts: prompts,
        minibatches: k.minibatches,
        ppo_epochs: k.epochs,
        beta: k.beta,
        kl_target: k.kl_target,
        kl_horizon: k.kl_horizon,
        ptx_coef: ptx,
        whiten_rewards: k.whiten_rewards,
        ..PpoConfig::default()
    };
    let value = match k.value.as_str() {
        "head" => ValueInit::PolicyHead,
        _ => ValueInit::RewardModel,
    };
    let (name, lr, reward) = (name.to_string(), k.lr, RewardKind::Model);
    PpoOpts {
        name,
        rollouts,
        lr,
        reward,
        value,
        cfg,
    }
}

pub fn run(a: AlignArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let pb = bar(ctx);
    match a.command {
        AlignCommand::Sft(a) => {
            let o = SftOpts {
                steps: a.steps,
                lr: a.lr,
                batch: a.batch,
                layers: a.layers,
                width: a.width,
                per_prompt: a.per_prompt,
            };
            o.check().map_err(anyhow::Error::msg)?;
            let c = &a.common;
            let r = pipeline::sft(&c.dir, c.seed, &o, &mut step_cb(&pb, "sft", a.steps))
                .context("SFT failed")?;
            pb.finish_and_clear();
            print!("{r}");
        }
        AlignCommand::Rm(a) => {
            let o = RmOpts {
                k: a.k,
                train_prompts: a.train_prompts,
                val_prompts: a.val_prompts,
                batch: a.batch,
                lr: a.lr,
            };
            o.check().map_err(anyhow::Error::msg)?;
            let c = &a.common;
            let r = pipeline::rm(&c.dir, c.seed, &o, &mut step_cb(&pb, "rm", 0))
                .context("reward model failed")?;
            pb.finish_and_clear();
            print!("{r}");
        }
        AlignCommand::Dpo(a) => {
            let o = DpoOpts {
                steps: a.steps,
                lr: a.lr,
                batch: a.batch,
                beta: a.beta,
            };
            o.check().map_err(anyhow::Error::msg)?;
            let c = &a.common;
            let r = pipeline::dpo(&c.dir, c.seed, &o, &mut step_cb(&pb, "dpo", a.steps))
                .context("DPO failed")?;
            pb.finish_and_clear();
            print!("{r}");
        }
        AlignCommand::Ppo(a) => {
            let mut o = ppo_opts(&a.knobs, &a.name, a.rollouts, a.rollout_prompts, a.ptx_coef);
            if a.reward == "gold" {
                o.reward = RewardKind::Gold;
            }
            o.check().map_err(anyhow::Error::msg)?;
            let steps = a.rollouts * o.cfg.steps_per_rollout();
            let c = &a.common;
            let r = pipeline::ppo(&c.dir, c.seed, &o, &mut step_cb(&pb, "ppo", steps))
                .context("PPO failed")?;
            pb.finish_and_clear();
            print!("{r}");
            let run = c.dir.join(&a.name);
            println!("  plots: {}/ppo.png and ppo_stats.png", run.display());
        }
        AlignCommand::Rlaif(a) => {
            let ppo = ppo_opts(&a.knobs, "rlaif", a.rollouts, a.rollout_prompts, 0.0);
            let (epochs, batch, lr) = (a.rm_epochs, a.rm_batch, a.rm_lr);
            let rm = SoftRmOpts { epochs, batch, lr };
            let (pairs, d_rlaif) = (a.pairs, !a.no_d_rlaif);
            let o = RlaifOpts {
                pairs,
                rm,
                ppo,
                d_rlaif,
            };
            o.check(&a.common.dir).map_err(anyhow::Error::msg)?;
            let spec = canon_models::ModelSpec::parse(&a.model)?;
            let mode = canon_models::WeightMode::DequantizeF32;
            let lm = canon_models::load_causal_lm(&spec, mode, ctx.progress())
                .with_context(|| format!("cannot load the labeller {}", a.model))?;
            let mut labeller = canon_align::rlaif::LmLabeller::new(&lm)?;
            let mut on = |stage: &str, pos: u64, len: u64| {
                if pb.message() != stage {
                    pb.set_message(stage.to_string());
                }
                pb.set_length(len);
                pb.set_position(pos);
            };
            let c = &a.common;
            let r = canon_align::rlaif_run::run(&c.dir, c.seed, &mut labeller, &o, &mut on)
                .context("RLAIF experiment failed")?;
            pb.finish_and_clear();
            print!("{}", r.table());
            println!("  labeller prompts evaluated: {}", labeller.calls);
            println!(
                "  report and plot: {}/rlaif/{{report.json, rlaif.png}}",
                c.dir.display()
            );
        }
        AlignCommand::W2s(a) => {
            if a.per_class < 20 || a.seeds == 0 {
                bail!("--per-class must be at least 20 and --seeds at least 1");
            }
            let tasks = canon_align::w2s::gettext_tasks(&a.locale_dir, a.per_class, a.seed)?;
            let spec = canon_models::ModelSpec::parse(&a.encoder)?;
            let enc = canon_models::load_encoder(&spec, ctx.progress())
                .with_context(|| format!("cannot load the encoder {}", a.encoder))?;
            let t0 = std::time::Instant::now();
            let mut embed = |texts: &[String]| -> canon_align::Result<Vec<Vec<f32>>> {
                enc.embedder
                    .embed(texts, 32)
                    .map_err(|e| canon_align::TrainError::Data(e.to_string()))
            };
            let res = canon_align::w2s::run(&tasks, &mut embed, a.seeds, &a.out)?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "w2s: {} tasks, mean of {} splits, {secs:.1} s (strong = linear probe on {})",
                res.len(),
                a.seeds,
                enc.name
            );
            print!("{}", canon_align::w2s::table(&res));
            println!("  plot: {}", a.out.join("w2s.png").display());
        }
        AlignCommand::PlotPpo { run } => {
            let name = run.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            for p in pipeline::plot_ppo(&run.join("metrics.jsonl"), &run, &name)? {
                println!("{}", p.display());
            }
        }
        AlignCommand::PrmEval(a) => crate::cmd::prm_eval::run(a)?,
        AlignCommand::Prm(a) => {
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
            let (r, _) = canon_align::prm::run(&c.dir, c.seed, &o, &mut cb)
                .context("PRM experiment failed")?;
            pb.finish_and_clear();
            print!("{r}");
            println!("  plot: {}", c.dir.join("best_of_n.png").display());
        }
    }
    Ok(())
}
