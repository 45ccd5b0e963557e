//! The `TextGenerator` seam: text in, text out, plus token log-probabilities.

use crate::{Result, SamplingConfig};
use serde::Serialize;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation ends when the text contains one of these; the text returned stops before it.
    pub stop: Vec<String>,
    /// Generate exactly `max_tokens` tokens, ignoring end-of-generation tokens.
    pub ignore_eos: bool,
    /// Return, per generated token, its log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>, max_tokens: usize) -> Self {
        Self {
            prompt: prompt.into(),
            max_tokens,
            sampling: SamplingConfig::greedy(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// Log-probability of one generated token and its top alternatives.
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub text: String,
    pub logprob: f32,
    /// (token id, text, log-probability), most probable first.
    pub top: Vec<(u32, String, f32)>,
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    /// Generated ids, without the end-of-generation token that stopped it.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// Text in, text out. Implemented by a real model (`crate::Generator`) and by scripted fakes in tests.
pub trait TextGenerator {
    /// Generates one continuation of `req.prompt`.
    fn generate(&mut self, req: &GenerateRequest) -> Result<Generation>;
}
