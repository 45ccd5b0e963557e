//! RLAIF end to end (Lee et al., 2023, paper 29), in the addition miniature.
//!
//! 1. Pairs: for each of the first `pairs` training prompts of the RM stage, two of its sampled
//!    responses with different texts (the first response and the next one that differs). The gold
//!    judge gives each pair a hard label (1, 0, or ½ on a tie); the AI labeller gives the debiased
//!    soft label `P(a ≻ b) = (P₁(a | a,b) + 1 − P₁(b | b,a)) / 2` (both orders, as the paper does).
//!    The labels are kept in `rlaif/labels.json` and reused by a later run with the same pairs and
//!    labeller.
//! 2. Two reward models, identical but for the labels: each starts from the SFT trunk with a zero
//!    head and is trained on the same pairs with the same soft-label cross-entropy
//!    ([`crate::losses::soft_pair_loss`], the paper's distillation loss; on hard labels it is the
//!    usual pairwise loss), then shifted so the SFT demonstrations average 0. Held-out pair
//!    accuracy is measured on the RM stage's held-out groups (gold rankings).
//! 3. RL: PPO from SFT against each RM (RLHF-style = gold-label RM, RLAIF = AI-label RM) and
//!    direct RLAIF (d-RLAIF: the labeller rates each sampled response from 1 to 10; the expected
//!    rating mapped to [−1, 1] is the reward, no reward model), with the same PPO settings.
//! 4. The gold judge scores every policy's samples on the held-out prompts; win rates against the
//!    SFT policy and RLAIF against the RLHF-style policy head to head.
//!
//! The parts: `pairs` (the experiment's pairs and their labels), `soft_rm` (reward models on soft
//! labels); the settings, the report, the run and the plot are here.

mod pairs;
mod soft_rm;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use canon_plot::{Figure, Series};
use canon_train::StepReport;
use serde::{Deserialize, Serialize};

use crate::eval::evaluate_policy;
use crate::lm::Lm;
use crate::pipeline::{
    EVAL_SEED, PpoOpts, Report, ValueInit, io, load_groups, ppo_with, rm_reward, sft_baseline,
    write_json,
};
use crate::rlaif::Labeller;
use crate::task::{Problem, response_text, split};
use crate::{Result, data_err};

pub use pairs::*;
pub use soft_rm::*;

/// The experiment's settings.
#[derive(Debug, Clone)]
pub struct RlaifOpts {
    /// Training pairs labelled by both the judge and the labeller (one per prompt).
    pub pairs: usize,
    pub rm: SoftRmOpts,
    /// PPO settings shared by every arm (`name` and `reward` are set per arm).
    pub ppo: PpoOpts,
    /// Also run direct RLAIF (the labeller scores every rollout response).
    pub d_rlaif: bool,
}

impl RlaifOpts {
    /// At least one rollout, reward-model epoch and batch, a valid PPO configuration, and the RM
    /// stage's groups in `dir` (the message names the flags, or the stages to run first).
    pub fn check(&self, dir: &Path) -> std::result::Result<(), String> {
        if self.ppo.rollouts == 0 || self.rm.epochs == 0 || self.rm.batch == 0 {
            return Err("--rollouts, --rm-epochs and --rm-batch must be at least 1".into());
        }
        self.ppo.cfg.validate()?;
        let groups = dir.join("rm/groups.json");
        if !groups.is_file() {
            return Err(format!(
                "{}: missing (run `canon align sft` and `canon align rm` first)",
                groups.display()
            ));
        }
        Ok(())
    }
}

/// One policy of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: String,
    /// The reward: `gold-label RM`, `AI-label RM`, `AI rating (d-RLAIF)`.
    pub reward: String,
    /// Held-out pair accuracy of the arm's reward model (gold rankings), if it has one.
    pub rm_pair_accuracy: Option<f64>,
    pub gold: f64,
    pub correct: f64,
    pub on_format: f64,
    pub win_rate_vs_sft: f64,
    pub kl_last_quarter: f64,
    pub seconds: f64,
}

/// The whole comparison (`rlaif/report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlaifReport {
    pub labeller: String,
    pub pairs: usize,
    pub strict_pairs: usize,
    pub agreement_one_order: f64,
    pub agreement_both_orders: f64,
    pub mean_p_first_shown: f64,
    /// Seconds spent labelling pairs (0 when the labels were reused).
    pub label_seconds: f64,
    pub sft_gold: f64,
    pub sft_correct: f64,
    pub arms: Vec<ArmResult>,
    /// Win rate of the RLAIF policy over the RLHF-style policy (same prompts, gold judge).
    pub rlaif_vs_rlhf: f64,
    /// Win rate of the d-RLAIF policy over the RLHF-style policy, if run.
    pub d_rlaif_vs_rlhf: Option<f64>,
}

impl RlaifReport {
    /// The comparison as a Markdown table, with the labeller's agreement above it.
    pub fn table(&self) -> String {
        let mut t = format!(
            "labeller {}: {} training pairs ({} strictly ranked by the judge), agreement with the \
             gold judge {:.3} in one order, {:.3} with the order swap; mean P(first shown wins) \
             {:.3}; labelling {:.0} s\n\n",
            self.labeller,
            self.pairs,
            self.strict_pairs,
            self.agreement_one_order,
            self.agreement_both_orders,
            self.mean_p_first_shown,
            self.label_seconds
        );
        t.push_str(
            "| policy | reward | RM held-out pair accuracy | gold score | correct | on-format | \
             win rate vs SFT | KL (last quarter) | time |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        t.push_str(&format!(
            "| SFT | — | — | {:.3} | {:.3} | — | — | — | — |\n",
            self.sft_gold, self.sft_correct
        ));
        for a in &self.arms {
            t.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.0} s |\n",
                a.arm,
                a.reward,
                a.rm_pair_accuracy
                    .map_or("—".to_string(), |x| format!("{x:.3}")),
                a.gold,
                a.correct,
                a.on_format,
                a.win_rate_vs_sft,
                a.kl_last_quarter,
                a.seconds
            ));
        }
        t.push_str(&format!(
            "\nRLAIF vs RLHF-style, head to head (gold judge): {:.3}\n",
            self.rlaif_vs_rlhf
        ));
        if let Some(d) = self.d_rlaif_vs_rlhf {
            t.push_str(&format!("d-RLAIF vs RLHF-style, head to head: {d:.3}\n"));
        }
        t
    }
}

/// Progress: `(stage, position, length)`.
pub type Progress<'a> = dyn FnMut(&str, u64, u64) + 'a;

fn arm_result(arm: &str, reward: &str, rm_acc: Option<f64>, r: &Report) -> ArmResult {
    let g = |k: &str| r.get(k).unwrap_or(f64::NAN);
    ArmResult {
        arm: arm.into(),
        reward: reward.into(),
        rm_pair_accuracy: rm_acc,
        gold: g("test_gold"),
        correct: g("test_correct"),
        on_format: g("test_on_format"),
        win_rate_vs_sft: g("win_rate_vs_sft"),
        kl_last_quarter: g("kl_last_quarter"),
        seconds: r.seconds,
    }
}

/// Runs the comparison in `dir` (which holds `sft/` and `rm/groups.json`), writing
/// `dir/rlaif/{labels.json, rm-gold, rm-ai, ppo-*, report.json, rlaif.png}`.
pub fn run(
    dir: &Path,
    seed: u64,
    labeller: &mut dyn Labeller,
    o: &RlaifOpts,
    on: &mut Progress,
) -> Result<RlaifReport> {
    if o.pairs < 2 {
        return Err(data_err(format!(
            "RLAIF: --pairs must be at least 2, found {}",
            o.pairs
        )));
    }
    let groups = load_groups(dir)?;
    let raw = experiment_pairs(&groups.train, o.pairs);
    if raw.len() < 2 {
        return Err(data_err(
            "RLAIF: fewer than 2 training prompts have two different sampled responses",
        ));
    }
    let out = dir.join("rlaif");
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let (pairs, label_seconds) = label_all(dir, labeller, raw, on)?;
    let (one, both, strict) = agreement(&pairs)
        .ok_or_else(|| data_err("RLAIF: the judge ties every pair; no agreement to measure"))?;
    let mean_first =
        pairs.iter().map(|p| (p.p_ab + p.p_ba) / 2.0).sum::<f64>() / pairs.len() as f64;

    let rm_steps = o.rm.epochs * pairs.len().div_ceil(o.rm.batch.max(1)) as u64;
    let mut rm_acc = Vec::new();
    for (name, labels) in [
        ("rm-gold", pairs.iter().map(|p| p.gold).collect::<Vec<_>>()),
        ("rm-ai", pairs.iter().map(LabelledPair::ai).collect()),
    ] {
        let mut cb = |r: &StepReport| on(name, r.step, rm_steps);
        let acc = train_soft_rm(
            dir,
            &out.join(name),
            seed,
            &pairs,
            labels,
            &groups.val,
            &o.rm,
            &mut cb,
        )?;
        rm_acc.push(acc);
    }

    let ppo_steps = o.ppo.rollouts * o.ppo.cfg.steps_per_rollout();
    let mut arms = Vec::new();
    let mut policies = Vec::new();
    for (i, (rm_name, label)) in [("rm-gold", "gold-label RM"), ("rm-ai", "AI-label RM")]
        .into_iter()
        .enumerate()
    {
        let rm_dir = out.join(rm_name);
        let rm = Lm::load(&rm_dir)?;
        let reward = rm_reward(&rm);
        let name = format!("rlaif/ppo-{rm_name}");
        let opts = PpoOpts {
            name: name.clone(),
            ..o.ppo.clone()
        };
        let value_from = (o.ppo.value == ValueInit::RewardModel).then_some(rm_dir.as_path());
        let mut cb = |r: &StepReport| on(&name, r.step, ppo_steps);
        let r = ppo_with(dir, seed, &opts, &reward, value_from, &mut cb)?;
        arms.push(arm_result(
            if i == 0 { "RLHF-style" } else { "RLAIF" },
            label,
            Some(rm_acc[i]),
            &r,
        ));
        policies.push(dir.join(&name));
    }
    if o.d_rlaif {
        let cell = RefCell::new(&mut *labeller);
        let reward = |probs: &[Problem], resp: &[Vec<u32>]| -> Result<Vec<f64>> {
            let mut l = cell.borrow_mut();
            probs
                .iter()
                .zip(resp)
                .map(|(p, r)| l.d_rlaif_reward(p, &response_text(r)))
                .collect()
        };
        let name = "rlaif/ppo-d-rlaif".to_string();
        let opts = PpoOpts {
            name: name.clone(),
            ..o.ppo.clone()
        };
        let mut cb = |r: &StepReport| on(&name, r.step, ppo_steps);
        let r = ppo_with(dir, seed, &opts, &reward, None, &mut cb)?;
        arms.push(arm_result("d-RLAIF", "AI rating 1–10", None, &r));
        policies.push(dir.join(&name));
    }

    let (_, test) = split(seed);
    let base = sft_baseline(dir, &test)?;
    let mut evals = Vec::new();
    for p in &policies {
        evals.push(evaluate_policy(&Lm::load(p)?, &test, EVAL_SEED)?);
    }
    let rlaif_vs_rlhf = evals[1].win_rate(&evals[0]);
    let d_rlaif_vs_rlhf = evals.get(2).map(|e| e.win_rate(&evals[0]));
    let report = RlaifReport {
        labeller: labeller.name(),
        pairs: pairs.len(),
        strict_pairs: strict,
        agreement_one_order: one,
        agreement_both_orders: both,
        mean_p_first_shown: mean_first,
        label_seconds,
        sft_gold: base.gold,
        sft_correct: base.correct,
        arms,
        rlaif_vs_rlhf,
        d_rlaif_vs_rlhf,
    };
    write_json(&out.join("report.json"), &report)?;
    plot(&policies, &report, &out.join("rlaif.png"))?;
    Ok(report)
}

/// `rlaif.png`: the gold judge's mean score of each arm's rollouts per optimizer step.
pub fn plot(runs: &[PathBuf], report: &RlaifReport, out: &Path) -> Result<()> {
    let mut fig = Figure::new(&format!(
        "RLAIF vs RLHF-style PPO ({} pairs, labeller {})",
        report.pairs, report.labeller
    ))
    .x_title("optimizer step")
    .y_title("gold score of the rollout (mean of 16 steps)");
    for (run, arm) in runs.iter().zip(&report.arms) {
        let lines = canon_train::metrics::read_lines(&run.join("metrics.jsonl"))?;
        let pts: Vec<(f64, f64)> = lines
            .iter()
            .filter_map(|l| l.extra.get("gold").map(|&v| (l.step as f64, v)))
            .collect();
        fig = fig.series(Series::line(
            &format!("{} ({})", arm.arm, arm.reward),
            canon_plot::moving_average(&pts, 16),
        ));
    }
    let sft: Vec<(f64, f64)> = runs
        .first()
        .and_then(|r| canon_train::metrics::read_lines(&r.join("metrics.jsonl")).ok())
        .map(|l| l.iter().map(|x| (x.step as f64, report.sft_gold)).collect())
        .unwrap_or_default();
    fig = fig.series(Series::line("SFT (held-out)", sft));
    fig.save(out).map_err(|e| io(out, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rm::Group;

    #[test]
    fn rlaif_settings_are_checked_before_the_labeller_loads() {
        let d = tempfile::tempdir().unwrap();
        let mut o = RlaifOpts {
            pairs: 8,
            rm: SoftRmOpts {
                epochs: 1,
                batch: 4,
                lr: 1e-3,
            },
            ppo: PpoOpts {
                name: "rlaif".into(),
                rollouts: 1,
                lr: 3e-4,
                reward: crate::pipeline::RewardKind::Model,
                value: ValueInit::RewardModel,
                cfg: crate::ppo::PpoConfig::default(),
            },
            d_rlaif: true,
        };
        let e = o.check(d.path()).unwrap_err();
        assert!(
            e.ends_with(
                "rm/groups.json: missing (run `canon align sft` and `canon align rm` first)"
            ),
            "{e}"
        );
        std::fs::create_dir_all(d.path().join("rm")).unwrap();
        std::fs::write(d.path().join("rm/groups.json"), "{}").unwrap();
        assert_eq!(o.check(d.path()), Ok(()));
        o.rm.batch = 0;
        let e = o.check(d.path()).unwrap_err();
        assert_eq!(
            e,
            "--rollouts, --rm-epochs and --rm-batch must be at least 1"
        );
        o.rm.batch = 4;
        o.ppo.cfg.minibatches = 0;
        assert!(o.check(d.path()).unwrap_err().starts_with("PPO:"));
    }

    fn lp(gold: f64, p_ab: f64, p_ba: f64) -> LabelledPair {
        LabelledPair {
            problem: Problem { a: 1, b: 2 },
            a: vec![1],
            b: vec![2],
            gold,
            p_ab,
            p_ba,
        }
    }

    #[test]
    fn agreement_counts_strict_pairs_only_and_debiases_by_the_swap() {
        // A labeller that always prefers the first shown answer (0.9) agrees in one order exactly
        // when the gold winner is `a`; after the swap it is a 0.5 tie, which is not agreement.
        let pairs = vec![lp(1.0, 0.9, 0.9), lp(0.0, 0.9, 0.9), lp(0.5, 0.9, 0.9)];
        let (one, both, n) = agreement(&pairs).unwrap();
        assert_eq!(n, 2);
        assert_eq!(one, 0.5);
        assert_eq!(both, 0.0);
        let good = vec![lp(1.0, 0.8, 0.3), lp(0.0, 0.3, 0.8)];
        assert_eq!(agreement(&good).unwrap(), (1.0, 1.0, 2));
        assert!(agreement(&[lp(0.5, 0.6, 0.4)]).is_none());
        assert!((good[0].ai() - 0.75).abs() < 1e-12);
    }

    #[test]
    fn experiment_pairs_take_two_different_responses_with_the_gold_order() {
        let g = |scores: Vec<f64>, resp: Vec<Vec<u32>>| Group {
            problem: Problem { a: 3, b: 4 },
            responses: resp,
            scores,
        };
        let groups = vec![
            g(vec![1.0, 1.0, 3.5], vec![vec![5], vec![5], vec![6]]),
            g(vec![2.0, 2.0], vec![vec![7], vec![7]]),
            g(vec![0.0, 3.5], vec![vec![8], vec![9]]),
            g(vec![3.5, 3.5], vec![vec![8], vec![9]]),
        ];
        let p = experiment_pairs(&groups, 10);
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].1.clone(), p[0].2.clone(), p[0].3),
            (vec![5], vec![6], 0.0)
        );
        assert_eq!(p[1].3, 0.0); // 0.0 < 3.5: b wins
        assert_eq!(p[2].3, 0.5);
        assert_eq!(experiment_pairs(&groups, 1).len(), 1);
    }
}
