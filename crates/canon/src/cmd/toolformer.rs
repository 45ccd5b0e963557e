//! `canon toolformer`: the Toolformer pipeline (paper 24), one rerunnable stage per subcommand over
//! a work folder.

use std::path::{Path, PathBuf};

use canon_agent::toolformer_work as work;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon toolformer data --work runs/tf                     # arithmetic texts from the package database
  canon toolformer sample --work runs/tf --limit 40        # stages 1-2: positions by p([), sampled calls
  canon toolformer execute --work runs/tf                  # stage 3: run the calls
  canon toolformer filter --work runs/tf --tau-f 1.0       # stage 4: L- - L+ >= tau_f; writes augmented.jsonl
  canon toolformer run --work runs/tf --limit 40           # all stages
  canon toolformer eval --work runs/tf --limit 40 --tools  # held-out texts, calls executed on ->
  canon finetune --method lora --data runs/tf/augmented.jsonl --out runs/tf-lora   # stage 5

Files in the work folder: texts.jsonl, candidates.jsonl (every call with its position, p, result,
losses and decision), augmented.jsonl ({prompt: \"\", completion: text with the kept call}),
counts.json (how many texts, positions, sampled, parsed, executed and kept calls).")]
pub struct ToolformerArgs {
    #[command(subcommand)]
    pub stage: Stage,
}

#[derive(Subcommand, Debug)]
pub enum Stage {
    /// Build texts.jsonl: sums, differences, ratios and means of packages' installed sizes.
    Data(DataArgs),
    /// Stages 1 and 2: top-k positions by p(`[`), then m sampled calls at each.
    Sample(SampleArgs),
    /// Stage 3: execute the sampled calls.
    Execute(WorkArgs),
    /// Stage 4: the weighted-loss filter; writes augmented.jsonl and counts.json.
    Filter(FilterArgs),
    /// Every stage in a row.
    Run(RunArgs),
    /// Held-out texts: does the model complete the computed number? (--tools: Toolformer inference)
    Eval(EvalArgs),
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Test texts to score.
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    /// Run calls the model writes (`[Calculator(...) ->`) and insert their results.
    #[arg(long)]
    pub tools: bool,
    /// Tokens generated per text.
    #[arg(long, default_value_t = 24)]
    pub max_tokens: usize,
}

#[derive(Args, Debug)]
pub struct WorkArgs {
    /// The work folder.
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")]
    pub status: PathBuf,
    /// Texts to generate.
    #[arg(long, default_value_t = 400)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Train texts to annotate (in file order).
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    /// Positions kept per text (k).
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Position threshold tau_s.
    #[arg(long, default_value_t = 0.05)]
    pub tau_s: f64,
    /// Calls sampled per position (m).
    #[arg(long, default_value_t = 5)]
    pub m: usize,
    /// Sampling temperature of the calls.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct FilterArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Filter threshold tau_f.
    #[arg(long, default_value_t = 1.0)]
    pub tau_f: f64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub sample: SampleArgs,
    #[arg(long, default_value_t = 1.0)]
    pub tau_f: f64,
    #[arg(long, default_value_t = 400)]
    pub n: usize,
    #[arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")]
    pub status: PathBuf,
}

pub fn run(a: ToolformerArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.stage {
        Stage::Data(d) => data(&d.work, &d.status, d.n, d.seed),
        Stage::Sample(s) => sample(&s, ctx),
        Stage::Execute(w) => execute(&w.work),
        Stage::Filter(f) => filter(&f.work, &f.model, f.tau_f, ctx),
        Stage::Eval(e) => eval(&e, ctx),
        Stage::Run(r) => {
            data(&r.sample.work, &r.status, r.n, r.sample.seed)?;
            sample(&r.sample, ctx)?;
            execute(&r.sample.work)?;
            filter(&r.sample.work, &r.sample.model, r.tau_f, ctx)
        }
    }
}

fn data(work: &Path, status: &Path, n: usize, seed: u64) -> anyhow::Result<()> {
    let (n, test) = work::write_texts(work, status, n, seed)?;
    eprintln!(
        "canon: {n} texts ({} train, {test} test) in {}",
        n - test,
        work.join("texts.jsonl").display()
    );
    Ok(())
}

/// A progress bar driven by `(done, total)` reports.
fn steps<'a>(ctx: &'a Ctx, what: &'a str) -> impl FnMut(usize, usize) + 'a {
    let mut pb: Option<indicatif::ProgressBar> = None;
    move |done, total| {
        let b = pb.get_or_insert_with(|| crate::progress::items(ctx.quiet, total, what));
        b.set_position(done as u64);
        if done == total {
            b.finish_and_clear();
        }
    }
}

fn sample(a: &SampleArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let o = work::SampleOpts {
        limit: a.limit,
        tau_s: a.tau_s,
        k: a.k,
        m: a.m,
        temperature: a.temperature,
        seed: a.seed,
    };
    let (mut texts, mut calls) = (steps(ctx, "positions"), steps(ctx, "calls"));
    let counts = work::sample_stage(&a.work, lm, &o, &mut texts, &mut calls)?;
    eprintln!(
        "canon: {} texts, {} positions, {} distinct sampled calls, {} parsed",
        counts.texts, counts.positions, counts.sampled, counts.parsed
    );
    Ok(())
}

fn execute(work: &Path) -> anyhow::Result<()> {
    let (executed, calls) = work::execute_calls(work)?;
    eprintln!("canon: {executed} of {calls} calls executed");
    Ok(())
}

fn filter(work: &Path, model: &str, tau_f: f64, ctx: &Ctx) -> anyhow::Result<()> {
    let texts = work::load_texts(work)?;
    let cands = work::load_cands(work)?;
    work::check_candidates(&texts, &cands)?;
    let lm = model_gen::load_lm(model, ctx)?;
    let summary = work::filter_calls(work, &texts, cands, &lm, tau_f)?;
    println!("{summary}");
    Ok(())
}

fn eval(a: &EvalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let name = lm.name.clone();
    let mut on = steps(ctx, "eval");
    let (n, right, calls) = work::eval_stage(&a.work, lm, a.limit, a.tools, a.max_tokens, &mut on)?;
    println!(
        "{}",
        json!({"model": name, "lora": ctx.lora, "tools": a.tools, "texts": n,
            "correct": right, "accuracy": right as f64 / n as f64, "calls": calls})
    );
    Ok(())
}
