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
//! `metrics.jsonl` and `loss.png`. The settings are `canon_runs::lora_opts`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use canon_runs::lora::{self, Event, JobEnd};
use canon_runs::lora_opts::LoraFinetuneArgs;
use indicatif::ProgressBar;

use crate::Ctx;

pub fn run(a: LoraFinetuneArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.bf16 {
        canon_nn::train_ops::set_bf16_products(true)?;
    }
    let job = a.job(ctx.f32_weights)?;
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
    let rss = lora::peak_rss_mib().unwrap_or(f64::NAN);
    println!("{}", r.line(max_steps, dir, rss));
    Ok(())
}
