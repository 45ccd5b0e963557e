//! `canon toolformer`'s settings (with the `cli` feature also its argument structs, the doc
//! comments being the `--help` text): one struct per stage, the stage options and call rule they
//! give, and the printed evaluation line and comparison table.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::json;

use crate::toolformer::CallRule;
use crate::toolformer_work::{EvalSummary, SampleOpts};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
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
counts.json (how many texts, positions, sampled, parsed, executed and kept calls).")
)]
pub struct ToolformerArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub stage: Stage,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
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

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct CompareArgs {
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub work: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// The LoRA adapter fine-tuned on augmented.jsonl (`canon finetune --method lora --out DIR`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub adapter: PathBuf,
    /// Test texts to score (the tools' texts in turn).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 40))]
    pub limit: usize,
    /// A call starts where `[` is among the k most likely next tokens (1: only when it is the argmax).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..)))]
    pub call_top_k: u64,
    /// Tokens generated per text.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub max_tokens: usize,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct EvalArgs {
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub work: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Test texts to score.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 40))]
    pub limit: usize,
    /// Toolformer's inference: start a call where `[` is among the top --call-top-k next tokens,
    /// run it when the model writes `->`, insert its result.
    #[cfg_attr(feature = "cli", arg(long, conflicts_with = "no_calls"))]
    pub tools: bool,
    /// A call starts where `[` is among the k most likely next tokens (1: only when it is the
    /// argmax, plain greedy decoding).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..)))]
    pub call_top_k: u64,
    /// Never generate `[` (the paper's "Toolformer (disabled)"); without this or --tools,
    /// plain greedy decoding.
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_calls: bool,
    /// Tokens generated per text.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub max_tokens: usize,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct WorkArgs {
    /// The work folder.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub work: PathBuf,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct DataArgs {
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub work: PathBuf,
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")
    )]
    pub status: PathBuf,
    /// Arithmetic texts to generate.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 400))]
    pub n: usize,
    /// Date texts to generate (their continuation needs `Calendar()`).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 100))]
    pub calendar: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct SampleArgs {
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub work: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Train texts to annotate (in file order).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 40))]
    pub limit: usize,
    /// Positions kept per text (k).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub k: usize,
    /// Position threshold tau_s.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.05))]
    pub tau_s: f64,
    /// Calls sampled per position (m).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub m: usize,
    /// Sampling temperature of the calls.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.8))]
    pub temperature: f32,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct FilterArgs {
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub work: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Filter threshold tau_f.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1.0))]
    pub tau_f: f64,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RunArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub sample: SampleArgs,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1.0))]
    pub tau_f: f64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 400))]
    pub n: usize,
    /// Date texts to generate.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 100))]
    pub calendar: usize,
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")
    )]
    pub status: PathBuf,
}

impl SampleArgs {
    /// The sampling stage's options.
    pub fn opts(&self) -> SampleOpts {
        SampleOpts {
            limit: self.limit,
            tau_s: self.tau_s,
            k: self.k,
            m: self.m,
            temperature: self.temperature,
            seed: self.seed,
        }
    }
}

impl EvalArgs {
    /// The call rule the flags ask for and the file its continuations go to.
    pub fn rule(&self) -> (CallRule, &'static str) {
        if self.tools {
            (CallRule::TopK(self.call_top_k as usize), "eval-tools.jsonl")
        } else if self.no_calls {
            (CallRule::Disabled, "eval-disabled.jsonl")
        } else {
            (CallRule::Off, "eval.jsonl")
        }
    }
}

/// The evaluation's printed JSON object (`lora`: the adapter attached, if any).
pub fn eval_json(
    model: &str,
    lora: Option<&std::path::Path>,
    rule: CallRule,
    s: &EvalSummary,
) -> serde_json::Value {
    json!({"model": model, "lora": lora, "rule": format!("{rule:?}"), "texts": s.texts,
        "correct": s.correct, "accuracy": s.correct as f64 / s.texts as f64, "calls": s.calls,
        "by_tool": s.by_tool})
}

impl CompareArgs {
    /// The comparison's rows: name, whether the adapter is attached, call rule, output file.
    pub fn rows(&self) -> [(&'static str, bool, CallRule, &'static str); 3] {
        let k = self.call_top_k as usize;
        [
            ("base model", false, CallRule::Off, "compare-base.jsonl"),
            (
                "fine-tuned, calls disabled",
                true,
                CallRule::Disabled,
                "compare-disabled.jsonl",
            ),
            (
                "fine-tuned, with tools",
                true,
                CallRule::TopK(k),
                "compare-tools.jsonl",
            ),
        ]
    }
}

/// The comparison as a Markdown table: one row per model, a column per tool (accuracy and
/// counts, `-` where a tool has no texts), all texts and the calls made.
pub fn compare_table(table: &[(&str, EvalSummary)]) -> String {
    let Some((_, first)) = table.first() else {
        return String::new();
    };
    let tools: Vec<String> = first.by_tool.keys().cloned().collect();
    let pct = |c: usize, n: usize| {
        if n == 0 {
            "-".to_string()
        } else {
            format!("{:.1} % ({c}/{n})", 100.0 * c as f64 / n as f64)
        }
    };
    let mut s = format!("| model | {} | all | calls |\n", tools.join(" | "));
    let _ = writeln!(s, "|---|{}---|---|", "---|".repeat(tools.len()));
    for (name, e) in table {
        let cells: Vec<String> = tools
            .iter()
            .map(|t| {
                let (n, c, _) = e.by_tool.get(t).copied().unwrap_or_default();
                pct(c, n)
            })
            .collect();
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} |",
            cells.join(" | "),
            pct(e.correct, e.texts),
            e.calls
        );
    }
    s
}

/// The comparison as the pretty JSON of compare.json.
pub fn compare_json(table: &[(&str, EvalSummary)]) -> String {
    let v: Vec<serde_json::Value> = table
        .iter()
        .map(|(name, s)| json!({"row": name, "summary": s}))
        .collect();
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_table_rows() {
        let mut s = EvalSummary {
            texts: 4,
            correct: 1,
            calls: 2,
            by_tool: Default::default(),
        };
        s.by_tool.insert("Calculator".into(), (4, 1, 2));
        s.by_tool.insert("Calendar".into(), (0, 0, 0));
        let t = compare_table(&[("base", s)]);
        assert_eq!(
            t,
            "| model | Calculator | Calendar | all | calls |\n|---|---|---|---|---|\n| base | 25.0 % (1/4) | - | 25.0 % (1/4) | 2 |\n"
        );
    }
}
