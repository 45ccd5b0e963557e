//! From an API request to engine requests: the sampling settings checked against OpenAI's ranges
//! and the context, `n` requests with consecutive seeds, submitted together; waiting for one.

use std::sync::atomic::Ordering;

use canon_infer::{EngineError, Event, Request, SamplingConfig};

use crate::api::{self, ApiError, Sampling};
use crate::state::{AppState, now_secs};
use crate::{Loaded, MAX_N, MAX_TOP_LOGPROBS};

/// The engine requests one API request asks for (`n` of them), checked.
pub(crate) struct Planned {
    pub(crate) reqs: Vec<Request>,
    pub(crate) prompt_tokens: usize,
    pub(crate) include_usage: bool,
    pub(crate) stream: bool,
    pub(crate) logprobs: bool,
}

pub(crate) fn check_model(l: &Loaded, model: &Option<String>) -> Result<(), ApiError> {
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

pub(crate) fn plan(
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

pub(crate) fn submit_all(
    l: &Loaded,
    reqs: Vec<Request>,
) -> Result<Vec<canon_infer::RequestHandle>, ApiError> {
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

pub(crate) async fn wait(
    h: canon_infer::RequestHandle,
) -> Result<canon_infer::Completion, ApiError> {
    while let Some(e) = h.recv_async().await {
        match e {
            Event::Done(c) => return Ok(c),
            Event::Error(m) => return Err(ApiError::server(m)),
            Event::Token { .. } | Event::Text(_) => {}
        }
    }
    Err(ApiError::server("the engine stopped"))
}
