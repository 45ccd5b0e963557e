//! `canon align rlaif`: an LLM labels the preference pairs (`canon_align::rlaif_run`).

use anyhow::Context;
use canon_align::rlaif::LmLabeller;
use canon_align::rlaif_remote::RemoteLabeller;
use canon_align::rlaif_run::{RlaifOpts, SoftRmOpts};
use clap::Args;
use indicatif::ProgressBar;

use super::Common;
use super::rlhf::{PpoKnobs, ppo_opts};
use crate::Ctx;

#[derive(Args, Debug)]
#[command(
    after_help = "Example (SFT and RM stages first; about 15 minutes on 2 cores):
  canon --threads 1 align rlaif --dir runs/align --model smollm2 --pairs 120 --rollouts 12
  canon --threads 1 align rlaif --dir runs/align --model gemma3 --pairs 120 --cot-tokens 48
  canon --threads 1 align rlaif --dir runs/align --url http://127.0.0.1:8080 --remote-model gpt-4o-mini"
)]
pub struct RlaifArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub knobs: PpoKnobs,
    /// The labeller: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Label with an OpenAI-compatible server (base URL) instead of --model: its chat completions
    /// with `logprobs` and `top_logprobs` (canon serve, llama-server, vLLM...).
    #[arg(long)]
    pub url: Option<String>,
    /// Model name sent to --url.
    #[arg(long, default_value = "default")]
    pub remote_model: String,
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
    /// Chain-of-thought labelling: the labeller writes a rationale of at most this many tokens
    /// (greedy) before its preference is read; 0 reads it at once.
    #[arg(long, value_name = "TOKENS", default_value_t = 0)]
    pub cot_tokens: usize,
}

pub(super) fn run(a: RlaifArgs, ctx: &Ctx, pb: &ProgressBar) -> anyhow::Result<()> {
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
    let mut on = |stage: &str, pos: u64, len: u64| {
        if pb.message() != stage {
            pb.set_message(stage.to_string());
        }
        pb.set_length(len);
        pb.set_position(pos);
    };
    let c = &a.common;
    let (r, calls, rationale) = match &a.url {
        Some(url) => {
            let mut labeller = RemoteLabeller::new(url, &a.remote_model)?;
            if a.cot_tokens > 0 {
                labeller = labeller.with_chain_of_thought(a.cot_tokens)?;
            }
            let r = canon_align::rlaif_run::run(&c.dir, c.seed, &mut labeller, &o, &mut on)
                .context("RLAIF experiment failed")?;
            (r, labeller.calls, labeller.rationales.first().cloned())
        }
        None => {
            let spec = canon_models::ModelSpec::parse(&a.model)?;
            let mode = canon_models::WeightMode::DequantizeF32;
            let lm = canon_models::load_causal_lm(&spec, mode, ctx.progress())
                .with_context(|| format!("cannot load the labeller {}", a.model))?;
            let mut labeller = LmLabeller::new(&lm)?;
            if a.cot_tokens > 0 {
                labeller = labeller.with_chain_of_thought(a.cot_tokens)?;
            }
            let r = canon_align::rlaif_run::run(&c.dir, c.seed, &mut labeller, &o, &mut on)
                .context("RLAIF experiment failed")?;
            (r, labeller.calls, labeller.rationales.first().cloned())
        }
    };
    pb.finish_and_clear();
    print!("{}", r.table());
    println!("  labeller prompts evaluated: {calls}");
    if let Some(why) = rationale {
        println!("  first rationale: {why:?}");
    }
    println!(
        "  report and plot: {}/rlaif/{{report.json, rlaif.png}}",
        c.dir.display()
    );
    Ok(())
}
