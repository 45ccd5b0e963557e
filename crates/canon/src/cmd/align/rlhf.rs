//! `canon align sft`, `rm`, `dpo` and `ppo`: the RLHF stages (`canon_align::pipeline`).

use anyhow::Context;
use canon_align::pipeline::{self, DpoOpts, PpoOpts, RewardKind, RmOpts, SftOpts, ValueInit};
use canon_align::ppo::PpoConfig;
use clap::Args;
use indicatif::ProgressBar;

use super::{Common, step_cb};

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
    /// Train the policy as LoRA adapters of this rank on every dense linear, the SFT weights
    /// frozen (merged into the saved policy); 0 trains all of the policy's parameters.
    #[arg(long, default_value_t = 0)]
    pub lora_rank: usize,
    /// LoRA's α (the adapters' update is scaled by α / rank).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon align ppo --dir runs/align --rollouts 40
  canon align ppo --dir runs/align --name ppo-head --value head --whiten-rewards
  canon align ppo --dir runs/align --name ppo-ptx --ptx-coef 1
  canon align ppo --dir runs/align --name ppo-lora --lora-rank 8 --lr 1e-3
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

pub(super) fn ppo_opts(
    k: &PpoKnobs,
    name: &str,
    rollouts: u64,
    prompts: usize,
    ptx: f64,
) -> PpoOpts {
    let cfg = PpoConfig {
        rollout_prompts: prompts,
        minibatches: k.minibatches,
        ppo_epochs: k.epochs,
        beta: k.beta,
        kl_target: k.kl_target,
        kl_horizon: k.kl_horizon,
        ptx_coef: ptx,
        whiten_rewards: k.whiten_rewards,
        lora_rank: k.lora_rank,
        lora_alpha: k.lora_alpha,
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

pub(super) fn sft(a: SftArgs, pb: &ProgressBar) -> anyhow::Result<()> {
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
    let r = pipeline::sft(&c.dir, c.seed, &o, &mut step_cb(pb, "sft", a.steps))
        .context("SFT failed")?;
    pb.finish_and_clear();
    print!("{r}");
    Ok(())
}

pub(super) fn rm(a: RmArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let o = RmOpts {
        k: a.k,
        train_prompts: a.train_prompts,
        val_prompts: a.val_prompts,
        batch: a.batch,
        lr: a.lr,
    };
    o.check().map_err(anyhow::Error::msg)?;
    let c = &a.common;
    let r = pipeline::rm(&c.dir, c.seed, &o, &mut step_cb(pb, "rm", 0))
        .context("reward model failed")?;
    pb.finish_and_clear();
    print!("{r}");
    Ok(())
}

pub(super) fn dpo(a: DpoArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let o = DpoOpts {
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        beta: a.beta,
    };
    o.check().map_err(anyhow::Error::msg)?;
    let c = &a.common;
    let r = pipeline::dpo(&c.dir, c.seed, &o, &mut step_cb(pb, "dpo", a.steps))
        .context("DPO failed")?;
    pb.finish_and_clear();
    print!("{r}");
    Ok(())
}

pub(super) fn ppo(a: PpoArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let mut o = ppo_opts(&a.knobs, &a.name, a.rollouts, a.rollout_prompts, a.ptx_coef);
    if a.reward == "gold" {
        o.reward = RewardKind::Gold;
    }
    o.check().map_err(anyhow::Error::msg)?;
    let steps = a.rollouts * o.cfg.steps_per_rollout();
    let c = &a.common;
    let r =
        pipeline::ppo(&c.dir, c.seed, &o, &mut step_cb(pb, "ppo", steps)).context("PPO failed")?;
    pb.finish_and_clear();
    print!("{r}");
    let run = c.dir.join(&a.name);
    println!("  plots: {}/ppo.png and ppo_stats.png", run.display());
    Ok(())
}
