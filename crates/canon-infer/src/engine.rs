//! Batched generation with continuous batching: many sequences, each with its own KV cache,
//! sampler, seed, stop strings and constraint, advance together, one forward pass per step over
//! all decoding sequences (`CausalLm::forward_batch`), so each weight matrix is read once per step
//! for the whole batch instead of once per sequence.
//!
//! A worker thread owns the model and a fixed number of slots. Between steps, queued requests take
//! free slots (preferring the slot whose cached tokens share the longest prefix with the prompt, which
//! then skips prefilling that prefix) and finished or cancelled ones leave. A prompt is prefilled in
//! chunks of `prefill_chunk` tokens; a step prefills chunks of waiting prompts while it has done
//! fewer than `prefill_chunk` tokens (the short prompts of requests that arrive together in one
//! step, a long one chunk by chunk), interleaved with the others' decode steps.
//!
//! Determinism: a request's tokens depend only on the request (its seed included), not on what else
//! is in the batch. Decode rows are multiplied in groups small enough to stay on the kernels'
//! row-independent 8-bit path (`GEMM_ROWS_MAX`), and prompts are prefilled one sequence per pass, so
//! greedy ids equal `generate_ids`' for the same prompt (tested on 8 prompts batched and one by one).
//! One exception, as with llama.cpp's cache reuse: a prompt that reuses a cached prefix recomputes
//! only its last position, in a one-row pass whose logits can differ in the last bits from a full
//! prefill's, so a sampled continuation after prefix reuse may differ from a cold start's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use canon_models::{Cache, CausalLm, LoadedLm};
use canon_text::{TokenStream, Tokenizer};

use crate::constrained::{Allowed, TokenConstraint};
use crate::generate::StopFilter;
use crate::sampling::{Sampler, token_logprob};
use crate::{FinishReason, InferError, Result, SamplingConfig, TokenLogprob};

/// Decode rows per forward pass. Quantized products switch from the row-independent 8-bit kernel
/// to a dequantizing GEMM at 16 rows; staying below keeps a sequence's arithmetic independent of
/// its batch.
pub const GEMM_ROWS_MAX: usize = 15;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences generated at once (each holds a KV cache).
    pub slots: usize,
    /// Longest sequence (prompt + generated) per slot; 0 = the model's context.
    pub ctx_size: usize,
    /// Prompt tokens per prefill chunk, and the step's budget: a step prefills one chunk of
    /// each waiting prompt in turn while it has prefilled fewer tokens than this.
    pub prefill_chunk: usize,
    /// Requests waiting for a slot beyond which `submit` refuses (`EngineError::QueueFull`).
    pub queue_limit: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            slots: 8,
            ctx_size: 0,
            prefill_chunk: 256,
            queue_limit: 64,
        }
    }
}

/// One generation request.
pub struct Request {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    /// Sampling settings; `sampling.seed` seeds this request's own random generator.
    pub sampling: SamplingConfig,
    /// Generation ends before the first of these strings; it is never emitted.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Per generated token, its log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// Restricts the tokens that may be sampled (structured output, tool calls).
    pub constraint: Option<Box<dyn TokenConstraint + Send>>,
}

impl Request {
    /// Greedy decoding of `max_tokens` tokens at most.
    pub fn new(prompt_ids: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt_ids,
            max_tokens,
            sampling: SamplingConfig::greedy(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            constraint: None,
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("prompt_tokens", &self.prompt_ids.len())
            .field("max_tokens", &self.max_tokens)
            .field("sampling", &self.sampling)
            .field("stop", &self.stop)
            .field("constrained", &self.constraint.is_some())
            .finish()
    }
}

/// What a request's handle receives, in order: tokens, then one `Done` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token and the text it completes (may be empty while a multi-byte character or
    /// a possible stop string is held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Text released at the end that no token event carried (held back while it could have
    /// begun a stop string, or the tail of a multi-byte character).
    Text(String),
    Done(Completion),
    Error(String),
}

/// A finished request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Completion {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV states were reused from a slot's cache (not prefilled again).
    pub cached_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// From submission to the first generated token (queueing and prefill included).
    pub ttft_ms: f64,
    /// From the first generated token to the last.
    pub decode_ms: f64,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error(
        "the prompt has {found} tokens, but a slot holds {max} (at least one more position is needed to generate)"
    )]
    PromptTooLong { found: usize, max: usize },
    #[error("empty prompt: expected at least one token")]
    EmptyPrompt,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the engine has shut down")]
    ShutDown,
}

/// Counters for monitoring (`/metrics`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStats {
    pub slots: usize,
    pub busy_slots: usize,
    pub queued: usize,
    pub requests_finished: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Generated tokens per second over the engine's busy time.
    pub decode_tokens_per_s: f64,
}

/// Where the engine's worker spent its time, summed over steps since the start (or the last
/// `Engine::reset_timings`). A step is one pass of the worker loop: prefill chunks (about
/// `prefill_chunk` tokens) and one decode pass over every decoding sequence.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepTimings {
    /// Worker steps that did work.
    pub steps: u64,
    /// Decode forward passes and the sequences (rows) they advanced.
    pub decode_passes: u64,
    pub decode_rows: u64,
    /// Prefill chunks and their prompt tokens.
    pub prefill_chunks: u64,
    pub prefill_tokens: u64,
    /// `forward_batch` of prompt chunks, logits copied out.
    pub prefill_ns: u64,
    /// `forward_batch` of decode rows, logits copied out.
    pub forward_ns: u64,
    /// Constraint masks, the sampler, log-probabilities, detokenizing the new token and stop
    /// strings (the step's sequences side by side).
    pub sample_ns: u64,
    /// Sending the step's events and finishing requests.
    pub emit_ns: u64,
    /// The rest of a step: cancellations, admission, locks, statistics.
    pub other_ns: u64,
    /// Waiting for work with no sequence running.
    pub idle_ns: u64,
}

impl StepTimings {
    /// A table of the time per step and per generated token by phase.
    pub fn table(&self) -> String {
        let busy =
            self.prefill_ns + self.forward_ns + self.sample_ns + self.emit_ns + self.other_ns;
        let per = |ns: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                ns as f64 / n as f64 / 1e3
            }
        };
        let mut out = format!(
            "{} steps, {} decode passes over {} rows ({:.2} rows a pass), {} prefill chunks ({} tokens)\n",
            self.steps,
            self.decode_passes,
            self.decode_rows,
            if self.decode_passes == 0 {
                0.0
            } else {
                self.decode_rows as f64 / self.decode_passes as f64
            },
            self.prefill_chunks,
            self.prefill_tokens
        );
        out.push_str("phase            total ms   share   µs/step   µs/decode row\n");
        for (name, ns) in [
            ("prefill", self.prefill_ns),
            ("decode forward", self.forward_ns),
            ("sample+detok", self.sample_ns),
            ("send events", self.emit_ns),
            ("other", self.other_ns),
        ] {
            out.push_str(&format!(
                "{name:15} {:9.1} {:6.1}% {:9.1} {:13.1}\n",
                ns as f64 / 1e6,
                if busy == 0 {
                    0.0
                } else {
                    100.0 * ns as f64 / busy as f64
                },
                per(ns, self.steps),
                per(ns, self.decode_rows)
            ));
        }
        out.push_str(&format!(
            "busy            {:9.1}          {:9.1} {:13.1}\nidle            {:9.1}\n",
            busy as f64 / 1e6,
            per(busy, self.steps),
            per(busy, self.decode_rows),
            self.idle_ns as f64 / 1e6
        ));
        out
    }
}

fn ns_since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

/// The receiving end of a request. Dropping it (or `cancel`) frees the slot within one step.
pub struct RequestHandle {
    rx: flume::Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl RequestHandle {
    /// The next event; `None` once the request is over and every event was read.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }
    /// `recv` with a time limit; `None` on timeout or at the end.
    pub fn recv_timeout(&self, limit: std::time::Duration) -> Option<Event> {
        self.rx.recv_timeout(limit).ok()
    }
    /// `recv` for async callers.
    pub async fn recv_async(&self) -> Option<Event> {
        self.rx.recv_async().await.ok()
    }
    /// Stops the request: its slot is freed at the next step, and no `Done` follows.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
    /// Reads events until the end; returns the completion.
    pub fn wait(self) -> Result<Completion> {
        while let Some(e) = self.recv() {
            match e {
                Event::Token { .. } | Event::Text(_) => {}
                Event::Done(c) => return Ok(c),
                Event::Error(m) => return Err(InferError::Sampling(m)),
            }
        }
        Err(InferError::Sampling("the engine stopped".into()))
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

struct Pending {
    req: Request,
    tx: flume::Sender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

struct Queue {
    pending: VecDeque<Pending>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Mutex<EngineStats>,
    busy_ns: AtomicU64,
    timings: Mutex<StepTimings>,
}

/// A running batched-generation engine. Clones share the same worker.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
    max_len: usize,
    queue_limit: usize,
    vocab: usize,
}

impl Engine {
    /// Starts the worker thread over a loaded model.
    pub fn start(lm: LoadedLm, cfg: EngineConfig) -> Result<Engine> {
        if cfg.slots == 0 || cfg.prefill_chunk == 0 {
            return Err(InferError::Sampling(
                "engine: slots and prefill_chunk must be at least 1".into(),
            ));
        }
        let model_ctx = lm.model.max_seq_len();
        let max_len = if cfg.ctx_size == 0 {
            model_ctx
        } else {
            cfg.ctx_size.min(model_ctx)
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            stats: Mutex::new(EngineStats {
                slots: cfg.slots,
                ..Default::default()
            }),
            busy_ns: AtomicU64::new(0),
            timings: Mutex::new(StepTimings::default()),
        });
        let tokenizer = Arc::new(lm.tokenizer.clone());
        let vocab = lm.model.vocab_size();
        let worker = {
            let shared = shared.clone();
            let tok = tokenizer.clone();
            let cfg = cfg.clone();
            std::thread::Builder::new()
                .name("canon-engine".into())
                .spawn(move || Worker::new(lm.model, tok, cfg, max_len, shared).run())
                .map_err(|e| InferError::Sampling(format!("cannot start the engine: {e}")))?
        };
        Ok(Engine {
            shared,
            tokenizer,
            worker: Arc::new(Mutex::new(Some(worker))),
            max_len,
            queue_limit: cfg.queue_limit,
            vocab,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Longest sequence (prompt + generated) a slot holds.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Queues a request; its events arrive on the handle.
    pub fn submit(&self, req: Request) -> std::result::Result<RequestHandle, EngineError> {
        if req.prompt_ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if req.prompt_ids.len() >= self.max_len {
            return Err(EngineError::PromptTooLong {
                found: req.prompt_ids.len(),
                max: self.max_len,
            });
        }
        req.sampling
            .validate()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        if let Some(&bad) = req.prompt_ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(EngineError::Invalid(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.vocab
            )));
        }
        let (tx, rx) = flume::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut q = self
                .shared
                .queue
                .lock()
                .map_err(|_| EngineError::ShutDown)?;
            if q.shutdown {
                return Err(EngineError::ShutDown);
            }
            if q.pending.len() >= self.queue_limit {
                return Err(EngineError::QueueFull(q.pending.len()));
            }
            q.pending.push_back(Pending {
                req,
                tx,
                cancel: cancel.clone(),
                submitted: Instant::now(),
            });
        }
        self.shared.wake.notify_one();
        Ok(RequestHandle { rx, cancel })
    }

    /// Runs every request to its end (together) and returns the completions in order.
    pub fn generate_batch(&self, reqs: Vec<Request>) -> Result<Vec<Completion>> {
        let handles = reqs
            .into_iter()
            .map(|r| {
                self.submit(r)
                    .map_err(|e| InferError::Sampling(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        handles.into_iter().map(RequestHandle::wait).collect()
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self
            .shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        if let Ok(q) = self.shared.queue.lock() {
            s.queued = q.pending.len();
        }
        let busy = self.shared.busy_ns.load(Ordering::Relaxed) as f64 / 1e9;
        s.decode_tokens_per_s = if busy > 0.0 {
            s.generated_tokens as f64 / busy
        } else {
            0.0
        };
        s
    }

    /// Where the worker's time went since the start or the last `reset_timings`.
    pub fn timings(&self) -> StepTimings {
        self.shared
            .timings
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Zeroes the step timings (e.g. after a warm-up).
    pub fn reset_timings(&self) {
        if let Ok(mut t) = self.shared.timings.lock() {
            *t = StepTimings::default();
        }
    }

    /// Stops the worker: queued and running requests end with `Event::Error`.
    pub fn shutdown(&self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.shutdown = true;
        }
        self.shared.wake.notify_all();
        if let Ok(mut w) = self.worker.lock()
            && let Some(h) = w.take()
        {
            let _ = h.join();
        }
    }
}

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

struct Worker {
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
}

/// What a sampled token did to its sequence.
enum Outcome {
    Continue(u32),
    Finished(FinishReason),
}

impl Worker {
    fn new(
        lm: Box<dyn CausalLm>,
        tok: Arc<Tokenizer>,
        cfg: EngineConfig,
        max_len: usize,
        shared: Arc<Shared>,
    ) -> Self {
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
        }
    }

    fn run(mut self) {
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

    /// One step: drop cancelled requests, prefill chunks up to the step's token budget, one
    /// decode pass over the others.
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
        // step. Each prompt is its own pass and its chunks start where they did (every
        // `prefill_chunk` tokens), so nothing depends on which prompts share the step.
        let mut budget = self.cfg.prefill_chunk;
        for i in 0..self.slots.len() {
            if budget == 0 {
                break;
            }
            if let Some(Active {
                phase: Phase::Prefill { .. },
                ..
            }) = self.slots[i].active
            {
                let done = self.prefill_chunk(i, self.cfg.prefill_chunk)?;
                budget = budget.saturating_sub(done);
            }
        }
        // Decode: every slot with a token to feed, in groups of at most GEMM_ROWS_MAX rows.
        let decoding: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                matches!(
                    self.slots[i].active,
                    Some(Active {
                        phase: Phase::Decode { .. },
                        ..
                    })
                )
            })
            .collect();
        for group in decoding.chunks(GEMM_ROWS_MAX) {
            self.decode_group(group)?;
        }
        Ok(())
    }

    /// Feeds slot `i` at most `chunk_len` more prompt tokens; returns how many it fed.
    fn prefill_chunk(&mut self, i: usize, chunk_len: usize) -> Result<usize> {
        let slot = &mut self.slots[i];
        let Some(a) = slot.active.as_mut() else {
            return Ok(0);
        };
        let Phase::Prefill { next } = a.phase else {
            return Ok(0);
        };
        let prompt = &a.req.prompt_ids;
        let end = (next + chunk_len).min(prompt.len());
        let chunk: Vec<u32> = prompt[next..end].to_vec();
        let t0 = Instant::now();
        let logits = self
            .lm
            .forward_batch(&[chunk.as_slice()], &mut [&mut slot.cache])?;
        self.t.prefill_chunks += 1;
        self.t.prefill_tokens += chunk.len() as u64;
        slot.ids.extend_from_slice(&chunk);
        if end < prompt.len() {
            self.t.prefill_ns += ns_since(t0);
            a.phase = Phase::Prefill { next: end };
            return Ok(chunk.len());
        }
        let row = logits.flatten_all()?.to_vec1::<f32>()?;
        self.t.prefill_ns += ns_since(t0);
        if let Ok(mut s) = self.shared.stats.lock() {
            s.prompt_tokens += prompt.len() as u64;
            s.cached_prompt_tokens += a.cached as u64;
        }
        self.after_rows(vec![(i, row.as_slice())])?;
        Ok(chunk.len())
    }

    fn decode_group(&mut self, group: &[usize]) -> Result<()> {
        let feeds: Vec<[u32; 1]> = group
            .iter()
            .map(|&i| match &self.slots[i].active {
                Some(Active {
                    phase: Phase::Decode { feed },
                    ..
                }) => [*feed],
                _ => [0],
            })
            .collect();
        let ids: Vec<&[u32]> = feeds.iter().map(|f| f.as_slice()).collect();
        let t0 = Instant::now();
        let logits = {
            let mut caches: Vec<&mut Cache> = Vec::with_capacity(group.len());
            let mut rest: &mut [Slot] = &mut self.slots;
            let mut base = 0;
            for &i in group {
                let (_, tail) = rest.split_at_mut(i - base);
                let (one, tail) = tail.split_at_mut(1);
                caches.push(&mut one[0].cache);
                rest = tail;
                base = i + 1;
            }
            self.lm.forward_batch(&ids, &mut caches)?
        };
        self.t.forward_ns += ns_since(t0);
        self.t.decode_passes += 1;
        self.t.decode_rows += group.len() as u64;
        for (&i, feed) in group.iter().zip(&feeds) {
            self.slots[i].ids.push(feed[0]);
        }
        // The rows are read where the forward pass wrote them (no copy of `[rows, vocabulary]`).
        let vocab = logits.dim(1)?;
        with_f32_data(&logits, |flat| {
            self.after_rows(
                group
                    .iter()
                    .copied()
                    .zip(flat.chunks_exact(vocab))
                    .collect(),
            )
        })?
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

/// `f(values)` of an f32 tensor's elements in order: the CPU storage read in place when the
/// tensor is contiguous there, a copy otherwise.
fn with_f32_data<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (guard, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((start, end))) =
            (&*guard, layout.contiguous_offsets())
            && let Some(data) = v.get(start..end)
        {
            return Ok(f(data));
        }
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&v))
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

/// One sequence's sampled token: the event to send (none when the sequence ended before a
/// token) and what follows.
struct Sampled {
    event: Option<Event>,
    outcome: Outcome,
}

impl From<Outcome> for Sampled {
    fn from(outcome: Outcome) -> Self {
        Sampled {
            event: None,
            outcome,
        }
    }
}

/// The sampling half of one step for one sequence (the same decisions as `generate_ids`):
/// constraint, sampler, log-probability, detokenizing and stop strings. Sends nothing.
fn sample_one(
    a: &mut Active,
    tok: &Tokenizer,
    logits: &[f32],
    cache_len: usize,
    max_len: usize,
) -> std::result::Result<Sampled, String> {
    // A constraint's mask goes on a copy; unconstrained rows are read where they are.
    let masked;
    let logits = match a.req.constraint.as_mut() {
        None => logits,
        Some(c) => match c.allowed()? {
            Allowed::All => logits,
            Allowed::End => return Ok(Outcome::Finished(FinishReason::Stop).into()),
            allowed @ Allowed::Mask(_) => {
                let mut m = logits.to_vec();
                for (id, l) in m.iter_mut().enumerate() {
                    if !allowed.allows(id as u32) {
                        *l = f32::NEG_INFINITY;
                    }
                }
                if m.iter().all(|l| *l == f32::NEG_INFINITY) {
                    return Err("the output constraint allows no token of this vocabulary".into());
                }
                masked = m;
                &masked
            }
        },
    };
    let next = a.sampler.sample(logits, &a.history);
    if a.first_token.is_none() {
        a.first_token = Some(Instant::now());
    }
    if !a.req.ignore_eos && tok.eog_ids.contains(&next) {
        return Ok(Outcome::Finished(FinishReason::Stop).into());
    }
    if let Some(c) = a.req.constraint.as_mut() {
        c.commit(next)?;
    }
    let logprob = match a.req.logprobs {
        Some(k) => Some(token_logprob(tok, logits, next, k).map_err(|e| e.to_string())?),
        None => None,
    };
    if let (Some(lp), Some(v)) = (&logprob, a.lps.as_mut()) {
        v.push(lp.clone());
    }
    a.tokens.push(next);
    a.history.push(next);
    let mut hit_stop = false;
    let mut text = String::new();
    if let Some(piece) = a.stream.push(tok, next).map_err(|e| e.to_string())? {
        let mut f = StopFilter {
            stops: &a.req.stop,
            text: std::mem::take(&mut a.text),
            emitted: a.emitted,
        };
        let (out, stop) = f.push(&piece);
        a.text = f.text;
        a.emitted = f.emitted;
        text = out;
        hit_stop = stop;
    }
    let event = Some(Event::Token {
        id: next,
        text,
        logprob,
    });
    let outcome = if hit_stop {
        a.hit_stop_string = true;
        Outcome::Finished(FinishReason::Stop)
    } else if a.tokens.len() >= a.req.max_tokens || cache_len + 1 >= max_len {
        Outcome::Finished(FinishReason::Length)
    } else {
        Outcome::Continue(next)
    };
    Ok(Sampled { event, outcome })
}

/// Flushes held-back text and sends `Done`.
fn finish(mut a: Active, tok: &Tokenizer, reason: FinishReason) -> Result<()> {
    let mut f = StopFilter {
        stops: &a.req.stop,
        text: std::mem::take(&mut a.text),
        emitted: a.emitted,
    };
    let mut tail = String::new();
    if !a.hit_stop_string
        && let Some(rest) = a.stream.flush(tok)?
    {
        let (out, _) = f.push(&rest);
        tail.push_str(&out);
    }
    tail.push_str(&f.finish());
    if !tail.is_empty() {
        let _ = a.tx.send(Event::Text(tail));
    }
    let now = Instant::now();
    let first = a.first_token.unwrap_or(now);
    let _ = a.tx.send(Event::Done(Completion {
        prompt_tokens: a.req.prompt_ids.len(),
        cached_tokens: a.cached,
        tokens: a.tokens,
        text: f.text,
        finish_reason: reason,
        logprobs: a.lps,
        ttft_ms: first.duration_since(a.submitted).as_secs_f64() * 1e3,
        decode_ms: now.duration_since(first).as_secs_f64() * 1e3,
    }));
    Ok(())
}
