//! `canon generate`: text from a prompt, streamed or as one JSON object. The settings, the chat
//! prompt and the JSON are `canon_infer::opts`; the timing line and the `--n` requests and
//! output are `canon_runs::generate`.

use std::io::Write;

use anyhow::{Context, bail};
use canon_infer::opts::{GenerateArgs, build_prompt, generation_json};
use canon_infer::{GenerateRequest, LmGenerator};
use canon_runs::generate::{many_requests, many_text, timing_line};

use crate::{Ctx, model_gen};

pub fn run(a: GenerateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    a.check()?;
    let sampling = a.sampling.to_config()?;
    let prompt = match &a.prompt {
        Some(p) => p.clone(),
        None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("cannot read the prompt from standard input")?;
            s
        }
    };
    if prompt.is_empty() {
        bail!("empty prompt: give --prompt TEXT or text on standard input");
    }
    a.check_n()?;
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let text = build_prompt(&lm, &prompt, a.chat, a.system.as_deref())?;
    if a.n > 1 {
        return run_many(a, lm, text, sampling, ctx);
    }
    let req = GenerateRequest {
        prompt: text,
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        logprobs: a.logprobs,
    };
    let mut g = LmGenerator::new(lm);
    if a.json {
        let out = g.generate_streaming(&req, &mut |_| true)?;
        println!("{}", generation_json(&out));
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    let out = g.generate_streaming(&req, &mut |piece| {
        // A closed pipe (e.g. `| head`) ends the generation quietly.
        stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush())
            .is_ok()
    })?;
    let _ = writeln!(stdout);
    if !ctx.quiet {
        eprintln!("canon: {}", timing_line(&out));
    }
    Ok(())
}

/// `--n K`: K completions of one prompt through the batched engine.
fn run_many(
    a: GenerateArgs,
    lm: canon_models::LoadedLm,
    text: String,
    sampling: canon_infer::SamplingConfig,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    use canon_infer::{Engine, EngineConfig};
    let ids = lm.tokenizer.encode(&text, true)?;
    if ids.is_empty() {
        bail!("empty prompt: it has no tokens");
    }
    if !ctx.quiet && sampling.temperature == 0.0 {
        eprintln!(
            "canon: --temperature 0 is greedy: all {} completions will be the same",
            a.n
        );
    }
    let engine = Engine::start(
        lm,
        EngineConfig {
            slots: a.n.min(64),
            ..Default::default()
        },
    )?;
    let t0 = std::time::Instant::now();
    let reqs = many_requests(&a, &ids, &sampling);
    let outs = engine
        .generate_batch(reqs)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    engine.shutdown();
    let generated: usize = outs.iter().map(|c| c.tokens.len()).sum();
    // A closed pipe (e.g. `| head`) is the reader's choice, not an error.
    let _ = std::io::stdout().write_all(many_text(&a, &outs, sampling.seed).as_bytes());
    if !ctx.quiet {
        eprintln!(
            "canon: {} completions, {generated} tokens in {secs:.2} s ({:.1} tok/s aggregate)",
            a.n,
            generated as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
