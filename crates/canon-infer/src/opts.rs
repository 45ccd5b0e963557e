//! The settings of `canon generate` and `canon chat` (with the `cli` feature also their argument
//! structs, the doc comments being the `--help` text): the sampling flags both share and their
//! checked [`SamplingConfig`], the prompt through the chat template, and the JSON `--json` prints.

use canon_models::LoadedLm;
use canon_text::Message;
use serde_json::{Value, json};

use crate::{Generation, InferError, SamplingConfig, TokenLogprob};

/// A flag out of range, or a sampling configuration the sampler refuses.
#[derive(Debug, thiserror::Error)]
pub enum OptsError {
    #[error("{0}")]
    Flag(String),
    #[error(transparent)]
    Infer(#[from] InferError),
}

/// Most completions `canon generate --n` makes at once.
pub const MAX_N: usize = 256;

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy (always the most likely token).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.8))]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 40))]
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P (1 = off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.95))]
    pub top_p: f32,
    /// Keep tokens at least P times as likely as the most likely one (0 = off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.05))]
    pub min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1.0))]
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat, presence and frequency penalties look at.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub repeat_last_n: usize,
    /// Subtract this from the logit of every token seen in the window (OpenAI's presence_penalty).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = 0.0, allow_negative_numbers = true)
    )]
    pub presence_penalty: f32,
    /// Subtract this per occurrence of a token in the window (OpenAI's frequency_penalty).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = 0.0, allow_negative_numbers = true)
    )]
    pub frequency_penalty: f32,
    /// Random seed: the same seed gives the same text.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 42))]
    pub seed: u64,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon generate --model smollm2 --prompt \"The capital of France is\" --max-tokens 48 --temperature 0
  canon generate --model smollm2 --chat --prompt \"Write a haiku about Rust.\"
  canon generate --model ./my-model.gguf --prompt \"Once upon a time\" --seed 7 --json --logprobs 3
  canon generate --model smollm2 --prompt \"A story:\" --n 8 --temperature 0.8 --seed 1   # 8 samples, batched
  canon generate --model gemma3 --prompt \"The capital of France is\" --temperature 0 --cache-type f16")
)]
pub struct GenerateArgs {
    /// Model: an alias (smollm2, gemma3), a .gguf file, an HF-style folder, or a `canon train` run folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// The prompt (read from standard input when omitted).
    #[cfg_attr(feature = "cli", arg(long))]
    pub prompt: Option<String>,
    /// Wrap the prompt in the model's chat template as a user turn, with the generation prompt.
    #[cfg_attr(feature = "cli", arg(long))]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[cfg_attr(feature = "cli", arg(long, requires = "chat"))]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 256))]
    pub max_tokens: usize,
    /// Stop when the text contains this string (repeatable); the string is not printed.
    #[cfg_attr(feature = "cli", arg(long = "stop", value_name = "STR"))]
    pub stop: Vec<String>,
    /// Generate exactly --max-tokens tokens, ignoring end-of-generation tokens.
    #[cfg_attr(feature = "cli", arg(long))]
    pub ignore_eos: bool,
    /// Print one JSON object at the end instead of streaming.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
    /// With --json: per generated token, its log-probability and the K most likely alternatives.
    #[cfg_attr(feature = "cli", arg(long, value_name = "K"))]
    pub logprobs: Option<usize>,
    /// Sample this many completions of the prompt together (batched generation: one forward pass
    /// per step for all of them). Completion i uses seed --seed + i.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1, value_name = "K"))]
    pub n: usize,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub sampling: SamplingArgs,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon chat --model smollm2
  printf 'Hi!\\nWhat did I just say?\\n' | canon chat --model smollm2 --temperature 0")
)]
pub struct ChatArgs {
    /// Model: an alias (smollm2), a .gguf file, an HF-style folder, or a `canon train` run folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// System message (default: the template's own).
    #[cfg_attr(feature = "cli", arg(long))]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 512))]
    pub max_tokens: usize,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub sampling: SamplingArgs,
}

impl SamplingArgs {
    /// The sampler's configuration, its ranges checked (0 turns top-k, top-p 1 and min-p 0 off).
    pub fn to_config(&self) -> Result<SamplingConfig, OptsError> {
        let bad = |m: String| Err(OptsError::Flag(m));
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("--top-p must be in (0, 1], found {}", self.top_p));
        }
        for (name, v) in [
            ("--presence-penalty", self.presence_penalty),
            ("--frequency-penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2], found {v}"));
            }
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("--min-p must be in [0, 1], found {}", self.min_p));
        }
        let c = SamplingConfig {
            temperature: self.temperature,
            top_k: (self.top_k > 0).then_some(self.top_k),
            top_p: (self.top_p < 1.0).then_some(self.top_p),
            min_p: (self.min_p > 0.0).then_some(self.min_p),
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        };
        c.validate()?;
        Ok(c)
    }
}

impl GenerateArgs {
    /// `--logprobs` comes only with `--json`.
    pub fn check(&self) -> Result<(), OptsError> {
        if self.logprobs.is_some() && !self.json {
            return Err(OptsError::Flag(
                "--logprobs needs --json (log-probabilities are part of the JSON output)".into(),
            ));
        }
        Ok(())
    }

    /// `--n` is between 1 and [`MAX_N`].
    pub fn check_n(&self) -> Result<(), OptsError> {
        if self.n == 0 || self.n > MAX_N {
            return Err(OptsError::Flag(format!(
                "--n must be between 1 and {MAX_N}, found {}",
                self.n
            )));
        }
        Ok(())
    }
}

/// The text fed to the model: `prompt` itself, or with `chat` a user turn (after `system`, when
/// given) through the model's chat template with the generation prompt.
pub fn build_prompt(
    lm: &LoadedLm,
    prompt: &str,
    chat: bool,
    system: Option<&str>,
) -> Result<String, OptsError> {
    if !chat {
        return Ok(prompt.to_string());
    }
    let tmpl = lm.chat_template.as_ref().ok_or_else(|| {
        OptsError::Flag(format!(
            "--chat: the model {} has no chat template",
            lm.path.display()
        ))
    })?;
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(Message::new("system", s));
    }
    msgs.push(Message::new("user", prompt));
    Ok(tmpl.render(&msgs, true).map_err(InferError::from)?)
}

/// One generation as `canon generate --json` prints it: tokens, text, finish reason, timings and
/// (when asked) the per-token log-probabilities.
pub fn generation_json(g: &Generation) -> Value {
    let mut v = json!({
        "prompt_tokens": g.prompt_tokens,
        "tokens": g.tokens,
        "text": g.text,
        "finish_reason": g.finish_reason,
        "timings": {
            "prompt_tokens": g.prompt_tokens.len(),
            "prefill_ms": g.prefill_ms,
            "decode_tokens": g.tokens.len(),
            "decode_ms": g.decode_ms,
        },
    });
    if let Some(lps) = &g.logprobs {
        v["logprobs"] = logprobs_json(lps);
    }
    v
}

/// Per-token log-probabilities with their alternatives, as `--json` prints them.
pub fn logprobs_json(lps: &[TokenLogprob]) -> Value {
    lps.iter()
        .map(|l| {
            json!({
                "id": l.token, "token": l.text, "logprob": l.logprob,
                "top_logprobs": l.top.iter().map(|(id, t, lp)| json!({"id": id, "token": t, "logprob": lp})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling() -> SamplingArgs {
        SamplingArgs {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 42,
        }
    }

    #[test]
    fn sampling_flags_checked_and_turned_off() {
        let c = sampling().to_config().unwrap();
        assert_eq!(
            (c.top_k, c.top_p, c.min_p),
            (Some(40), Some(0.95), Some(0.05))
        );
        let mut s = sampling();
        (s.top_k, s.top_p, s.min_p) = (0, 1.0, 0.0);
        let c = s.to_config().unwrap();
        assert_eq!((c.top_k, c.top_p, c.min_p), (None, None, None));
        s.presence_penalty = 3.0;
        let e = s.to_config().unwrap_err().to_string();
        assert_eq!(e, "--presence-penalty must be in [-2, 2], found 3");
        let mut s = sampling();
        s.top_p = 0.0;
        assert!(
            s.to_config()
                .unwrap_err()
                .to_string()
                .starts_with("--top-p")
        );
    }
}
