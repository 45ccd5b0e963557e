//! `canon embed`: sentence embeddings, one JSON line per text, in input order.

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::Context;
pub use canon_runs::model_opts::EmbedArgs;
use serde_json::json;

use crate::{Ctx, model_gen};

pub fn run(a: EmbedArgs, ctx: &Ctx) -> anyhow::Result<()> {
    a.check()?;
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
