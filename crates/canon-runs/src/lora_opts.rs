//! `canon finetune --method lora|qlora`'s settings (with the `cli` feature also its argument
//! struct, the doc comments being the `--help` text): the [`Job`] a new run or `--resume` starts,
//! and the lines printed at the end.

use std::path::PathBuf;

use crate::lora::{self, Job, Method, RunOptions, RunSettings};
use crate::{Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum MethodArg {
    /// Adapters over the frozen base (the file's format; f32 with --f32).
    Lora,
    /// Adapters over the base re-quantized to NF4 (double quantization).
    Qlora,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon flan build --tasks docstring_to_name --n 600 --out doc.jsonl
  canon finetune --method lora --data doc.jsonl --out runs/lora --max-steps 150
  canon finetune --method qlora --data doc.jsonl --out runs/qlora --targets all
  canon finetune --method lora --data doc.jsonl --out runs/lora-ckpt --checkpointing
  canon finetune --method lora --data doc.jsonl --out runs/prof --max-steps 6 --timings
  canon finetune --resume runs/lora --max-steps 300
  canon generate --model smollm2 --lora runs/lora --prompt '...' --temperature 0
  canon merge --model smollm2 --lora runs/lora --out merged.gguf")
)]
pub struct LoraFinetuneArgs {
    /// lora (frozen base in the file's format, f32 with --f32) or qlora (NF4 base). Three more
    /// methods have flags of their own: gpt1-heads (GPT-1's task heads on a trained GPT run, paper
    /// 2), classifier (a BERT run or MiniLM as a classifier, paper 3) and rag (query encoder and
    /// generator end to end over an index, paper 9); see `canon finetune --method NAME --help`.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "lora"))]
    pub method: MethodArg,
    /// Base model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Training records, one JSON object per line.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "FILE.jsonl", required_unless_present = "resume")
    )]
    pub data: Option<PathBuf>,
    /// Run folder to create (it must not hold a run already; use --resume).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DIR", required_unless_present = "resume")
    )]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (settings come from its finetune.json).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR", conflicts_with_all = ["out", "data"]))]
    pub resume: Option<PathBuf>,
    /// LoRA rank r.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 8))]
    pub rank: usize,
    /// LoRA α (the update is scaled by α/r).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16.0))]
    pub alpha: f64,
    /// Dropout on each adapter's input during training (PEFT's lora_dropout; 0 = off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub dropout: f64,
    /// Adapted modules: 'all' or some of q,k,v,o,gate,up,down (default: q,v for lora, all for
    /// qlora, as the papers).
    #[cfg_attr(feature = "cli", arg(long))]
    pub targets: Option<String>,
    /// Total optimizer steps.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub max_steps: u64,
    /// Peak learning rate (constant after a 3 % warmup, as QLoRA).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5e-4))]
    pub lr: f64,
    /// Held-out records (default: every k-th record of --data with k = 1/--val-fraction).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "FILE.jsonl", conflicts_with = "resume")
    )]
    pub eval_data: Option<PathBuf>,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.1))]
    pub val_fraction: f64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub grad_accum: usize,
    /// Tokens kept per record (longer records are cut at the end).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 256))]
    pub max_len: usize,
    /// Held-out loss every N steps (and at the end).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 25))]
    pub eval_every: u64,
    /// At most this many held-out batches per evaluation (0 = all).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 8))]
    pub eval_batches: usize,
    /// Checkpoint (and adapter) every N steps (and at the end, and on Ctrl-C).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 50))]
    pub checkpoint_every: u64,
    /// Global gradient-norm clip (QLoRA: 0.3).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.3))]
    pub grad_clip: f64,
    /// Gradient checkpointing: each block keeps only its input for the backward, which runs the
    /// block again (less memory, about one more forward per step, the same losses). Needs
    /// --dropout 0.
    #[cfg_attr(feature = "cli", arg(long))]
    pub checkpointing: bool,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seed: u64,
    /// Print the training step's time by phase at the end (base and adapter products, attention,
    /// norms, cross-entropy, optimizer; the first step, which packs the weights, is left out).
    #[cfg_attr(feature = "cli", arg(long))]
    pub timings: bool,
    /// Mixed-precision products: the f32 products of the step (adapters, the dense base, the
    /// quantized base's input gradient, attention, and the forward product of a base without the
    /// packed 8-bit kernel, such as QLoRA's NF4: QLoRA's own bf16 compute) round their operands to
    /// bf16 and accumulate in f32 (AVX512_BF16); weights, gradients and AdamW stay f32. Changes
    /// the arithmetic (the loss curve moves by bf16 rounding); off by default.
    #[cfg_attr(feature = "cli", arg(long))]
    pub bf16: bool,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Lora => Method::Lora,
            MethodArg::Qlora => Method::Qlora,
        }
    }
}

impl LoraFinetuneArgs {
    /// The loop's schedule (a resume may change it).
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            max_steps: self.max_steps,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            checkpoint_every: self.checkpoint_every,
            checkpointing: self.checkpointing,
        }
    }

    /// The run: `--resume`'s, or a new one in `--out` (which must not hold a run) from the flags.
    /// `f32_base`: the base dequantized to f32 at load (`--f32`).
    pub fn job(&self, f32_base: bool) -> Result<Job> {
        let opts = self.run_options();
        let mut job = match &self.resume {
            Some(dir) => Job::resume(dir.clone(), f32_base, opts)?,
            None => {
                let dir = self.out.clone().context("--out is required")?;
                lora::check_new_dir(&dir)?;
                let method = self.method.into();
                let s = RunSettings {
                    method,
                    model: self.model.clone(),
                    targets: lora::targets_or_default(method, self.targets.as_deref())?,
                    data: self.data.clone().context("--data is required")?,
                    eval_data: self.eval_data.clone(),
                    val_fraction: self.val_fraction,
                    rank: self.rank,
                    alpha: self.alpha,
                    lr: self.lr,
                    batch_size: self.batch_size,
                    grad_accum: self.grad_accum,
                    max_len: self.max_len,
                    grad_clip: self.grad_clip,
                    seed: self.seed,
                    dropout: self.dropout,
                    f32_base,
                };
                Job::new(dir, s, opts)?
            }
        };
        job.timings = self.timings;
        Ok(job)
    }
}

impl lora::Summary {
    /// The closing line: how the run ended, its losses, time and peak memory, where the adapter is.
    pub fn line(&self, max_steps: u64, dir: &std::path::Path, peak_rss_mib: f64) -> String {
        let secs = self.seconds;
        format!(
            "{} step {}/{max_steps}: loss {} -> {:.4}, held-out loss {}, {:.0} s ({:.1} s/step), \
             peak RSS {:.0} MiB; adapter in {}",
            if self.outcome == canon_train::Outcome::Interrupted {
                "interrupted at"
            } else {
                "finished"
            },
            self.step,
            self.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
            self.last_loss,
            self.last_eval.map_or("-".into(), |e| format!("{e:.4}")),
            secs,
            secs / (self.step - self.start_step).max(1) as f64,
            peak_rss_mib,
            dir.display()
        )
    }
}

/// `canon finetune --method gpt1-heads|classifier|rag ...` runs the GPT-1, BERT and RAG fine-tuners, whose
/// flags differ from LoRA's: the words are rewritten to their own (hidden) subcommands before
/// parsing, so one command family covers every method and `--help` shows the method's own flags.
/// `global_value_flags` are the flags before the subcommand that take a value.
pub fn route_method(
    mut args: Vec<std::ffi::OsString>,
    global_value_flags: &[&str],
) -> Vec<std::ffi::OsString> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if global_value_flags.contains(&a.as_ref()) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    if args.get(i).is_none_or(|a| a != "finetune") {
        return args;
    }
    let sub = i;
    let mut j = sub + 1;
    while j < args.len() {
        let a = args[j].to_string_lossy().into_owned();
        let (value, width) = if a == "--method" {
            match args.get(j + 1) {
                Some(v) => (v.to_string_lossy().into_owned(), 2),
                None => break,
            }
        } else if let Some(v) = a.strip_prefix("--method=") {
            (v.to_string(), 1)
        } else {
            j += 1;
            continue;
        };
        let target = match value.as_str() {
            "gpt1-heads" => "finetune-gpt1",
            "classifier" => "finetune-bert",
            "rag" => "finetune-rag",
            _ => return args,
        };
        args.drain(j..j + width);
        args[sub] = target.into();
        return args;
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let s = lora::Summary {
            outcome: canon_train::Outcome::Finished,
            step: 20,
            start_step: 10,
            first_loss: None,
            last_loss: 1.5,
            last_eval: Some(1.25),
            seconds: 5.0,
            timings: None,
        };
        assert_eq!(
            s.line(20, std::path::Path::new("runs/l"), 100.0),
            "finished step 20/20: loss - -> 1.5000, held-out loss 1.2500, 5 s (0.5 s/step), \
             peak RSS 100 MiB; adapter in runs/l"
        );
    }

    #[test]
    fn finetune_methods_route_to_their_own_subcommands() {
        let argv = |w: &str| -> Vec<std::ffi::OsString> { w.split(' ').map(Into::into).collect() };
        let flags = ["--threads"];
        let r = route_method(
            argv("canon --threads 2 finetune --method=rag --out o"),
            &flags,
        );
        assert_eq!(r, argv("canon --threads 2 finetune-rag --out o"));
        let r = route_method(
            argv("canon -q finetune --data d --method gpt1-heads"),
            &flags,
        );
        assert_eq!(r, argv("canon -q finetune-gpt1 --data d"));
        let lora = argv("canon finetune --method lora --data d");
        assert_eq!(route_method(lora.clone(), &flags), lora);
        let other = argv("canon train --method classifier");
        assert_eq!(route_method(other.clone(), &flags), other);
    }
}
