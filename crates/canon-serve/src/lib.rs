//! An OpenAI-compatible HTTP server over the batched engine (`canon_infer::Engine`): chat and text
//! completions (streamed as server-sent events or whole), embeddings, the model list, health,
//! Prometheus metrics, and a chat page at `/`.
//!
//! The listener is bound before the model loads: `/health` answers 503 until the model is ready,
//! then 200. Bad input gets OpenAI's error object with a 4xx status; a full queue gets 429 with
//! `Retry-After`; a client that disconnects mid-stream frees its slot within one engine step.

pub mod api;
pub mod opts;
mod rag_routes;
mod stream;
mod tool_routes;
pub mod tools;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use canon_infer::{
    Engine, EngineError, Event, FinishReason, Request, SamplingConfig, TokenLogprob,
};
use canon_models::LoadedEncoder;
use canon_text::{ChatTemplate, Message};
use serde_json::{Value, json};

use api::{ApiError, ChatRequest, CompletionRequest, EmbeddingInput, EmbeddingRequest, Sampling};
use canon_infer::{Grammar, GrammarCompiler};
use stream::{StreamMeta, stream_response};
use tools::ToolMode;

/// Most completions one request may ask for (`n`).
pub const MAX_N: usize = 16;
/// Most alternatives per token (`top_logprobs`, `logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most texts in one embeddings request.
pub const MAX_EMBED_INPUTS: usize = 2048;

/// What the server runs once loading is done.
pub struct Loaded {
    pub engine: Engine,
    pub chat_template: Option<ChatTemplate>,
    /// Name under which `/v1/models` lists the language model.
    pub model_id: String,
    pub embedder: Option<(String, LoadedEncoder)>,
    /// Tools the server runs for clients (`GET /v1/tools`, `POST /v1/tools/{name}`).
    pub tools: Option<Arc<canon_agent::tools::Toolbox>>,
    /// A `canon index` folder with its query encoder, for `/v1/search` and `/v1/ask`.
    pub retriever: Option<Arc<canon_rag::answer::Retriever>>,
}

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Requests must carry `Authorization: Bearer KEY` (all but `/`, `/health`).
    pub api_key: Option<String>,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_body_bytes: 4 << 20,
        }
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    chat_requests: AtomicU64,
    completion_requests: AtomicU64,
    embedding_requests: AtomicU64,
    errors_4xx: AtomicU64,
    errors_5xx: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    tool_calls: AtomicU64,
}

pub(crate) struct AppState {
    ready: OnceLock<Arc<Loaded>>,
    /// The grammar compiler for the model's tokenizer, built on the first structured request.
    grammar: OnceLock<Result<GrammarCompiler, String>>,
    load_error: OnceLock<String>,
    api_key: Option<String>,
    metrics: Metrics,
    counter: AtomicU64,
}

pub(crate) type Shared = Arc<AppState>;

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    fn next_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:04x}", now_secs())
    }

    fn error(&self, e: ApiError) -> Response {
        if e.status >= 500 {
            self.metrics.errors_5xx.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.errors_4xx.fetch_add(1, Ordering::Relaxed);
        }
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (status, axum::Json(e.body())).into_response();
        if let Some(s) = e.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }

    /// The loaded model, or 503 while loading (500 when loading failed).
    fn loaded(&self) -> Result<Arc<Loaded>, ApiError> {
        if let Some(l) = self.ready.get() {
            return Ok(l.clone());
        }
        if let Some(e) = self.load_error.get() {
            return Err(ApiError::server(format!("the model failed to load: {e}")));
        }
        Err(ApiError {
            status: 503,
            retry_after: Some(2),
            ..ApiError::server("the model is loading; retry shortly")
        })
    }

    /// One constraint per request for `grammar` (checked once; a bad grammar is a 400 on `param`).
    fn constraints(
        &self,
        l: &Loaded,
        grammar: &Grammar,
        n: usize,
        param: &str,
    ) -> Result<Vec<canon_infer::GrammarConstraint>, ApiError> {
        let compiler = self
            .grammar
            .get_or_init(|| GrammarCompiler::new(l.engine.tokenizer()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ApiError::server(e.clone()))?;
        (0..n)
            .map(|_| {
                compiler
                    .compile(grammar)
                    .map_err(|e| ApiError::invalid(e.to_string(), Some(param)))
            })
            .collect()
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match got {
            Some(k) if k == key => Ok(()),
            Some(_) => Err(ApiError::invalid("invalid API key", None)
                .status(401)
                .with_code("invalid_api_key")),
            None => Err(ApiError::invalid(
                "missing API key: send the header 'Authorization: Bearer KEY'",
                None,
            )
            .status(401)
            .with_code("invalid_api_key")),
        }
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status().as_u16();
        if status == 413 {
            ApiError::invalid(
                format!("the request body is too large: {}", e.body_text()),
                None,
            )
            .status(413)
            .with_code("request_too_large")
        } else {
            ApiError::invalid(
                format!("cannot read the request body: {}", e.body_text()),
                None,
            )
            .status(status)
        }
    })
}

/// The router, with the loading state to fill (`spawn_load`).
fn router(state: Shared, max_body: usize) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/tools", get(tool_routes::list))
        .route("/v1/tools/{name}", post(tool_routes::call))
        .route("/v1/search", post(rag_routes::search))
        .route("/v1/ask", post(rag_routes::ask))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// A server bound to its address, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Shared,
    max_body: usize,
}

impl Server {
    /// Binds the listener (port 0 picks a free port).
    pub async fn bind(cfg: &ServeConfig) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
        Ok(Server {
            listener,
            state: Arc::new(AppState {
                ready: OnceLock::new(),
                grammar: OnceLock::new(),
                load_error: OnceLock::new(),
                api_key: cfg.api_key.clone(),
                metrics: Metrics::default(),
                counter: AtomicU64::new(0),
            }),
            max_body: cfg.max_body_bytes,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Loads the model on a blocking thread while the server already answers (`/health` 503).
    pub fn spawn_load<F>(&self, load: F) -> tokio::task::JoinHandle<Result<(), String>>
    where
        F: FnOnce() -> Result<Loaded, String> + Send + 'static,
    {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || match load() {
            Ok(l) => {
                let _ = state.ready.set(Arc::new(l));
                Ok(())
            }
            Err(e) => {
                let _ = state.load_error.set(e.clone());
                Err(e)
            }
        })
    }

    /// Serves until `shutdown` resolves; then the engine stops (in-flight streams end with an
    /// error event) and open connections close.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let app = router(self.state, self.max_body);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                if let Some(l) = state.ready.get() {
                    let engine = l.engine.clone();
                    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
                }
            })
            .await
    }
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

async fn not_found(State(st): State<Shared>) -> Response {
    st.error(
        ApiError::invalid(
            "unknown endpoint: expected /v1/chat/completions, /v1/completions, /v1/embeddings, \
             /v1/models, /health, /metrics or /",
            None,
        )
        .status(404)
        .with_code("not_found"),
    )
}

async fn health(State(st): State<Shared>) -> Response {
    match st.loaded() {
        Ok(l) => {
            let s = l.engine.stats();
            axum::Json(json!({"status": "ok", "slots_idle": s.slots - s.busy_slots, "slots_busy": s.busy_slots, "queued": s.queued})).into_response()
        }
        Err(e) if e.status == 503 => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "loading"})),
        )
            .into_response(),
        Err(e) => st.error(e),
    }
}

async fn metrics(State(st): State<Shared>) -> Response {
    let m = &st.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    put(
        "canon_requests_total",
        "counter",
        "Requests received, by endpoint.",
        vec![
            ("{endpoint=\"chat\"}".into(), g(&m.chat_requests) as f64),
            (
                "{endpoint=\"completions\"}".into(),
                g(&m.completion_requests) as f64,
            ),
            (
                "{endpoint=\"embeddings\"}".into(),
                g(&m.embedding_requests) as f64,
            ),
        ],
    );
    put(
        "canon_errors_total",
        "counter",
        "Error responses, by status class.",
        vec![
            ("{class=\"4xx\"}".into(), g(&m.errors_4xx) as f64),
            ("{class=\"5xx\"}".into(), g(&m.errors_5xx) as f64),
        ],
    );
    put(
        "canon_prompt_tokens_total",
        "counter",
        "Prompt tokens of answered requests.",
        vec![(String::new(), g(&m.prompt_tokens) as f64)],
    );
    put(
        "canon_completion_tokens_total",
        "counter",
        "Generated tokens sent to clients.",
        vec![(String::new(), g(&m.completion_tokens) as f64)],
    );
    put(
        "canon_tool_calls_total",
        "counter",
        "Tool calls run through POST /v1/tools/{name}.",
        vec![(String::new(), g(&m.tool_calls) as f64)],
    );
    if let Some(l) = st.ready.get() {
        let s = l.engine.stats();
        put(
            "canon_decode_tokens_per_second",
            "gauge",
            "Generated tokens per second of engine busy time.",
            vec![(String::new(), s.decode_tokens_per_s)],
        );
        put(
            "canon_slots_busy",
            "gauge",
            "Slots generating now.",
            vec![(String::new(), s.busy_slots as f64)],
        );
        put(
            "canon_slots_total",
            "gauge",
            "Slots (parallel sequences).",
            vec![(String::new(), s.slots as f64)],
        );
        put(
            "canon_queue_depth",
            "gauge",
            "Requests waiting for a slot.",
            vec![(String::new(), s.queued as f64)],
        );
        put(
            "canon_cached_prompt_tokens_total",
            "counter",
            "Prompt tokens reused from a slot's cache.",
            vec![(String::new(), s.cached_prompt_tokens as f64)],
        );
        let t = l.engine.timings();
        let secs = |ns: u64| ns as f64 / 1e9;
        put(
            "canon_engine_seconds_total",
            "counter",
            "Engine worker time by phase of its steps.",
            vec![
                ("{phase=\"prefill\"}".into(), secs(t.prefill_ns)),
                ("{phase=\"decode_forward\"}".into(), secs(t.forward_ns)),
                ("{phase=\"sample\"}".into(), secs(t.sample_ns)),
                ("{phase=\"send\"}".into(), secs(t.emit_ns)),
                ("{phase=\"other\"}".into(), secs(t.other_ns)),
                ("{phase=\"idle\"}".into(), secs(t.idle_ns)),
            ],
        );
        put(
            "canon_engine_decode_rows_total",
            "counter",
            "Sequences advanced by decode passes (rows / passes = the batch size).",
            vec![
                ("{kind=\"rows\"}".into(), t.decode_rows as f64),
                ("{kind=\"passes\"}".into(), t.decode_passes as f64),
            ],
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn models(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = st.authorize(&headers) {
        return st.error(e);
    }
    let l = match st.loaded() {
        Ok(l) => l,
        Err(e) => return st.error(e),
    };
    let mut data =
        vec![json!({"id": l.model_id, "object": "model", "created": 0, "owned_by": "canon"})];
    if let Some((name, _)) = &l.embedder {
        data.push(json!({"id": name, "object": "model", "created": 0, "owned_by": "canon"}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// The engine requests one API request asks for (`n` of them), checked.
struct Planned {
    reqs: Vec<Request>,
    prompt_tokens: usize,
    include_usage: bool,
    stream: bool,
    logprobs: bool,
}

fn check_model(l: &Loaded, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && m != &l.model_id => Err(ApiError::invalid(
            format!(
                "the model '{m}' does not exist here: this server runs '{}'",
                l.model_id
            ),
            Some("model"),
        )
        .status(404)
        .with_code("model_not_found")),
        _ => Ok(()),
    }
}

fn plan(
    st: &AppState,
    l: &Loaded,
    prompt_ids: Vec<u32>,
    s: Sampling,
    top_logprobs: Option<usize>,
) -> Result<Planned, ApiError> {
    let max_len = l.engine.max_len();
    if prompt_ids.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("messages")));
    }
    if prompt_ids.len() >= max_len {
        return Err(ApiError::invalid(
            format!(
                "this model's context holds {max_len} tokens, but the prompt has {} (at least one more position is needed to generate)",
                prompt_ids.len()
            ),
            Some("messages"),
        )
        .with_code("context_length_exceeded"));
    }
    let room = max_len - prompt_ids.len();
    let max_tokens = match s.max_completion_tokens.or(s.max_tokens) {
        None => room,
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                format!("max_tokens must be at least 1, found {m}"),
                Some("max_tokens"),
            ));
        }
        Some(m) if m as usize > room => {
            return Err(ApiError::invalid(
                format!(
                    "max_tokens is {m}, but the context has room for {room} tokens after the {}-token prompt",
                    prompt_ids.len()
                ),
                Some("max_tokens"),
            )
            .with_code("context_length_exceeded"));
        }
        Some(m) => m as usize,
    };
    let n = match s.n {
        None => 1,
        Some(n) if n < 1 || n as usize > MAX_N => {
            return Err(ApiError::invalid(
                format!("n must be between 1 and {MAX_N}, found {n}"),
                Some("n"),
            ));
        }
        Some(n) => n as usize,
    };
    let bad = |p: &str, m: String| Err(ApiError::invalid(m, Some(p)));
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return bad(
            "temperature",
            format!("temperature must be in [0, 2], found {temperature}"),
        );
    }
    if let Some(p) = s.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return bad("top_p", format!("top_p must be in (0, 1], found {p}"));
    }
    if let Some(p) = s.min_p
        && !(0.0..=1.0).contains(&p)
    {
        return bad("min_p", format!("min_p must be in [0, 1], found {p}"));
    }
    if let Some(k) = s.top_k
        && k < 0
    {
        return bad("top_k", format!("top_k must be ≥ 0, found {k}"));
    }
    for (name, v) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if let Some(v) = v
            && !(-2.0..=2.0).contains(&v)
        {
            return bad(name, format!("{name} must be in [-2, 2], found {v}"));
        }
    }
    if let Some(r) = s.repeat_penalty
        && !(r > 0.0 && r.is_finite())
    {
        return bad(
            "repeat_penalty",
            format!("repeat_penalty must be > 0, found {r}"),
        );
    }
    let stop = s.stop.clone().map(api::Stop::into_vec).unwrap_or_default();
    if stop.len() > 4 {
        return bad(
            "stop",
            format!("at most 4 stop sequences, found {}", stop.len()),
        );
    }
    if let Some(k) = top_logprobs
        && k > MAX_TOP_LOGPROBS
    {
        return bad(
            "top_logprobs",
            format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}, found {k}"),
        );
    }
    let seed = s.seed.unwrap_or_else(|| {
        // No seed: a different one per request.
        now_secs()
            ^ st.counter
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    let sampling = SamplingConfig {
        temperature,
        top_k: s.top_k.filter(|&k| k > 0).map(|k| k as usize),
        top_p: s.top_p.filter(|&p| p < 1.0),
        min_p: s.min_p.filter(|&p| p > 0.0),
        repeat_penalty: s.repeat_penalty.unwrap_or(1.0),
        repeat_last_n: 64,
        presence_penalty: s.presence_penalty.unwrap_or(0.0),
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
        seed,
    };
    let prompt_tokens = prompt_ids.len();
    let reqs = (0..n)
        .map(|i| {
            let mut r = Request::new(prompt_ids.clone(), max_tokens);
            r.sampling = sampling.clone();
            r.sampling.seed = seed.wrapping_add(i as u64);
            r.stop = stop.clone();
            r.logprobs = top_logprobs;
            r.ignore_eos = s.ignore_eos;
            r
        })
        .collect();
    Ok(Planned {
        reqs,
        prompt_tokens,
        include_usage: s.stream_options.is_some_and(|o| o.include_usage),
        stream: s.stream,
        logprobs: top_logprobs.is_some(),
    })
}

fn submit_all(l: &Loaded, reqs: Vec<Request>) -> Result<Vec<canon_infer::RequestHandle>, ApiError> {
    let mut handles = Vec::with_capacity(reqs.len());
    for r in reqs {
        match l.engine.submit(r) {
            Ok(h) => handles.push(h),
            // Dropping the handles already made cancels them.
            Err(EngineError::QueueFull(n)) => {
                return Err(ApiError {
                    status: 429,
                    retry_after: Some(1),
                    kind: "rate_limit_error",
                    code: Some("queue_full"),
                    ..ApiError::server(format!(
                        "the server is busy ({n} requests waiting); retry later"
                    ))
                });
            }
            Err(EngineError::ShutDown) => {
                return Err(ApiError {
                    status: 503,
                    retry_after: Some(5),
                    ..ApiError::server("the server is shutting down")
                });
            }
            Err(e) => return Err(ApiError::invalid(e.to_string(), None)),
        }
    }
    Ok(handles)
}

pub(crate) fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

pub(crate) fn chat_logprob(lp: &TokenLogprob) -> Value {
    json!({
        "token": lp.text,
        "logprob": lp.logprob,
        "bytes": lp.text.as_bytes(),
        "top_logprobs": lp.top.iter().map(|(_, t, l)| json!({"token": t, "logprob": l, "bytes": t.as_bytes()})).collect::<Vec<_>>(),
    })
}

/// The rendered chat prompt of a request's messages.
fn render_chat(
    l: &Loaded,
    req: &ChatRequest,
    tools: Option<&ToolMode>,
) -> Result<String, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages is empty: expected at least one message",
            Some("messages"),
        ));
    }
    let tmpl = l.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "this model has no chat template: use /v1/completions",
            Some("messages"),
        )
    })?;
    let mut msgs = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant" | "tool"
        ) {
            return Err(ApiError::invalid(
                format!(
                    "messages[{i}].role: expected system, developer, user, assistant or tool, found '{}'",
                    m.role
                ),
                Some("messages"),
            ));
        }
        let text = match &m.content {
            None => String::new(),
            Some(api::Content::Text(t)) => t.clone(),
            Some(api::Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(s)) => t.push_str(s),
                        (k, _) => {
                            return Err(ApiError::invalid(
                                format!(
                                    "messages[{i}].content: only text parts are supported, found a '{k}' part"
                                ),
                                Some("messages"),
                            ));
                        }
                    }
                }
                t
            }
        };
        let (role, text) = match m.role.as_str() {
            "developer" => ("system", text),
            "tool" => (
                "user",
                tools::render_tool_result(&text, m.name.as_deref(), m.tool_call_id.as_deref()),
            ),
            "assistant" => match &m.tool_calls {
                Some(tc) if !tc.is_null() => {
                    let t = tools::render_assistant_calls(&text, tc).map_err(|e| {
                        ApiError::invalid(format!("messages[{i}].{e}"), Some("messages"))
                    })?;
                    ("assistant", t)
                }
                _ => ("assistant", text),
            },
            r => (r, text),
        };
        msgs.push(Message::new(role, text));
    }
    if let Some(t) = tools.filter(|t| t.active()) {
        // The tools go into the system message (a new one first when there is none).
        let how = t.instructions();
        match msgs.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{how}", first.content);
            }
            _ => msgs.insert(0, Message::new("system", how)),
        }
    }
    tmpl.render(&msgs, true).map_err(|e| {
        ApiError::invalid(
            format!("cannot apply the chat template: {e}"),
            Some("messages"),
        )
    })
}

async fn chat(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics.chat_requests.fetch_add(1, Ordering::Relaxed);
    match chat_inner(&st, &headers, body).await {
        Ok(r) => r,
        Err(e) => st.error(e),
    }
}

async fn chat_inner(
    st: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.authorize(headers)?;
    let body = body_bytes(body)?;
    let req: ChatRequest = api::parse(&body)?;
    let l = st.loaded()?;
    check_model(&l, &req.model)?;
    let answer_format = tools::response_format(req.response_format.as_ref())?;
    let tool_mode = tools::parse(req.tools.as_ref(), req.tool_choice.as_ref())?;
    let calling = tool_mode.as_ref().is_some_and(ToolMode::active);
    let grammar = match &tool_mode {
        Some(t) => t.grammar(answer_format.as_ref()),
        None => answer_format,
    };
    let prompt = render_chat(&l, &req, tool_mode.as_ref())?;
    let ids = l
        .engine
        .tokenizer()
        .encode(&prompt, true)
        .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}"), None))?;
    let top = if req.logprobs {
        Some(req.top_logprobs.unwrap_or(0).max(0) as usize)
    } else if req.top_logprobs.is_some() {
        return Err(ApiError::invalid(
            "top_logprobs needs logprobs: true",
            Some("top_logprobs"),
        ));
    } else {
        None
    };
    let mut p = plan(st, &l, ids, req.sampling.clone(), top)?;
    if let Some(g) = &grammar {
        let param = if calling { "tools" } else { "response_format" };
        let cs = st.constraints(&l, g, p.reqs.len(), param)?;
        for (r, c) in p.reqs.iter_mut().zip(cs) {
            r.constraint = Some(Box::new(c));
        }
    }
    let id = st.next_id("chatcmpl");
    let model = l.model_id.clone();
    let handles = submit_all(&l, p.reqs)?;
    if p.stream {
        return Ok(stream_response(
            st.clone(),
            handles,
            StreamMeta {
                id,
                model,
                prompt_tokens: p.prompt_tokens,
                include_usage: p.include_usage,
                chat: true,
                tools: calling,
            },
        ));
    }
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let c = wait(h).await?;
        completion_tokens += c.tokens.len();
        let mut choice = json!({
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": finish_str(c.finish_reason),
            "logprobs": null,
        });
        if calling && let Some((text, calls)) = tools::parse_calls(&c.text) {
            choice["message"] = json!({
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { json!(text) },
                "tool_calls": tools::tool_calls_json(&calls, &format!("{id}_{i}"), false),
            });
            choice["finish_reason"] = json!("tool_calls");
        }
        if p.logprobs
            && let Some(lps) = &c.logprobs
        {
            choice["logprobs"] =
                json!({"content": lps.iter().map(chat_logprob).collect::<Vec<_>>()});
        }
        choices.push(choice);
    }
    st.metrics
        .prompt_tokens
        .fetch_add(p.prompt_tokens as u64, Ordering::Relaxed);
    st.metrics
        .completion_tokens
        .fetch_add(completion_tokens as u64, Ordering::Relaxed);
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": p.prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": p.prompt_tokens + completion_tokens},
    }))
    .into_response())
}

async fn wait(h: canon_infer::RequestHandle) -> Result<canon_infer::Completion, ApiError> {
    while let Some(e) = h.recv_async().await {
        match e {
            Event::Done(c) => return Ok(c),
            Event::Error(m) => return Err(ApiError::server(m)),
            Event::Token { .. } | Event::Text(_) => {}
        }
    }
    Err(ApiError::server("the engine stopped"))
}

async fn completions(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics
        .completion_requests
        .fetch_add(1, Ordering::Relaxed);
    match completions_inner(&st, &headers, body).await {
        Ok(r) => r,
        Err(e) => st.error(e),
    }
}

async fn completions_inner(
    st: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.authorize(headers)?;
    let body = body_bytes(body)?;
    let req: CompletionRequest = api::parse(&body)?;
    let l = st.loaded()?;
    check_model(&l, &req.model)?;
    let prompts = match req.prompt {
        api::Prompt::One(p) => vec![p],
        api::Prompt::Many(v) => v,
    };
    if prompts.is_empty() || prompts.len() > MAX_N {
        return Err(ApiError::invalid(
            format!(
                "prompt must be a string or a list of 1 to {MAX_N} strings, found {} strings",
                prompts.len()
            ),
            Some("prompt"),
        ));
    }
    let top = match req.logprobs {
        None => None,
        Some(k) if k < 0 => {
            return Err(ApiError::invalid(
                format!("logprobs must be ≥ 0, found {k}"),
                Some("logprobs"),
            ));
        }
        Some(k) => Some(k as usize),
    };
    if req.sampling.stream && prompts.len() > 1 {
        return Err(ApiError::invalid(
            "stream with a list of prompts is not supported; send one prompt",
            Some("stream"),
        ));
    }
    // One plan per prompt; choice index = prompt index · n + sample index.
    let mut plans = Vec::new();
    for p in &prompts {
        let ids = l.engine.tokenizer().encode(p, true).map_err(|e| {
            ApiError::invalid(format!("cannot tokenize the prompt: {e}"), Some("prompt"))
        })?;
        plans.push(plan(st, &l, ids, req.sampling.clone(), top)?);
    }
    let id = st.next_id("cmpl");
    let model = l.model_id.clone();
    if req.sampling.stream {
        let Some(p) = plans.pop() else {
            return Err(ApiError::invalid("no prompt", Some("prompt")));
        };
        let handles = submit_all(&l, p.reqs)?;
        return Ok(stream_response(
            st.clone(),
            handles,
            StreamMeta {
                id,
                model,
                prompt_tokens: p.prompt_tokens,
                include_usage: p.include_usage,
                chat: false,
                tools: false,
            },
        ));
    }
    let mut all = Vec::new();
    for p in plans {
        let prompt_tokens = p.prompt_tokens;
        all.push((prompt_tokens, submit_all(&l, p.reqs)?));
    }
    let mut choices = Vec::new();
    let (mut prompt_total, mut completion_total) = (0, 0);
    for (pi, (prompt_tokens, handles)) in all.into_iter().enumerate() {
        prompt_total += prompt_tokens;
        for h in handles {
            let c = wait(h).await?;
            completion_total += c.tokens.len();
            let text = if req.echo {
                format!("{}{}", prompts[pi], c.text)
            } else {
                c.text.clone()
            };
            let logprobs = c.logprobs.as_ref().map(|lps| {
                json!({
                    "tokens": lps.iter().map(|l| l.text.clone()).collect::<Vec<_>>(),
                    "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                    "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(_, t, lp)| (t.clone(), json!(lp))).collect::<serde_json::Map<String, Value>>()).collect::<Vec<_>>(),
                })
            });
            choices.push(json!({"index": choices.len(), "text": text, "finish_reason": finish_str(c.finish_reason), "logprobs": logprobs}));
        }
    }
    st.metrics
        .prompt_tokens
        .fetch_add(prompt_total as u64, Ordering::Relaxed);
    st.metrics
        .completion_tokens
        .fetch_add(completion_total as u64, Ordering::Relaxed);
    Ok(axum::Json(json!({
        "id": id,
        "object": "text_completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_total, "completion_tokens": completion_total, "total_tokens": prompt_total + completion_total},
    }))
    .into_response())
}

async fn embeddings(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics
        .embedding_requests
        .fetch_add(1, Ordering::Relaxed);
    match embeddings_inner(&st, &headers, body).await {
        Ok(r) => r,
        Err(e) => st.error(e),
    }
}

/// One embedding computation at a time (the encoder runs on every core).
static EMBED_LOCK: Mutex<()> = Mutex::new(());

async fn embeddings_inner(
    st: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.authorize(headers)?;
    let body = body_bytes(body)?;
    let req: EmbeddingRequest = api::parse(&body)?;
    let l = st.loaded()?;
    let Some((name, _)) = &l.embedder else {
        return Err(ApiError::invalid(
            "this server has no embedding model: start it with --embedding-model minilm",
            Some("model"),
        )
        .status(404)
        .with_code("model_not_found"));
    };
    if let Some(m) = &req.model
        && !m.is_empty()
        && m != name
    {
        return Err(ApiError::invalid(
            format!("the embedding model '{m}' does not exist here: this server runs '{name}'"),
            Some("model"),
        )
        .status(404)
        .with_code("model_not_found"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        // What the `openai` client asks for by default: little-endian f32 bytes, base64.
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::invalid(
                format!("encoding_format must be 'float' or 'base64', found '{f}'"),
                Some("encoding_format"),
            ));
        }
    };
    let texts = match req.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
    };
    if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::invalid(
            format!(
                "input must hold 1 to {MAX_EMBED_INPUTS} texts, found {}",
                texts.len()
            ),
            Some("input"),
        ));
    }
    let name = name.clone();
    let l2 = l.clone();
    let (vecs, tokens) = tokio::task::spawn_blocking(move || {
        let _guard = EMBED_LOCK.lock();
        let Some((_, enc)) = &l2.embedder else {
            return Err("no embedding model".to_string());
        };
        let tokens: usize = texts
            .iter()
            .map(|t| enc.embedder.token_ids(t).map(|v| v.len()).unwrap_or(0))
            .sum();
        enc.embedder
            .embed(&texts, 32)
            .map(|v| (v, tokens))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::server(e.to_string()))?
    .map_err(ApiError::server)?;
    let data: Vec<Value> = vecs
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}
