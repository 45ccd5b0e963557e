//! Where one engine step spends its time, for 1 and K streams, against the single-sequence loop
//! (`canon generate`'s path) on the same prompt, greedy, same number of tokens.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p canon-infer --example engine_timings -- \
//!     --model smollm2 --tokens 64 --streams 1,8
//! ```
//!
//! Prints, per run, decode tokens/s (generated tokens over the time from the first to the last
//! token) and the engine's `StepTimings` table: prefill, the decode forward pass (`forward_batch`
//! plus copying the logits out), sampling, detokenizing and sending, and the rest of the step.
//! Nothing here is a pass/fail check.

use std::time::Instant;

use canon_infer::{
    Engine, EngineConfig, GenerateRequest, Request, SamplingConfig, Session, generate_ids,
};
use canon_models::{LoadedLm, ModelSpec, WeightMode, load_causal_lm};

const PROMPTS: [&str; 8] = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle to a child.",
    "List some uses of a paperclip and explain each.",
    "What makes a good cup of tea?",
    "Tell me about the history of the printing press.",
    "How do bees make honey?",
    "Describe a walk through an autumn forest.",
];

struct Args {
    model: String,
    tokens: usize,
    streams: Vec<usize>,
    temperature: f32,
    repeat: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: "smollm2".into(),
        tokens: 64,
        streams: vec![1, 8],
        temperature: 0.0,
        repeat: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "engine_timings: time one engine step by phase\n\n\
                 options: --model M (alias or GGUF, default smollm2) --tokens N (64)\n\
                 \x20        --streams 1,8 --temperature T (0 = greedy) --repeat R (2)\n\n\
                 example: RAYON_NUM_THREADS=2 cargo run --release -p canon-infer \
                 --example engine_timings -- --streams 1,4,8"
            );
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("error: {flag} expects a value, found nothing"))?;
        let bad = |what: &str| format!("error: {flag} expects {what}, found '{value}'");
        match flag.as_str() {
            "--model" => a.model = value.clone(),
            "--tokens" => a.tokens = value.parse().map_err(|_| bad("a count"))?,
            "--temperature" => a.temperature = value.parse().map_err(|_| bad("a number"))?,
            "--repeat" => a.repeat = value.parse().map_err(|_| bad("a count"))?,
            "--streams" => {
                a.streams = value
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad("counts separated by commas"))?;
            }
            _ => return Err(format!("error: unknown option {flag} (see --help)")),
        }
    }
    if a.tokens == 0 || a.repeat == 0 || a.streams.iter().any(|&k| k == 0 || k > 64) {
        return Err("error: --tokens, --repeat and every stream count must be 1 or more (streams at most 64)".into());
    }
    Ok(a)
}

fn sampling(a: &Args, i: usize) -> SamplingConfig {
    if a.temperature == 0.0 {
        SamplingConfig::greedy()
    } else {
        // As the server builds it from an OpenAI request with only `temperature` set.
        SamplingConfig {
            temperature: a.temperature,
            seed: 1000 + i as u64,
            ..SamplingConfig::greedy()
        }
    }
}

fn prompt_ids(lm: &LoadedLm, i: usize) -> Result<Vec<u32>, String> {
    let text = format!(
        "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
        PROMPTS[i % PROMPTS.len()]
    );
    lm.tokenizer
        .encode(&text, true)
        .map_err(|e| format!("error: cannot tokenize: {e}"))
}

fn run() -> Result<(), String> {
    let a = parse()?;
    let spec = ModelSpec::parse(&a.model).map_err(|e| format!("error: {e}"))?;
    let lm = load_causal_lm(&spec, WeightMode::KeepQuantized, &canon_assets::Stderr)
        .map_err(|e| format!("error: cannot load '{}': {e}", a.model))?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "# engine_timings: model {}, {} tokens a request, {threads} threads, temperature {}",
        a.model, a.tokens, a.temperature
    );

    // The single-sequence loop (`canon generate`), the best of `repeat` runs.
    let ids = prompt_ids(&lm, 0)?;
    let mut best = 0.0f64;
    for _ in 0..a.repeat {
        let mut req = GenerateRequest::new("", a.tokens);
        req.sampling = sampling(&a, 0);
        req.ignore_eos = true;
        let g = generate_ids(
            lm.model.as_ref(),
            &lm.tokenizer,
            &mut Session::new(lm.model.as_ref()),
            &ids,
            &req,
            &mut |_| true,
        )
        .map_err(|e| format!("error: generation failed: {e}"))?;
        // The first token comes from the prefill: decode_ms covers tokens 2..=n.
        best = best.max((g.tokens.len() - 1) as f64 / (g.decode_ms / 1e3));
    }
    println!("single-sequence loop (generate_ids): {best:.1} tok/s decode\n");

    let max_k = a.streams.iter().copied().max().unwrap_or(1);
    let engine = Engine::start(
        lm,
        EngineConfig {
            slots: max_k.max(8),
            ..EngineConfig::default()
        },
    )
    .map_err(|e| format!("error: cannot start the engine: {e}"))?;
    let tok = engine.tokenizer().clone();
    let lm_ids: Vec<Vec<u32>> = (0..max_k)
        .map(|i| {
            let text = format!(
                "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
                PROMPTS[i % PROMPTS.len()]
            );
            tok.encode(&text, true)
                .map_err(|e| format!("error: cannot tokenize: {e}"))
        })
        .collect::<Result<_, _>>()?;
    for &k in &a.streams {
        let mut best: Option<(f64, f64, canon_infer::StepTimings)> = None;
        for _ in 0..a.repeat {
            engine.reset_timings();
            let t0 = Instant::now();
            // Each stream is read on its own thread, as the server's tasks read theirs.
            let handles: Vec<_> = (0..k)
                .map(|i| {
                    let mut r = Request::new(lm_ids[i].clone(), a.tokens);
                    r.sampling = sampling(&a, i);
                    r.ignore_eos = true;
                    engine
                        .submit(r)
                        .map_err(|e| format!("error: submit failed: {e}"))
                })
                .collect::<Result<_, _>>()?;
            let readers: Vec<_> = handles
                .into_iter()
                .map(|h| std::thread::spawn(move || h.wait()))
                .collect();
            // The decode window: from the first stream's first token to the last stream's end
            // (all were submitted at t0).
            let (mut first, mut last) = (f64::INFINITY, 0.0f64);
            let mut tokens = 0usize;
            for r in readers {
                let c = r
                    .join()
                    .map_err(|_| "error: a reader thread panicked".to_string())?
                    .map_err(|e| format!("error: generation failed: {e}"))?;
                first = first.min(c.ttft_ms);
                last = last.max(c.ttft_ms + c.decode_ms);
                tokens += c.tokens.len() - 1;
            }
            let wall = t0.elapsed().as_secs_f64();
            let decode = tokens as f64 / ((last - first) / 1e3);
            let total = (tokens + k) as f64 / wall;
            if best.as_ref().is_none_or(|b| decode > b.0) {
                best = Some((decode, total, engine.timings()));
            }
        }
        if let Some((decode, total, t)) = best {
            println!(
                "engine, {k} stream(s): {decode:.1} tok/s decode, {total:.1} tok/s with prefill"
            );
            println!("{}", t.table());
        }
    }
    engine.shutdown();
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
