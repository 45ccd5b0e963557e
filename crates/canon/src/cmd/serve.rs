//! `canon serve`: the OpenAI-compatible HTTP server (`canon-serve`) over the batched engine.

use anyhow::Context;
use canon_infer::{Engine, EngineConfig};
use canon_serve::{Loaded, ServeConfig, Server};
use clap::Args;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
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
--lora DIR and --f32 (global flags) apply to the model.")]
pub struct ServeArgs {
    /// Language model: an alias (smollm2), a .gguf file, or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Also serve /v1/embeddings with this embedding model (e.g. minilm).
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// A `canon index build` folder: serve POST /v1/search and POST /v1/ask over it (its query
    /// encoder, named in the index, is loaded too).
    #[arg(long, value_name = "DIR")]
    pub index: Option<std::path::PathBuf>,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences generated at once (continuous batching slots).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Longest sequence per slot (prompt + answer); 0 = the model's context.
    #[arg(long, default_value_t = 0)]
    pub ctx_size: usize,
    /// Requests that may wait for a slot; beyond, the answer is 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Prompt tokens prefilled per step for one sequence (interleaved with the others' decoding).
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Require 'Authorization: Bearer KEY' on the API endpoints.
    #[arg(long, env = "CANON_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body in MiB (413 beyond).
    #[arg(long, default_value_t = 4)]
    pub max_body_mib: usize,
    /// Run Canon's tools for clients: GET /v1/tools lists them (OpenAI `tools` entries),
    /// POST /v1/tools/NAME runs one (calculator, calendar, python in the sandbox; search with
    /// --tools-index).
    #[arg(long)]
    pub tools: bool,
    /// A `canon index build` folder for the search tool (implies --tools).
    #[arg(long, value_name = "DIR")]
    pub tools_index: Option<std::path::PathBuf>,
    /// Longest a tool call may run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub tool_timeout: u64,
}

pub fn run(a: ServeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.parallel == 0 || a.parallel > 256 {
        anyhow::bail!("--parallel must be between 1 and 256, found {}", a.parallel);
    }
    if a.prefill_chunk == 0 {
        anyhow::bail!("--prefill-chunk must be at least 1");
    }
    if a.max_body_mib == 0 || a.max_body_mib > 1024 {
        anyhow::bail!(
            "--max-body-mib must be between 1 and 1024, found {}",
            a.max_body_mib
        );
    }
    let tools = if a.tools || a.tools_index.is_some() {
        if a.tool_timeout == 0 || a.tool_timeout > 600 {
            anyhow::bail!(
                "--tool-timeout must be between 1 and 600 seconds, found {}",
                a.tool_timeout
            );
        }
        let limits = canon_agent::tools::Limits {
            timeout: std::time::Duration::from_secs(a.tool_timeout),
            ..Default::default()
        };
        let (tb, notes) =
            canon_agent::tools::builtin_toolbox(a.tools_index.as_deref(), limits, false)
                .map_err(|e| anyhow::anyhow!("cannot set up the tools: {e}"))?;
        if !ctx.quiet {
            for n in &notes {
                eprintln!("canon: {n}");
            }
        }
        Some(std::sync::Arc::new(tb))
    } else {
        None
    };
    let cfg = ServeConfig {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: a.max_body_mib << 20,
    };
    // One async worker: the engine's thread and the kernels' pool own the cores; HTTP and SSE
    // are light, and a second worker only adds a thread that preempts the compute.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Loading happens on a blocking thread while the server answers /health with 503.
    let load_ctx = Ctx {
        threads: ctx.threads,
        quiet: ctx.quiet,
        f32_weights: ctx.f32_weights,
        lora: ctx.lora.clone(),
        kv_f16: ctx.kv_f16,
    };
    let quiet = ctx.quiet;
    rt.block_on(async move {
        let server = Server::bind(&cfg)
            .await
            .with_context(|| format!("cannot listen on {}:{}", cfg.host, cfg.port))?;
        let addr = server.local_addr()?;
        println!("canon: listening on http://{addr} (chat page at /, API under /v1)");
        let model = a.model.clone();
        let emb = a.embedding_model.clone();
        let index = a.index.clone();
        let engine_cfg = EngineConfig {
            slots: a.parallel,
            ctx_size: a.ctx_size,
            prefill_chunk: a.prefill_chunk,
            queue_limit: a.max_queue,
        };
        let loader = server.spawn_load(move || {
            let lm = model_gen::load_lm(&model, &load_ctx).map_err(|e| format!("{e:#}"))?;
            let chat_template = lm.chat_template.clone();
            let embedder = match &emb {
                Some(name) => Some((
                    name.clone(),
                    model_gen::load_encoder(name, &load_ctx).map_err(|e| format!("{e:#}"))?,
                )),
                None => None,
            };
            let retriever = match &index {
                Some(dir) => Some(std::sync::Arc::new(
                    canon_rag::answer::Retriever::open(dir, true, |name| {
                        model_gen::load_encoder(name, &load_ctx)
                    })
                    .map_err(|e| format!("{e:#}"))?
                    .with_graph()
                    .map_err(|e| format!("{e:#}"))?,
                )),
                None => None,
            };
            let engine = Engine::start(lm, engine_cfg).map_err(|e| e.to_string())?;
            if !quiet {
                eprintln!(
                    "canon: ready: model '{model}', {} slots of {} tokens{}",
                    engine.stats().slots,
                    engine.max_len(),
                    emb.as_ref()
                        .map(|e| format!(", embeddings '{e}'"))
                        .unwrap_or_default()
                );
            }
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
        let failed = std::sync::Arc::new(tokio::sync::Notify::new());
        let load_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
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
                    _ = tokio::signal::ctrl_c() => eprintln!("canon: shutting down"),
                    _ = failed.notified() => {}
                }
            })
            .await
            .context("the server stopped with an error")?;
        if let Some(e) = load_error.lock().ok().and_then(|mut e| e.take()) {
            anyhow::bail!("cannot load the model: {e}");
        }
        Ok(())
    })
}
