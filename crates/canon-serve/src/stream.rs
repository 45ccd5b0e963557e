//! Server-sent events for running requests: one chunk per token as it arrives (chat deltas or text
//! completion pieces), a final chunk with each choice's finish reason, the usage chunk when asked,
//! then `[DONE]`. With tool calling on, a choice's text is held while it may still be a call; a
//! call is sent as one `tool_calls` delta when it is complete.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use canon_infer::Event;
use futures_util::Stream;
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::tools::{self, CALL_OPEN};
use crate::{Shared, chat_logprob, finish_str, now_secs};

/// What every chunk of one response carries.
pub(crate) struct StreamMeta {
    pub id: String,
    pub model: String,
    pub prompt_tokens: usize,
    pub include_usage: bool,
    /// Chat deltas (else text-completion chunks).
    pub chat: bool,
    /// Tool calling is on: hold text that may be a call.
    pub tools: bool,
}

/// Per choice: text held back while it may still turn out to be a tool call.
#[derive(Default)]
struct Choice {
    held: String,
    /// The text is plain content: stream it as it comes.
    plain: bool,
}

/// Where a response's events come from.
enum Source {
    /// One choice: its handle, read directly (no forwarding task, no second channel: one
    /// wake-up per token instead of two). `None` once its last event was read.
    One(Option<canon_infer::RequestHandle>),
    /// Several choices, merged by one forwarding task per handle.
    Many(tokio::sync::mpsc::Receiver<(usize, Event)>),
}

impl Source {
    async fn next(&mut self) -> Option<(usize, Event)> {
        match self {
            Source::One(h) => {
                let e = h.as_ref()?.recv_async().await;
                if e.as_ref()
                    .is_none_or(|e| matches!(e, Event::Done(_) | Event::Error(_)))
                {
                    // Dropping the handle after its last event cancels nothing that runs.
                    *h = None;
                }
                e.map(|e| (0, e))
            }
            Source::Many(rx) => rx.recv().await,
        }
    }
}

struct State {
    rx: Source,
    pending: VecDeque<Result<SseEvent, Infallible>>,
    choices: Vec<Choice>,
    completion_tokens: usize,
    done: bool,
    started: bool,
}

fn data(v: Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// Streams `handles` (choice `i` is `handles[i]`). Dropping the stream (a client that went away)
/// drops the handles, which cancels the requests.
pub(crate) fn stream_response(
    st: Shared,
    handles: Vec<canon_infer::RequestHandle>,
    meta: StreamMeta,
) -> Response {
    let n = handles.len();
    let rx = if n == 1 {
        Source::One(handles.into_iter().next())
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Event)>(256);
        for (i, h) in handles.into_iter().enumerate() {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(e) = h.recv_async().await {
                    let last = matches!(e, Event::Done(_) | Event::Error(_));
                    if tx.send((i, e)).await.is_err() {
                        return; // the client left: dropping `h` cancels the request
                    }
                    if last {
                        return;
                    }
                }
            });
        }
        Source::Many(rx)
    };
    let created = now_secs();
    let meta = std::sync::Arc::new(meta);
    let state = State {
        rx,
        pending: VecDeque::new(),
        choices: (0..n).map(|_| Choice::default()).collect(),
        completion_tokens: 0,
        done: false,
        started: false,
    };
    let stream = futures_util::stream::unfold(state, move |mut s| {
        let st = st.clone();
        let meta = meta.clone();
        async move {
            let chunk = |choices: Value| -> Value {
                let object = if meta.chat {
                    "chat.completion.chunk"
                } else {
                    "text_completion"
                };
                json!({"id": meta.id, "object": object, "created": created, "model": meta.model, "choices": choices})
            };
            let piece = |i: usize, text: &str, lp: Value| -> Value {
                if meta.chat {
                    chunk(
                        json!([{"index": i, "delta": {"content": text}, "finish_reason": null, "logprobs": lp}]),
                    )
                } else {
                    chunk(
                        json!([{"index": i, "text": text, "finish_reason": null, "logprobs": null}]),
                    )
                }
            };
            loop {
                if let Some(e) = s.pending.pop_front() {
                    return Some((e, s));
                }
                if s.done {
                    return None;
                }
                if meta.chat && !s.started {
                    s.started = true;
                    s.pending.push_back(data(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null}]))));
                    continue;
                }
                match s.rx.next().await {
                    Some((i, Event::Token { text, logprob, .. })) => {
                        s.completion_tokens += 1;
                        let lp = logprob
                            .as_ref()
                            .map(|l| json!({"content": [chat_logprob(l)]}))
                            .unwrap_or(Value::Null);
                        if meta.tools && !s.choices[i].plain {
                            // Hold the text while it may still be the start of a call.
                            let c = &mut s.choices[i];
                            c.held.push_str(&text);
                            let t = c.held.trim_start();
                            if t.starts_with(CALL_OPEN) || CALL_OPEN.starts_with(t) {
                                continue;
                            }
                            c.plain = true;
                            let held = std::mem::take(&mut c.held);
                            s.pending.push_back(data(piece(i, &held, Value::Null)));
                            continue;
                        }
                        if text.is_empty() && lp.is_null() {
                            continue;
                        }
                        s.pending.push_back(data(piece(i, &text, lp)));
                    }
                    Some((i, Event::Text(text))) => {
                        if meta.tools && !s.choices[i].plain {
                            s.choices[i].held.push_str(&text);
                            continue;
                        }
                        s.pending.push_back(data(piece(i, &text, Value::Null)));
                    }
                    Some((i, Event::Done(c))) => {
                        let mut f = finish_str(c.finish_reason);
                        if meta.tools && !s.choices[i].plain {
                            let held = std::mem::take(&mut s.choices[i].held);
                            match tools::parse_calls(&c.text) {
                                Some((_, calls)) => {
                                    let tc = tools::tool_calls_json(
                                        &calls,
                                        &format!("{}_{i}", meta.id),
                                        true,
                                    );
                                    s.pending.push_back(data(chunk(json!([{"index": i, "delta": {"tool_calls": tc}, "finish_reason": null, "logprobs": null}]))));
                                    f = "tool_calls";
                                }
                                None if !held.is_empty() => {
                                    s.pending.push_back(data(piece(i, &held, Value::Null)));
                                }
                                None => {}
                            }
                        }
                        let c = if meta.chat {
                            json!([{"index": i, "delta": {}, "finish_reason": f, "logprobs": null}])
                        } else {
                            json!([{"index": i, "text": "", "finish_reason": f, "logprobs": null}])
                        };
                        s.pending.push_back(data(chunk(c)));
                    }
                    Some((_, Event::Error(m))) => {
                        st.metrics.errors_5xx.fetch_add(1, Ordering::Relaxed);
                        s.pending.push_back(data(ApiError::server(m).body()));
                        s.done = true;
                    }
                    None => {
                        // Every request ended.
                        st.metrics
                            .prompt_tokens
                            .fetch_add(meta.prompt_tokens as u64, Ordering::Relaxed);
                        st.metrics
                            .completion_tokens
                            .fetch_add(s.completion_tokens as u64, Ordering::Relaxed);
                        if meta.include_usage {
                            let mut u = chunk(json!([]));
                            u["usage"] = json!({"prompt_tokens": meta.prompt_tokens, "completion_tokens": s.completion_tokens, "total_tokens": meta.prompt_tokens + s.completion_tokens});
                            s.pending.push_back(data(u));
                        }
                        s.pending.push_back(Ok(SseEvent::default().data("[DONE]")));
                        s.done = true;
                    }
                }
            }
        }
    });
    sse(stream)
}

fn sse<S>(stream: S) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
