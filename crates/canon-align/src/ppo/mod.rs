//! Step 3 of InstructGPT (paper 20): PPO against the reward model, as `lm-human-preferences` and
//! TRL implement it.
//!
//! Each rollout: `rollout_prompts` training prompts, one response each sampled from the policy at
//! temperature 1; the policy's and the frozen reference's per-token log-probabilities and the value
//! head's values (state before each response token); the reward source's score of each response;
//! per-token rewards `−β (log π − log π_ref)` with the score added at the last token; GAE
//! (γ, λ) advantages, whitened over the rollout; returns = advantages + values. Then
//! `ppo_epochs` passes over the rollout in `minibatches` shuffled minibatches, each one optimizer
//! step of the engine: clipped surrogate + `vf_coef` · clipped value loss (+ PPO-ptx:
//! `ptx_coef` · the LM loss on a batch of the pretraining text).
//!
//! The value function is either a separate model (`PpoObjective::value_model`: InstructGPT
//! initialises it from the reward model, trunk and head, and trains it alongside the policy) or a
//! second scalar head on the policy's trunk (zero-initialised, as in `lm-human-preferences`).
//! `whiten_rewards` whitens the per-token rewards (score plus KL penalty) over every response token
//! of a rollout before GAE, keeping their mean (TRL's `whiten_rewards`). The KL coefficient
//! is fixed unless `kl_target` is set, when Ziegler et al.'s adaptive controller
//! ([`crate::losses::AdaptiveKl`]) moves it after every rollout toward that KL. Every step's `metrics.jsonl` line carries the rollout's
//! `reward`, `kl`, `entropy`, `gold` and the minibatch's `clipfrac`, `value_loss`, `pg_loss`.

use candle_core::{Device, Tensor};
use canon_nn::SplitMix64;
use canon_train::{BatchLoss, Objective};

use crate::eval::{PolicyEval, evaluate_policy};
use crate::lm::{Lm, entropies, pad, select, token_logprobs};
use crate::losses::{AdaptiveKl, clipped_pg_loss, clipped_value_loss, gae, kl_rewards, whiten};
use crate::sft::{Example, draw, mean_nll, response_nll};
use crate::task::{Problem, judge, response_text};
use crate::{Result, data_err};

/// PPO's hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct PpoConfig {
    pub rollout_prompts: usize,
    pub max_new: usize,
    pub minibatches: usize,
    pub ppo_epochs: usize,
    /// KL coefficient β of the per-token penalty (the initial value when `kl_target` is set).
    pub beta: f64,
    /// Adaptive KL: the per-response KL (nats) the controller steers toward; `None` = fixed β.
    pub kl_target: Option<f64>,
    /// Adaptive KL: the controller's horizon in responses (10,000 in `lm-human-preferences`).
    pub kl_horizon: f64,
    pub gamma: f64,
    pub lam: f64,
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    /// PPO-ptx: weight γ of the pretraining LM loss (0 = plain PPO).
    pub ptx_coef: f64,
    pub ptx_batch: usize,
    /// Whiten the per-token rewards of each rollout (std 1, mean kept) before GAE.
    pub whiten_rewards: bool,
    /// LoRA rank of the policy's adapters (paper 13 on every dense linear of the trunk, the base
    /// frozen); 0 trains every parameter of the policy.
    pub lora_rank: usize,
    /// LoRA's α (the update is scaled by α / rank).
    pub lora_alpha: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            rollout_prompts: 64,
            max_new: crate::task::MAX_RESPONSE,
            minibatches: 4,
            ppo_epochs: 4,
            beta: 0.05,
            kl_target: None,
            kl_horizon: 10_000.0,
            gamma: 1.0,
            lam: 0.95,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            ptx_coef: 0.0,
            ptx_batch: 32,
            whiten_rewards: false,
            lora_rank: 0,
            lora_alpha: 16.0,
        }
    }
}

impl PpoConfig {
    /// Optimizer steps per rollout.
    pub fn steps_per_rollout(&self) -> u64 {
        (self.ppo_epochs * self.minibatches) as u64
    }
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rollout_prompts == 0 || self.minibatches == 0 || self.ppo_epochs == 0 {
            return Err("PPO: rollout prompts, minibatches and epochs must be positive".into());
        }
        if self.minibatches > self.rollout_prompts {
            return Err(format!(
                "PPO: {} minibatches cannot split a rollout of {} prompts",
                self.minibatches, self.rollout_prompts
            ));
        }
        if self.max_new == 0 {
            return Err("PPO: max_new must be at least 1".into());
        }
        for (k, v) in [
            ("beta", self.beta),
            ("ptx_coef", self.ptx_coef),
            ("vf_coef", self.vf_coef),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("PPO: {k} must be ≥ 0, found {v}"));
            }
        }
        if let Some(t) = self.kl_target
            && !(t > 0.0 && t.is_finite())
        {
            return Err(format!("PPO: kl_target must be positive, found {t}"));
        }
        if !(self.kl_horizon > 0.0 && self.kl_horizon.is_finite()) {
            return Err(format!(
                "PPO: kl_horizon must be positive, found {}",
                self.kl_horizon
            ));
        }
        if self.lora_rank > 0 && !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return Err(format!(
                "PPO: lora_alpha must be positive, found {}",
                self.lora_alpha
            ));
        }
        if !(self.cliprange > 0.0 && self.cliprange_value > 0.0) {
            return Err("PPO: clip ranges must be positive".into());
        }
        Ok(())
    }
}

/// Scores responses to problems (the reward model, the gold judge, a planted reward, …).
pub type RewardFn<'a> = dyn Fn(&[Problem], &[Vec<u32>]) -> Result<Vec<f64>> + 'a;

/// One rollout, flattened per response token where noted.
struct Rollout {
    seqs: Vec<Vec<u32>>,
    prompt_len: Vec<usize>,
    /// Per row, per response token.
    old_logp: Vec<Vec<f64>>,
    values: Vec<Vec<f64>>,
    adv: Vec<Vec<f64>>,
    returns: Vec<Vec<f64>>,
    stats: Vec<(String, f64)>,
}

/// Per-token log-probabilities, values and entropies of each row's response (no graph).
struct Scored {
    logp: Vec<Vec<f64>>,
    values: Vec<Vec<f64>>,
    entropy: Vec<f64>,
}

/// Flat indices of the response positions: into `[b, t−1]` log-probs and into `[b, t]` values.
fn positions(seqs: &[Vec<u32>], prompt_len: &[usize], t: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut lp, mut v) = (Vec::new(), Vec::new());
    for (i, s) in seqs.iter().enumerate() {
        for p in prompt_len[i] - 1..s.len() - 1 {
            lp.push((i * (t - 1) + p) as u32);
            v.push((i * t + p) as u32);
        }
    }
    (lp, v)
}

fn split_rows(flat: &[f32], seqs: &[Vec<u32>], prompt_len: &[usize]) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(seqs.len());
    let mut off = 0;
    for (s, &pl) in seqs.iter().zip(prompt_len) {
        let n = s.len() - pl;
        out.push(flat[off..off + n].iter().map(|&x| x as f64).collect());
        off += n;
    }
    out
}

/// Values come from `values`: `None` = none, `Some(None)` = `lm`'s own head, `Some(Some(m))` = the
/// head of the separate value model `m`.
fn score_tokens(
    lm: &Lm,
    seqs: &[Vec<u32>],
    prompt_len: &[usize],
    values: Option<Option<&Lm>>,
) -> Result<Scored> {
    let (ids, t) = pad(seqs)?;
    let h = lm.hidden(&ids)?;
    let logits = lm.logits(&h)?;
    let lp = token_logprobs(&logits, &ids)?;
    let (ilp, iv) = positions(seqs, prompt_len, t);
    let flat_lp: Vec<f32> = select(&lp, &ilp)?.detach().to_vec1()?;
    let v = logits.dim(2)?;
    let rows = logits
        .reshape((seqs.len() * t, v))?
        .index_select(&Tensor::from_slice(&iv, iv.len(), &Device::Cpu)?, 0)?;
    let entropy = entropies(&rows)?;
    let vals = match values {
        None => Vec::new(),
        Some(m) => {
            let v = match m {
                Some(vm) => vm.head_values(&vm.hidden(&ids)?)?,
                None => lm.head_values(&h)?,
            };
            let fv: Vec<f32> = select(&v, &iv)?.detach().to_vec1()?;
            split_rows(&fv, seqs, prompt_len)
        }
    };
    Ok(Scored {
        logp: split_rows(&flat_lp, seqs, prompt_len),
        values: vals,
        entropy,
    })
}

/// PPO on the engine.
pub struct PpoObjective<'a> {
    /// The policy (with its value head unless `value_model` is set).
    pub policy: &'a Lm,
    /// A separate value model (trunk + scalar head), trained alongside the policy; its parameters
    /// must be among the engine's (see [`PpoObjective::params`]).
    pub value_model: Option<&'a Lm>,
    pub reference: &'a Lm,
    pub reward: &'a RewardFn<'a>,
    pub prompts: &'a [Problem],
    /// Pretraining text for PPO-ptx and the held-out perplexity check.
    pub ptx_train: &'a [Example],
    pub ptx_val: &'a [Example],
    pub test: &'a [Problem],
    pub baseline: Option<&'a PolicyEval>,
    pub cfg: PpoConfig,
    pub eval_seed: u64,
    rollout: Option<Rollout>,
    queue: Vec<Vec<usize>>,
    pub rollouts: u64,
    /// β in force for the next rollout (moved by the adaptive controller when `kl_target` is set).
    pub beta: f64,
    /// The policy's trainable parameters when they are not all of its trunk (LoRA adapters).
    trainable: Option<Vec<canon_train::Param>>,
}

impl<'a> PpoObjective<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: &'a Lm,
        reference: &'a Lm,
        reward: &'a RewardFn<'a>,
        prompts: &'a [Problem],
        ptx_train: &'a [Example],
        ptx_val: &'a [Example],
        test: &'a [Problem],
        baseline: Option<&'a PolicyEval>,
        cfg: PpoConfig,
        eval_seed: u64,
    ) -> Result<Self> {
        cfg.validate().map_err(data_err)?;
        if prompts.is_empty() {
            return Err(data_err("PPO: no training prompts"));
        }
        if cfg.ptx_coef > 0.0 && ptx_train.is_empty() {
            return Err(data_err("PPO-ptx: no pretraining text"));
        }
        Ok(Self {
            beta: cfg.beta,
            policy,
            reference,
            reward,
            prompts,
            ptx_train,
            ptx_val,
            test,
            baseline,
            cfg,
            eval_seed,
            rollout: None,
            queue: Vec::new(),
            rollouts: 0,
            value_model: None,
            trainable: None,
        })
    }

    /// Uses `value` (trunk + scalar head) as the value function instead of the policy's head.
    pub fn with_value_model(mut self, value: &'a Lm) -> Result<Self> {
        if value.head.is_none() {
            return Err(data_err("PPO: the value model has no scalar head"));
        }
        self.value_model = Some(value);
        Ok(self)
    }

    /// Trains only `params` of the policy's trunk (e.g. its LoRA adapters, attached to
    /// `policy.gpt` by the caller) instead of all of it; the policy's value head, when it is the
    /// value function, stays trainable.
    pub fn with_trainable(mut self, params: Vec<canon_train::Param>) -> Self {
        self.trainable = Some(params);
        self
    }

    /// The policy's trainable parameters: the trunk's (or those set by
    /// [`PpoObjective::with_trainable`]) and its head's when it has one.
    fn policy_params(&self) -> Vec<canon_train::Param> {
        match &self.trainable {
            None => self.policy.params(),
            Some(t) => {
                let mut p = t.clone();
                p.extend(
                    self.policy
                        .params()
                        .into_iter()
                        .filter(|p| p.name.starts_with("head.")),
                );
                p
            }
        }
    }

    /// The parameters the optimizer must update: the policy's (its head only when it is the value
    /// function) and the separate value model's, named `value.*`.
    pub fn params(&self) -> Vec<canon_train::Param> {
        match self.value_model {
            None => self.policy_params(),
            Some(v) => {
                let mut p: Vec<canon_train::Param> = self
                    .policy_params()
                    .into_iter()
                    .filter(|p| !p.name.starts_with("head."))
                    .collect();
                p.extend(v.params().into_iter().map(|mut q| {
                    q.name = format!("value.{}", q.name);
                    q
                }));
                p
            }
        }
    }

    fn new_rollout(&mut self, rng: &mut SplitMix64) -> Result<()> {
        if self.policy.head.is_none() && self.value_model.is_none() {
            return Err(data_err(
                "PPO: the policy needs a value head (or a separate value model)",
            ));
        }
        let c = &self.cfg;
        let problems: Vec<Problem> = draw(self.prompts, c.rollout_prompts, rng)
            .into_iter()
            .copied()
            .collect();
        let prompts: Vec<Vec<u32>> = problems.iter().map(Problem::prompt_ids).collect();
        let responses = self
            .policy
            .sample(&prompts, c.max_new, 1.0, rng.next_u64())?;
        if responses.iter().any(Vec::is_empty) {
            return Err(data_err(
                "PPO: a prompt left no room for a response in the model's context",
            ));
        }
        let seqs: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&responses)
            .map(|(p, r)| [p.as_slice(), r.as_slice()].concat())
            .collect();
        let prompt_len: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let pol = score_tokens(self.policy, &seqs, &prompt_len, Some(self.value_model))?;
        let refs = score_tokens(self.reference, &seqs, &prompt_len, None)?;
        let scores = (self.reward)(&problems, &responses)?;
        if scores.len() != seqs.len() {
            return Err(data_err(format!(
                "PPO: the reward gave {} scores for {} responses",
                scores.len(),
                seqs.len()
            )));
        }
        let mut adv_rows = Vec::with_capacity(seqs.len());
        let mut ret_rows = Vec::with_capacity(seqs.len());
        let (mut kl, mut non_score) = (0.0, 0.0);
        let mut reward_rows = Vec::with_capacity(seqs.len());
        for (i, &score) in scores.iter().enumerate() {
            let r = kl_rewards(&pol.logp[i], &refs.logp[i], self.beta, score);
            kl += pol.logp[i]
                .iter()
                .zip(&refs.logp[i])
                .map(|(a, b)| a - b)
                .sum::<f64>();
            non_score += r.iter().sum::<f64>() - score;
            reward_rows.push(r);
        }
        if c.whiten_rewards {
            whiten_rows(&mut reward_rows, false);
        }
        for (i, r) in reward_rows.iter().enumerate() {
            let (a, ret) = gae(r, &pol.values[i], c.gamma, c.lam);
            adv_rows.push(a);
            ret_rows.push(ret);
        }
        // Advantages whitened over every token of the rollout.
        whiten_rows(&mut adv_rows, true);
        let n = seqs.len() as f64;
        let gold = problems
            .iter()
            .zip(&responses)
            .map(|(p, r)| judge(p, &response_text(r)).score())
            .sum::<f64>()
            / n;
        let beta_used = self.beta;
        if let Some(target) = c.kl_target {
            let mut ctl = AdaptiveKl {
                value: self.beta,
                target,
                horizon: c.kl_horizon,
            };
            self.beta = ctl.update(kl / n, seqs.len());
        }
        let stats = vec![
            ("reward".into(), scores.iter().sum::<f64>() / n),
            ("kl".into(), kl / n),
            ("beta".into(), beta_used),
            ("non_score_reward".into(), non_score / n),
            (
                "entropy".into(),
                pol.entropy.iter().sum::<f64>() / pol.entropy.len().max(1) as f64,
            ),
            ("gold".into(), gold),
            (
                "response_length".into(),
                responses.iter().map(Vec::len).sum::<usize>() as f64 / n,
            ),
        ];
        // The minibatches of every epoch, each epoch in a fresh shuffled order.
        let mut queue = Vec::new();
        let rows = seqs.len();
        for _ in 0..c.ppo_epochs {
            let mut order: Vec<usize> = (0..rows).collect();
            for i in (1..rows).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let per = rows.div_ceil(c.minibatches);
            for mb in order.chunks(per) {
                queue.push(mb.to_vec());
            }
        }
        queue.reverse();
        self.queue = queue;
        self.rollout = Some(Rollout {
            seqs,
            prompt_len,
            old_logp: pol.logp,
            values: pol.values,
            adv: adv_rows,
            returns: ret_rows,
            stats,
        });
        self.rollouts += 1;
        Ok(())
    }
}

/// [`whiten`] over every value of every row.
fn whiten_rows(rows: &mut [Vec<f64>], shift_mean: bool) {
    let mut flat: Vec<f64> = rows.iter().flatten().copied().collect();
    whiten(&mut flat, shift_mean);
    let mut off = 0;
    for a in rows.iter_mut() {
        let n = a.len();
        a.copy_from_slice(&flat[off..off + n]);
        off += n;
    }
}

fn tensor(rows: &[usize], src: &[Vec<f64>]) -> Result<Tensor> {
    let v: Vec<f32> = rows
        .iter()
        .flat_map(|&i| src[i].iter().map(|&x| x as f32))
        .collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
}

impl Objective for PpoObjective<'_> {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        if self.queue.is_empty() {
            self.new_rollout(rng)?;
        }
        let mb = self
            .queue
            .pop()
            .ok_or_else(|| data_err("PPO: empty minibatch queue"))?;
        let ro = self
            .rollout
            .as_ref()
            .ok_or_else(|| data_err("PPO: no rollout"))?;
        let seqs: Vec<Vec<u32>> = mb.iter().map(|&i| ro.seqs[i].clone()).collect();
        let pl: Vec<usize> = mb.iter().map(|&i| ro.prompt_len[i]).collect();
        let (ids, t) = pad(&seqs)?;
        let h = self.policy.hidden(&ids)?;
        let lp = token_logprobs(&self.policy.logits(&h)?, &ids)?;
        let (ilp, iv) = positions(&seqs, &pl, t);
        let new_lp = select(&lp, &ilp)?;
        let new_v = match self.value_model {
            Some(vm) => select(&vm.head_values(&vm.hidden(&ids)?)?, &iv)?,
            None => select(&self.policy.head_values(&h)?, &iv)?,
        };
        let old_lp = tensor(&mb, &ro.old_logp)?;
        let old_v = tensor(&mb, &ro.values)?;
        let adv = tensor(&mb, &ro.adv)?;
        let ret = tensor(&mb, &ro.returns)?;
        let c = &self.cfg;
        let (pg, clipfrac) = clipped_pg_loss(&new_lp, &old_lp, &adv, c.cliprange)?;
        let vf = clipped_value_loss(&new_v, &old_v, &ret, c.cliprange_value)?;
        let approx_kl = {
            let d: Vec<f32> = (&new_lp - &old_lp)?.detach().to_vec1()?;
            d.iter().map(|&x| 0.5 * (x as f64).powi(2)).sum::<f64>() / d.len().max(1) as f64
        };
        let pg_v = pg.to_scalar::<f32>()? as f64;
        let vf_v = vf.to_scalar::<f32>()? as f64;
        let mut total = (pg + (vf * c.vf_coef)?)?;
        let mut extra = ro.stats.clone();
        if c.ptx_coef > 0.0 {
            let batch = draw(self.ptx_train, c.ptx_batch, rng);
            let (nll, _) = response_nll(self.policy, &batch)?;
            extra.push(("ptx_loss".into(), nll.to_scalar::<f32>()? as f64));
            total = (total + (nll * c.ptx_coef)?)?;
        }
        extra.extend([
            ("pg_loss".to_string(), pg_v),
            ("value_loss".to_string(), vf_v),
            ("clipfrac".to_string(), clipfrac),
            ("approx_kl".to_string(), approx_kl),
        ]);
        Ok(BatchLoss {
            loss: total.to_scalar::<f32>()? as f64,
            total,
            tokens: seqs.iter().map(Vec::len).sum(),
            extra,
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let mut m = Vec::new();
        if !self.test.is_empty() {
            let e = evaluate_policy(self.policy, self.test, self.eval_seed)?;
            m.extend(e.metrics("eval_"));
            if let Some(b) = self.baseline {
                m.push(("eval_win_rate".into(), e.win_rate(b)));
            }
        }
        if !self.ptx_val.is_empty() {
            m.push((
                "eval_ptx_nll".into(),
                mean_nll(self.policy, self.ptx_val, 256)?,
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests;
