//! The batched engine on a tiny GGUF model written by the test: a sequence's tokens do not depend
//! on what else is in the batch, equal the single-sequence loop's, and survive joins, cancels,
//! prefix reuse and chunked prefill.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use canon_infer::{Allowed, TokenConstraint};

use canon_infer::{
    Engine, EngineConfig, EngineError, Event, GenerateRequest, Request, SamplingConfig, Session,
    generate_ids,
};
use canon_models::{LoadedLm, WeightMode};
use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

fn tiny() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tiny.gguf");
    write_tiny_llama(
        &p,
        &TinyLlama {
            context_length: 256,
            ..Default::default()
        },
    )
    .unwrap();
    (d, p)
}

fn load(p: &std::path::Path) -> LoadedLm {
    canon_models::load::load_gguf_lm(p, WeightMode::KeepQuantized).unwrap()
}

fn engine(p: &std::path::Path, slots: usize, chunk: usize) -> Engine {
    Engine::start(
        load(p),
        EngineConfig {
            slots,
            ctx_size: 0,
            prefill_chunk: chunk,
            queue_limit: 64,
        },
    )
    .unwrap()
}

/// Eight different prompts of different lengths (byte tokens start at id 3).
fn prompts() -> Vec<Vec<u32>> {
    (0..8u32)
        .map(|i| {
            (0..(3 + 5 * i))
                .map(|j| 3 + (i * 37 + j * 11) % 250)
                .collect()
        })
        .collect()
}

fn sampling(i: usize) -> SamplingConfig {
    SamplingConfig {
        temperature: 0.9,
        top_k: Some(20),
        top_p: Some(0.95),
        min_p: None,
        repeat_penalty: 1.1,
        repeat_last_n: 16,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: 100 + i as u64,
    }
}

fn request(ids: &[u32], s: SamplingConfig, max: usize) -> Request {
    let mut r = Request::new(ids.to_vec(), max);
    r.sampling = s;
    r.ignore_eos = true;
    r
}

fn alone(p: &std::path::Path, ids: &[u32], s: SamplingConfig, max: usize) -> Vec<u32> {
    alone_with(load(p), ids, s, max)
}

fn alone_with(lm: LoadedLm, ids: &[u32], s: SamplingConfig, max: usize) -> Vec<u32> {
    let mut session = Session::new(lm.model.as_ref());
    let mut req = GenerateRequest::new("", max);
    req.sampling = s;
    req.ignore_eos = true;
    generate_ids(
        lm.model.as_ref(),
        &lm.tokenizer,
        &mut session,
        ids,
        &req,
        &mut |_| true,
    )
    .unwrap()
    .tokens
}

#[test]
fn batched_greedy_and_seeded_sampling_equal_the_single_sequence_loop() {
    let (_d, p) = tiny();
    let e = engine(&p, 8, 256);
    for (name, cfg) in [
        (
            "greedy",
            (|_| SamplingConfig::greedy()) as fn(usize) -> SamplingConfig,
        ),
        ("seeded", sampling),
    ] {
        let reqs: Vec<Request> = prompts()
            .iter()
            .enumerate()
            .map(|(i, ids)| request(ids, cfg(i), 16))
            .collect();
        let batched = e.generate_batch(reqs).unwrap();
        for (i, (ids, c)) in prompts().iter().zip(&batched).enumerate() {
            assert_eq!(c.tokens.len(), 16);
            assert_eq!(
                c.tokens,
                alone(&p, ids, cfg(i), 16),
                "{name}: prompt {i} differs batched and alone"
            );
        }
    }
    let s = e.stats();
    assert_eq!(s.requests_finished, 16);
    assert_eq!(s.generated_tokens, 16 * 16);
    e.shutdown();
}

/// With an f16 cache the batched step and the single-sequence loop both read the f16 keys and
/// values in place (each through its own attention entry): the same ids, greedy and seeded.
#[test]
fn with_an_f16_cache_batched_ids_equal_the_single_sequence_loop() {
    let (_d, p) = tiny();
    let f16 = || {
        let mut lm = load(&p);
        lm.model.set_kv_f16(true).unwrap();
        lm
    };
    let e = Engine::start(
        f16(),
        EngineConfig {
            slots: 8,
            ctx_size: 0,
            prefill_chunk: 256,
            queue_limit: 64,
        },
    )
    .unwrap();
    for (name, cfg) in [
        (
            "greedy",
            (|_| SamplingConfig::greedy()) as fn(usize) -> SamplingConfig,
        ),
        ("seeded", sampling),
    ] {
        let reqs: Vec<Request> = prompts()
            .iter()
            .enumerate()
            .map(|(i, ids)| request(ids, cfg(i), 16))
            .collect();
        let batched = e.generate_batch(reqs).unwrap();
        for (i, (ids, c)) in prompts().iter().zip(&batched).enumerate() {
            assert_eq!(
                c.tokens,
                alone_with(f16(), ids, cfg(i), 16),
                "{name}: prompt {i} differs batched and alone with an f16 cache"
            );
        }
    }
    e.shutdown();
}

#[test]
fn a_request_joining_mid_flight_and_chunked_prefill_change_nothing() {
    let (_d, p) = tiny();
    let ps = prompts();
    let want_a = alone(&p, &ps[7], sampling(7), 30);
    let want_b = alone(&p, &ps[5], sampling(5), 12);
    for chunk in [256, 4] {
        let e = engine(&p, 4, chunk);
        let a = e.submit(request(&ps[7], sampling(7), 30)).unwrap();
        let mut seen = 0;
        while seen < 3 {
            if let Some(Event::Token { .. }) = a.recv_timeout(Duration::from_secs(30)) {
                seen += 1;
            }
        }
        let b = e.submit(request(&ps[5], sampling(5), 12)).unwrap();
        assert_eq!(b.wait().unwrap().tokens, want_b, "chunk {chunk}");
        assert_eq!(a.wait().unwrap().tokens, want_a, "chunk {chunk}");
        e.shutdown();
    }
}

#[test]
fn a_cancelled_request_frees_its_slot_and_the_queue_has_a_limit() {
    let (_d, p) = tiny();
    let e = Engine::start(
        load(&p),
        EngineConfig {
            slots: 1,
            ctx_size: 0,
            prefill_chunk: 256,
            queue_limit: 1,
        },
    )
    .unwrap();
    let ps = prompts();
    // `a` holds the worker inside its second sampling step until the gate opens, so nothing is
    // admitted meanwhile: the queue state below does not depend on timing.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let mut ra = request(&ps[0], sampling(0), 200);
    ra.constraint = Some(Box::new(Gate {
        gate: gate.clone(),
        free_steps: 1,
    }));
    let a = e.submit(ra).unwrap();
    assert!(matches!(
        a.recv_timeout(Duration::from_secs(30)),
        Some(Event::Token { .. })
    ));
    let b = e.submit(request(&ps[1], sampling(1), 5)).unwrap();
    assert!(matches!(
        e.submit(request(&ps[2], sampling(2), 5)),
        Err(EngineError::QueueFull(1))
    ));
    drop(a); // cancels `a`: its slot is freed at the next step, and `b` takes it
    {
        let (m, c) = &*gate;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
    let c = b.wait().unwrap();
    assert_eq!(c.tokens.len(), 5);
    assert!(matches!(
        e.submit(Request::new(vec![], 4)),
        Err(EngineError::EmptyPrompt)
    ));
    assert!(matches!(
        e.submit(Request::new(vec![5; 256], 4)),
        Err(EngineError::PromptTooLong { found: 256, .. })
    ));
    assert!(matches!(
        e.submit(Request::new(vec![1_000_000], 4)),
        Err(EngineError::Invalid(_))
    ));
    e.shutdown();
    assert!(matches!(
        e.submit(request(&ps[2], sampling(2), 5)),
        Err(EngineError::ShutDown)
    ));
}

#[test]
fn a_prompt_extending_a_cached_one_skips_the_shared_prefix() {
    let (_d, p) = tiny();
    let e = engine(&p, 2, 256);
    let ps = prompts();
    let first = e
        .generate_batch(vec![request(&ps[6], SamplingConfig::greedy(), 10)])
        .unwrap()
        .remove(0);
    // The next turn re-sends the conversation: the prompt, the reply, then new tokens.
    let mut next = ps[6].clone();
    next.extend_from_slice(&first.tokens);
    next.extend_from_slice(&[40, 41, 42]);
    let c = e
        .generate_batch(vec![request(&next, SamplingConfig::greedy(), 10)])
        .unwrap()
        .remove(0);
    // Every fed token is reused: the prompt and all generated tokens but the last (never fed).
    assert_eq!(c.cached_tokens, ps[6].len() + first.tokens.len() - 1);
    assert_eq!(c.tokens, alone(&p, &next, SamplingConfig::greedy(), 10));
    assert!(e.stats().cached_prompt_tokens >= c.cached_tokens as u64);
    e.shutdown();
}

#[test]
fn a_prompt_sharing_part_of_a_cache_copies_it_and_the_source_keeps_its_whole_prompt() {
    let (_d, p) = tiny();
    prefix_copy_keeps_the_source(&p, engine(&p, 2, 256));
}

#[test]
fn the_prefix_copy_of_an_f16_cache_decodes_like_the_original() {
    let (_d, p) = tiny();
    let f16 = |lm: &mut LoadedLm| lm.model.set_kv_f16(true).unwrap();
    let mut lm = load(&p);
    f16(&mut lm);
    let e = Engine::start(
        lm,
        EngineConfig {
            slots: 2,
            ctx_size: 0,
            prefill_chunk: 256,
            queue_limit: 64,
        },
    )
    .unwrap();
    let a = prompts()[6].clone();
    let mut b = a[..8].to_vec();
    b.extend_from_slice(&[200, 201, 202, 203]);
    let g = SamplingConfig::greedy();
    let run = |ids: &[u32]| {
        e.generate_batch(vec![request(ids, g.clone(), 6)])
            .unwrap()
            .remove(0)
    };
    run(&a);
    let cb = run(&b);
    assert_eq!(cb.cached_tokens, 8);
    // The same prompt on a fresh f16 engine: the copied prefix holds the same values.
    let mut lm2 = load(&p);
    f16(&mut lm2);
    let fresh = Engine::start(lm2, EngineConfig::default()).unwrap();
    let want = fresh
        .generate_batch(vec![request(&b, g.clone(), 6)])
        .unwrap()
        .remove(0);
    assert_eq!(cb.tokens, want.tokens);
    fresh.shutdown();
    e.shutdown();
}

fn prefix_copy_keeps_the_source(p: &std::path::Path, e: Engine) {
    let a = prompts()[6].clone();
    // B shares A's first 8 tokens, then differs.
    let mut b = a[..8].to_vec();
    b.extend_from_slice(&[200, 201, 202, 203]);
    let g = SamplingConfig::greedy();
    let run = |ids: &[u32]| {
        e.generate_batch(vec![request(ids, g.clone(), 6)])
            .unwrap()
            .remove(0)
    };
    let first = run(&a);
    assert_eq!(first.cached_tokens, 0);
    // B reuses the shared 8 tokens from a copy in the empty slot: A's slot keeps all of A.
    let cb = run(&b);
    assert_eq!(cb.cached_tokens, 8);
    assert_eq!(cb.tokens, alone(p, &b, g.clone(), 6));
    // A again: everything but its last token is still cached, and the text is the same.
    let again = run(&a);
    assert_eq!(again.cached_tokens, a.len() - 1);
    assert_eq!(again.tokens, first.tokens);
    // A third prompt sharing nothing takes the least recently used slot (B's), so A's stays.
    let c: Vec<u32> = (0..6).map(|j| 250 - j).collect();
    assert_eq!(run(&c).cached_tokens, 0);
    assert_eq!(run(&a).cached_tokens, a.len() - 1);
    e.shutdown();
}

#[test]
fn stop_strings_end_generation_before_the_string_as_the_single_loop_does() {
    let (_d, p) = tiny();
    let lm = load(&p);
    let ps = prompts();
    let mut req = GenerateRequest::new("", 40);
    req.ignore_eos = true;
    let full = generate_ids(
        lm.model.as_ref(),
        &lm.tokenizer,
        &mut Session::new(lm.model.as_ref()),
        &ps[3],
        &req,
        &mut |_| true,
    )
    .unwrap();
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 8, "the tiny model generated too little text");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    req.stop = vec![stop.clone()];
    let single = generate_ids(
        lm.model.as_ref(),
        &lm.tokenizer,
        &mut Session::new(lm.model.as_ref()),
        &ps[3],
        &req,
        &mut |_| true,
    )
    .unwrap();
    let e = engine(&p, 3, 256);
    let mut r = request(&ps[3], SamplingConfig::greedy(), 40);
    r.stop = vec![stop.clone()];
    let h = e.submit(r).unwrap();
    let mut streamed = String::new();
    let done = loop {
        match h.recv_timeout(Duration::from_secs(30)) {
            Some(Event::Token { text, .. }) | Some(Event::Text(text)) => streamed.push_str(&text),
            Some(Event::Done(c)) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(done.text, single.text);
    assert_eq!(
        streamed, done.text,
        "streamed text differs from the final text"
    );
    assert!(!done.text.contains(&stop));
    e.shutdown();
}

/// A constraint that allows everything, but blocks the worker in `allowed` after `free_steps`
/// steps until the gate opens.
struct Gate {
    gate: Arc<(Mutex<bool>, Condvar)>,
    free_steps: usize,
}

impl TokenConstraint for Gate {
    fn allowed(&mut self) -> Result<Allowed, String> {
        if self.free_steps > 0 {
            self.free_steps -= 1;
            return Ok(Allowed::All);
        }
        let (m, c) = &*self.gate;
        let mut open = m.lock().map_err(|e| e.to_string())?;
        while !*open {
            open = c.wait(open).map_err(|e| e.to_string())?;
        }
        Ok(Allowed::All)
    }
    fn commit(&mut self, _token: u32) -> Result<(), String> {
        Ok(())
    }
}
