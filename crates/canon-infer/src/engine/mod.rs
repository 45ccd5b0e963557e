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
//! is in the batch. Where the model says its rows do not depend on their batch
//! (`CausalLm::rows_independent`: every product on repacked quantized weights) a step is one
//! pass: the chunks of the prompts waiting in it and every decoding row together; otherwise decode rows
//! are multiplied in even groups small enough to stay on the kernels' row-independent 8-bit path
//! (`GEMM_ROWS_MAX`) and each prompt is prefilled in its own pass. Either way greedy ids equal
//! `generate_ids`' for the same prompt (tested on 8 prompts batched and one by one).
//! One exception, as with llama.cpp's cache reuse: a prompt that reuses a cached prefix recomputes
//! only its last position, in a one-row pass whose logits can differ in the last bits from a full
//! prefill's, so a sampled continuation after prefix reuse may differ from a cold start's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use canon_models::LoadedLm;
use canon_text::Tokenizer;

mod worker;
use worker::Worker;

use crate::constrained::TokenConstraint;
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
    /// `forward_batch` of passes of prompt chunks alone.
    pub prefill_ns: u64,
    /// `forward_batch` of passes with decode rows (and, where a step is one pass, the prompt
    /// chunks that shared it).
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
