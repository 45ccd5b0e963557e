//! The PPO stage of the pipeline: the reward it maximises, the value head's start, the LoRA
//! policy, the run and its plots.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use canon_nn::Linear;
use canon_plot::{Figure, Series};
use canon_train::sft::lora::{self, LoraSet, LoraSpec};
use canon_train::trainer::RunFiles;
use canon_train::{Engine, Schedule, StepReport};

use crate::eval::evaluate_policy;
use crate::lm::{Lm, ScalarHead};
use crate::ppo::{PpoConfig, PpoObjective, RewardFn};
use crate::sft::{demonstrations, mean_nll};
use crate::task::{Problem, split};
use crate::{Result, data_err};

use super::*;

/// What PPO maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardKind {
    /// The trained reward model (RLHF).
    Model,
    /// The gold judge itself (an upper bound: no reward-model error).
    Gold,
}

/// Where PPO's value function starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueInit {
    /// A separate model initialised from the reward model (trunk and head), as InstructGPT does.
    RewardModel,
    /// A zero-initialised second head on the policy's trunk (`lm-human-preferences`).
    PolicyHead,
}

/// PPO settings.
#[derive(Debug, Clone)]
pub struct PpoOpts {
    pub name: String,
    pub rollouts: u64,
    pub lr: f64,
    pub reward: RewardKind,
    pub value: ValueInit,
    pub cfg: PpoConfig,
}

impl PpoOpts {
    /// At least one rollout, a plain folder name, and a valid PPO configuration.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.rollouts == 0 {
            return Err("--rollouts must be at least 1".into());
        }
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return Err(format!(
                "--name must be a plain folder name, found {:?}",
                self.name
            ));
        }
        self.cfg.validate()
    }
}

/// The reward model's scores of responses to problems, as a PPO reward.
pub fn rm_reward(rm: &Lm) -> impl Fn(&[Problem], &[Vec<u32>]) -> Result<Vec<f64>> + '_ {
    move |probs: &[Problem], resp: &[Vec<u32>]| {
        let seqs: Vec<Vec<u32>> = probs
            .iter()
            .zip(resp)
            .map(|(p, r)| [p.prompt_ids(), r.clone()].concat())
            .collect();
        crate::rm::score(rm, &seqs)
    }
}

/// PPO (or PPO-ptx) from SFT against the reward model (or the gold judge), into `dir/<name>`;
/// also draws `ppo.png` (reward, gold, KL) and `ppo_stats.png` (entropy, clip fraction, value
/// loss). With [`ValueInit::RewardModel`] the value model starts from `dir/rm`.
pub fn ppo(
    dir: &Path,
    seed: u64,
    o: &PpoOpts,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Report> {
    let rm_dir = dir.join("rm");
    let rm_model = match o.reward {
        RewardKind::Model => Some(Lm::load(&rm_dir)?),
        RewardKind::Gold => None,
    };
    let reward: Box<RewardFn> = match &rm_model {
        Some(rm) => Box::new(rm_reward(rm)),
        None => Box::new(|probs: &[Problem], resp: &[Vec<u32>]| {
            Ok(probs
                .iter()
                .zip(resp)
                .map(|(p, r)| crate::task::judge(p, &crate::task::response_text(r)).score())
                .collect())
        }),
    };
    let value_from = (o.value == ValueInit::RewardModel).then_some(rm_dir.as_path());
    ppo_with(dir, seed, o, &*reward, value_from, on_step)
}

/// PPO from `dir/sft` against any reward, into `dir/<name>`; the value function is a separate
/// model loaded from `value_from` (a reward model's folder) or, when `None`, a zero-initialised
/// head on the policy (`o.value` is only recorded).
pub fn ppo_with(
    dir: &Path,
    seed: u64,
    o: &PpoOpts,
    reward: &RewardFn,
    value_from: Option<&Path>,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Report> {
    let t0 = Instant::now();
    let (train, test) = split(seed);
    let reference = Lm::load(&dir.join("sft"))?;
    let mut policy = Lm::load(&dir.join("sft"))?;
    let value_model = match value_from {
        Some(p) => {
            let v = Lm::load(p)?;
            if v.head.is_none() {
                return Err(data_err(format!(
                    "{}: expected a reward model (with a scalar head) to start the value model from",
                    p.display()
                )));
            }
            Some(v)
        }
        None => {
            policy.head = Some(ScalarHead::zeros(policy.cfg.d_model)?);
            None
        }
    };
    let lora = match o.cfg.lora_rank {
        0 => None,
        rank => Some(attach_policy_lora(
            &mut policy,
            rank,
            o.cfg.lora_alpha,
            seed,
        )?),
    };
    let demos = demonstrations(&train, 1, seed)?;
    let val = demonstrations(&test, 1, seed ^ 1)?;
    let base = sft_baseline(dir, &test)?;
    let sft_ptx = mean_nll(&reference, &val, 256)?;
    let out = dir.join(&o.name);
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let steps = o.rollouts * o.cfg.steps_per_rollout();
    let mut obj = PpoObjective::new(
        &policy,
        &reference,
        reward,
        &train,
        &demos,
        &val,
        &test,
        Some(&base),
        o.cfg.clone(),
        EVAL_SEED,
    )?;
    if let Some(v) = &value_model {
        obj = obj.with_value_model(v)?;
    }
    if let Some(set) = &lora {
        obj = obj.with_trainable(set.params());
    }
    let trained = obj
        .params()
        .iter()
        .map(|p| p.var.elem_count())
        .sum::<usize>();
    let mut tc = train_config(steps, o.lr, seed, steps / 4);
    tc.schedule = Schedule::Constant { warmup: 0 };
    tc.log_every = 1;
    let mut engine = Engine::new(obj.params(), tc)?;
    let stop = AtomicBool::new(false);
    let files = RunFiles::in_dir(&out);
    engine.run(&mut obj, steps, &stop, &files, on_step)?;
    drop(obj);
    policy.head = None;
    if let Some(set) = &lora {
        merge_policy_lora(&mut policy, set)?;
    }
    policy.save(&out)?;
    if let Some(v) = &value_model {
        v.save(&out.join("value"))?;
    }
    plot_ppo(&files.metrics, &out, &o.name)?;
    let e = evaluate_policy(&policy, &test, EVAL_SEED)?;
    let lines = canon_train::metrics::read_lines(&files.metrics)?;
    let first = lines.first().map(|l| l.extra.clone()).unwrap_or_default();
    let last = lines.last().map(|l| l.extra.clone()).unwrap_or_default();
    let g = |m: &std::collections::BTreeMap<String, f64>, k: &str| {
        m.get(k).copied().unwrap_or(f64::NAN)
    };
    // The KL and value loss averaged over the last quarter of the run's steps.
    let tail = &lines[lines.len() - lines.len().div_ceil(4).min(lines.len())..];
    let tail_mean = |k: &str| {
        let v: Vec<f64> = tail
            .iter()
            .filter_map(|l| l.extra.get(k).copied())
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let mut figures = vec![
        ("rollouts".into(), o.rollouts as f64),
        ("reward_first_rollout".into(), g(&first, "reward")),
        ("reward_last_rollout".into(), g(&last, "reward")),
        ("kl_last_rollout".into(), g(&last, "kl")),
        ("kl_last_quarter".into(), tail_mean("kl")),
        ("value_loss_last_quarter".into(), tail_mean("value_loss")),
        ("entropy_first_rollout".into(), g(&first, "entropy")),
        ("entropy_last_rollout".into(), g(&last, "entropy")),
        ("beta".into(), o.cfg.beta),
        ("ptx_coef".into(), o.cfg.ptx_coef),
        (
            "value_from_reward_model".into(),
            if value_model.is_some() { 1.0 } else { 0.0 },
        ),
        (
            "whiten_rewards".into(),
            if o.cfg.whiten_rewards { 1.0 } else { 0.0 },
        ),
        ("lora_rank".into(), o.cfg.lora_rank as f64),
        ("trained_params".into(), trained as f64),
        ("sft_pretrain_nll".into(), sft_ptx),
        ("pretrain_nll".into(), mean_nll(&policy, &val, 256)?),
    ];
    figures.extend(policy_figures(&e, &base));
    let r = Report {
        stage: o.name.clone(),
        params: policy.num_params() + value_model.as_ref().map_or(0, Lm::num_params),
        steps,
        seconds: t0.elapsed().as_secs_f64(),
        figures,
    };
    write_json(&out.join("report.json"), &r)?;
    Ok(r)
}

/// The LoRA targets of the policy's trunk: every dense linear (attention `c_attn`, `c_proj`; MLP
/// `c_fc`, `c_proj` or SwiGLU `gate`, `up`, `down`).
const POLICY_LORA_TARGETS: [&str; 6] = ["c_attn", "c_proj", "c_fc", "gate", "up", "down"];

/// Attaches LoRA adapters (rank `rank`, scale `alpha / rank`, A seeded, B zero) to every dense
/// linear of the policy's trunk and freezes the adapted weights: their forward reads a detached
/// copy, so the backward computes no gradient for them (only the adapters are trained).
pub fn attach_policy_lora(policy: &mut Lm, rank: usize, alpha: f64, seed: u64) -> Result<LoraSet> {
    let names = canon_models::CausalLm::linear_names(&policy.gpt);
    let targets: Vec<String> = POLICY_LORA_TARGETS
        .iter()
        .filter(|t| names.iter().any(|n| n.rsplit('.').next() == Some(**t)))
        .map(|t| t.to_string())
        .collect();
    let spec = LoraSpec {
        rank,
        alpha,
        targets,
        seed,
        dropout: 0.0,
    };
    let set = lora::attach(&mut policy.gpt, &spec)?;
    for m in &set.modules {
        let lin = canon_models::CausalLm::linear_mut(&mut policy.gpt, &m.name)
            .ok_or_else(|| data_err(format!("the policy lost its layer '{}'", m.name)))?;
        if let canon_nn::Weight::Dense(w) = &lin.weight {
            lin.weight = canon_nn::Weight::Dense(w.detach());
        }
    }
    Ok(set)
}

/// Folds the adapters into the policy's weights (`W ← W + (α/r)·B A`, paper 13 §4.1) and removes
/// them, so the saved policy is a plain model of the SFT policy's shape.
pub fn merge_policy_lora(policy: &mut Lm, set: &LoraSet) -> Result<()> {
    for m in &set.modules {
        let lin = canon_models::CausalLm::linear_mut(&mut policy.gpt, &m.name)
            .ok_or_else(|| data_err(format!("the policy lost its layer '{}'", m.name)))?;
        let merged = lin.merged()?;
        let key = format!("{}.weight", m.name);
        let var = policy
            .store
            .get(&key)
            .ok_or_else(|| data_err(format!("the policy has no weight '{key}'")))?;
        var.set(&merged.weight.to_dense()?)?;
        *lin = Linear::new(
            canon_nn::Weight::Dense(var.as_tensor().clone()),
            lin.bias.clone(),
        );
    }
    Ok(())
}

/// `ppo.png` and `ppo_stats.png` from a PPO run's metrics.
pub fn plot_ppo(metrics: &Path, out: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let lines = canon_train::metrics::read_lines(metrics)?;
    let series = |k: &str| -> Vec<(f64, f64)> {
        lines
            .iter()
            .filter_map(|l| l.extra.get(k).map(|&v| (l.step as f64, v)))
            .collect()
    };
    let p1 = out.join("ppo.png");
    Figure::new(&format!("PPO ({name}): reward and KL per step"))
        .x_title("optimizer step")
        .y_title("score")
        .y2_title("KL(π ‖ π_SFT), nats / response")
        .series(Series::line("RM reward (rollout mean)", series("reward")))
        .series(Series::line("gold score (rollout mean)", series("gold")))
        .series(Series::line("KL", series("kl")).on_right())
        .save(&p1)
        .map_err(|e| io(&p1, e))?;
    let p2 = out.join("ppo_stats.png");
    Figure::new(&format!("PPO ({name}): entropy, clip fraction, value loss"))
        .x_title("optimizer step")
        .y_title("value")
        .series(Series::line("entropy (nats/token)", series("entropy")))
        .series(Series::line(
            "clip fraction (mean of 16 steps)",
            canon_plot::moving_average(&series("clipfrac"), 16),
        ))
        .series(Series::line(
            "value loss (mean of 16 steps)",
            canon_plot::moving_average(&series("value_loss"), 16),
        ))
        .save(&p2)
        .map_err(|e| io(&p2, e))?;
    Ok(vec![p1, p2])
}
