//! `POST /v1/chat/completions`: the messages through the model's chat template, structured output
//! and tool calls by constrained decoding, streamed or whole.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use canon_infer::{FinishReason, TokenLogprob};
use canon_text::Message;
use serde_json::{Value, json};

use crate::Loaded;
use crate::api::{self, ApiError, ChatRequest};
use crate::plan::{check_model, plan, submit_all, wait};
use crate::state::{Api, Shared, now_secs};
use crate::stream::{StreamMeta, stream_response};
use crate::tools::{self, ToolMode};

pub(crate) fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

pub(crate) fn chat_logprob(lp: &TokenLogprob) -> Value {
    json!({
        "token": lp.text,
        "logprob": lp.logprob,
        "bytes": lp.text.as_bytes(),
        "top_logprobs": lp.top.iter().map(|(_, t, l)| json!({"token": t, "logprob": l, "bytes": t.as_bytes()})).collect::<Vec<_>>(),
    })
}

/// The rendered chat prompt of a request's messages.
fn render_chat(
    l: &Loaded,
    req: &ChatRequest,
    tools: Option<&ToolMode>,
) -> Result<String, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages is empty: expected at least one message",
            Some("messages"),
        ));
    }
    let tmpl = l.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "this model has no chat template: use /v1/completions",
            Some("messages"),
        )
    })?;
    let mut msgs = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant" | "tool"
        ) {
            return Err(ApiError::invalid(
                format!(
                    "messages[{i}].role: expected system, developer, user, assistant or tool, found '{}'",
                    m.role
                ),
                Some("messages"),
            ));
        }
        let text = match &m.content {
            None => String::new(),
            Some(api::Content::Text(t)) => t.clone(),
            Some(api::Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(s)) => t.push_str(s),
                        (k, _) => {
                            return Err(ApiError::invalid(
                                format!(
                                    "messages[{i}].content: only text parts are supported, found a '{k}' part"
                                ),
                                Some("messages"),
                            ));
                        }
                    }
                }
                t
            }
        };
        let (role, text) = match m.role.as_str() {
            "developer" => ("system", text),
            "tool" => (
                "user",
                tools::render_tool_result(&text, m.name.as_deref(), m.tool_call_id.as_deref()),
            ),
            "assistant" => match &m.tool_calls {
                Some(tc) if !tc.is_null() => {
                    let t = tools::render_assistant_calls(&text, tc).map_err(|e| {
                        ApiError::invalid(format!("messages[{i}].{e}"), Some("messages"))
                    })?;
                    ("assistant", t)
                }
                _ => ("assistant", text),
            },
            r => (r, text),
        };
        msgs.push(Message::new(role, text));
    }
    if let Some(t) = tools.filter(|t| t.active()) {
        // The tools go into the system message (a new one first when there is none).
        let how = t.instructions();
        match msgs.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{how}", first.content);
            }
            _ => msgs.insert(0, Message::new("system", how)),
        }
    }
    tmpl.render(&msgs, true).map_err(|e| {
        ApiError::invalid(
            format!("cannot apply the chat template: {e}"),
            Some("messages"),
        )
    })
}

pub(crate) async fn chat(
    State(st): State<Shared>,
    req: Result<Api<ChatRequest>, ApiError>,
) -> Response {
    st.metrics.chat_requests.fetch_add(1, Ordering::Relaxed);
    st.reply(async { chat_inner(&st, req?.0).await }.await)
}

async fn chat_inner(st: &Shared, req: ChatRequest) -> Result<Response, ApiError> {
    let l = st.loaded()?;
    check_model(&l, &req.model)?;
    let answer_format = tools::response_format(req.response_format.as_ref())?;
    let tool_mode = tools::parse(req.tools.as_ref(), req.tool_choice.as_ref())?;
    let calling = tool_mode.as_ref().is_some_and(ToolMode::active);
    let grammar = match &tool_mode {
        Some(t) => t.grammar(answer_format.as_ref()),
        None => answer_format,
    };
    let prompt = render_chat(&l, &req, tool_mode.as_ref())?;
    let ids = l
        .engine
        .tokenizer()
        .encode(&prompt, true)
        .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}"), None))?;
    let top = if req.logprobs {
        Some(req.top_logprobs.unwrap_or(0).max(0) as usize)
    } else if req.top_logprobs.is_some() {
        return Err(ApiError::invalid(
            "top_logprobs needs logprobs: true",
            Some("top_logprobs"),
        ));
    } else {
        None
    };
    let mut p = plan(st, &l, ids, req.sampling.clone(), top)?;
    if let Some(g) = &grammar {
        let param = if calling { "tools" } else { "response_format" };
        let cs = st.constraints(&l, g, p.reqs.len(), param)?;
        for (r, c) in p.reqs.iter_mut().zip(cs) {
            r.constraint = Some(Box::new(c));
        }
    }
    let id = st.next_id("chatcmpl");
    let model = l.model_id.clone();
    let handles = submit_all(&l, p.reqs)?;
    if p.stream {
        return Ok(stream_response(
            st.clone(),
            handles,
            StreamMeta {
                id,
                model,
                prompt_tokens: p.prompt_tokens,
                include_usage: p.include_usage,
                chat: true,
                tools: calling,
            },
        ));
    }
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let c = wait(h).await?;
        completion_tokens += c.tokens.len();
        let mut choice = json!({
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": finish_str(c.finish_reason),
            "logprobs": null,
        });
        if calling && let Some((text, calls)) = tools::parse_calls(&c.text) {
            choice["message"] = json!({
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { json!(text) },
                "tool_calls": tools::tool_calls_json(&calls, &format!("{id}_{i}"), false),
            });
            choice["finish_reason"] = json!("tool_calls");
        }
        if p.logprobs
            && let Some(lps) = &c.logprobs
        {
            choice["logprobs"] =
                json!({"content": lps.iter().map(chat_logprob).collect::<Vec<_>>()});
        }
        choices.push(choice);
    }
    st.metrics
        .prompt_tokens
        .fetch_add(p.prompt_tokens as u64, Ordering::Relaxed);
    st.metrics
        .completion_tokens
        .fetch_add(completion_tokens as u64, Ordering::Relaxed);
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": p.prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": p.prompt_tokens + completion_tokens},
    }))
    .into_response())
}
