//! An OpenAI-compatible HTTP server over the batched engine (`canon_infer::Engine`): chat and text
//! completions (streamed as server-sent events or whole), embeddings, the model list, health,
//! Prometheus metrics, and a chat page at `/`.
//!
//! The listener is bound before the model loads: `/health` answers 503 until the model is ready,
//! then 200. Bad input gets OpenAI's error object with a 4xx status; a full queue gets 429 with
//! `Retry-After`; a client that disconnects mid-stream frees its slot within one engine step.
//!
//! Modules: `server` (router, listener, load, shutdown), `state` (shared state, errors, auth),
//! `plan` (API sampling settings to engine requests), `chat`, `completions`, `embeddings`,
//! `monitor` (health, metrics, models), `stream` (server-sent events), `tool_routes` and
//! `rag_routes` (optional endpoints), `api` (request types), `tools` (tool calling), `opts`
//! (`canon serve`'s settings and run).

pub mod api;
mod chat;
mod completions;
mod embeddings;
mod monitor;
pub mod opts;
mod plan;
mod rag_routes;
mod server;
mod state;
mod stream;
mod tool_routes;
pub mod tools;

use std::sync::Arc;

use canon_infer::Engine;
use canon_models::LoadedEncoder;
use canon_text::ChatTemplate;

pub use server::Server;

pub(crate) use chat::{chat_logprob, finish_str};
pub(crate) use plan::{submit_all, wait};
pub(crate) use state::{Shared, now_secs};

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
