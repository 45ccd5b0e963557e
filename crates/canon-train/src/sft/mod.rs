//! Supervised fine-tuning data (LoRA paper 13, QLoRA paper 27: "loss on targets only").
//!
//! A JSONL file holds one record per line, either
//! - `{"prompt": "...", "completion": "..."}`: the prompt and the completion are tokenized apart
//!   (the prompt with the model's BOS, the completion without) and the completion is followed by
//!   EOS; the loss covers the completion and the EOS only, or
//! - `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`: rendered with
//!   the model's chat template; the loss covers the assistant turns only. A turn's token span is
//!   found by rendering prefixes of the conversation: the tokens of `render(messages[..i],
//!   add_generation_prompt)` precede turn `i`, those of `render(messages[..=i])` end it (its
//!   end-of-turn marker included, so the model learns to stop).
//!
//! Labels are shifted: `labels[p]` is the target of position `p` (`ids[p + 1]` inside a loss span,
//! `IGNORE_INDEX` elsewhere), ready for `canon_nn::masked_cross_entropy`. Errors name the file and
//! line.

pub mod lora;

#[cfg(test)]
mod lora_tests;
#[cfg(test)]
mod tests;

use std::path::Path;

use canon_nn::IGNORE_INDEX;
use canon_text::{ChatTemplate, Message, Tokenizer};
use serde_json::Value;

use crate::{Result, TrainError};

/// One training record as read from a JSONL line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Completion { prompt: String, completion: String },
    Chat(Vec<Message>),
}

/// A tokenized record: input ids and shifted labels (same length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl SftExample {
    /// Number of positions with a target.
    pub fn targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Parses one JSON object into a record; the error says what is wrong (no file or line).
pub fn parse_record(v: &Value) -> std::result::Result<Record, String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("expected a JSON object, found {v}"));
    };
    if let Some(m) = obj.get("messages") {
        let arr = m
            .as_array()
            .ok_or("\"messages\" must be an array of {\"role\", \"content\"} objects")?;
        if arr.is_empty() {
            return Err("\"messages\" is empty".into());
        }
        let mut msgs = Vec::with_capacity(arr.len());
        for (i, m) in arr.iter().enumerate() {
            let role = m["role"]
                .as_str()
                .ok_or_else(|| format!("message {i} has no string \"role\""))?;
            if !ROLES.contains(&role) {
                return Err(format!(
                    "message {i} has unknown role \"{role}\" (expected one of {})",
                    ROLES.join(", ")
                ));
            }
            let content = m["content"]
                .as_str()
                .ok_or_else(|| format!("message {i} has no string \"content\""))?;
            msgs.push(Message::new(role, content));
        }
        if !msgs.iter().any(|m| m.role == "assistant") {
            return Err("\"messages\" has no assistant turn: nothing to learn".into());
        }
        return Ok(Record::Chat(msgs));
    }
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("\"prompt\" must be a string".into()),
        None => {
            return Err(
                "expected {\"prompt\", \"completion\"} or {\"messages\": [...]}, found neither \
                 \"prompt\" nor \"messages\""
                    .into(),
            );
        }
    };
    let completion = match obj.get("completion") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err("\"completion\" is empty".into()),
        Some(_) => return Err("\"completion\" must be a string".into()),
        None => return Err("the record has a \"prompt\" but no \"completion\"".into()),
    };
    Ok(Record::Completion { prompt, completion })
}

/// Reads every non-blank line of a JSONL file; returns `(line number, record)` pairs.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Record)>> {
    let mut out = Vec::new();
    let lines = canon_fs::lines::lines(path).map_err(|e| TrainError::Data(e.to_string()))?;
    for item in lines {
        let (n, line) = item.map_err(|e| TrainError::Data(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: String| TrainError::Data(format!("{}:{n}: {m}", path.display()));
        let v: Value =
            serde_json::from_str(&line).map_err(|e| at(format!("malformed JSON: {e}")))?;
        out.push((n, parse_record(&v).map_err(at)?));
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no records (expected JSON lines)",
            path.display()
        )));
    }
    Ok(out)
}

/// `text`'s ids without the BOS the tokenizer may prepend.
fn encode_plain(tok: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    let mut ids = tok
        .encode(text, special)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    if tok.add_bos && !ids.is_empty() && tok.bos_id == Some(ids[0]) {
        ids.remove(0);
    }
    Ok(ids)
}

fn encode(tok: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    tok.encode(text, special)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))
}

/// Builds ids and labels from token segments, each marked as a target or not; keeps the first
/// `max_len` tokens. `None` when no target survives the truncation.
fn assemble(segments: &[(Vec<u32>, bool)], max_len: usize) -> Option<SftExample> {
    let mut ids = Vec::new();
    let mut target = Vec::new();
    for (seg, t) in segments {
        ids.extend_from_slice(seg);
        target.extend(std::iter::repeat_n(*t, seg.len()));
    }
    ids.truncate(max_len);
    target.truncate(max_len);
    // Position p predicts token p + 1.
    let labels: Vec<i64> = (0..ids.len())
        .map(|p| match ids.get(p + 1) {
            Some(&next) if target[p + 1] => next as i64,
            _ => IGNORE_INDEX,
        })
        .collect();
    let ex = SftExample { ids, labels };
    (ex.targets() > 0).then_some(ex)
}

/// Tokenizes a record. `template` is needed for chat records; `max_len` ≥ 2.
pub fn encode_record(
    rec: &Record,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    max_len: usize,
) -> Result<Option<SftExample>> {
    match rec {
        Record::Completion { prompt, completion } => {
            let p = encode(tok, prompt, false)?;
            let mut c = encode_plain(tok, completion, false)?;
            let eos = tok.eos_id.or_else(|| tok.eog_ids.first().copied());
            c.extend(eos);
            Ok(assemble(&[(p, false), (c, true)], max_len))
        }
        Record::Chat(msgs) => {
            let t = template.ok_or_else(|| {
                TrainError::Data(
                    "a {\"messages\"} record needs a model with a chat template".into(),
                )
            })?;
            let render = |m: &[Message], gen_prompt: bool| {
                t.render(m, gen_prompt)
                    .map_err(|e| TrainError::Data(format!("chat template: {e}")))
            };
            let full = encode(tok, &render(msgs, false)?, true)?;
            let mut segments = Vec::new();
            let mut done = 0usize;
            for (i, m) in msgs.iter().enumerate() {
                if m.role != "assistant" {
                    continue;
                }
                let start = encode(tok, &render(&msgs[..i], true)?, true)?;
                let end = encode(tok, &render(&msgs[..=i], false)?, true)?;
                if !full.starts_with(&start)
                    || !full.starts_with(&end)
                    || start.len() < done
                    || end.len() < start.len()
                {
                    return Err(TrainError::Data(format!(
                        "the chat template's rendering up to message {i} does not tokenize as a \
                         prefix of the whole conversation; cannot find the assistant turn's tokens"
                    )));
                }
                segments.push((full[done..start.len()].to_vec(), false));
                segments.push((full[start.len()..end.len()].to_vec(), true));
                done = end.len();
            }
            segments.push((full[done..].to_vec(), false));
            Ok(assemble(&segments, max_len))
        }
    }
}

/// Reads and tokenizes a JSONL file. Records whose targets are all cut by `max_len` are dropped
/// and counted. Errors name the file and line.
pub fn load_examples(
    path: &Path,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    max_len: usize,
) -> Result<(Vec<SftExample>, usize)> {
    if max_len < 2 {
        return Err(TrainError::Data(format!(
            "the maximum length must be at least 2 tokens, found {max_len}"
        )));
    }
    let mut out = Vec::new();
    let mut dropped = 0;
    for (line, rec) in read_jsonl(path)? {
        let ex = encode_record(&rec, tok, template, max_len).map_err(|e| {
            TrainError::Data(format!("{}:{line}: {}", path.display(), strip_data(&e)))
        })?;
        match ex {
            Some(e) => out.push(e),
            None => dropped += 1,
        }
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no record keeps a target token within {max_len} tokens",
            path.display()
        )));
    }
    Ok((out, dropped))
}

fn strip_data(e: &TrainError) -> String {
    match e {
        TrainError::Data(m) => m.clone(),
        other => other.to_string(),
    }
}

/// A batch: ids `[b, t]` padded on the right with `pad`, labels `[b·t]` (padding ignored), and the
/// number of real tokens.
pub fn collate(batch: &[&SftExample], pad: u32) -> (Vec<u32>, Vec<i64>, usize, usize) {
    let ids: Vec<&[u32]> = batch.iter().map(|e| e.ids.as_slice()).collect();
    let ids = canon_nn::ops::pad_batch(&ids, pad, 0);
    // Labels are as long as the ids (checked when an example is built).
    let labels: Vec<&[i64]> = batch.iter().map(|e| e.labels.as_slice()).collect();
    let labels = canon_nn::ops::pad_batch(&labels, IGNORE_INDEX, ids.width);
    let real = ids.lens.iter().sum();
    (ids.ids, labels.ids, ids.width, real)
}

/// Splits off every `k`-th example (k = round(1 / fraction)) as held-out, in file order.
pub fn split_held_out(
    examples: Vec<SftExample>,
    fraction: f64,
) -> Result<(Vec<SftExample>, Vec<SftExample>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(TrainError::Data(format!(
            "the held-out fraction must be in (0, 1), found {fraction}"
        )));
    }
    let k = ((1.0 / fraction).round() as usize).max(2);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, e) in examples.into_iter().enumerate() {
        if i % k == k - 1 {
            val.push(e);
        } else {
            train.push(e);
        }
    }
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::Data(format!(
            "{} training and {} held-out records: give more records or --eval-data",
            train.len(),
            val.len()
        )));
    }
    Ok((train, val))
}
