//! One sequence's token after a decode step: constraint, sampler, log-probabilities,
//! detokenizing and stop strings, and the completion a finished sequence sends.

use super::*;

/// One sequence's sampled token: the event to send (none when the sequence ended before a
/// token) and what follows.
pub(super) struct Sampled {
    pub(super) event: Option<Event>,
    pub(super) outcome: Outcome,
}

impl From<Outcome> for Sampled {
    fn from(outcome: Outcome) -> Self {
        Sampled {
            event: None,
            outcome,
        }
    }
}

/// The sampling half of one step for one sequence (the same decisions as `generate_ids`):
/// constraint, sampler, log-probability, detokenizing and stop strings. Sends nothing.
pub(super) fn sample_one(
    a: &mut Active,
    tok: &Tokenizer,
    logits: &[f32],
    cache_len: usize,
    max_len: usize,
) -> std::result::Result<Sampled, String> {
    // A constraint's mask goes on a copy; unconstrained rows are read where they are.
    let masked;
    let logits = match a.req.constraint.as_mut() {
        None => logits,
        Some(c) => match c.allowed()? {
            Allowed::All => logits,
            Allowed::End => return Ok(Outcome::Finished(FinishReason::Stop).into()),
            allowed @ Allowed::Mask(_) => {
                let mut m = logits.to_vec();
                for (id, l) in m.iter_mut().enumerate() {
                    if !allowed.allows(id as u32) {
                        *l = f32::NEG_INFINITY;
                    }
                }
                if m.iter().all(|l| *l == f32::NEG_INFINITY) {
                    return Err("the output constraint allows no token of this vocabulary".into());
                }
                masked = m;
                &masked
            }
        },
    };
    let next = a.sampler.sample(logits, &a.history);
    if a.first_token.is_none() {
        a.first_token = Some(Instant::now());
    }
    if !a.req.ignore_eos && tok.eog_ids.contains(&next) {
        return Ok(Outcome::Finished(FinishReason::Stop).into());
    }
    if let Some(c) = a.req.constraint.as_mut() {
        c.commit(next)?;
    }
    let logprob = match a.req.logprobs {
        Some(k) => Some(token_logprob(tok, logits, next, k).map_err(|e| e.to_string())?),
        None => None,
    };
    if let (Some(lp), Some(v)) = (&logprob, a.lps.as_mut()) {
        v.push(lp.clone());
    }
    a.tokens.push(next);
    a.history.push(next);
    let mut hit_stop = false;
    let mut text = String::new();
    if let Some(piece) = a.stream.push(tok, next).map_err(|e| e.to_string())? {
        let mut f = StopFilter {
            stops: &a.req.stop,
            text: std::mem::take(&mut a.text),
            emitted: a.emitted,
        };
        let (out, stop) = f.push(&piece);
        a.text = f.text;
        a.emitted = f.emitted;
        text = out;
        hit_stop = stop;
    }
    let event = Some(Event::Token {
        id: next,
        text,
        logprob,
    });
    let outcome = if hit_stop {
        a.hit_stop_string = true;
        Outcome::Finished(FinishReason::Stop)
    } else if a.tokens.len() >= a.req.max_tokens || cache_len + 1 >= max_len {
        Outcome::Finished(FinishReason::Length)
    } else {
        Outcome::Continue(next)
    };
    Ok(Sampled { event, outcome })
}

/// Flushes held-back text and sends `Done`.
pub(super) fn finish(mut a: Active, tok: &Tokenizer, reason: FinishReason) -> Result<()> {
    let mut f = StopFilter {
        stops: &a.req.stop,
        text: std::mem::take(&mut a.text),
        emitted: a.emitted,
    };
    let mut tail = String::new();
    if !a.hit_stop_string
        && let Some(rest) = a.stream.flush(tok)?
    {
        let (out, _) = f.push(&rest);
        tail.push_str(&out);
    }
    tail.push_str(&f.finish());
    if !tail.is_empty() {
        let _ = a.tx.send(Event::Text(tail));
    }
    let now = Instant::now();
    let first = a.first_token.unwrap_or(now);
    let _ = a.tx.send(Event::Done(Completion {
        prompt_tokens: a.req.prompt_ids.len(),
        cached_tokens: a.cached,
        tokens: a.tokens,
        text: f.text,
        finish_reason: reason,
        logprobs: a.lps,
        ttft_ms: first.duration_since(a.submitted).as_secs_f64() * 1e3,
        decode_ms: now.duration_since(first).as_secs_f64() * 1e3,
    }));
    Ok(())
}
