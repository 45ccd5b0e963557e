//! GraphRAG's language-model summaries (paper 31): the descriptions an entity or relationship
//! collected from several text units are summarised into one, and each community gets a report
//! written by the model (title, summary, impact rating 0–10 with its explanation, findings), as
//! structured JSON under a schema. Reports are written bottom-up: a community whose own elements
//! do not fit the context is described through its sub-communities' reports, as GraphRAG does.
//!
//! Calls go through [`BatchLlm`], so a batch of prompts can decode together on the serving
//! engine ([`EngineLlm`]); [`CachedBatch`] stores every answer on disk so an interrupted run
//! resumes without asking again.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Result;
use crate::graph::{KnowledgeGraph, build_report_in, call_key};

/// One chat call: `(role, content)` messages, an answer length, and optionally a JSON schema the
/// answer must satisfy (constrained decoding).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub messages: Vec<(String, String)>,
    pub max_tokens: usize,
    pub schema: Option<Value>,
}

/// A chat model that answers several calls at once (in any order internally; answers come back
/// in the calls' order). A failed call is an `Err` with its reason; the others still answer.
pub trait BatchLlm {
    fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>>;
    /// Identifies the model in cache keys.
    fn id(&self) -> String;
}

/// Answers stored on disk by [`call_key`]: calls already answered are read back, only the others
/// go to the model.
pub struct CachedBatch<'a> {
    pub inner: &'a mut dyn BatchLlm,
    pub dir: PathBuf,
    pub hits: usize,
    pub misses: usize,
}

impl<'a> CachedBatch<'a> {
    pub fn new(inner: &'a mut dyn BatchLlm, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| crate::io_err(dir, e))?;
        Ok(CachedBatch {
            inner,
            dir: dir.to_path_buf(),
            hits: 0,
            misses: 0,
        })
    }

    pub fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>> {
        let id = self.inner.id();
        let mut out: Vec<Option<std::result::Result<String, String>>> = vec![None; calls.len()];
        let mut todo = Vec::new();
        let mut keys = Vec::with_capacity(calls.len());
        for (i, c) in calls.iter().enumerate() {
            let (k, req) = call_key(&id, &c.messages, c.max_tokens, c.schema.as_ref());
            let p = self.dir.join(format!("{k}.json"));
            if let Ok(t) = std::fs::read_to_string(&p)
                && let Ok(v) = serde_json::from_str::<Value>(&t)
                && v["request"].as_str() == Some(req.as_str())
                && let Some(r) = v["response"].as_str()
            {
                self.hits += 1;
                out[i] = Some(Ok(r.to_string()));
            } else {
                todo.push(i);
            }
            keys.push((p, req));
        }
        if !todo.is_empty() {
            let batch: Vec<Call> = todo.iter().map(|&i| calls[i].clone()).collect();
            let answers = self.inner.chat_batch(&batch);
            for (&i, a) in todo.iter().zip(answers) {
                if let Ok(r) = &a {
                    self.misses += 1;
                    let body = json!({"request": keys[i].1, "response": r}).to_string();
                    // A cache entry that cannot be written is only a lost cache hit.
                    let _ = canon_fs::write_atomic(&keys[i].0, body.as_bytes());
                }
                out[i] = Some(a);
            }
        }
        out.into_iter()
            .map(|a| a.unwrap_or_else(|| Err("no answer".into())))
            .collect()
    }
}

/// A one-call-at-a-time chat model (a remote endpoint) as a [`BatchLlm`]: calls run in order; a
/// schema is not enforced (the prompt asks for the JSON and [`parse_report`] checks it).
pub struct Serial<'a>(pub &'a mut dyn crate::graph::Llm);

impl BatchLlm for Serial<'_> {
    fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>> {
        calls
            .iter()
            .map(|c| self.0.chat(&c.messages, c.max_tokens))
            .collect()
    }
    fn id(&self) -> String {
        self.0.id()
    }
}

mod engine;
mod reports;
mod summaries;
#[cfg(test)]
mod tests;

pub use engine::*;
pub use reports::*;
pub use summaries::*;
