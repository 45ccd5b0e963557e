//! `canon eval perplexity`: sliding-window perplexity of a causal LM on a text file
//! (`canon_eval::perplexity`); the settings are `canon_eval::opts::PerplexityArgs`.

use std::time::Instant;

use anyhow::{Context, bail};
use canon_eval::opts::PerplexityArgs;
use canon_eval::perplexity::perplexity;

use crate::{Ctx, model_gen};

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
    let cfg = a.config(lm.model.max_seq_len());
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
        println!("{}", r.line(secs));
    }
    Ok(())
}
