//! Tier 2: the batched engine on SmolLM2-135M-Instruct (Q4_1 blocks, the default quantized path):
//! eight different prompts generated together give, token for token, what each gives alone through
//! the single-sequence loop, greedy and seeded sampling alike; so do prompts that arrive while
//! others decode, whole or in chunks.

use std::time::Duration;

use canon_infer::{
    Engine, EngineConfig, Event, GenerateRequest, Request, SamplingConfig, Session, generate_ids,
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

/// Each prompt's tokens through the single-sequence loop, greedy then sampled (16 lists).
fn alone(lm: &LoadedLm, ids: &[Vec<u32>]) -> Vec<Vec<u32>> {
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
    want
}

fn request(p: &[u32], i: usize, greedy: bool) -> Request {
    let mut r = Request::new(p.to_vec(), 24);
    r.sampling = cfg(i, greedy);
    r.ignore_eos = true;
    r
}

#[test]
fn eight_prompts_batched_equal_each_alone() {
    let lm = load();
    let ids: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true).unwrap())
        .collect();
    let want = alone(&lm, &ids);
    // One fresh engine per round: a second round of the same prompts would reuse the first
    // round's cached prefixes, which recomputes each prompt's last position on another kernel.
    let lm = std::sync::Mutex::new(Some(lm));
    let mut got = Vec::new();
    for greedy in [true, false] {
        let model = lm.lock().unwrap().take().unwrap_or_else(load);
        let e = engine(model, EngineConfig::default().prefill_chunk);
        let reqs = ids
            .iter()
            .enumerate()
            .map(|(i, p)| request(p, i, greedy))
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

fn engine(model: LoadedLm, chunk: usize) -> Engine {
    Engine::start(
        model,
        EngineConfig {
            slots: 8,
            prefill_chunk: chunk,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Three requests decoding before the next arrives, then five arriving together: with chunks
/// of `chunk` tokens the later prompts are prefilled beside the others' decoding.
fn staggered(e: &Engine, ids: &[Vec<u32>], greedy: bool) -> Vec<Vec<u32>> {
    let mut handles = Vec::new();
    for (i, p) in ids.iter().enumerate() {
        let h = e.submit(request(p, i, greedy)).unwrap();
        if i < 3 {
            let mut seen = 0;
            while seen < 2 {
                match h.recv_timeout(Duration::from_secs(60)) {
                    Some(Event::Token { .. }) => seen += 1,
                    Some(Event::Error(e)) => panic!("request {i}: {e}"),
                    None => panic!("request {i}: no token within a minute"),
                    _ => {}
                }
            }
        }
        handles.push(h);
    }
    handles
        .into_iter()
        .map(|h| h.wait().unwrap().tokens)
        .collect()
}

#[test]
fn prompts_arriving_while_others_decode_equal_each_alone() {
    let lm = load();
    let ids: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true).unwrap())
        .collect();
    let want = alone(&lm, &ids);
    let lm = std::sync::Mutex::new(Some(lm));
    let model = || lm.lock().unwrap().take().unwrap_or_else(load);
    // Whole prompts in one chunk: each alone is the single-sequence loop.
    for greedy in [true, false] {
        let e = engine(model(), 256);
        let got = staggered(&e, &ids, greedy);
        for (i, g) in got.iter().enumerate() {
            let w = &want[if greedy { 0 } else { 8 } + i];
            assert_eq!(
                g, w,
                "request {i} ({}, greedy {greedy}) differs from alone",
                PROMPTS[i]
            );
        }
        e.shutdown();
    }
    // Chunks of 4: a prompt's chunks are the same in any company, so each request equals itself
    // alone in an engine of the same chunk size (not the one-pass loop: attention over a
    // 4-row chunk need not round as over the whole prompt).
    let e = engine(model(), 4);
    let got = staggered(&e, &ids, true);
    e.shutdown();
    for (i, p) in ids.iter().enumerate() {
        let e = engine(model(), 4);
        let w = e
            .submit(request(p, i, true))
            .unwrap()
            .wait()
            .unwrap()
            .tokens;
        assert_eq!(
            got[i], w,
            "request {i} ({}) in chunks of 4 differs from alone",
            PROMPTS[i]
        );
        e.shutdown();
    }
}

/// The engine prefills prompts that arrive together in one pass where the model's rows do not
/// depend on their batch: SmolLM2's Q4_1 and Q8_0 products on repacked weights. Three prompts
/// of different lengths in one `forward_batch` pass, then one decode row each, then a pass mixing
/// decode rows with a prompt long enough for its attention to run alone on the pool, give each
/// prompt the logits of its own passes, bit for bit.
#[test]
fn prompts_sharing_a_pass_get_the_logits_of_their_own_passes() {
    let lm = load();
    let packs = [canon_quant::Kind::Q4_1, canon_quant::Kind::Q8_0]
        .into_iter()
        .all(canon_quant::kernels::tile::packed::packs);
    let m = lm.model.as_ref();
    assert_eq!(m.rows_independent(), packs);
    if !packs {
        return;
    }
    let ids: Vec<Vec<u32>> = [PROMPTS[0], PROMPTS[3], PROMPTS[5]]
        .iter()
        .map(|p| lm.tokenizer.encode(p, true).unwrap())
        .collect();
    let bits = |t: candle_core::Tensor| -> Vec<Vec<u32>> {
        t.to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(f32::to_bits).collect())
            .collect()
    };
    let mut alone = Vec::new();
    for p in &ids {
        let mut c = m.new_cache();
        let first = bits(m.forward_batch(&[p.as_slice()], &mut [&mut c]).unwrap());
        let next = bits(m.forward_batch(&[&[42u32][..]], &mut [&mut c]).unwrap());
        let third = bits(m.forward_batch(&[&[7u32][..]], &mut [&mut c]).unwrap());
        alone.push((first, next, third));
    }
    // A prompt long enough that its attention runs alone on the pool, then with decode rows.
    let long: Vec<u32> = ids
        .iter()
        .flatten()
        .chain(ids.iter().flatten())
        .copied()
        .collect();
    assert!(
        long.len() * long.len() * 9 * 64 >= 1 << 20,
        "the long prompt is too short"
    );
    let long_alone = {
        let mut c = m.new_cache();
        bits(m.forward_batch(&[long.as_slice()], &mut [&mut c]).unwrap())
    };
    let mut caches: Vec<_> = ids.iter().map(|_| m.new_cache()).collect();
    let slices: Vec<&[u32]> = ids.iter().map(|p| p.as_slice()).collect();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let first = bits(m.forward_batch(&slices, &mut refs).unwrap());
    let next = bits(
        m.forward_batch(&[&[42u32][..], &[42], &[42]], &mut refs)
            .unwrap(),
    );
    // One pass mixing decode rows and prompt chunks, as the engine's steps are: decode rows of
    // the first and third sequences around the long prompt in a fresh cache.
    let mut fresh = m.new_cache();
    let mixed = {
        let [a, b, c] = &mut caches[..] else {
            unreachable!()
        };
        let _ = b;
        bits(
            m.forward_batch(
                &[&[7u32][..], long.as_slice(), &[7]],
                &mut [a, &mut fresh, c],
            )
            .unwrap(),
        )
    };
    for (i, (f, n, t)) in alone.iter().enumerate() {
        assert!(
            first[i] == f[0],
            "prompt {i}: the shared prefill's logits differ"
        );
        assert!(next[i] == n[0], "prompt {i}: the next row's logits differ");
        if i != 1 {
            let row = if i == 0 { 0 } else { 2 };
            assert!(
                mixed[row] == t[0],
                "prompt {i}: a decode row beside a prompt chunk differs"
            );
        }
    }
    assert!(
        mixed[1] == long_alone[0],
        "a prompt chunk beside decode rows differs from its own pass"
    );
}
