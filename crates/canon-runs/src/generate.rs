//! What `canon generate` (whose settings are `canon_infer::opts::GenerateArgs`) sends and prints
//! beyond one streamed completion: the timing line of a generation, and with `--n K` the K
//! requests of one prompt (seeds `seed`, `seed + 1`, …) and their completions as JSON or text.

use std::fmt::Write as _;

use canon_infer::opts::{GenerateArgs, logprobs_json};
use canon_infer::{Completion, Generation, Request, SamplingConfig};
use serde_json::json;

/// `prompt N tokens in T ms (R tok/s), generated …, finish: F`.
pub fn timing_line(out: &Generation) -> String {
    let tps = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    format!(
        "prompt {} tokens in {:.0} ms ({:.1} tok/s), generated {} tokens in {:.0} ms ({:.1} tok/s), finish: {:?}",
        out.prompt_tokens.len(),
        out.prefill_ms,
        tps(out.prompt_tokens.len(), out.prefill_ms),
        out.tokens.len(),
        out.decode_ms,
        tps(out.tokens.len(), out.decode_ms),
        out.finish_reason
    )
}

/// The `--n` requests of one prompt: request i samples with seed `sampling.seed + i`.
pub fn many_requests(a: &GenerateArgs, ids: &[u32], sampling: &SamplingConfig) -> Vec<Request> {
    (0..a.n)
        .map(|i| {
            let mut r = Request::new(ids.to_vec(), a.max_tokens);
            r.sampling = sampling.clone();
            r.sampling.seed = sampling.seed.wrapping_add(i as u64);
            r.stop = a.stop.clone();
            r.ignore_eos = a.ignore_eos;
            r.logprobs = a.logprobs;
            r
        })
        .collect()
}

/// The completions as printed: one JSON array with --json, else a header line and the text of
/// each. `seed` is the first request's.
pub fn many_text(a: &GenerateArgs, outs: &[Completion], seed: u64) -> String {
    if a.json {
        let arr: Vec<serde_json::Value> = outs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "index": i,
                    "seed": seed.wrapping_add(i as u64),
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
        return format!("{}\n", serde_json::Value::Array(arr));
    }
    let mut s = String::new();
    for (i, c) in outs.iter().enumerate() {
        let _ = writeln!(
            s,
            "--- completion {} of {} (seed {}, {} tokens, finish: {:?})",
            i + 1,
            a.n,
            seed.wrapping_add(i as u64),
            c.tokens.len(),
            c.finish_reason
        );
        let _ = writeln!(s, "{}", c.text);
    }
    s
}
