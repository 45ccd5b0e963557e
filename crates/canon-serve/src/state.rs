//! The server's shared state: the loaded model (once ready), metrics counters, the API key, the
//! grammar compiler, and the helpers every route uses (errors, authorization, the request body).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canon_infer::{Grammar, GrammarCompiler};
use serde::de::DeserializeOwned;

use crate::Loaded;
use crate::api::{self, ApiError};

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) chat_requests: AtomicU64,
    pub(crate) completion_requests: AtomicU64,
    pub(crate) embedding_requests: AtomicU64,
    pub(crate) errors_4xx: AtomicU64,
    pub(crate) errors_5xx: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    pub(crate) completion_tokens: AtomicU64,
    pub(crate) tool_calls: AtomicU64,
}

pub(crate) struct AppState {
    pub(crate) ready: OnceLock<Arc<Loaded>>,
    /// The grammar compiler for the model's tokenizer, built on the first structured request.
    pub(crate) grammar: OnceLock<Result<GrammarCompiler, String>>,
    pub(crate) load_error: OnceLock<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) metrics: Metrics,
    pub(crate) counter: AtomicU64,
}

pub(crate) type Shared = Arc<AppState>;

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    pub(crate) fn next_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:04x}", now_secs())
    }

    pub(crate) fn error(&self, e: ApiError) -> Response {
        if e.status >= 500 {
            self.metrics.errors_5xx.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.errors_4xx.fetch_add(1, Ordering::Relaxed);
        }
        e.into_response()
    }

    /// A route's answer: the response, or its error counted and in OpenAI's shape.
    pub(crate) fn reply(&self, r: Result<Response, ApiError>) -> Response {
        r.unwrap_or_else(|e| self.error(e))
    }

    /// The loaded model, or 503 while loading (500 when loading failed).
    pub(crate) fn loaded(&self) -> Result<Arc<Loaded>, ApiError> {
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
    pub(crate) fn constraints(
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

    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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

impl IntoResponse for ApiError {
    /// OpenAI's error object with the error's status (and `Retry-After` when it has one). Routes
    /// answer errors through [`AppState::error`], which also counts them.
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// A request body after the check every POST route makes first: the API key (before the body
/// is read), then a body within the size limit. Handlers take `Result<Authorized, ApiError>` so
/// that they count the request and answer the error through [`AppState::error`].
pub(crate) struct Authorized(pub(crate) Bytes);

impl FromRequest<Shared> for Authorized {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &Shared) -> Result<Self, ApiError> {
        st.authorize(req.headers())?;
        body_bytes(Bytes::from_request(req, st).await).map(Authorized)
    }
}

/// An authorized body parsed as the route's JSON request `T` (a JSON object; a wrong field is a
/// 400 naming it, see [`api::parse`]).
pub(crate) struct Api<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<Shared> for Api<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &Shared) -> Result<Self, ApiError> {
        let Authorized(body) = Authorized::from_request(req, st).await?;
        api::parse(&body).map(Api)
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
