//! `GET /health`, `GET /metrics` (Prometheus text) and `GET /v1/models`.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::Shared;

pub(crate) async fn health(State(st): State<Shared>) -> Response {
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

pub(crate) async fn metrics(State(st): State<Shared>) -> Response {
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

pub(crate) async fn models(State(st): State<Shared>, headers: HeaderMap) -> Response {
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
