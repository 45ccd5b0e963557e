//! The router and the listener: bound before the model loads, the load on a blocking thread, and
//! the run until shutdown (which stops the engine).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{Html, Response};
use axum::routing::{get, post};

use crate::api::ApiError;
use crate::state::{AppState, Metrics, Shared};
use crate::{Loaded, ServeConfig};
use crate::{chat, completions, embeddings, monitor, rag_routes, tool_routes};

/// The router, with the loading state to fill (`spawn_load`).
fn router(state: Shared, max_body: usize) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(monitor::health))
        .route("/metrics", get(monitor::metrics))
        .route("/v1/models", get(monitor::models))
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
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
