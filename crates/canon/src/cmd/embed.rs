//! `canon embed`: sentence embeddings, one JSON line per text, in input order.

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon embed --model minilm --text \"A man is eating food.\" --text \"A man is riding a horse.\"
  cat sentences.txt | canon embed --model minilm > embeddings.jsonl")]
pub struct EmbedArgs {
    /// Embedding model: an alias (minilm) or an HF-style BERT folder.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// A text to embed (repeatable). Without it, each standard-input line is a text (an empty line too).
    #[arg(long = "text")]
    pub text: Vec<String>,
    /// Texts per forward pass (sorted by length so a batch holds similar lengths).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Report the time spent embedding on standard error as one JSON line.
    #[arg(long)]
    pub timings: bool,
}

pub fn run(a: EmbedArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1, found 0");
    }
    let texts: Vec<String> = if a.text.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .map(|l| l.map(|s| s.trim_end_matches('\r').to_string()))
            .collect::<Result<_, _>>()
            .context("cannot read texts from standard input")?
    } else {
        a.text.clone()
    };
    let enc = model_gen::load_encoder(&a.model, ctx)?;
    let t0 = Instant::now();
    let vecs = enc.embedder.embed(&texts, a.batch_size)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (t, v) in texts.iter().zip(&vecs) {
        writeln!(out, "{}", json!({"text": t, "embedding": v}))?;
    }
    out.flush()?;
    if a.timings {
        eprintln!(
            "{}",
            json!({"texts": texts.len(), "embed_ms": ms, "texts_per_s": texts.len() as f64 * 1e3 / ms.max(1e-9), "threads": ctx.threads})
        );
    }
    Ok(())
}
