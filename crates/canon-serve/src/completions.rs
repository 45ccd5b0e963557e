//! `POST /v1/completions`: a prompt string or a list of them, `echo`, `logprobs`, streamed or
//! whole.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::{self, ApiError, CompletionRequest};
use crate::plan::{check_model, plan, submit_all, wait};
use crate::state::{Api, Shared, now_secs};
use crate::stream::{StreamMeta, stream_response};
use crate::{MAX_N, finish_str};

pub(crate) async fn completions(
    State(st): State<Shared>,
    req: Result<Api<CompletionRequest>, ApiError>,
) -> Response {
    st.metrics
        .completion_requests
        .fetch_add(1, Ordering::Relaxed);
    st.reply(async { completions_inner(&st, req?.0).await }.await)
}

async fn completions_inner(st: &Shared, req: CompletionRequest) -> Result<Response, ApiError> {
    let l = st.loaded()?;
    check_model(&l, &req.model)?;
    let prompts = req.prompt.into_inputs();
    if prompts.is_empty() || prompts.len() > MAX_N {
        return Err(ApiError::invalid(
            format!(
                "prompt must be a string, token ids, or a list of 1 to {MAX_N} of either, found {} prompts",
                prompts.len()
            ),
            Some("prompt"),
        ));
    }
    let top = match req.logprobs {
        None => None,
        Some(k) if k < 0 => {
            return Err(ApiError::invalid(
                format!("logprobs must be ≥ 0, found {k}"),
                Some("logprobs"),
            ));
        }
        Some(k) => Some(k as usize),
    };
    if req.sampling.stream && prompts.len() > 1 {
        return Err(ApiError::invalid(
            "stream with a list of prompts is not supported; send one prompt",
            Some("stream"),
        ));
    }
    // One plan per prompt; choice index = prompt index · n + sample index.
    let mut plans = Vec::new();
    let vocab = l.engine.tokenizer().vocab_size();
    // Each prompt's text, for `echo` (token-id prompts decoded).
    let mut texts = Vec::with_capacity(prompts.len());
    for p in prompts {
        let ids = match p {
            api::PromptInput::Text(p) => {
                let ids = l.engine.tokenizer().encode(&p, true).map_err(|e| {
                    ApiError::invalid(format!("cannot tokenize the prompt: {e}"), Some("prompt"))
                })?;
                texts.push(p);
                ids
            }
            api::PromptInput::Ids(ids) => {
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::invalid(
                        format!(
                            "prompt token id {bad} is outside the vocabulary of {vocab} tokens"
                        ),
                        Some("prompt"),
                    ));
                }
                texts.push(l.engine.tokenizer().decode(&ids, false).map_err(|e| {
                    ApiError::invalid(format!("cannot decode the prompt: {e}"), Some("prompt"))
                })?);
                ids
            }
        };
        plans.push(plan(st, &l, ids, req.sampling.clone(), top)?);
    }
    let id = st.next_id("cmpl");
    let model = l.model_id.clone();
    if req.sampling.stream {
        let Some(p) = plans.pop() else {
            return Err(ApiError::invalid("no prompt", Some("prompt")));
        };
        let handles = submit_all(&l, p.reqs)?;
        return Ok(stream_response(
            st.clone(),
            handles,
            StreamMeta {
                id,
                model,
                prompt_tokens: p.prompt_tokens,
                include_usage: p.include_usage,
                chat: false,
                tools: false,
            },
        ));
    }
    let mut all = Vec::new();
    for p in plans {
        let prompt_tokens = p.prompt_tokens;
        all.push((prompt_tokens, submit_all(&l, p.reqs)?));
    }
    let mut choices = Vec::new();
    let (mut prompt_total, mut completion_total) = (0, 0);
    for (pi, (prompt_tokens, handles)) in all.into_iter().enumerate() {
        prompt_total += prompt_tokens;
        for h in handles {
            let c = wait(h).await?;
            completion_total += c.tokens.len();
            let text = if req.echo {
                format!("{}{}", texts[pi], c.text)
            } else {
                c.text.clone()
            };
            let logprobs = c.logprobs.as_ref().map(|lps| {
                json!({
                    "tokens": lps.iter().map(|l| l.text.clone()).collect::<Vec<_>>(),
                    "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                    "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(_, t, lp)| (t.clone(), json!(lp))).collect::<serde_json::Map<String, Value>>()).collect::<Vec<_>>(),
                })
            });
            choices.push(json!({"index": choices.len(), "text": text, "finish_reason": finish_str(c.finish_reason), "logprobs": logprobs}));
        }
    }
    st.metrics
        .prompt_tokens
        .fetch_add(prompt_total as u64, Ordering::Relaxed);
    st.metrics
        .completion_tokens
        .fetch_add(completion_total as u64, Ordering::Relaxed);
    Ok(axum::Json(json!({
        "id": id,
        "object": "text_completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_total, "completion_tokens": completion_total, "total_tokens": prompt_total + completion_total},
    }))
    .into_response())
}
