//! `canon toolformer`: the Toolformer pipeline (paper 24), one rerunnable stage per subcommand over
//! a work folder.

use std::path::{Path, PathBuf};

use canon_agent::toolformer_work as work;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon toolformer data --work runs/tf                     # arithmetic and date texts from the package database
  canon toolformer sample --work runs/tf --limit 40        # stages 1-2: positions by p([), sampled calls
  canon toolformer execute --work runs/tf                  # stage 3: run the calls
  canon toolformer filter --work runs/tf --tau-f 1.0       # stage 4: L- - L+ >= tau_f; writes augmented.jsonl
  canon toolformer run --work runs/tf --limit 40           # all stages
  canon toolformer eval --work runs/tf --limit 40 --tools  # held-out texts, calls started by the top-10 rule
  canon finetune --method lora --data runs/tf/augmented.jsonl --out runs/tf-lora   # stage 5
  canon toolformer compare --work runs/tf --adapter runs/tf-lora --limit 40   # base / fine-tuned, tools off / on

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
    /// Held-out texts: does the model complete the computed number or date? (--tools: Toolformer inference)
    Eval(EvalArgs),
    /// The paper's comparison: base model, fine-tuned with calls disabled, fine-tuned with tools.
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// The LoRA adapter fine-tuned on augmented.jsonl (`canon finetune --method lora --out DIR`).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Test texts to score (the tools' texts in turn).
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    /// A call starts where `[` is among the k most likely next tokens (1: only when it is the argmax).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub call_top_k: u64,
    /// Tokens generated per text.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
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
    /// Toolformer's inference: start a call where `[` is among the top --call-top-k next tokens,
    /// run it when the model writes `->`, insert its result.
    #[arg(long, conflicts_with = "no_calls")]
    pub tools: bool,
    /// A call starts where `[` is among the k most likely next tokens (1: only when it is the
    /// argmax, plain greedy decoding).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub call_top_k: u64,
    /// Never generate `[` (the paper's "Toolformer (disabled)"); without this or --tools,
    /// plain greedy decoding.
    #[arg(long)]
    pub no_calls: bool,
    /// Tokens generated per text.
    #[arg(long, default_value_t = 32)]
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
    /// Arithmetic texts to generate.
    #[arg(long, default_value_t = 400)]
    pub n: usize,
    /// Date texts to generate (their continuation needs `Calendar()`).
    #[arg(long, default_value_t = 100)]
    pub calendar: usize,
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
    /// Date texts to generate.
    #[arg(long, default_value_t = 100)]
    pub calendar: usize,
    #[arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")]
    pub status: PathBuf,
}

pub fn run(a: ToolformerArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.stage {
        Stage::Data(d) => data(&d.work, &d.status, d.n, d.calendar, d.seed),
        Stage::Sample(s) => sample(&s, ctx),
        Stage::Execute(w) => execute(&w.work),
        Stage::Filter(f) => filter(&f.work, &f.model, f.tau_f, ctx),
        Stage::Eval(e) => eval(&e, ctx),
        Stage::Compare(c) => compare(&c, ctx),
        Stage::Run(r) => {
            data(&r.sample.work, &r.status, r.n, r.calendar, r.sample.seed)?;
            sample(&r.sample, ctx)?;
            execute(&r.sample.work)?;
            filter(&r.sample.work, &r.sample.model, r.tau_f, ctx)
        }
    }
}

fn data(work: &Path, status: &Path, n: usize, calendar: usize, seed: u64) -> anyhow::Result<()> {
    let (n, test) = work::write_texts(work, status, n, calendar, seed)?;
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
    use canon_agent::toolformer::CallRule;
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let (rule, out) = if a.tools {
        (CallRule::TopK(a.call_top_k as usize), "eval-tools.jsonl")
    } else if a.no_calls {
        (CallRule::Disabled, "eval-disabled.jsonl")
    } else {
        (CallRule::Off, "eval.jsonl")
    };
    let mut on = steps(ctx, "eval");
    let s = work::eval_stage(&a.work, &lm, a.limit, rule, a.max_tokens, out, &mut on)?;
    println!(
        "{}",
        json!({"model": lm.name, "lora": ctx.lora, "rule": format!("{rule:?}"), "texts": s.texts,
            "correct": s.correct, "accuracy": s.correct as f64 / s.texts as f64, "calls": s.calls,
            "by_tool": s.by_tool})
    );
    Ok(())
}

fn compare(a: &CompareArgs, ctx: &Ctx) -> anyhow::Result<()> {
    use canon_agent::toolformer::CallRule;
    let mut base_loader = ctx.loader();
    base_loader.lora = None;
    let base = base_loader.lm(&a.model)?;
    let mut tuned_loader = ctx.loader();
    tuned_loader.lora = Some(a.adapter.clone());
    let tuned = tuned_loader.lm(&a.model)?;
    let k = a.call_top_k as usize;
    let rows = [
        ("base model", &base, CallRule::Off, "compare-base.jsonl"),
        (
            "fine-tuned, calls disabled",
            &tuned,
            CallRule::Disabled,
            "compare-disabled.jsonl",
        ),
        (
            "fine-tuned, with tools",
            &tuned,
            CallRule::TopK(k),
            "compare-tools.jsonl",
        ),
    ];
    let mut table = Vec::new();
    for (name, lm, rule, out) in rows {
        let mut on = steps(ctx, name);
        let s = work::eval_stage(&a.work, lm, a.limit, rule, a.max_tokens, out, &mut on)?;
        table.push((name, s));
    }
    let tools: Vec<String> = table[0].1.by_tool.keys().cloned().collect();
    let pct = |c: usize, n: usize| {
        if n == 0 {
            "-".to_string()
        } else {
            format!("{:.1} % ({c}/{n})", 100.0 * c as f64 / n as f64)
        }
    };
    println!("| model | {} | all | calls |", tools.join(" | "));
    println!("|---|{}---|---|", "---|".repeat(tools.len()));
    for (name, s) in &table {
        let cells: Vec<String> = tools
            .iter()
            .map(|t| {
                let (n, c, _) = s.by_tool.get(t).copied().unwrap_or_default();
                pct(c, n)
            })
            .collect();
        println!(
            "| {name} | {} | {} | {} |",
            cells.join(" | "),
            pct(s.correct, s.texts),
            s.calls
        );
    }
    let v: Vec<serde_json::Value> = table
        .iter()
        .map(|(name, s)| json!({"row": name, "summary": s}))
        .collect();
    let text = serde_json::to_string_pretty(&v)?;
    canon_fs::write_atomic(&a.work.join("compare.json"), text.as_bytes())?;
    eprintln!("canon: rows in {}", a.work.join("compare.json").display());
    Ok(())
}
