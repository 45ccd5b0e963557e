//! `canon align`: learning from preferences in miniature (InstructGPT paper 20, DPO, process
//! supervision paper 21). Every stage works in one folder (`--dir`) and prints its figures.
//!
//! - `sft`: a tiny GPT trained from scratch on mixed-quality demonstrations of the addition task.
//! - `rm`: K samples per prompt ranked by the gold judge; reward model with the pairwise loss.
//! - `dpo`: DPO from SFT on the same preference pairs.
//! - `ppo`: PPO (optionally PPO-ptx) from SFT against the reward model.
//! - `prm`: process vs outcome reward model vs majority vote, best-of-N on multi-step sums.
//! - `rlaif`: an LLM as preference labeller (order-swap debiasing), agreement with the gold judge.
//! - `w2s`: weak-to-strong generalisation (paper 30), PGR with and without the confidence loss.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_align::pipeline::{self, DpoOpts, PpoOpts, Report, RewardKind, RmOpts, SftOpts};
use canon_align::ppo::PpoConfig;
use canon_train::StepReport;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples (one thread is fastest for these tiny models):
  canon --threads 1 align sft --dir runs/align
  canon --threads 1 align rm --dir runs/align
  canon --threads 1 align dpo --dir runs/align
  canon --threads 1 align ppo --dir runs/align
  canon --threads 1 align ppo --dir runs/align --name ppo-ptx --ptx-coef 1
  canon --threads 1 align prm --dir runs/prm
  canon align rlaif --dir runs/align --model smollm2 --pairs 100
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
    /// RLAIF: an LLM labels the RM stage's held-out pairs; agreement with the gold judge with and
    /// without the order swap.
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

#[derive(Args, Debug)]
#[command(after_help = "Example:
  canon align w2s --out runs/w2s --per-class 600 --seeds 5")]
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

#[derive(Args, Debug)]
#[command(after_help = "Example:
  canon align rlaif --dir runs/align --model smollm2 --pairs 100")]
pub struct RlaifArgs {
    #[command(flatten)]
    pub common: Common,
    /// The labeller: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Pairs to label (each scored in both orders).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
}

/// The options every stage shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Work folder: sft/, rm/, dpo/, ppo/ live here.
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

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon align ppo --dir runs/align --rollouts 40
  canon align ppo --dir runs/align --name ppo-ptx --ptx-coef 1
  canon align ppo --dir runs/align --name ppo-gold --reward gold")]
pub struct PpoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sub-folder of --dir for this run.
    #[arg(long, default_value = "ppo")]
    pub name: String,
    /// Rollouts (each: --rollout-prompts samples, then epochs × minibatches optimizer steps).
    #[arg(long, default_value_t = 40)]
    pub rollouts: u64,
    #[arg(long, default_value_t = 64)]
    pub rollout_prompts: usize,
    #[arg(long, default_value_t = 4)]
    pub minibatches: usize,
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Per-token KL coefficient β (the starting value with --kl-target).
    #[arg(long, default_value_t = 0.05)]
    pub beta: f64,
    /// Adaptive KL (Ziegler et al.): steer β after every rollout toward this mean KL per response,
    /// in nats (6 in lm-human-preferences); without it β is fixed.
    #[arg(long, value_name = "NATS")]
    pub kl_target: Option<f64>,
    /// Adaptive KL: the controller's horizon, in responses.
    #[arg(long, default_value_t = 10_000.0)]
    pub kl_horizon: f64,
    /// PPO-ptx: weight of the LM loss on the pretraining (demonstration) text; 0 = plain PPO.
    #[arg(long, default_value_t = 0.0)]
    pub ptx_coef: f64,
    /// The reward: `rm` (the trained reward model) or `gold` (the judge itself, an upper bound).
    #[arg(long, default_value = "rm", value_parser = ["rm", "gold"])]
    pub reward: String,
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

fn bar(ctx: &Ctx, len: u64, what: &str) -> ProgressBar {
    if ctx.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>8} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left) {prefix}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

fn progress<'a>(pb: &'a ProgressBar) -> impl FnMut(&StepReport) + 'a {
    move |r: &StepReport| {
        pb.set_position(r.step);
        pb.set_prefix(format!("loss {:.4}", r.loss));
    }
}

/// Prints a stage's figures, one per line.
pub fn print_report(r: &Report) {
    println!(
        "{}: {} parameters, {} steps, {:.1} s",
        r.stage, r.params, r.steps, r.seconds
    );
    for (k, v) in &r.figures {
        if v.fract() == 0.0 && v.abs() < 1e12 {
            println!("  {k:<32} {v:.0}");
        } else {
            println!("  {k:<32} {v:.4}");
        }
    }
}

pub fn run(a: AlignArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.command {
        AlignCommand::Sft(a) => {
            if a.steps == 0 || a.batch == 0 || a.per_prompt == 0 {
                bail!("--steps, --batch and --per-prompt must be at least 1");
            }
            let pb = bar(ctx, a.steps, "sft");
            let r = pipeline::sft(
                &a.common.dir,
                a.common.seed,
                &SftOpts {
                    steps: a.steps,
                    lr: a.lr,
                    batch: a.batch,
                    layers: a.layers,
                    width: a.width,
                    per_prompt: a.per_prompt,
                },
                &mut progress(&pb),
            )
            .context("SFT failed")?;
            pb.finish_and_clear();
            print_report(&r);
        }
        AlignCommand::Rm(a) => {
            if a.batch == 0 || a.train_prompts == 0 || a.val_prompts == 0 {
                bail!("--batch, --train-prompts and --val-prompts must be at least 1");
            }
            let pb = bar(ctx, 0, "rm");
            let mut cb = |r: &StepReport| {
                pb.set_length(pb.length().unwrap_or(0).max(r.step));
                pb.set_position(r.step);
            };
            let r = pipeline::rm(
                &a.common.dir,
                a.common.seed,
                &RmOpts {
                    k: a.k,
                    train_prompts: a.train_prompts,
                    val_prompts: a.val_prompts,
                    batch: a.batch,
                    lr: a.lr,
                },
                &mut cb,
            )
            .context("reward model failed")?;
            pb.finish_and_clear();
            print_report(&r);
        }
        AlignCommand::Dpo(a) => {
            if a.steps == 0 || a.batch == 0 {
                bail!("--steps and --batch must be at least 1");
            }
            let pb = bar(ctx, a.steps, "dpo");
            let r = pipeline::dpo(
                &a.common.dir,
                a.common.seed,
                &DpoOpts {
                    steps: a.steps,
                    lr: a.lr,
                    batch: a.batch,
                    beta: a.beta,
                },
                &mut progress(&pb),
            )
            .context("DPO failed")?;
            pb.finish_and_clear();
            print_report(&r);
        }
        AlignCommand::Ppo(a) => {
            if a.rollouts == 0 {
                bail!("--rollouts must be at least 1");
            }
            if a.name.is_empty() || a.name.contains(['/', '\\']) || a.name.starts_with('.') {
                bail!("--name must be a plain folder name, found {:?}", a.name);
            }
            let cfg = PpoConfig {
                rollout_prompts: a.rollout_prompts,
                minibatches: a.minibatches,
                ppo_epochs: a.epochs,
                beta: a.beta,
                kl_target: a.kl_target,
                kl_horizon: a.kl_horizon,
                ptx_coef: a.ptx_coef,
                ..PpoConfig::default()
            };
            if let Err(m) = cfg.validate() {
                bail!("{m}");
            }
            let steps = a.rollouts * cfg.steps_per_rollout();
            let pb = bar(ctx, steps, "ppo");
            let r = pipeline::ppo(
                &a.common.dir,
                a.common.seed,
                &PpoOpts {
                    name: a.name.clone(),
                    rollouts: a.rollouts,
                    lr: a.lr,
                    reward: if a.reward == "gold" {
                        RewardKind::Gold
                    } else {
                        RewardKind::Model
                    },
                    cfg,
                },
                &mut progress(&pb),
            )
            .context("PPO failed")?;
            pb.finish_and_clear();
            print_report(&r);
            println!(
                "  plots: {} and {}",
                a.common.dir.join(&a.name).join("ppo.png").display(),
                a.common.dir.join(&a.name).join("ppo_stats.png").display()
            );
        }
        AlignCommand::Rlaif(a) => {
            if a.pairs == 0 {
                bail!("--pairs must be at least 1");
            }
            let pairs = pipeline::labeller_pairs(&a.common.dir, a.pairs)?;
            let spec = canon_models::ModelSpec::parse(&a.model)?;
            let lm = canon_models::load_causal_lm(
                &spec,
                canon_models::WeightMode::DequantizeF32,
                ctx.progress(),
            )
            .with_context(|| format!("cannot load the labeller {}", a.model))?;
            let t0 = std::time::Instant::now();
            let pb = bar(ctx, pairs.len() as u64, "label");
            let labels =
                canon_align::rlaif::label_pairs(&lm, &pairs, &mut |i| pb.set_position(i as u64))?;
            pb.finish_and_clear();
            let (single, swapped) =
                canon_align::rlaif::agreement(&labels).context("no pair was labelled")?;
            let mean_first =
                labels.iter().map(|l| (l.p_ab + l.p_ba) / 2.0).sum::<f64>() / labels.len() as f64;
            let out = a.common.dir.join("rlaif_labels.json");
            pipeline::save_json(&out, &labels)?;
            println!(
                "rlaif: {} pairs labelled by {} in both orders, {:.1} s",
                labels.len(),
                lm.name,
                t0.elapsed().as_secs_f64()
            );
            println!("  agreement_one_order              {single:.4}");
            println!("  agreement_order_swapped          {swapped:.4}");
            println!("  mean_p_first_shown               {mean_first:.4}");
            println!("  labels: {}", out.display());
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
            println!(
                "w2s: {} tasks, mean of {} splits, {:.1} s (strong = linear probe on {})",
                res.len(),
                a.seeds,
                t0.elapsed().as_secs_f64(),
                enc.name
            );
            println!(
                "  {:<10} {:>6} {:>7} {:>9} {:>12} {:>8} {:>9} {:>12}",
                "task",
                "texts",
                "weak",
                "w2s xent",
                "w2s logconf",
                "ceiling",
                "PGR xent",
                "PGR logconf"
            );
            let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
            for r in &res {
                println!(
                    "  {:<10} {:>6} {:>7.3} {:>9.3} {:>12.3} {:>8.3} {:>9} {:>12}",
                    r.task,
                    r.texts,
                    r.weak,
                    r.w2s_xent,
                    r.w2s_logconf,
                    r.ceiling,
                    f(r.pgr_xent),
                    f(r.pgr_logconf)
                );
            }
            println!("  plot: {}", a.out.join("w2s.png").display());
        }
        AlignCommand::PlotPpo { run } => {
            let name = run
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for p in pipeline::plot_ppo(&run.join("metrics.jsonl"), &run, &name)? {
                println!("{}", p.display());
            }
        }
        AlignCommand::Prm(a) => {
            if a.gen_steps == 0
                || a.verifier_steps == 0
                || a.train_problems < 10
                || a.test_problems == 0
            {
                bail!(
                    "--gen-steps and --verifier-steps must be at least 1, --train-problems at least 10, --test-problems at least 1"
                );
            }
            let pb = bar(ctx, a.gen_steps, "generator");
            let mut cb = |stage: &str, r: &StepReport| {
                if pb.message() != stage {
                    pb.set_message(stage.to_string());
                    pb.set_length(if stage == "generator" {
                        a.gen_steps
                    } else {
                        a.verifier_steps
                    });
                }
                pb.set_position(r.step);
                pb.set_prefix(format!("loss {:.4}", r.loss));
            };
            let (r, _) = canon_align::prm::run(
                &a.common.dir,
                a.common.seed,
                &canon_align::prm::PrmOpts {
                    gen_steps: a.gen_steps,
                    verifier_steps: a.verifier_steps,
                    train_problems: a.train_problems,
                    samples_per_train_problem: a.samples,
                    test_problems: a.test_problems,
                    max_n: a.max_n,
                    trials: a.trials,
                    reuse_generator: a.reuse_generator,
                },
                &mut cb,
            )
            .context("PRM experiment failed")?;
            pb.finish_and_clear();
            print_report(&r);
            println!("  plot: {}", a.common.dir.join("best_of_n.png").display());
        }
    }
    Ok(())
}
