//! The generation loop over any `CausalLm`: prefill the prompt in one batched forward pass, then
//! decode one token at a time through the KV cache, sampling each token, streaming text, and stopping
//! at an end-of-generation token, a stop string, `max_tokens`, or the model's context.

use std::time::Instant;

use candle_core::{Device, Tensor};
use canon_models::{Cache, CausalLm, LoadedLm, Positions};
use canon_text::{TokenStream, Tokenizer};

use crate::sampling::{Sampler, token_logprob};
use crate::{FinishReason, GenerateRequest, Generation, InferError, Result, TextGenerator};

/// A decoding session: the cache and the ids it holds, reused across calls when a new prompt extends
/// the previous one (multi-turn chat re-sends the whole history).
pub struct Session {
    cache: Cache,
    ids: Vec<u32>,
}

impl Session {
    pub fn new(lm: &dyn CausalLm) -> Self {
        Self {
            cache: lm.new_cache(),
            ids: Vec::new(),
        }
    }
    pub fn reset(&mut self) {
        self.cache.clear();
        self.ids.clear();
    }
}

/// Holds back text that may be the start of a stop string, so a stop string is never printed.
pub(crate) struct StopFilter<'a> {
    pub(crate) stops: &'a [String],
    pub(crate) text: String,
    pub(crate) emitted: usize,
}

impl<'a> StopFilter<'a> {
    /// Adds a piece; returns (text safe to emit now, whether a stop string was found).
    pub(crate) fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        // Search from a little before the emitted point (a stop string may straddle it), moved back
        // to a character boundary.
        let mut search_from = self
            .emitted
            .saturating_sub(self.stops.iter().map(|s| s.len()).max().unwrap_or(0));
        while !self.text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| i + search_from)
            })
            .min();
        if let Some(at) = found {
            self.text.truncate(at);
            let out = self.text.get(self.emitted..).unwrap_or("").to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        // Longest suffix of the text that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in self.stops {
            for n in (1..s.len()).rev() {
                if n <= self.text.len() - self.emitted
                    && s.is_char_boundary(n)
                    && self.text.ends_with(&s[..n])
                {
                    hold = hold.max(n);
                    break;
                }
            }
        }
        let until = self.text.len() - hold;
        let out = self.text.get(self.emitted..until).unwrap_or("").to_string();
        self.emitted = until;
        (out, false)
    }

    pub(crate) fn finish(&mut self) -> String {
        let out = self.text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = self.text.len();
        out
    }
}

fn last_logits(logits: &Tensor) -> Result<Vec<f32>> {
    // [1, 1, vocab] -> [vocab]
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}

/// Runs the model over `ids` continuing `session`, returning the last position's logits.
fn feed(lm: &dyn CausalLm, session: &mut Session, ids: &[u32]) -> Result<Vec<f32>> {
    let t = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    let logits = lm.forward(&t, &mut session.cache, Positions::Last)?;
    session.ids.extend_from_slice(ids);
    last_logits(&logits)
}

/// Generates from prompt ids. `on_text` receives each piece of text as it becomes final and returns
/// `false` to stop early.
pub fn generate_ids(
    lm: &dyn CausalLm,
    tok: &Tokenizer,
    session: &mut Session,
    prompt: &[u32],
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(InferError::EmptyPrompt);
    }
    let ctx = lm.max_seq_len();
    if prompt.len() >= ctx {
        return Err(InferError::PromptTooLong {
            found: prompt.len(),
            max: ctx,
            needed: 1,
        });
    }
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let t0 = Instant::now();
    // Reuse the cached prefix the new prompt shares with the session (at least one token is fed, to
    // get logits).
    let common = session
        .ids
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    let reuse = common.min(prompt.len() - 1);
    if reuse < session.ids.len() {
        if reuse == 0 {
            session.reset();
        } else {
            for l in session.cache.layers.iter_mut() {
                l.truncate(reuse)?;
            }
            session.ids.truncate(reuse);
        }
    }
    let mut logits = feed(lm, session, &prompt[reuse..])?;
    let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut lps = req.logprobs.map(|_| Vec::new());
    let mut stream = TokenStream::new();
    let mut filter = StopFilter {
        stops: &req.stop,
        text: String::new(),
        emitted: 0,
    };
    let mut finish = FinishReason::Length;
    let mut stopped_by_caller = false;
    while tokens.len() < req.max_tokens {
        let next = sampler.sample(&logits, &history);
        if !req.ignore_eos && tok.eog_ids.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        if let (Some(k), Some(v)) = (req.logprobs, lps.as_mut()) {
            v.push(token_logprob(tok, &logits, next, k)?);
        }
        tokens.push(next);
        history.push(next);
        let mut hit_stop = false;
        if let Some(piece) = stream.push(tok, next)? {
            let (out, stop) = filter.push(&piece);
            if !out.is_empty() && !on_text(&out) {
                stopped_by_caller = true;
            }
            hit_stop = stop;
        }
        if hit_stop {
            finish = FinishReason::Stop;
            break;
        }
        if stopped_by_caller {
            finish = FinishReason::Stop;
            break;
        }
        if tokens.len() >= req.max_tokens {
            break;
        }
        if session.ids.len() + 1 >= ctx {
            // The context is full: nothing more fits.
            break;
        }
        logits = feed(lm, session, &[next])?;
    }
    if (!matches!(finish, FinishReason::Stop) || !filter.text.is_empty())
        && let Some(rest) = stream.flush(tok)?
    {
        let (out, _) = filter.push(&rest);
        if !out.is_empty() {
            on_text(&out);
        }
    }
    let tail = filter.finish();
    if !tail.is_empty() {
        on_text(&tail);
    }
    Ok(Generation {
        prompt_tokens: prompt.to_vec(),
        tokens,
        text: filter.text,
        finish_reason: finish,
        logprobs: lps,
        prefill_ms,
        decode_ms: t1.elapsed().as_secs_f64() * 1e3,
    })
}

/// A loaded model as a `TextGenerator`: prompts are tokenized with special-token parsing, as
/// llama.cpp does.
pub struct LmGenerator {
    pub lm: LoadedLm,
    session: Session,
}

impl LmGenerator {
    pub fn new(lm: LoadedLm) -> Self {
        let session = Session::new(lm.model.as_ref());
        Self { lm, session }
    }

    /// Generates with a callback for streamed text.
    pub fn generate_streaming(
        &mut self,
        req: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let ids = self.lm.tokenizer.encode(&req.prompt, true)?;
        generate_ids(
            self.lm.model.as_ref(),
            &self.lm.tokenizer,
            &mut self.session,
            &ids,
            req,
            on_text,
        )
    }
}

impl TextGenerator for LmGenerator {
    fn generate(&mut self, req: &GenerateRequest) -> Result<Generation> {
        self.generate_streaming(req, &mut |_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_filter_never_emits_a_stop_string() {
        let stops = vec!["\ndef".to_string()];
        let mut f = StopFilter {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
        let mut out = String::new();
        for piece in ["x = 1", "\n", "d", "ef foo"] {
            let (o, stop) = f.push(piece);
            out.push_str(&o);
            if stop {
                break;
            }
        }
        assert_eq!(out, "x = 1");
        assert_eq!(f.text, "x = 1");
    }

    #[test]
    fn stop_filter_handles_multibyte_text_around_the_search_window() {
        let stops = vec!["\n#".to_string(), "\ndef".to_string()];
        let mut f = StopFilter {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
        let mut out = String::new();
        for piece in ["x – y", "é", "–", "ü done", "\n", "# end"] {
            let (o, stop) = f.push(piece);
            out.push_str(&o);
            if stop {
                break;
            }
        }
        assert_eq!(out, "x – yé–ü done".replace('Ü', "ü"));
    }

    #[test]
    fn stop_filter_releases_held_text_that_was_not_a_stop() {
        let stops = vec!["STOP".to_string()];
        let mut f = StopFilter {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
        let (a, _) = f.push("abc ST");
        assert_eq!(a, "abc ");
        let (b, s) = f.push("ART");
        assert!(!s);
        assert_eq!(b, "START");
    }
}
