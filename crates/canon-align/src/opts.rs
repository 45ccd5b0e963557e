//! `canon align`'s command line (with the `cli` feature clap's derive, the doc comments being the
//! `--help` text): one subcommand per stage, each a [`Common`] pair (work folder, seed) and the
//! stage's settings, which are the library's own option structs where one exists
//! ([`SftOpts`], [`RmOpts`], [`DpoOpts`], [`PrmOpts`]).

use std::path::PathBuf;

use crate::pipeline::{DpoOpts, PpoOpts, RewardKind, RmOpts, SftOpts, ValueInit};
use crate::ppo::PpoConfig;
use crate::prm::PrmOpts;
use crate::rlaif_run::{RlaifOpts, SoftRmOpts};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples (one thread is fastest for these tiny models):
  canon --threads 1 align sft --dir runs/align
  canon --threads 1 align rm --dir runs/align
  canon --threads 1 align dpo --dir runs/align
  canon --threads 1 align ppo --dir runs/align --value rm
  canon --threads 1 align prm --dir runs/prm
  canon --threads 1 align rlaif --dir runs/align --model smollm2 --pairs 120
  canon --threads 1 align w2s --out runs/w2s")
)]
pub struct AlignArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub command: AlignCommand,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
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
    PrmEval(PrmEvalArgs),
    /// RLAIF: an LLM labels training pairs; reward models on AI vs gold labels, PPO with each,
    /// and direct RLAIF (the LLM's 1–10 rating as the reward); win rates by the gold judge.
    Rlaif(RlaifArgs),
    /// Weak-to-strong: PGR on three gettext classification tasks, with and without the
    /// auxiliary confidence loss.
    W2s(W2sArgs),
    /// Redraw a PPO run's ppo.png and ppo_stats.png from its metrics.jsonl.
    PlotPpo {
        /// The PPO run folder (e.g. runs/align/ppo).
        #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
        run: PathBuf,
    },
}

/// The options every stage shares.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Common {
    /// Work folder: sft/, rm/, dpo/, ppo/, rlaif/ live here.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DIR", default_value = "runs/align")
    )]
    pub dir: PathBuf,
    /// Seed of the prompt split, the data and the initialisation (keep it across stages).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seed: u64,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Example:\n  canon align sft --dir runs/align --steps 1500")
)]
pub struct SftArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub common: Common,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub opts: SftOpts,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Example:\n  canon align rm --dir runs/align --k 4 --train-prompts 1000")
)]
pub struct RmArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub common: Common,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub opts: RmOpts,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Example:\n  canon align dpo --dir runs/align --beta 0.1 --steps 300")
)]
pub struct DpoArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub common: Common,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub opts: DpoOpts,
}

/// PPO settings shared by `ppo` and `rlaif`.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct PpoKnobs {
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub minibatches: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub epochs: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3e-4))]
    pub lr: f64,
    /// Per-token KL coefficient β (the starting value with --kl-target).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.05))]
    pub beta: f64,
    /// Adaptive KL (Ziegler et al.): steer β toward this mean KL per response, in nats.
    #[cfg_attr(feature = "cli", arg(long, value_name = "NATS"))]
    pub kl_target: Option<f64>,
    /// Adaptive KL: the controller's horizon, in responses.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10_000.0))]
    pub kl_horizon: f64,
    /// The value function: `rm` (a separate model initialised from the reward model, as
    /// InstructGPT) or `head` (a zero-initialised head on the policy's trunk).
    #[cfg_attr(feature = "cli", arg(long, default_value = "rm", value_parser = ["rm", "head"]))]
    pub value: String,
    /// Whiten each rollout's per-token rewards (std 1, mean kept) before GAE.
    #[cfg_attr(feature = "cli", arg(long))]
    pub whiten_rewards: bool,
    /// Train the policy as LoRA adapters of this rank on every dense linear, the SFT weights
    /// frozen (merged into the saved policy); 0 trains all of the policy's parameters.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub lora_rank: usize,
    /// LoRA's α (the adapters' update is scaled by α / rank).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16.0))]
    pub lora_alpha: f64,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon align ppo --dir runs/align --rollouts 40
  canon align ppo --dir runs/align --name ppo-head --value head --whiten-rewards
  canon align ppo --dir runs/align --name ppo-ptx --ptx-coef 1
  canon align ppo --dir runs/align --name ppo-lora --lora-rank 8
  canon align ppo --dir runs/align --name ppo-gold --reward gold")
)]
pub struct PpoArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub common: Common,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub knobs: PpoKnobs,
    /// Sub-folder of --dir for this run.
    #[cfg_attr(feature = "cli", arg(long, default_value = "ppo"))]
    pub name: String,
    /// Rollouts (each: --rollout-prompts samples, then epochs × minibatches optimizer steps).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 40))]
    pub rollouts: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub rollout_prompts: usize,
    /// PPO-ptx: weight of the LM loss on the pretraining (demonstration) text; 0 = plain PPO.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub ptx_coef: f64,
    /// The reward: `rm` (the trained reward model) or `gold` (the judge itself, an upper bound).
    #[cfg_attr(feature = "cli", arg(long, default_value = "rm", value_parser = ["rm", "gold"]))]
    pub reward: String,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(
        after_help = "Example (SFT and RM stages first; about 15 minutes on 2 cores):
  canon --threads 1 align rlaif --dir runs/align --model smollm2 --pairs 120 --rollouts 12
  canon --threads 1 align rlaif --dir runs/align --model gemma3 --pairs 120 --cot-tokens 48
  canon --threads 1 align rlaif --dir runs/align --url http://127.0.0.1:8080 --remote-model gpt-4o-mini"
    )
)]
pub struct RlaifArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub common: Common,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub knobs: PpoKnobs,
    /// The labeller: an alias (smollm2), a .gguf file or an HF-style folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Label with an OpenAI-compatible server (base URL) instead of --model: its chat completions
    /// with `logprobs` and `top_logprobs` (canon serve, llama-server, vLLM...).
    #[cfg_attr(feature = "cli", arg(long))]
    pub url: Option<String>,
    /// Model name sent to --url.
    #[cfg_attr(feature = "cli", arg(long, default_value = "default"))]
    pub remote_model: String,
    /// Training pairs labelled by the judge and by the labeller (both orders).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 120))]
    pub pairs: usize,
    /// Reward-model epochs over the pairs (both reward models).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub rm_epochs: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub rm_batch: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1e-3))]
    pub rm_lr: f64,
    /// PPO rollouts of every arm.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 12))]
    pub rollouts: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub rollout_prompts: usize,
    /// Skip direct RLAIF (it calls the labeller on every rollout response).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_d_rlaif: bool,
    /// Chain-of-thought labelling: the labeller writes a rationale of at most this many tokens
    /// (greedy) before its preference is read; 0 reads it at once.
    #[cfg_attr(feature = "cli", arg(long, value_name = "TOKENS", default_value_t = 0))]
    pub cot_tokens: usize,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Example (about 10 minutes on 2 cores):
  canon --threads 1 align prm --dir runs/prm --max-n 64")
)]
pub struct PrmArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub common: Common,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub opts: PrmOpts,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(
        after_help = "Examples:\n  canon align w2s --out runs/w2s --per-class 600 --seeds 5\n  canon align w2s --student finetune --out runs/w2s-ft --per-class 150 --seeds 1 --epochs 3"
    )
)]
pub struct W2sArgs {
    /// Output folder (w2s.json, w2s.png).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DIR", default_value = "runs/w2s")
    )]
    pub out: PathBuf,
    /// Folder of the gettext catalogs.
    #[cfg_attr(feature = "cli", arg(long, default_value = "/usr/share/locale"))]
    pub locale_dir: PathBuf,
    /// Texts per class and task (at most).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 600))]
    pub per_class: usize,
    /// Random splits averaged per task.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub seeds: u64,
    /// The strong model's encoder: an alias (minilm) or an HF-style BERT folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "minilm"))]
    pub encoder: String,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seed: u64,
    /// The strong student: `probe` (logistic regression on the frozen encoder's embeddings) or
    /// `finetune` (the encoder's weights trained too, mean-pooled, linear head; AdamW).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Student::Probe))]
    pub student: Student,
    /// finetune: epochs over the student's training texts.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3))]
    pub epochs: usize,
    /// finetune: peak learning rate of the encoder (linear warm-up 10 %, then linear decay).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5e-5))]
    pub ft_lr: f64,
    /// finetune: peak learning rate of the linear head.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1e-2))]
    pub head_lr: f64,
    /// finetune: minibatch size.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub batch_size: usize,
    /// finetune: longest input in tokens, [CLS] and [SEP] included.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub max_len: usize,
}

/// Which strong student `canon align w2s` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Student {
    /// Linear probe on frozen sentence embeddings.
    Probe,
    /// The whole encoder fine-tuned with a linear head.
    Finetune,
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Which {
    Prm,
    Orm,
    Both,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  # the paper's protocol (400 trials, N = 10 … 1860) on its released scored test samples
  canon align prm-eval --samples scored-test-samples.jsonl --total 1860
  # the samples `canon align prm` scored on its own test problems
  canon align prm-eval --samples runs/prm/scored_test_samples.jsonl --trials 100

Input: one JSON object per line with `problem`, `answer` (or `given_answer`; null = no answer),
`prm_score`, `orm_score` and `is_correct`. Each trial pads every problem with empty slots to
--total, shuffles (Python's `random`, seeded with --seed), keeps the first N, and picks the
highest score among answered samples; the table shows the mean and standard deviation over
trials of the fraction of problems solved.")
)]
pub struct PrmEvalArgs {
    /// Scored samples (JSONL).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub samples: PathBuf,
    /// Which score picks the sample.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "both"))]
    pub method: Which,
    /// Trials per N (the paper: 400).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = crate::prm_eval::PAPER_TRIALS))]
    pub trials: usize,
    /// Comma-separated N values [default: the paper's with --total 1860, else 1, 2, 4, … --total].
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', value_name = "N,N,...")
    )]
    pub ns: Vec<usize>,
    /// Slots per problem before shuffling [default: the most samples any problem has].
    #[cfg_attr(feature = "cli", arg(long))]
    pub total: Option<usize>,
    /// Seed of the shuffles.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Where to write the curves (JSON) and the plot (PNG next to it).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "FILE", default_value = "prm_eval.json")
    )]
    pub out: PathBuf,
}

impl PpoKnobs {
    /// The PPO run named `name`: `rollouts` of `prompts` prompts, PPO-ptx weight `ptx`, against the
    /// reward model.
    pub fn ppo_opts(&self, name: &str, rollouts: u64, prompts: usize, ptx: f64) -> PpoOpts {
        let cfg = PpoConfig {
            rollout_prompts: prompts,
            minibatches: self.minibatches,
            ppo_epochs: self.epochs,
            beta: self.beta,
            kl_target: self.kl_target,
            kl_horizon: self.kl_horizon,
            ptx_coef: ptx,
            whiten_rewards: self.whiten_rewards,
            lora_rank: self.lora_rank,
            lora_alpha: self.lora_alpha,
            ..PpoConfig::default()
        };
        let value = match self.value.as_str() {
            "head" => ValueInit::PolicyHead,
            _ => ValueInit::RewardModel,
        };
        PpoOpts {
            name: name.to_string(),
            rollouts,
            lr: self.lr,
            reward: RewardKind::Model,
            value,
            cfg,
        }
    }
}

impl PpoArgs {
    /// The PPO run's settings, checked.
    pub fn opts(&self) -> Result<PpoOpts, String> {
        let k = &self.knobs;
        let mut o = k.ppo_opts(
            &self.name,
            self.rollouts,
            self.rollout_prompts,
            self.ptx_coef,
        );
        if self.reward == "gold" {
            o.reward = RewardKind::Gold;
        }
        o.check()?;
        Ok(o)
    }
}

impl RlaifArgs {
    /// The experiment's settings, checked against the work folder.
    pub fn opts(&self) -> Result<RlaifOpts, String> {
        let ppo = self
            .knobs
            .ppo_opts("rlaif", self.rollouts, self.rollout_prompts, 0.0);
        let rm = SoftRmOpts {
            epochs: self.rm_epochs,
            batch: self.rm_batch,
            lr: self.rm_lr,
        };
        if let Some(u) = &self.url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(format!(
                "--url: expected an http:// or https:// base URL, found {u:?}"
            ));
        }
        let o = RlaifOpts {
            pairs: self.pairs,
            rm,
            ppo,
            d_rlaif: !self.no_d_rlaif,
        };
        o.check(&self.common.dir)?;
        Ok(o)
    }
}

impl PrmEvalArgs {
    /// The protocol over `samples`: `--total` at least the largest problem's sample count (its
    /// default), the N values between 1 and it.
    pub fn protocol(
        &self,
        samples: &[crate::prm_eval::ScoredSample],
    ) -> Result<crate::prm_eval::Protocol, String> {
        let mut counts = std::collections::HashMap::new();
        for s in samples {
            *counts.entry(s.problem.as_str()).or_insert(0usize) += 1;
        }
        let most = counts.into_values().max().unwrap_or(0);
        let total = self.total.unwrap_or(most);
        if total < most {
            return Err(format!(
                "--total {total} is below the {most} samples of the largest problem"
            ));
        }
        let ns = if self.ns.is_empty() {
            crate::prm_eval::default_ns(total)
        } else {
            self.ns.clone()
        };
        if let Some(n) = ns.iter().find(|&&n| n == 0 || n > total) {
            return Err(format!(
                "each N must be between 1 and --total ({total}), found {n}"
            ));
        }
        Ok(crate::prm_eval::Protocol {
            ns,
            trials: self.trials,
            total,
            seed: self.seed,
        })
    }

    /// The scores `--method` compares.
    pub fn methods(&self) -> &'static [crate::prm_eval::Method] {
        use crate::prm_eval::Method;
        match self.method {
            Which::Prm => &[Method::Prm],
            Which::Orm => &[Method::Orm],
            Which::Both => &[Method::Prm, Method::Orm],
        }
    }
}

/// The best-of-N table of `canon align prm-eval`: a row per N, mean ± sd of each curve.
pub fn prm_eval_table(ns: &[usize], curves: &[crate::prm_eval::Curve]) -> String {
    let mut s = format!("{:>6}", "N");
    for c in curves {
        s.push_str(&format!("  {:>20}", format!("{} mean ± sd", c.method)));
    }
    s.push('\n');
    for (i, n) in ns.iter().enumerate() {
        s.push_str(&format!("{n:>6}"));
        for c in curves {
            s.push_str(&format!(
                "  {:>20}",
                format!("{:.4} ± {:.4}", c.mean[i], c.std[i])
            ));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prm_eval_table_rows() {
        let c = crate::prm_eval::Curve {
            method: "prm",
            ns: vec![1, 2],
            problems: 3,
            trials: vec![],
            mean: vec![0.5, 0.75],
            std: vec![0.0, 0.125],
        };
        let t = prm_eval_table(&[1, 2], &[c]);
        let want = format!(
            "{:>6}  {:>20}\n{:>6}  {:>20}\n{:>6}  {:>20}\n",
            "N", "prm mean ± sd", 1, "0.5000 ± 0.0000", 2, "0.7500 ± 0.1250"
        );
        assert_eq!(t, want);
    }
}
