//! The engine's worker thread: it owns the model and the slots, admits queued requests, prefills
//! prompt chunks, decodes the active sequences together and samples each one's next token.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use canon_models::{Cache, CausalLm};
use canon_text::{TokenStream, Tokenizer};

use super::{
    Completion, EngineConfig, Event, GEMM_ROWS_MAX, Pending, Request, Shared, StepTimings, ns_since,
};
use crate::constrained::Allowed;
use crate::generate::StopFilter;
use crate::sampling::{Sampler, token_logprob};
use crate::{FinishReason, InferError, Result, TokenLogprob};

mod passes;
mod sample;
use passes::Feed;
use sample::{Sampled, finish, sample_one};

enum Phase {
    /// Prefilling the prompt; `next` is the first prompt position not yet in the cache.
    Prefill { next: usize },
    /// The token to feed at the next decode step.
    Decode { feed: u32 },
}

struct Active {
    req: Request,
    tx: flume::Sender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
    first_token: Option<Instant>,
    phase: Phase,
    sampler: Sampler,
    history: Vec<u32>,
    tokens: Vec<u32>,
    lps: Option<Vec<TokenLogprob>>,
    stream: TokenStream,
    text: String,
    emitted: usize,
    cached: usize,
    hit_stop_string: bool,
}

struct Slot {
    cache: Cache,
    /// The tokens whose states the cache holds.
    ids: Vec<u32>,
    active: Option<Active>,
    /// When a request last took this slot (`Worker::tick`; 0 = never).
    used: u64,
}

pub(super) struct Worker {
    lm: Box<dyn CausalLm>,
    tok: Arc<Tokenizer>,
    cfg: EngineConfig,
    max_len: usize,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    /// Requests admitted so far (the slots' recency clock).
    tick: u64,
    /// This worker's timings since the last publication to `shared.timings`.
    t: StepTimings,
    /// Whether waiting prompts' chunks may share a forward pass (`CausalLm::rows_independent`).
    rows_independent: bool,
}

/// What a sampled token did to its sequence.
enum Outcome {
    Continue(u32),
    Finished(FinishReason),
}

impl Worker {
    pub(super) fn new(
        lm: Box<dyn CausalLm>,
        tok: Arc<Tokenizer>,
        cfg: EngineConfig,
        max_len: usize,
        shared: Arc<Shared>,
    ) -> Self {
        let rows_independent = lm.rows_independent();
        let slots = (0..cfg.slots)
            .map(|_| Slot {
                cache: lm.new_cache(),
                ids: Vec::new(),
                active: None,
                used: 0,
            })
            .collect();
        Self {
            lm,
            tok,
            cfg,
            max_len,
            shared,
            slots,
            tick: 0,
            t: StepTimings::default(),
            rows_independent,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            // Wait for work; take new requests into free slots.
            let shared = self.shared.clone();
            let mut start = Instant::now();
            let shutdown = {
                let Ok(mut q) = shared.queue.lock() else {
                    return;
                };
                if !q.shutdown && q.pending.is_empty() && self.idle() {
                    while !q.shutdown && q.pending.is_empty() && self.idle() {
                        q = match shared.wake.wait(q) {
                            Ok(q) => q,
                            Err(_) => return,
                        };
                    }
                    self.t.idle_ns += ns_since(start);
                    start = Instant::now();
                }
                if !q.shutdown {
                    self.admit(&mut q.pending);
                }
                q.shutdown
            };
            if shutdown {
                self.fail_all("the engine is shutting down");
                return;
            }
            let t0 = Instant::now();
            if let Err(e) = self.step() {
                // A model error fails the requests in flight; the engine keeps serving.
                self.fail_active(&format!("generation failed: {e}"));
            }
            self.shared
                .busy_ns
                .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.publish_busy();
            self.publish_timings(ns_since(start));
        }
    }

    /// Adds this step's timings to the shared ones; `total_ns` is the whole step, so what the
    /// phases did not account for counts as `other`.
    fn publish_timings(&mut self, total_ns: u64) {
        let t = std::mem::take(&mut self.t);
        let phases = t.prefill_ns + t.forward_ns + t.sample_ns + t.emit_ns;
        if let Ok(mut s) = self.shared.timings.lock() {
            s.steps += 1;
            s.decode_passes += t.decode_passes;
            s.decode_rows += t.decode_rows;
            s.prefill_chunks += t.prefill_chunks;
            s.prefill_tokens += t.prefill_tokens;
            s.prefill_ns += t.prefill_ns;
            s.forward_ns += t.forward_ns;
            s.sample_ns += t.sample_ns;
            s.emit_ns += t.emit_ns;
            s.other_ns += total_ns.saturating_sub(phases);
            s.idle_ns += t.idle_ns;
        }
    }

    fn idle(&self) -> bool {
        self.slots.iter().all(|s| s.active.is_none())
    }

    fn publish_busy(&self) {
        if let Ok(mut s) = self.shared.stats.lock() {
            s.busy_slots = self.slots.iter().filter(|s| s.active.is_some()).count();
        }
    }

    /// Moves queued requests into free slots, reusing the longest cached prefix.
    fn admit(&mut self, pending: &mut VecDeque<Pending>) {
        while let Some(p) = pending.front() {
            if p.cancel.load(Ordering::Relaxed) {
                pending.pop_front();
                continue;
            }
            let Some((i, reuse)) = self.choose_slot(&p.req.prompt_ids) else {
                return;
            };
            let Some(p) = pending.pop_front() else {
                return;
            };
            self.tick += 1;
            let slot = &mut self.slots[i];
            slot.used = self.tick;
            if reuse == 0 {
                slot.cache.clear();
                slot.ids.clear();
            } else if reuse < slot.ids.len() {
                for l in slot.cache.layers.iter_mut() {
                    let _ = l.truncate(reuse);
                }
                slot.ids.truncate(reuse);
            }
            let sampler = match Sampler::new(p.req.sampling.clone()) {
                Ok(s) => s,
                Err(e) => {
                    let _ = p.tx.send(Event::Error(e.to_string()));
                    continue;
                }
            };
            let lps = p.req.logprobs.map(|_| Vec::new());
            slot.active = Some(Active {
                history: p.req.prompt_ids.clone(),
                phase: Phase::Prefill { next: reuse },
                sampler,
                tokens: Vec::new(),
                lps,
                stream: TokenStream::new(),
                text: String::new(),
                emitted: 0,
                cached: reuse,
                hit_stop_string: false,
                first_token: None,
                submitted: p.submitted,
                cancel: p.cancel,
                tx: p.tx,
                req: p.req,
            });
        }
    }

    /// The free slot for a prompt and how many of its cached positions it reuses (at least one
    /// prompt token is always fed, to get the first generated token's logits).
    ///
    /// The free slot whose cached tokens share the longest prefix with the prompt is the source.
    /// When taking it would overwrite cached positions beyond the shared prefix (another prompt's
    /// tail, a finished conversation) and another free slot was used less recently (an empty one
    /// first), the shared prefix is copied into that slot instead, so the source keeps its whole
    /// cache for a later request that repeats it: one slot per recent conversation, least
    /// recently used first out, as llama.cpp's server keeps its slots' prompts. A prompt that
    /// shares nothing takes the least recently used free slot. `None` when every slot is busy.
    fn choose_slot(&mut self, prompt: &[u32]) -> Option<(usize, usize)> {
        let (best, common) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .map(|(i, s)| {
                let common = s.ids.iter().zip(prompt).take_while(|(a, b)| a == b).count();
                (i, common)
            })
            .max_by_key(|&(i, common)| (common, std::cmp::Reverse(i)))?;
        let reuse = common.min(prompt.len().saturating_sub(1));
        // The least recently used free slot other than the source (empty slots have used = 0).
        let spare = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, s)| s.active.is_none() && i != best)
            .min_by_key(|&(i, s)| (s.used, i))
            .map(|(i, _)| i);
        if reuse == 0 {
            // Nothing to reuse: keep every cache that may serve a later prompt if one is spare.
            let lru = match spare {
                Some(j) if self.slots[j].used < self.slots[best].used => j,
                _ => best,
            };
            return Some((lru, 0));
        }
        let loses_tail = self.slots[best].ids.len() > reuse;
        match spare {
            Some(j) if loses_tail && self.slots[j].used < self.slots[best].used => {
                match copy_prefix(&self.slots[best].cache, reuse) {
                    Ok(cache) => {
                        let ids = self.slots[best].ids[..reuse].to_vec();
                        let dst = &mut self.slots[j];
                        dst.cache = cache;
                        dst.ids = ids;
                        Some((j, reuse))
                    }
                    // Copying failed (it allocates): reuse the source in place, as before.
                    Err(_) => Some((best, reuse)),
                }
            }
            _ => Some((best, reuse)),
        }
    }

    /// One step: drop cancelled requests, then prompt chunks up to the step's token budget and a
    /// decode row for every other active slot: one pass for all of them where the model's rows
    /// do not depend on their batch, else a pass per chunk and even decode groups.
    fn step(&mut self) -> Result<()> {
        for s in self.slots.iter_mut() {
            if s.active
                .as_ref()
                .is_some_and(|a| a.cancel.load(Ordering::Relaxed) || a.tx.is_disconnected())
            {
                s.active = None;
            }
        }
        // Prefill: slots still prefilling, in slot order, one chunk each, while this step has
        // prefilled fewer than `prefill_chunk` tokens. Requests that arrive together (short
        // prompts) then all get their first token within one step instead of one per step with
        // a decode pass of the others between each two; a long prompt still takes one chunk per
        // step. A prompt's chunks start where they did (every `prefill_chunk` tokens).
        let mut budget = self.cfg.prefill_chunk;
        let mut prompts: Vec<(usize, Feed)> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if let Some(Active {
                phase: Phase::Prefill { next },
                req,
                ..
            }) = &slot.active
            {
                let end = (next + self.cfg.prefill_chunk).min(req.prompt_ids.len());
                prompts.push((i, Feed::Prompt { next: *next, end }));
                budget = budget.saturating_sub(end - next);
            }
        }
        let all: Vec<usize> = (0..self.slots.len()).collect();
        if self.rows_independent {
            // Rows that do not depend on their batch (quantized products on repacked weights):
            // the step's prompt chunks and every decoding slot's token share one pass, which
            // reads each weight matrix once for all of them. A prompt whose last chunk this is
            // decodes from the next step on.
            let mut rows = self.decode_feeds(&all);
            rows.extend(prompts);
            rows.sort_by_key(|r| r.0);
            return self.pass(&rows);
        }
        // Otherwise each prompt chunk is its own pass, then the decoding rows (prompts finished
        // just now included) in passes of at most GEMM_ROWS_MAX rows, as even as can be (16
        // rows: 8 + 8, not 15 + 1, whose one-row pass would read every weight again for a
        // single row). Either way nothing depends on which prompts share the step.
        for p in &prompts {
            self.pass(std::slice::from_ref(p))?;
        }
        let rows = self.decode_feeds(&all);
        let passes = rows.len().div_ceil(GEMM_ROWS_MAX).max(1);
        let most = rows.len().div_ceil(passes).max(1);
        for group in rows.chunks(most) {
            self.pass(group)?;
        }
        Ok(())
    }

    /// Samples each listed slot's next token from its logits row and decides whether it goes on
    /// (the sequences side by side on the kernels' pool: each touches only its own state), then
    /// sends the step's events together, so the receivers are woken in one burst per step rather
    /// than once between every two sequences' sampling.
    fn after_rows(&mut self, rows: Vec<(usize, &[f32])>) -> Result<()> {
        let max_len = self.max_len;
        let tok = self.tok.clone();
        let t0 = Instant::now();
        let results: Vec<(usize, std::result::Result<Sampled, String>)> = {
            type Work<'a> = (
                usize,
                &'a mut Active,
                &'a [f32],
                usize,
                Option<std::result::Result<Sampled, String>>,
            );
            let mut rows = rows.into_iter().peekable();
            let mut work: Vec<Mutex<Work<'_>>> = Vec::new();
            for (i, slot) in self.slots.iter_mut().enumerate() {
                let Some(&(want, _)) = rows.peek() else {
                    break;
                };
                if want != i {
                    continue;
                }
                let Some((_, logits)) = rows.next() else {
                    break;
                };
                let cache_len = slot.ids.len();
                if let Some(a) = slot.active.as_mut() {
                    work.push(Mutex::new((i, a, logits, cache_len, None)));
                }
            }
            let run = |j: usize| {
                let mut w = work[j].lock().unwrap_or_else(|p| p.into_inner());
                let (_, a, logits, cache_len, out) = &mut *w;
                *out = Some(sample_one(a, &tok, logits, *cache_len, max_len));
            };
            canon_quant::pool::parallel_for(work.len(), &run);
            work.into_iter()
                .map(|m| {
                    let (i, _, _, _, out) = m.into_inner().unwrap_or_else(|p| p.into_inner());
                    (
                        i,
                        out.unwrap_or_else(|| Err("the sampling step did not run".into())),
                    )
                })
                .collect()
        };
        let t1 = Instant::now();
        self.t.sample_ns += t1.duration_since(t0).as_nanos() as u64;
        for (i, r) in results {
            let slot = &mut self.slots[i];
            let Some(a) = slot.active.as_mut() else {
                continue;
            };
            let outcome = match r {
                Ok(Sampled { event, outcome }) => {
                    if let Some(e) = event {
                        let _ = a.tx.send(e);
                    }
                    outcome
                }
                Err(e) => {
                    let _ = a.tx.send(Event::Error(e));
                    slot.active = None;
                    continue;
                }
            };
            match outcome {
                Outcome::Continue(next) => a.phase = Phase::Decode { feed: next },
                Outcome::Finished(reason) => {
                    let Some(a) = slot.active.take() else {
                        continue;
                    };
                    let generated = a.tokens.len() as u64;
                    finish(a, &tok, reason)?;
                    if let Ok(mut s) = self.shared.stats.lock() {
                        s.requests_finished += 1;
                        s.generated_tokens += generated;
                    }
                }
            }
        }
        self.t.emit_ns += ns_since(t1);
        Ok(())
    }

    fn fail_active(&mut self, msg: &str) {
        for s in self.slots.iter_mut() {
            if let Some(a) = s.active.take() {
                let _ = a.tx.send(Event::Error(msg.to_string()));
            }
            // The cache may hold a half-written step: forget it.
            s.cache.clear();
            s.ids.clear();
        }
    }

    fn fail_all(&mut self, msg: &str) {
        self.fail_active(msg);
        if let Ok(mut q) = self.shared.queue.lock() {
            for p in q.pending.drain(..) {
                let _ = p.tx.send(Event::Error(msg.to_string()));
            }
        }
    }
}

/// A new cache holding the first `n` positions of `src` (its own buffers: a slot writes its
/// cache in place, so two slots never share storage).
fn copy_prefix(src: &Cache, n: usize) -> Result<Cache> {
    let mut layers = Vec::with_capacity(src.layers.len());
    for l in &src.layers {
        let mut kv = if l.is_f16() {
            canon_nn::KvCache::new_f16()
        } else {
            canon_nn::KvCache::new()
        };
        if let Some((k, v)) = l.view()? {
            if k.dim(2)? < n {
                return Err(InferError::Sampling(format!(
                    "engine: a cache layer holds {} positions, expected at least {n}",
                    k.dim(2)?
                )));
            }
            kv.append(&k.narrow(2, 0, n)?, &v.narrow(2, 0, n)?)?;
        }
        layers.push(kv);
    }
    Ok(Cache { layers })
}
