//! `canon eval perplexity`: sliding-window perplexity of a causal LM on a text file
//! (`canon_eval::perplexity`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use canon_eval::perplexity::{PerplexityConfig, perplexity};
use clap::Args;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon eval perplexity --model smollm2 --text-file /usr/share/common-licenses/GPL-3
  canon eval perplexity --model smollm2-nf4.gguf --text-file notes.txt --context 512 --stride 256 --json

Every token after the first is scored once, with between context − stride + 1 and context tokens of
left context; a smaller stride gives more context per token and costs more forward passes.")]
pub struct PerplexityArgs {
    /// Model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long)]
    pub model: String,
    /// UTF-8 text to score.
    #[arg(long, value_name = "FILE")]
    pub text_file: PathBuf,
    /// Most tokens per forward pass (default: 1024, or the model's limit if smaller).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// Tokens the window advances by (default: half the context).
    #[arg(long, value_name = "S")]
    pub stride: Option<usize>,
    /// Score only the first N tokens of the text.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Print one JSON object: {"perplexity", "nll", "tokens", "windows", "context", "stride", ...}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PerplexityArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.text_file)
        .with_context(|| format!("cannot read --text-file {}", a.text_file.display()))?;
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let mut ids = lm
        .tokenizer
        .encode(&text, false)
        .with_context(|| format!("cannot tokenize {}", a.text_file.display()))?;
    if let Some(n) = a.max_tokens {
        ids.truncate(n);
    }
    if ids.len() < 2 {
        bail!(
            "{}: {} token(s); perplexity needs at least 2",
            a.text_file.display(),
            ids.len()
        );
    }
    let context = a
        .context
        .unwrap_or_else(|| 1024.min(lm.model.max_seq_len()));
    let stride = a.stride.unwrap_or((context / 2).max(1));
    let cfg = PerplexityConfig { context, stride };
    let t = "perplexity [{bar:40}] {pos}/{len} windows ({eta} left)";
    let pb = crate::progress::bar(ctx.quiet, 0, t);
    let start = Instant::now();
    let r = perplexity(lm.model.as_ref(), &ids, cfg, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(r)?;
        v["model"] = serde_json::Value::String(lm.path.display().to_string());
        v["text_file"] = serde_json::Value::String(a.text_file.display().to_string());
        v["seconds"] = serde_json::json!(secs);
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} (mean NLL {:.4} nats) over {} tokens, {} windows of {} (stride {}), {:.1} s",
            r.perplexity, r.nll, r.tokens, r.windows, r.context, r.stride, secs
        );
    }
    Ok(())
}
