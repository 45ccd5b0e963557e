//! The InstructGPT pipeline in miniature, stage by stage, in one work folder:
//!
//! - `sft/`: a tiny GPT trained from scratch on the mixed demonstrations of the training prompts
//!   (`config.json`, `model.safetensors`, the engine's `metrics.jsonl`, `loss.png`, checkpoint).
//! - `rm/`: the reward model (SFT trunk + scalar head), `groups.json` (K sampled responses per
//!   prompt with their gold scores: train and held-out), `report.json`.
//! - `dpo/`, `ppo/` (or any `--name`): policies trained from SFT, each with `report.json`.
//!
//! Every stage evaluates on the held-out prompts with the gold judge and reports the win rate
//! against the SFT policy's samples.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use canon_train::trainer::RunFiles;
use canon_train::{Engine, OptimizerConfig, Schedule, StepReport, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::dpo::{DpoObjective, pairs_from_groups};
use crate::eval::{PolicyEval, evaluate_policy};
use crate::lm::{Lm, ScalarHead, tiny_config};
use crate::rm::{Group, RmObjective, collect_groups, normalise, pair_accuracy};
use crate::sft::{SftObjective, demonstrations, mean_nll};
use crate::task::{CharVocab, Problem, split};
use crate::{Result, TrainError, data_err};

mod ppo_stage;
pub use ppo_stage::*;

/// Seeds of the two evaluation samplings: the SFT baseline's and every trained policy's.
pub(crate) const BASELINE_SEED: u64 = 0xBA5E_0000_0000_0001;
pub(crate) const EVAL_SEED: u64 = 0xE7A1_0000_0000_0001;

pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| io(path, e))?;
    canon_fs::write_atomic(path, text.as_bytes()).map_err(|e| io(path, e))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        io(
            path,
            format!("{e} (expected {what}; run the earlier stage first)"),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| io(path, format!("not {what}: {e}")))
}

pub(crate) fn train_config(steps: u64, lr: f64, seed: u64, eval_every: u64) -> TrainConfig {
    TrainConfig {
        batch_size: 1,
        block_size: 1,
        grad_accum: 1,
        max_steps: steps,
        lr,
        schedule: Schedule::Cosine {
            warmup: (steps / 20).min(50),
            min_lr_ratio: 0.1,
        },
        optimizer: OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        grad_clip: Some(1.0),
        eval_every: eval_every.max(1),
        eval_batches: 1,
        log_every: 5,
        checkpoint_every: steps.max(1),
        seed,
        z_loss: 0.0,
        moe_aux_weight: 0.0,
    }
}

/// The figures of one stage, written to its `report.json` and printed by the command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub stage: String,
    pub params: usize,
    pub steps: u64,
    pub seconds: f64,
    /// Named figures in order.
    pub figures: Vec<(String, f64)>,
}

impl Report {
    pub fn get(&self, k: &str) -> Option<f64> {
        self.figures.iter().find(|(n, _)| n == k).map(|x| x.1)
    }
}

impl std::fmt::Display for Report {
    /// The stage's header line, then one figure a line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} parameters, {} steps, {:.1} s",
            self.stage, self.params, self.steps, self.seconds
        )?;
        for (k, v) in &self.figures {
            if v.fract() == 0.0 && v.abs() < 1e12 {
                writeln!(f, "  {k:<32} {v:.0}")?;
            } else {
                writeln!(f, "  {k:<32} {v:.4}")?;
            }
        }
        Ok(())
    }
}

pub(crate) fn policy_figures(e: &PolicyEval, baseline: &PolicyEval) -> Vec<(String, f64)> {
    let mut f = e.metrics("test_");
    f.push(("win_rate_vs_sft".into(), e.win_rate(baseline)));
    f
}

/// The SFT baseline's test samples (the fixed reference every win rate is measured against).
pub fn sft_baseline(dir: &Path, test: &[Problem]) -> Result<PolicyEval> {
    let sft = Lm::load(&dir.join("sft"))?;
    evaluate_policy(&sft, test, BASELINE_SEED)
}

// SFT settings (with the `cli` feature also `canon align sft`'s flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct SftOpts {
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1500))]
    pub steps: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3e-3))]
    pub lr: f64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub batch: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2))]
    pub layers: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub width: usize,
    /// Demonstrations per training prompt.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub per_prompt: usize,
}

impl SftOpts {
    /// Steps, batch and demonstrations per prompt are at least 1 (the message names the flags).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.steps == 0 || self.batch == 0 || self.per_prompt == 0 {
            return Err("--steps, --batch and --per-prompt must be at least 1".into());
        }
        Ok(())
    }
}

/// Trains the SFT policy from scratch into `dir/sft`.
pub fn sft(
    dir: &Path,
    seed: u64,
    o: &SftOpts,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Report> {
    let t0 = Instant::now();
    let (train, test) = split(seed);
    let demos = demonstrations(&train, o.per_prompt, seed)?;
    let val = demonstrations(&test, 1, seed ^ 1)?;
    let lm = Lm::new_random(tiny_config(CharVocab.size(), o.layers, o.width, 32), seed)?;
    let out = dir.join("sft");
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let mut engine = Engine::new(lm.params(), train_config(o.steps, o.lr, seed, o.steps / 4))?;
    let mut obj = SftObjective {
        lm: &lm,
        train: &demos,
        val: &val,
        batch: o.batch,
    };
    let stop = AtomicBool::new(false);
    engine.run(&mut obj, o.steps, &stop, &RunFiles::in_dir(&out), on_step)?;
    lm.save(&out)?;
    let e = evaluate_policy(&lm, &test, EVAL_SEED)?;
    let base = evaluate_policy(&lm, &test, BASELINE_SEED)?;
    let mut figures = vec![("held_out_nll".into(), mean_nll(&lm, &val, 256)?)];
    figures.extend(policy_figures(&e, &base));
    let r = Report {
        stage: "sft".into(),
        params: lm.num_params(),
        steps: o.steps,
        seconds: t0.elapsed().as_secs_f64(),
        figures,
    };
    write_json(&out.join("report.json"), &r)?;
    Ok(r)
}

// Reward-model settings (with the `cli` feature also `canon align rm`'s flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RmOpts {
    /// Responses sampled and ranked per prompt (K); C(K,2) comparisons each.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub k: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1000))]
    pub train_prompts: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub val_prompts: usize,
    /// Prompts per batch.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 8))]
    pub batch: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1e-3))]
    pub lr: f64,
}

impl RmOpts {
    /// Batch and prompt counts are at least 1 (the message names the flags).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.batch == 0 || self.train_prompts == 0 || self.val_prompts == 0 {
            return Err("--batch, --train-prompts and --val-prompts must be at least 1".into());
        }
        Ok(())
    }
}

/// The RM stage's sampled groups (`rm/groups.json`).
#[derive(Serialize, Deserialize)]
pub struct Groups {
    pub train: Vec<Group>,
    pub val: Vec<Group>,
}

/// Reads the RM stage's `rm/groups.json`.
pub fn load_groups(dir: &Path) -> Result<Groups> {
    read_json(&dir.join("rm/groups.json"), "the RM stage's groups")
}

/// Samples K responses per prompt from SFT, ranks them by the gold judge, trains the RM (one
/// epoch), normalises it on the SFT demonstrations and reports held-out pair accuracy.
pub fn rm(
    dir: &Path,
    seed: u64,
    o: &RmOpts,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Report> {
    let t0 = Instant::now();
    if o.k < 2 {
        return Err(data_err(format!("--k must be at least 2, found {}", o.k)));
    }
    let (train, test) = split(seed);
    let sft = Lm::load(&dir.join("sft"))?;
    let tp = &train[..o.train_prompts.min(train.len())];
    let vp = &test[..o.val_prompts.min(test.len())];
    let groups = Groups {
        train: collect_groups(&sft, tp, o.k, seed ^ 0x6A)?,
        val: collect_groups(&sft, vp, o.k, seed ^ 0x6B)?,
    };
    let out = dir.join("rm");
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    write_json(&out.join("groups.json"), &groups)?;
    let mut rm = Lm::load(&dir.join("sft"))?;
    rm.head = Some(ScalarHead::zeros(rm.cfg.d_model)?);
    let mut obj = RmObjective::new(&rm, &groups.train, &groups.val, o.batch, seed);
    let steps = obj.train.len().div_ceil(o.batch.max(1)) as u64;
    if steps == 0 {
        return Err(data_err(
            "no training prompt has two responses of different gold score",
        ));
    }
    let pairs: usize = obj.train.iter().map(|g| g.pairs().len()).sum();
    let mut engine = Engine::new(rm.params(), train_config(steps, o.lr, seed, steps / 4))?;
    let stop = AtomicBool::new(false);
    engine.run(&mut obj, steps, &stop, &RunFiles::in_dir(&out), on_step)?;
    let demos = demonstrations(tp, 1, seed)?;
    let shift = normalise(&rm, &demos)?;
    let (acc, loss) = pair_accuracy(&rm, &groups.val)?;
    let (train_acc, _) = pair_accuracy(&rm, &groups.train)?;
    rm.save(&out)?;
    let val_pairs: usize = groups.val.iter().map(|g| g.pairs().len()).sum();
    let r = Report {
        stage: "rm".into(),
        params: rm.num_params(),
        steps,
        seconds: t0.elapsed().as_secs_f64(),
        figures: vec![
            ("train_prompts_with_pairs".into(), obj.train.len() as f64),
            ("train_pairs".into(), pairs as f64),
            ("held_out_pairs".into(), val_pairs as f64),
            ("train_pair_accuracy".into(), train_acc),
            ("held_out_pair_accuracy".into(), acc),
            ("held_out_loss".into(), loss),
            ("demo_mean_before_shift".into(), shift),
        ],
    };
    write_json(&out.join("report.json"), &r)?;
    Ok(r)
}

// DPO settings (with the `cli` feature also `canon align dpo`'s flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct DpoOpts {
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 300))]
    pub steps: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3e-4))]
    pub lr: f64,
    /// Pairs per batch.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub batch: usize,
    /// DPO's β (strength of the implicit KL constraint).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.1))]
    pub beta: f64,
}

impl DpoOpts {
    /// Steps and batch are at least 1 (the message names the flags).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.steps == 0 || self.batch == 0 {
            return Err("--steps and --batch must be at least 1".into());
        }
        Ok(())
    }
}

/// DPO from SFT on the RM stage's preference pairs, into `dir/dpo`.
pub fn dpo(
    dir: &Path,
    seed: u64,
    o: &DpoOpts,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Report> {
    let t0 = Instant::now();
    let (_, test) = split(seed);
    let groups: Groups = read_json(&dir.join("rm/groups.json"), "the RM stage's groups")?;
    let reference = Lm::load(&dir.join("sft"))?;
    let policy = Lm::load(&dir.join("sft"))?;
    let pairs = pairs_from_groups(&reference, &groups.train)?;
    let base = sft_baseline(dir, &test)?;
    let out = dir.join("dpo");
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let mut obj = DpoObjective {
        policy: &policy,
        pairs: &pairs,
        batch: o.batch,
        beta: o.beta,
        test: &test,
        baseline: &base,
        eval_seed: EVAL_SEED,
    };
    let mut engine = Engine::new(
        policy.params(),
        train_config(o.steps, o.lr, seed, o.steps / 4),
    )?;
    let stop = AtomicBool::new(false);
    engine.run(&mut obj, o.steps, &stop, &RunFiles::in_dir(&out), on_step)?;
    policy.save(&out)?;
    let e = evaluate_policy(&policy, &test, EVAL_SEED)?;
    let mut figures = vec![("pairs".into(), pairs.len() as f64)];
    figures.extend(policy_figures(&e, &base));
    let r = Report {
        stage: "dpo".into(),
        params: policy.num_params(),
        steps: o.steps,
        seconds: t0.elapsed().as_secs_f64(),
        figures,
    };
    write_json(&out.join("report.json"), &r)?;
    Ok(r)
}

/// Writes any serialisable value as pretty JSON through a temporary file.
pub fn save_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    write_json(path, v)
}
