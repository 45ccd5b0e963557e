//! Toolformer's inference: decoding that starts a call where `[` is among the top-k next tokens,
//! runs it at `->` and inserts the result.

use serde::Serialize;

use super::parse_call;
use crate::tools::Toolbox;
use crate::{AgentError, Result};

/// What one inference did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inference {
    pub text: String,
    /// `(tool, args, result)` of the call made, if any.
    pub call: Option<(String, String, String)>,
}

/// Stage 5, inference: decode until the model writes `->` inside an open `[Tool(args)`, run the
/// call, insert ` -> result]` and continue; at most one call per input (a later `->` is left as
/// text). A call that fails inserts its error text as the result. Greedy: a call starts when `[`
/// is the most likely token (the paper's top-k start rule needs the logits and is not applied).
pub fn infer(
    lm: &mut dyn crate::react::AgentLm,
    prompt: &str,
    tools: &Toolbox,
    max_tokens: usize,
) -> Result<Inference> {
    let first = lm.complete(prompt, &["->".to_string()], max_tokens, None)?;
    let Some(open) = first.rfind('[') else {
        return Ok(Inference {
            text: first,
            call: None,
        });
    };
    let Some((tool, args)) = parse_call(&first[open..]) else {
        return Ok(Inference {
            text: first,
            call: None,
        });
    };
    let used = first.len();
    let result = if tool.eq_ignore_ascii_case("calculator") {
        crate::tools::evaluate(&args)
            .map(|r| r.decimal(2))
            .unwrap_or_else(|e| format!("error: {e}"))
    } else {
        tools.call_text(&tool, &args).text
    };
    let mut text = format!("{} -> {result}]", first.trim_end());
    let left = max_tokens.saturating_sub(used / 4 + 1).max(1);
    let rest = lm.complete(&format!("{prompt}{text}"), &[], left, None)?;
    text.push_str(&rest);
    Ok(Inference {
        text,
        call: Some((tool, args, result)),
    })
}

/// A model read one token at a time, with the whole next-token distribution (Toolformer's
/// decoding rule looks past the argmax).
pub trait StepLm {
    /// Tokenizes text (no special tokens).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Whether `id` ends a generation (end of text).
    fn is_end(&self, id: u32) -> bool;
    /// Forgets any context, reads `ids`, and returns the next token's logits.
    fn start(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
    /// Appends `id` to the context and returns the next token's logits.
    fn push(&mut self, id: u32) -> Result<Vec<f32>>;
}

/// How decoding treats the API-start token `[`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CallRule {
    /// Plain greedy decoding: `[` is text like any other and nothing is executed.
    Off,
    /// The API-start token is never generated (the paper's "Toolformer (disabled)").
    Disabled,
    /// The paper's rule: a call starts wherever an API-start token is among the `k` most likely
    /// next tokens (`k = 1`: only when it is the argmax), and runs when the model writes `->`.
    TopK(usize),
}

/// Whether `id` is among the `k` highest logits (ties rank in its favour).
pub fn in_top_k(logits: &[f32], id: u32, k: usize) -> bool {
    let Some(&v) = logits.get(id as usize) else {
        return false;
    };
    logits.iter().filter(|&&x| x > v).count() < k
}

fn argmax(logits: &[f32], banned: &[u32]) -> Option<u32> {
    logits
        .iter()
        .enumerate()
        .filter(|(i, _)| !banned.contains(&(*i as u32)))
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
}

/// Toolformer's inference: greedy decoding of `prompt` until a newline, the end token or
/// `max_tokens`, where under [`CallRule::TopK`] a call starts at the first step where an
/// API-start token (`api`: `[` and ` [`) is among the top k (the likelier of them is taken), the
/// model writes `Tool(args)` and `->`, then `run(tool, args)` is executed and ` -> result]`
/// inserted, and decoding goes on; one call per input (after it, or after an abandoned call — a
/// `]` or newline before `->`, or 48 tokens —, decoding is plain greedy). A failing call inserts
/// `error: ...` as its result.
pub fn decode_with_calls(
    lm: &mut dyn StepLm,
    prompt: &str,
    api: &[u32],
    rule: CallRule,
    max_tokens: usize,
    run: &mut dyn FnMut(&str, &str) -> String,
) -> Result<Inference> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Before,
        InCall { open: usize, tokens: usize },
        After,
    }
    let mut state = if matches!(rule, CallRule::TopK(k) if k > 0) {
        State::Before
    } else {
        State::After
    };
    let banned: &[u32] = if rule == CallRule::Disabled { api } else { &[] };
    let prompt_ids = lm.encode(prompt)?;
    if prompt_ids.is_empty() {
        return Err(AgentError::Task(
            "expected a non-empty prompt to continue, found an empty one".into(),
        ));
    }
    let mut logits = lm.start(&prompt_ids)?;
    // `fixed`: text settled by an executed call; `ids`: tokens generated since
    let (mut fixed, mut ids) = (String::new(), Vec::<u32>::new());
    let mut call = None;
    let mut text = String::new();
    for _ in 0..max_tokens {
        let next = match (&state, rule) {
            (State::Before, CallRule::TopK(k)) => api
                .iter()
                .copied()
                .filter(|&a| in_top_k(&logits, a, k))
                .max_by(|a, b| logits[*a as usize].total_cmp(&logits[*b as usize]))
                .or_else(|| argmax(&logits, &[])),
            _ => argmax(&logits, banned),
        };
        let Some(next) = next else {
            return Err(AgentError::Task(
                "the model gave no logits to decode from".into(),
            ));
        };
        if lm.is_end(next) {
            break;
        }
        ids.push(next);
        text = format!("{fixed}{}", lm.decode(&ids)?);
        match state {
            State::Before if api.contains(&next) => {
                let open = text.rfind('[').unwrap_or(text.len());
                state = State::InCall { open, tokens: 0 };
            }
            State::InCall { open, tokens } => {
                let inner = &text[(open + 1).min(text.len())..];
                if let Some(arrow) = inner.find("->") {
                    let before = &inner[..arrow];
                    state = State::After;
                    if let Some((tool, args)) = parse_call(before) {
                        let result = run(&tool, &args);
                        fixed = format!("{} -> {result}]", text[..open + 1 + arrow].trim_end());
                        ids.clear();
                        text = fixed.clone();
                        call = Some((tool, args, result));
                        logits = lm.start(&lm.encode(&format!("{prompt}{fixed}"))?)?;
                        continue;
                    }
                } else if inner.contains(']') || inner.contains('\n') || tokens + 1 >= 48 {
                    state = State::After;
                } else {
                    state = State::InCall {
                        open,
                        tokens: tokens + 1,
                    };
                }
            }
            _ => {}
        }
        if !matches!(state, State::InCall { .. })
            && let Some(nl) = text.find('\n')
        {
            text.truncate(nl);
            break;
        }
        logits = lm.push(next)?;
    }
    Ok(Inference { text, call })
}

/// A real model as a [`StepLm`] (a KV cache over the context).
pub struct LmStepper<'a> {
    pub lm: &'a dyn canon_models::CausalLm,
    pub tok: &'a canon_text::Tokenizer,
    cache: canon_models::Cache,
    len: usize,
}

impl<'a> LmStepper<'a> {
    pub fn new(lm: &'a dyn canon_models::CausalLm, tok: &'a canon_text::Tokenizer) -> Self {
        LmStepper {
            lm,
            tok,
            cache: lm.new_cache(),
            len: 0,
        }
    }

    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        use candle_core::{Device, Tensor};
        if self.len + ids.len() > self.lm.max_seq_len() {
            return Err(AgentError::Task(format!(
                "expected at most {} positions, found {}",
                self.lm.max_seq_len(),
                self.len + ids.len()
            )));
        }
        let t = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
        let out = self
            .lm
            .forward(&t, &mut self.cache, canon_models::Positions::Last)?;
        self.len += ids.len();
        Ok(out
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?)
    }
}

impl StepLm for LmStepper<'_> {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tok
            .encode(text, false)
            .map_err(|e| AgentError::Text(e.to_string()))
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, false)
            .map_err(|e| AgentError::Text(e.to_string()))
    }
    fn is_end(&self, id: u32) -> bool {
        self.tok.eog_ids.contains(&id)
    }
    fn start(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.cache = self.lm.new_cache();
        self.len = 0;
        self.feed(ids)
    }
    fn push(&mut self, id: u32) -> Result<Vec<f32>> {
        self.feed(&[id])
    }
}

/// The single-token ids of `[` and ` [` (the API-start token with or without a leading space).
pub fn api_tokens(tok: &canon_text::Tokenizer) -> Vec<u32> {
    ["[", " ["]
        .iter()
        .filter_map(|s| tok.encode(s, false).ok())
        .filter(|ids| ids.len() == 1)
        .map(|ids| ids[0])
        .collect()
}

/// The first number in `s` (digits with an optional sign and decimal point).
pub fn first_number(s: &str) -> Option<String> {
    let cs: Vec<char> = s.chars().collect();
    let start = cs.iter().position(|c| c.is_ascii_digit())?;
    let mut end = start;
    while end < cs.len()
        && (cs[end].is_ascii_digit()
            || cs[end] == '.' && cs.get(end + 1).is_some_and(|c| c.is_ascii_digit()))
    {
        end += 1;
    }
    let neg = start > 0 && cs[start - 1] == '-';
    let n: String = cs[start..end].iter().collect();
    Some(if neg { format!("-{n}") } else { n })
}
