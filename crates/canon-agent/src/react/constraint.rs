//! Constrained action syntax: a token filter that lets the model write only `Name[argument]`
//! with a known name, and the engine-backed [`AgentLm`].

use std::sync::Arc;

use crate::{AgentError, Result};

use super::*;

/// The decoded text of every token id (empty for special tokens and partial characters, which
/// an action never uses).
pub struct TokenTexts(pub Vec<String>);

impl TokenTexts {
    pub fn new(tok: &canon_text::Tokenizer) -> Self {
        TokenTexts(
            (0..tok.vocab_size() as u32)
                .map(|id| {
                    tok.decode(&[id], true)
                        .ok()
                        .filter(|s| !s.contains('\u{FFFD}'))
                        .unwrap_or_default()
                })
                .collect(),
        )
    }
}

/// Whether `s` can begin (or is) ` Name[argument]` with a known name, an argument of at most
/// `max_arg` characters without `]` or a newline, and nothing after `]`. Returns
/// `Some(complete)`, or `None` when no continuation can make it an action.
pub fn action_prefix(s: &str, names: &[String], max_arg: usize) -> Option<bool> {
    let s = s.strip_prefix(' ').unwrap_or(s);
    if s.is_empty() {
        return Some(false);
    }
    for n in names {
        // first letter in either case
        let mut want = String::new();
        let mut cs = n.chars();
        let first = cs.next()?;
        let rest: String = cs.collect();
        for f in [first.to_ascii_uppercase(), first.to_ascii_lowercase()] {
            want.clear();
            want.push(f);
            want.push_str(&rest);
            want.push('[');
            if want.starts_with(s) {
                return Some(false);
            }
            if let Some(tail) = s.strip_prefix(want.as_str()) {
                if let Some(close) = tail.find(']') {
                    let arg = &tail[..close];
                    let ok = close + 1 == tail.len()
                        && !arg.contains('\n')
                        && arg.chars().count() <= max_arg
                        && !arg.trim().is_empty();
                    return ok.then_some(true);
                }
                return (!tail.contains('\n') && tail.chars().count() <= max_arg).then_some(false);
            }
        }
    }
    None
}

/// Constrains one generation to ` Name[argument]`, then ends it.
pub struct ActionConstraint {
    pub texts: Arc<TokenTexts>,
    pub names: Vec<String>,
    pub max_arg: usize,
    pub text: String,
    pub ids: Vec<u32>,
}

impl canon_infer::TokenConstraint for ActionConstraint {
    fn allowed(&mut self) -> std::result::Result<canon_infer::Allowed, String> {
        if action_prefix(&self.text, &self.names, self.max_arg) == Some(true) {
            return Ok(canon_infer::Allowed::End);
        }
        let n = self.texts.0.len();
        let mut bits = vec![0u64; n.div_ceil(64)];
        let mut any = false;
        let mut buf = String::with_capacity(self.text.len() + 32);
        for (id, t) in self.texts.0.iter().enumerate() {
            if t.is_empty() {
                continue;
            }
            buf.clear();
            buf.push_str(&self.text);
            buf.push_str(t);
            if action_prefix(&buf, &self.names, self.max_arg).is_some() {
                bits[id / 64] |= 1 << (id % 64);
                any = true;
            }
        }
        if !any {
            return Err(format!(
                "no token continues the action {:?} (expected Name[argument])",
                self.text
            ));
        }
        Ok(canon_infer::Allowed::Mask(bits))
    }
    fn commit(&mut self, token: u32) -> std::result::Result<(), String> {
        let t = self
            .texts
            .0
            .get(token as usize)
            .ok_or_else(|| format!("token {token} is outside the vocabulary"))?;
        self.text.push_str(t);
        self.ids.push(token);
        Ok(())
    }
}

/// [`AgentLm`] over the batched engine (greedy), with [`ActionConstraint`] for actions.
#[derive(Clone)]
pub struct EngineLm {
    pub engine: canon_infer::Engine,
    pub texts: Arc<TokenTexts>,
}

/// `prompt`'s token ids, or an error naming `what` when they and `new_tokens` more would not fit
/// the engine's context (`hint`, when not empty, says what to change).
pub(crate) fn encode_fitting(
    engine: &canon_infer::Engine,
    prompt: &str,
    new_tokens: usize,
    what: &str,
    hint: &str,
) -> Result<Vec<u32>> {
    let ids = engine
        .tokenizer()
        .encode(prompt, false)
        .map_err(|e| AgentError::Text(e.to_string()))?;
    let max_len = engine.max_len();
    if ids.len() + new_tokens >= max_len {
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        };
        return Err(AgentError::Task(format!(
            "{what} has {} tokens; with {new_tokens} new ones it exceeds the context of {max_len}{hint}",
            ids.len()
        )));
    }
    Ok(ids)
}

impl AgentLm for EngineLm {
    fn complete(
        &mut self,
        prompt: &str,
        stop: &[String],
        max_tokens: usize,
        actions: Option<&[String]>,
    ) -> Result<String> {
        let ids = encode_fitting(&self.engine, prompt, max_tokens, "the prompt", "")?;
        let mut req = canon_infer::Request::new(ids, max_tokens);
        req.stop = stop.to_vec();
        if let Some(names) = actions {
            req.constraint = Some(Box::new(ActionConstraint {
                texts: self.texts.clone(),
                names: names.to_vec(),
                max_arg: 60,
                text: String::new(),
                ids: Vec::new(),
            }));
        }
        let h = self
            .engine
            .submit(req)
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let c = h.wait().map_err(|e| AgentError::Task(e.to_string()))?;
        Ok(c.text)
    }
}
