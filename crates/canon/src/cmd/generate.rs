//! `canon generate`: text from a prompt, streamed or as one JSON object.

use std::io::Write;

use anyhow::{Context, bail};
use canon_infer::{GenerateRequest, Generation, LmGenerator};
use canon_text::Message;
use clap::Args;
use serde_json::json;

use super::sampling::SamplingArgs;
use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon generate --model smollm2 --prompt \"The capital of France is\" --max-tokens 48 --temperature 0
  canon generate --model smollm2 --chat --prompt \"Write a haiku about Rust.\"
  canon generate --model ./my-model.gguf --prompt \"Once upon a time\" --seed 7 --json --logprobs 3
  canon generate --model smollm2 --prompt \"A story:\" --n 8 --temperature 0.8 --seed 1   # 8 samples, batched
  canon generate --model gemma3 --prompt \"The capital of France is\" --temperature 0 --cache-type f16")]
pub struct GenerateArgs {
    /// Model: an alias (smollm2, gemma3), a .gguf file, or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// The prompt (read from standard input when omitted).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Wrap the prompt in the model's chat template as a user turn, with the generation prompt.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Stop when the text contains this string (repeatable); the string is not printed.
    #[arg(long = "stop", value_name = "STR")]
    pub stop: Vec<String>,
    /// Generate exactly --max-tokens tokens, ignoring end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object at the end instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// With --json: per generated token, its log-probability and the K most likely alternatives.
    #[arg(long, value_name = "K")]
    pub logprobs: Option<usize>,
    /// Sample this many completions of the prompt together (batched generation: one forward pass
    /// per step for all of them). Completion i uses seed --seed + i.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Most completions `--n` generates at once.
const MAX_N: usize = 256;

pub fn build_prompt(
    lm: &canon_models::LoadedLm,
    prompt: &str,
    chat: bool,
    system: Option<&str>,
) -> anyhow::Result<String> {
    if !chat {
        return Ok(prompt.to_string());
    }
    let tmpl = lm.chat_template.as_ref().with_context(|| {
        format!(
            "--chat: the model {} has no chat template",
            lm.path.display()
        )
    })?;
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(Message::new("system", s));
    }
    msgs.push(Message::new("user", prompt));
    Ok(tmpl.render(&msgs, true)?)
}

pub fn generation_json(g: &Generation, tok: &canon_text::Tokenizer) -> serde_json::Value {
    let mut v = json!({
        "prompt_tokens": g.prompt_tokens,
        "tokens": g.tokens,
        "text": g.text,
        "finish_reason": g.finish_reason,
        "timings": {
            "prompt_tokens": g.prompt_tokens.len(),
            "prefill_ms": g.prefill_ms,
            "decode_tokens": g.tokens.len(),
            "decode_ms": g.decode_ms,
        },
    });
    if let Some(lps) = &g.logprobs {
        let _ = tok;
        v["logprobs"] = logprobs_json(lps);
    }
    v
}

/// Per-token log-probabilities with their alternatives, as `--json` prints them.
fn logprobs_json(lps: &[canon_infer::TokenLogprob]) -> serde_json::Value {
    lps.iter()
        .map(|l| {
            json!({
                "id": l.token, "token": l.text, "logprob": l.logprob,
                "top_logprobs": l.top.iter().map(|(id, t, lp)| json!({"id": id, "token": t, "logprob": lp})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

pub fn run(a: GenerateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.logprobs.is_some() && !a.json {
        bail!("--logprobs needs --json (log-probabilities are part of the JSON output)");
    }
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
    if a.n == 0 || a.n > MAX_N {
        bail!("--n must be between 1 and {MAX_N}, found {}", a.n);
    }
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
        println!("{}", generation_json(&out, &g.lm.tokenizer));
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
        let tps = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
        eprintln!(
            "canon: prompt {} tokens in {:.0} ms ({:.1} tok/s), generated {} tokens in {:.0} ms ({:.1} tok/s), finish: {:?}",
            out.prompt_tokens.len(),
            out.prefill_ms,
            tps(out.prompt_tokens.len(), out.prefill_ms),
            out.tokens.len(),
            out.decode_ms,
            tps(out.tokens.len(), out.decode_ms),
            out.finish_reason
        );
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
    use canon_infer::{Engine, EngineConfig, Request};
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
    let reqs = (0..a.n)
        .map(|i| {
            let mut r = Request::new(ids.clone(), a.max_tokens);
            r.sampling = sampling.clone();
            r.sampling.seed = sampling.seed.wrapping_add(i as u64);
            r.stop = a.stop.clone();
            r.ignore_eos = a.ignore_eos;
            r.logprobs = a.logprobs;
            r
        })
        .collect();
    let outs = engine
        .generate_batch(reqs)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    engine.shutdown();
    let generated: usize = outs.iter().map(|c| c.tokens.len()).sum();
    if a.json {
        let arr: Vec<serde_json::Value> = outs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "index": i,
                    "seed": sampling.seed.wrapping_add(i as u64),
                    "prompt_tokens": c.prompt_tokens,
                    "tokens": c.tokens,
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "timings": {"ttft_ms": c.ttft_ms, "decode_ms": c.decode_ms},
                });
                if let Some(lps) = &c.logprobs {
                    v["logprobs"] = logprobs_json(lps);
                }
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(arr));
    } else {
        let mut stdout = std::io::stdout().lock();
        for (i, c) in outs.iter().enumerate() {
            let _ = writeln!(
                stdout,
                "--- completion {} of {} (seed {}, {} tokens, finish: {:?})",
                i + 1,
                a.n,
                sampling.seed.wrapping_add(i as u64),
                c.tokens.len(),
                c.finish_reason
            );
            let _ = writeln!(stdout, "{}", c.text);
        }
    }
    if !ctx.quiet {
        eprintln!(
            "canon: {} completions, {generated} tokens in {secs:.2} s ({:.1} tok/s aggregate)",
            a.n,
            generated as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
