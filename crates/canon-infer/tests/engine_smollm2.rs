//! Tier 2: the batched engine on SmolLM2-135M-Instruct (Q4_1 blocks, the default quantized path):
//! eight different prompts generated together give, token for token, what each gives alone through
//! the single-sequence loop, greedy and seeded sampling alike.

use canon_infer::{
    Engine, EngineConfig, GenerateRequest, Request, SamplingConfig, Session, generate_ids,
};
use canon_models::{LoadedLm, ModelSpec, WeightMode, load_causal_lm};

fn load() -> LoadedLm {
    load_causal_lm(
        &ModelSpec::Alias("smollm2".into()),
        WeightMode::KeepQuantized,
        &canon_assets::Stderr,
    )
    .expect("load smollm2")
}

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "<|im_start|>user\nName three primes.<|im_end|>\n<|im_start|>assistant\n",
    "The three laws of thermodynamics are",
    "<|im_start|>user\nWhat is RoPE?<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\nx = np.",
    "Q: What is 17 times 3?\nA:",
];

fn cfg(i: usize, greedy: bool) -> SamplingConfig {
    if greedy {
        SamplingConfig::greedy()
    } else {
        SamplingConfig {
            seed: 7 + i as u64,
            ..SamplingConfig::default()
        }
    }
}

#[test]
fn eight_prompts_batched_equal_each_alone() {
    let lm = load();
    let ids: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true).unwrap())
        .collect();
    let mut want = Vec::new();
    for greedy in [true, false] {
        for (i, p) in ids.iter().enumerate() {
            let mut req = GenerateRequest::new("", 24);
            req.sampling = cfg(i, greedy);
            req.ignore_eos = true;
            let g = generate_ids(
                lm.model.as_ref(),
                &lm.tokenizer,
                &mut Session::new(lm.model.as_ref()),
                p,
                &req,
                &mut |_| true,
            )
            .unwrap();
            want.push(g.tokens);
        }
    }
    // One fresh engine per round: a second round of the same prompts would reuse the first
    // round's cached prefixes, which recomputes each prompt's last position on another kernel.
    let lm = std::sync::Mutex::new(Some(lm));
    let mut got = Vec::new();
    for greedy in [true, false] {
        let model = lm.lock().unwrap().take().unwrap_or_else(load);
        let e = Engine::start(
            model,
            EngineConfig {
                slots: 8,
                ..Default::default()
            },
        )
        .unwrap();
        let reqs = ids
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut r = Request::new(p.clone(), 24);
                r.sampling = cfg(i, greedy);
                r.ignore_eos = true;
                r
            })
            .collect();
        got.extend(
            e.generate_batch(reqs)
                .unwrap()
                .into_iter()
                .map(|c| c.tokens),
        );
        e.shutdown();
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g,
            w,
            "request {i} ({}) differs batched and alone",
            PROMPTS[i % 8]
        );
    }
}
