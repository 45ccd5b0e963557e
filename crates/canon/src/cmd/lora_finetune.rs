//! `canon finetune`: LoRA (paper 13) or QLoRA (paper 27) supervised fine-tuning of a pretrained
//! causal LM on JSONL records (`{"prompt", "completion"}` or `{"messages"}`), loss on the
//! completion / assistant tokens only.
//!
//! - `--method lora`: the base weights frozen (plain tensors, not variables) in the file's format:
//!   GGUF blocks multiply on the quantized kernels (from 16 rows on: dequantized tiles and an f32
//!   GEMM, so training arithmetic is the f32 base's up to summation order); with `--f32` they are
//!   dequantized to f32 at load. Either way a frozen product's backward computes only the input
//!   gradient: no weight gradient is computed or kept.
//! - `--method qlora`: every adaptable linear layer re-quantized to NF4 with double quantization and
//!   frozen; the token table and (tied) output layer stay in the file's format; the adapters stay in
//!   f32 and the backward runs through the dequantizing product.
//!
//! The run folder holds `adapter_config.json` + `adapter_model.safetensors` (PEFT's layout, for
//! `canon generate --lora DIR` and `canon merge`), `checkpoint.safetensors` (adapters, AdamW state,
//! step, data-order RNG: exact resume), `finetune.json` (the settings a resume must match),
//! `metrics.jsonl` and `loss.png`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use canon_runs::lora::{self, Event, Job, JobEnd, Method, RunOptions, RunSettings};
use canon_train::Outcome;
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;

use crate::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Adapters over the frozen base (the file's format; f32 with --f32).
    Lora,
    /// Adapters over the base re-quantized to NF4 (double quantization).
    Qlora,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Lora => Method::Lora,
            MethodArg::Qlora => Method::Qlora,
        }
    }
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon flan build --tasks docstring_to_name --n 600 --out doc.jsonl
  canon finetune --method lora --data doc.jsonl --out runs/lora --max-steps 150
  canon finetune --method qlora --data doc.jsonl --out runs/qlora --targets all
  canon finetune --method lora --data doc.jsonl --out runs/lora-ckpt --checkpointing
  canon finetune --method lora --data doc.jsonl --out runs/prof --max-steps 6 --timings
  canon finetune --resume runs/lora --max-steps 300
  canon generate --model smollm2 --lora runs/lora --prompt '...' --temperature 0
  canon merge --model smollm2 --lora runs/lora --out merged.gguf")]
pub struct LoraFinetuneArgs {
    /// lora (frozen base in the file's format, f32 with --f32) or qlora (NF4 base). Three more
    /// methods have flags of their own: gpt1-heads (GPT-1's task heads on a trained GPT run, paper
    /// 2), classifier (a BERT run or MiniLM as a classifier, paper 3) and rag (query encoder and
    /// generator end to end over an index, paper 9); see `canon finetune --method NAME --help`.
    #[arg(long, value_enum, default_value = "lora")]
    pub method: MethodArg,
    /// Base model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Training records, one JSON object per line.
    #[arg(long, value_name = "FILE.jsonl", required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Run folder to create (it must not hold a run already; use --resume).
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (settings come from its finetune.json).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["out", "data"])]
    pub resume: Option<PathBuf>,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA α (the update is scaled by α/r).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Dropout on each adapter's input during training (PEFT's lora_dropout; 0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Adapted modules: 'all' or some of q,k,v,o,gate,up,down (default: q,v for lora, all for
    /// qlora, as the papers).
    #[arg(long)]
    pub targets: Option<String>,
    /// Total optimizer steps.
    #[arg(long, default_value_t = 200)]
    pub max_steps: u64,
    /// Peak learning rate (constant after a 3 % warmup, as QLoRA).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Held-out records (default: every k-th record of --data with k = 1/--val-fraction).
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "resume")]
    pub eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Tokens kept per record (longer records are cut at the end).
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Held-out loss every N steps (and at the end).
    #[arg(long, default_value_t = 25)]
    pub eval_every: u64,
    /// At most this many held-out batches per evaluation (0 = all).
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Checkpoint (and adapter) every N steps (and at the end, and on Ctrl-C).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Global gradient-norm clip (QLoRA: 0.3).
    #[arg(long, default_value_t = 0.3)]
    pub grad_clip: f64,
    /// Gradient checkpointing: each block keeps only its input for the backward, which runs the
    /// block again (less memory, about one more forward per step, the same losses). Needs
    /// --dropout 0.
    #[arg(long)]
    pub checkpointing: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the training step's time by phase at the end (base and adapter products, attention,
    /// norms, cross-entropy, optimizer; the first step, which packs the weights, is left out).
    #[arg(long)]
    pub timings: bool,
    /// Mixed-precision products: the f32 products of the step (adapters, the dense base, the
    /// quantized base's input gradient, attention) round their operands to bf16 and accumulate in
    /// f32 (AVX512_BF16); weights, gradients and AdamW stay f32. Changes the arithmetic (the loss
    /// curve moves by bf16 rounding); off by default.
    #[arg(long)]
    pub bf16: bool,
}

pub fn run(a: LoraFinetuneArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.bf16 {
        canon_nn::train_ops::set_bf16_products(true)?;
    }
    let opts = RunOptions {
        max_steps: a.max_steps,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        checkpoint_every: a.checkpoint_every,
        checkpointing: a.checkpointing,
    };
    let mut job = match &a.resume {
        Some(dir) => Job::resume(dir.clone(), ctx.f32_weights, opts)?,
        None => {
            let dir = a.out.clone().context("--out is required")?;
            lora::check_new_dir(&dir)?;
            let method = a.method.into();
            let s = RunSettings {
                method,
                model: a.model.clone(),
                targets: lora::targets_or_default(method, a.targets.as_deref())?,
                data: a.data.clone().context("--data is required")?,
                eval_data: a.eval_data.clone(),
                val_fraction: a.val_fraction,
                rank: a.rank,
                alpha: a.alpha,
                lr: a.lr,
                batch_size: a.batch_size,
                grad_accum: a.grad_accum,
                max_len: a.max_len,
                grad_clip: a.grad_clip,
                seed: a.seed,
                dropout: a.dropout,
                f32_base: ctx.f32_weights,
            };
            Job::new(dir, s, opts)?
        }
    };
    job.timings = a.timings;
    let stop = Arc::new(AtomicBool::new(false));
    let bar = ProgressBar::hidden();
    let end = lora::run_job(&job, ctx.progress(), &stop, &mut |e| match e {
        Event::Note(s) if !ctx.quiet => eprintln!("canon: {s}"),
        Event::Note(_) => {}
        Event::Start { step, max_steps } => {
            let s = stop.clone();
            let _ = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst));
            if !ctx.quiet {
                bar.set_draw_target(crate::progress::target());
                bar.set_length(max_steps);
                let t = "{bar:30} {pos}/{len} steps {msg} [{elapsed}<{eta}]";
                bar.set_style(crate::progress::style(t));
                bar.set_position(step);
            }
        }
        Event::Step(r, eval) => {
            bar.set_position(r.step);
            let eval = eval.map_or(String::new(), |e| format!(" eval {e:.3}"));
            bar.set_message(format!("loss {:.3}{eval}", r.loss));
        }
    })?;
    let (dir, max_steps) = (&job.dir, a.max_steps);
    let r = match end {
        JobEnd::Trained(r) => r,
        JobEnd::Complete => {
            eprintln!(
                "the run is complete at step {max_steps}: adapter written again from its last \
                 checkpoint in {} (give a larger --max-steps to train on)",
                dir.display()
            );
            return Ok(());
        }
    };
    bar.finish_and_clear();
    match (&r.timings, a.timings) {
        (None, true) => eprintln!("--timings: no step after the first was run, nothing to show"),
        (Some(t), _) => println!(
            "time per training step by phase, mean over steps {}..={} ({} threads{}):\n{}",
            t.first,
            t.last,
            ctx.threads,
            if canon_nn::train_ops::bf16_products() {
                ", bf16 products"
            } else {
                ""
            },
            t.table
        ),
        (None, false) => {}
    }
    let secs = r.seconds;
    println!(
        "{} step {}/{max_steps}: loss {} -> {:.4}, held-out loss {}, {:.0} s ({:.1} s/step), \
         peak RSS {:.0} MiB; adapter in {}",
        if r.outcome == Outcome::Interrupted {
            "interrupted at"
        } else {
            "finished"
        },
        r.step,
        r.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
        r.last_loss,
        r.last_eval.map_or("-".into(), |e| format!("{e:.4}")),
        secs,
        secs / (r.step - r.start_step).max(1) as f64,
        lora::peak_rss_mib().unwrap_or(f64::NAN),
        dir.display()
    );
    Ok(())
}
