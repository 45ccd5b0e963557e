//! `POST /v1/embeddings`: a string or a list of them through the embedding model, floats or
//! base64.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::MAX_EMBED_INPUTS;
use crate::api::{ApiError, EmbeddingInput, EmbeddingRequest};
use crate::state::{Api, Shared};

pub(crate) async fn embeddings(
    State(st): State<Shared>,
    req: Result<Api<EmbeddingRequest>, ApiError>,
) -> Response {
    st.metrics
        .embedding_requests
        .fetch_add(1, Ordering::Relaxed);
    st.reply(async { embeddings_inner(&st, req?.0).await }.await)
}

/// One embedding computation at a time (the encoder runs on every core).
static EMBED_LOCK: Mutex<()> = Mutex::new(());

async fn embeddings_inner(st: &Shared, req: EmbeddingRequest) -> Result<Response, ApiError> {
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
