//! `canon serve`'s settings (with the `cli` feature also its argument struct, the doc comments
//! being the `--help` text) and the run: checks, tools, the listener bound before the model
//! loads, the load on a blocking thread, and shutdown on Ctrl-C or a failed load.

use std::sync::Arc;

use canon_infer::{Engine, EngineConfig};
use canon_models::{LoadedEncoder, LoadedLm};

use crate::{Loaded, ServeConfig, Server};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon serve --model smollm2                                   # http://127.0.0.1:8080
  canon serve --model smollm2 --embedding-model minilm --parallel 8 --port 9000
  canon serve --model ./my-model.gguf --api-key secret --host 0.0.0.0
  canon serve --model smollm2 --tools --tools-index runs/man-index  # + GET /v1/tools, POST /v1/tools/NAME
  canon serve --model smollm2 --index runs/man-index       # + POST /v1/search, POST /v1/ask

Then:
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'
  open http://127.0.0.1:8080/ for the chat page.

Endpoints: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models, /health,
/metrics (Prometheus), / (chat page); with --tools, GET /v1/tools and POST /v1/tools/NAME; with
--index, POST /v1/search {\"query\", \"k\"?, \"mode\"?} (ranked passages) and POST /v1/ask
{\"question\", \"k\"?, \"mode\"?, \"max_tokens\"?, \"graph\"?} (an answer citing numbered passages, as
canon ask; \"graph\": \"local\" or \"global\" runs GraphRAG over the index's graph, built by
canon graph build, with global search's map prompts batched together).
--lora DIR and --f32 (global flags) apply to the model. The KV cache stores f16 (llama-server's default
cache type) where the model has that option; --cache-type f32 (a global flag) keeps f32 keys and values.")
)]
pub struct ServeArgs {
    /// Language model: an alias (smollm2), a .gguf file, or an HF-style folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Also serve /v1/embeddings with this embedding model (e.g. minilm; minilm:q8_0 on 8-bit
    /// weights).
    #[cfg_attr(feature = "cli", arg(long))]
    pub embedding_model: Option<String>,
    /// A `canon index build` folder: serve POST /v1/search and POST /v1/ask over it (its query
    /// encoder, named in the index, is loaded too).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub index: Option<std::path::PathBuf>,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[cfg_attr(feature = "cli", arg(long, default_value = "127.0.0.1"))]
    pub host: String,
    /// Port (0 picks a free one).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 8080))]
    pub port: u16,
    /// Sequences generated at once (continuous batching slots).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub parallel: usize,
    /// Longest sequence per slot (prompt + answer); 0 = the model's context.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub ctx_size: usize,
    /// Requests that may wait for a slot; beyond, the answer is 429 with Retry-After.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub max_queue: usize,
    /// Prompt tokens per prefill chunk and per step, over all new requests (interleaved with the
    /// others' decoding).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 256))]
    pub prefill_chunk: usize,
    /// Require 'Authorization: Bearer KEY' on the API endpoints.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CANON_API_KEY", hide_env_values = true)
    )]
    pub api_key: Option<String>,
    /// Largest request body in MiB (413 beyond).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub max_body_mib: usize,
    /// Run Canon's tools for clients: GET /v1/tools lists them (OpenAI `tools` entries),
    /// POST /v1/tools/NAME runs one (calculator, calendar, python in the sandbox; search with
    /// --tools-index).
    #[cfg_attr(feature = "cli", arg(long))]
    pub tools: bool,
    /// A `canon index build` folder for the search tool (implies --tools).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub tools_index: Option<std::path::PathBuf>,
    /// Longest a tool call may run, in seconds.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub tool_timeout: u64,
}

/// Why `canon serve` stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeRunError {
    #[error("{0}")]
    Settings(String),
    #[error("cannot set up the tools: {0}")]
    Tools(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    // The cause is part of the message (not a `source`), as the command line prints it once.
    #[error("cannot listen on {host}:{port}: {error}")]
    Listen {
        host: String,
        port: u16,
        error: std::io::Error,
    },
    #[error("{0}")]
    Addr(std::io::Error),
    #[error("the server stopped with an error: {0}")]
    Stopped(std::io::Error),
    #[error("cannot load the model: {0}")]
    Load(String),
}

/// What `serve` reports while it runs, for the caller to show (the command line prints each as
/// `canon: {notice}`, the address on stdout and the rest on stderr).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A note from setting up the tools.
    Setup(String),
    /// The listener is bound (before the model loads).
    Listening(std::net::SocketAddr),
    /// The model is loaded and the engine runs.
    Ready {
        model: String,
        slots: usize,
        max_len: usize,
        embedding_model: Option<String>,
    },
    /// Ctrl-C arrived: in-flight requests end and the server stops.
    ShuttingDown,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Setup(n) => write!(f, "{n}"),
            Notice::Listening(addr) => write!(
                f,
                "listening on http://{addr} (chat page at /, API under /v1)"
            ),
            Notice::Ready {
                model,
                slots,
                max_len,
                embedding_model,
            } => {
                write!(
                    f,
                    "ready: model '{model}', {slots} slots of {max_len} tokens"
                )?;
                if let Some(e) = embedding_model {
                    write!(f, ", embeddings '{e}'")?;
                }
                Ok(())
            }
            Notice::ShuttingDown => write!(f, "shutting down"),
        }
    }
}

/// Receives `serve`'s notices (from the server's threads).
pub type NoticeFn = Arc<dyn Fn(Notice) + Send + Sync>;

/// Loads a model by name (an alias, a file or a folder); the error is the message to report.
pub type LoadFn<T> = Arc<dyn Fn(&str) -> Result<T, String> + Send + Sync>;

impl ServeArgs {
    /// Checks the ranges of the numeric settings.
    pub fn check(&self) -> Result<(), ServeRunError> {
        let bad = |m: String| Err(ServeRunError::Settings(m));
        if self.parallel == 0 || self.parallel > 256 {
            return bad(format!(
                "--parallel must be between 1 and 256, found {}",
                self.parallel
            ));
        }
        if self.prefill_chunk == 0 {
            return bad("--prefill-chunk must be at least 1".into());
        }
        if self.max_body_mib == 0 || self.max_body_mib > 1024 {
            return bad(format!(
                "--max-body-mib must be between 1 and 1024, found {}",
                self.max_body_mib
            ));
        }
        if (self.tools || self.tools_index.is_some())
            && (self.tool_timeout == 0 || self.tool_timeout > 600)
        {
            return bad(format!(
                "--tool-timeout must be between 1 and 600 seconds, found {}",
                self.tool_timeout
            ));
        }
        Ok(())
    }

    /// How the server listens (an empty API key is none).
    pub fn serve_config(&self) -> ServeConfig {
        ServeConfig {
            host: self.host.clone(),
            port: self.port,
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            max_body_bytes: self.max_body_mib << 20,
        }
    }

    /// The batched engine's slots, lengths and queue.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            slots: self.parallel,
            ctx_size: self.ctx_size,
            prefill_chunk: self.prefill_chunk,
            queue_limit: self.max_queue,
        }
    }

    /// The tools served with `--tools`/`--tools-index` and the notes of their setup.
    pub fn toolbox(
        &self,
    ) -> Result<(Option<Arc<canon_agent::tools::Toolbox>>, Vec<String>), ServeRunError> {
        if !(self.tools || self.tools_index.is_some()) {
            return Ok((None, Vec::new()));
        }
        let limits = canon_agent::tools::Limits {
            timeout: std::time::Duration::from_secs(self.tool_timeout),
            ..Default::default()
        };
        let (tb, notes) =
            canon_agent::tools::builtin_toolbox(self.tools_index.as_deref(), limits, false)
                .map_err(|e| ServeRunError::Tools(e.to_string()))?;
        Ok((Some(Arc::new(tb)), notes))
    }
}

/// Runs `canon serve` until Ctrl-C or a failed load: binds first (reporting the address to
/// `notify`), then loads the language model, the embedding model and the index with `lm` and
/// `encoder` on a blocking thread while `/health` answers 503. Prints nothing itself.
pub fn serve(
    a: ServeArgs,
    notify: NoticeFn,
    lm: LoadFn<LoadedLm>,
    encoder: LoadFn<LoadedEncoder>,
) -> Result<(), ServeRunError> {
    a.check()?;
    let (tools, notes) = a.toolbox()?;
    for n in notes {
        notify(Notice::Setup(n));
    }
    let cfg = a.serve_config();
    // One async worker: the engine's thread and the kernels' pool own the cores; HTTP and SSE
    // are light, and a second worker only adds a thread that preempts the compute.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(ServeRunError::Runtime)?;
    rt.block_on(async move {
        let server = Server::bind(&cfg)
            .await
            .map_err(|error| ServeRunError::Listen {
                host: cfg.host.clone(),
                port: cfg.port,
                error,
            })?;
        let addr = server.local_addr().map_err(ServeRunError::Addr)?;
        notify(Notice::Listening(addr));
        let engine_cfg = a.engine_config();
        let on_ready = notify.clone();
        let loader = server.spawn_load(move || {
            let model = a.model.clone();
            let lm = lm(&model)?;
            let chat_template = lm.chat_template.clone();
            let emb = a.embedding_model.clone();
            let embedder = match &emb {
                Some(name) => Some((name.clone(), encoder(name)?)),
                None => None,
            };
            let retriever = match &a.index {
                Some(dir) => Some(Arc::new(
                    canon_rag::answer::Retriever::open(dir, true, |name| {
                        encoder(name).map_err(canon_rag::answer::AnswerError::Invalid)
                    })
                    .map_err(|e| format!("{e:#}"))?
                    .with_graph()
                    .map_err(|e| format!("{e:#}"))?,
                )),
                None => None,
            };
            let engine = Engine::start(lm, engine_cfg).map_err(|e| e.to_string())?;
            on_ready(Notice::Ready {
                model: model.clone(),
                slots: engine.stats().slots,
                max_len: engine.max_len(),
                embedding_model: emb.clone(),
            });
            Ok(Loaded {
                engine,
                chat_template,
                model_id: model,
                embedder,
                tools,
                retriever,
            })
        });
        // A model that fails to load stops the server with that error.
        let failed = Arc::new(tokio::sync::Notify::new());
        let load_error = Arc::new(std::sync::Mutex::new(None::<String>));
        {
            let (failed, load_error) = (failed.clone(), load_error.clone());
            tokio::spawn(async move {
                let err = match loader.await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                if let Ok(mut slot) = load_error.lock() {
                    *slot = Some(err);
                }
                failed.notify_one();
            });
        }
        server
            .run(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => notify(Notice::ShuttingDown),
                    _ = failed.notified() => {}
                }
            })
            .await
            .map_err(ServeRunError::Stopped)?;
        if let Some(e) = load_error.lock().ok().and_then(|mut e| e.take()) {
            return Err(ServeRunError::Load(e));
        }
        Ok(())
    })
}
