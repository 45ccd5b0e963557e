//! Canon's own tools over HTTP, for agent frameworks that pair this server's model with them:
//! `GET /v1/tools` lists them in OpenAI's `tools` shape (pass that list as `tools` to
//! `/v1/chat/completions`), and `POST /v1/tools/{name}` runs one with the call's arguments (the
//! JSON object a `tool_calls[i].function.arguments` string holds) and answers the observation,
//! ready to send back as a `tool` message. A failing or slow tool is an observation with
//! `ok: false`, not an HTTP error; an unknown tool is a 404.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;
use crate::api::ApiError;
use crate::state::Authorized;

fn toolbox(st: &Shared) -> Result<Arc<canon_agent::tools::Toolbox>, ApiError> {
    let l = st.loaded()?;
    l.tools.clone().ok_or_else(|| {
        ApiError::invalid(
            "this server runs no tools: start it with `canon serve --tools`",
            None,
        )
        .status(404)
        .with_code("no_tools")
    })
}

pub(crate) async fn list(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let r = (|| {
        st.authorize(&headers)?;
        let tb = toolbox(&st)?;
        let data: Vec<Value> = tb.specs().iter().map(|s| s.openai()).collect();
        Ok::<_, ApiError>(axum::Json(json!({"object": "list", "data": data})).into_response())
    })();
    st.reply(r)
}

pub(crate) async fn call(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Result<Authorized, ApiError>,
) -> Response {
    st.reply(async { call_inner(&st, name, body?.0).await }.await)
}

async fn call_inner(st: &Shared, name: String, body: Bytes) -> Result<Response, ApiError> {
    let tb = toolbox(st)?;
    if !tb.specs().iter().any(|s| s.name == name) {
        let names: Vec<String> = tb.specs().into_iter().map(|s| s.name).collect();
        return Err(ApiError::invalid(
            format!(
                "no tool named '{name}': this server runs {}",
                names.join(", ")
            ),
            None,
        )
        .status(404)
        .with_code("tool_not_found"));
    }
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        "{}".to_string()
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!("the arguments are not valid JSON: {e}"), None)
        })?;
        if !v.is_object() {
            return Err(ApiError::invalid(
                format!("expected the arguments as a JSON object, found {v}"),
                None,
            ));
        }
        v.to_string()
    };
    st.metrics.tool_calls.fetch_add(1, Ordering::Relaxed);
    // Tools block (the Python sandbox runs a process): off the async workers.
    let obs = tokio::task::spawn_blocking(move || tb.call_json(&name, &args))
        .await
        .map_err(|e| ApiError::server(format!("the tool stopped: {e}")))?;
    Ok(axum::Json(json!({
        "tool": obs.tool,
        "ok": obs.ok,
        "content": obs.text,
        "truncated": obs.truncated,
        "elapsed_ms": obs.elapsed_ms,
    }))
    .into_response())
}
