//! RLAIF (Lee et al., 2023, paper 29): an off-the-shelf LLM as the preference labeller.
//!
//! The labeller sees a preamble (what makes an answer good), the question and two candidate
//! answers, then the ending `Preferred answer: `; the preference is the softmax over just the
//! logits of the label tokens `1` and `2` at that position. Position bias is removed as the paper
//! does: score both orders and average, `P(A ≻ B) = (P₁(first | A,B) + P₂(second | B,A)) / 2`
//! ([`crate::losses::debiased_preference`]).
//!
//! [`crate::rlaif_run`] reports the labeller's agreement with the gold judge (accuracy of its
//! arg-max preference on pairs the judge ranks strictly) from one order and after the order swap.
//!
//! Chain-of-thought labelling (the paper's §2.1.2, optional): the labeller first writes a
//! rationale (the prompt ends with a request to explain which answer is better and
//! `Rationale:`; greedy decoding for at most `max_tokens` tokens, stopping at end of sequence or a
//! blank line), then the rationale is kept in the context and the ending `\nPreferred answer: ` is
//! appended; the preference is read from the label tokens there as without it
//! ([`LmLabeller::with_chain_of_thought`]).
//!
//! Direct RLAIF (d-RLAIF) asks the labeller to rate one answer from 1 to 10; the likelihood of
//! each score is read off the logits ([`LmLabeller::rating_probs`]) and mapped to a reward in
//! [−1, 1] by [`crate::losses::d_rlaif_reward`]. The experiment that trains reward models on these
//! labels and runs RL with them is [`crate::rlaif_run`].

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use canon_models::{LoadedLm, Positions};
use canon_text::Message;

use crate::task::Problem;
use crate::{Result, data_err};

/// The label tokens' ids (each must be a single token of the labeller's vocabulary).
fn label_ids(lm: &LoadedLm) -> Result<(u32, u32)> {
    let one = lm
        .tokenizer
        .encode("1", false)
        .map_err(|e| data_err(e.to_string()))?;
    let two = lm
        .tokenizer
        .encode("2", false)
        .map_err(|e| data_err(e.to_string()))?;
    let strip = |v: Vec<u32>| -> Vec<u32> {
        v.into_iter()
            .filter(|&t| Some(t) != lm.tokenizer.bos_id)
            .collect()
    };
    match (strip(one).as_slice(), strip(two).as_slice()) {
        ([a], [b]) => Ok((*a, *b)),
        (a, b) => Err(data_err(format!(
            "the labeller's vocabulary splits the labels: '1' → {a:?}, '2' → {b:?} (expected one token each)"
        ))),
    }
}

/// The labelling prompt for one ordered pair, as text (chat template applied).
pub fn prompt_text(lm: &LoadedLm, p: &Problem, first: &str, second: &str) -> Result<String> {
    Ok(format!(
        "{}Preferred answer: ",
        render(lm, pair_user_text(p, first, second, false))?
    ))
}

/// The labeller's user message for one ordered pair: the preamble, the question, both answers
/// and the request (to reply with 1 or 2, or with `cot`, to explain first).
pub fn pair_user_text(p: &Problem, first: &str, second: &str, cot: bool) -> String {
    let q = format!("What is {} + {}?", p.a, p.b);
    let ask = if cot {
        "Check each answer's sum and format, explain which answer is better, then reply with 1 or 2."
    } else {
        "Which answer is better? Reply with 1 or 2."
    };
    format!(
        "A good answer gives the correct sum, written as just the number followed by a period \
         (for example \"12.\"), with no other words.\n\nQuestion: {q}\nAnswer 1: {first}\n\
         Answer 2: {second}\n\n{ask}"
    )
}

/// The d-RLAIF user message for one answer.
pub fn rating_user_text(p: &Problem, answer: &str) -> String {
    let q = format!("What is {} + {}?", p.a, p.b);
    format!(
        "A good answer gives the correct sum, written as just the number followed by a period \
         (for example \"12.\"), with no other words.\n\nQuestion: {q}\nAnswer: {answer}\n\n\
         Rate the answer from 1 (worst) to 10 (best). Reply with the number only."
    )
}

fn render(lm: &LoadedLm, user: String) -> Result<String> {
    let msgs = [Message::new("user", user)];
    Ok(match &lm.chat_template {
        Some(t) => t.render(&msgs, true).map_err(|e| data_err(e.to_string()))?,
        None => format!("{}\n", msgs[0].content),
    })
}

/// What follows a chain-of-thought rationale before the label is read.
pub const COT_ENDING: &str = "\nPreferred answer: ";

/// The chain-of-thought labelling prompt for one ordered pair, as text (chat template applied):
/// the same question and answers, asking for an explanation first; ends with `Rationale:`.
pub fn cot_prompt_text(lm: &LoadedLm, p: &Problem, first: &str, second: &str) -> Result<String> {
    Ok(format!(
        "{}Rationale:",
        render(lm, pair_user_text(p, first, second, true))?
    ))
}

/// The labelling prompt for one ordered pair, as token ids.
pub fn prompt_ids(lm: &LoadedLm, p: &Problem, first: &str, second: &str) -> Result<Vec<u32>> {
    lm.tokenizer
        .encode(&prompt_text(lm, p, first, second)?, true)
        .map_err(|e| data_err(e.to_string()))
}

/// `P(first answer is better)` = softmax over the logits of `1` and `2`.
pub fn p_first(lm: &LoadedLm, ids: &[u32]) -> Result<f64> {
    let (one, two) = label_ids(lm)?;
    let mut cache = lm.model.new_cache();
    let logits = last_logits(lm, ids, &mut cache)?;
    let (a, b) = (logits[one as usize] as f64, logits[two as usize] as f64);
    Ok(1.0 / (1.0 + (b - a).exp()))
}

fn last_logits(lm: &LoadedLm, ids: &[u32], cache: &mut canon_models::Cache) -> Result<Vec<f32>> {
    if ids.is_empty() {
        return Err(data_err("the labeller got an empty prompt"));
    }
    let t = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    Ok(lm
        .model
        .forward(&t, cache, Positions::Last)?
        .flatten_all()?
        .to_vec1()?)
}

/// The single token of a digit string in the labeller's vocabulary.
fn digit_id(lm: &LoadedLm, d: u32) -> Result<u32> {
    let ids: Vec<u32> = lm
        .tokenizer
        .encode(&d.to_string(), false)
        .map_err(|e| data_err(e.to_string()))?
        .into_iter()
        .filter(|&t| Some(t) != lm.tokenizer.bos_id)
        .collect();
    match ids.as_slice() {
        [t] => Ok(*t),
        other => Err(data_err(format!(
            "the labeller's vocabulary splits the digit '{d}' into {other:?} (expected one token)"
        ))),
    }
}

/// The index of the largest logit (the first of equals).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax of one entry of a logit vector.
fn log_softmax_at(logits: &[f32], i: usize) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - m).exp()).sum();
    logits[i] as f64 - m - z.ln()
}

/// The d-RLAIF prompt for one answer, as text (chat template applied).
pub fn rating_prompt_text(lm: &LoadedLm, p: &Problem, answer: &str) -> Result<String> {
    Ok(format!(
        "{}Rating: ",
        render(lm, rating_user_text(p, answer))?
    ))
}

/// What RLAIF needs from an AI labeller.
pub trait Labeller {
    /// A short description (the model's name).
    fn name(&self) -> String;
    /// `P(the first answer is better)` for the pair shown in this order.
    fn p_first(&mut self, p: &Problem, first: &str, second: &str) -> Result<f64>;
    /// The probabilities of the ratings 1..=10 of one answer (they sum to 1).
    fn rating_probs(&mut self, p: &Problem, answer: &str) -> Result<[f64; 10]>;
    /// The d-RLAIF reward of one answer: the expected rating mapped to [−1, 1].
    fn d_rlaif_reward(&mut self, p: &Problem, answer: &str) -> Result<f64> {
        Ok(crate::losses::d_rlaif_reward(
            &self.rating_probs(p, answer)?,
        ))
    }
}

/// A causal LM as the labeller (any model `canon_models::load_causal_lm` loads). Ratings are
/// memoised per (problem, answer): RL samples the same short answers many times.
pub struct LmLabeller<'a> {
    pub lm: &'a LoadedLm,
    digits: [u32; 10],
    ratings: HashMap<(Problem, String), [f64; 10]>,
    /// The KV cache of the prompts' shared beginning (everything before `Question:`), by text.
    prefixes: HashMap<String, canon_models::Cache>,
    /// Labeller prompts evaluated so far (memoised ratings not counted).
    pub calls: u64,
    /// Chain-of-thought labelling: the most rationale tokens (`None`: the label is read at once).
    cot_tokens: Option<usize>,
    /// The rationales written so far (chain-of-thought labelling), in call order.
    pub rationales: Vec<String>,
}

impl<'a> LmLabeller<'a> {
    /// Checks that the labels `1`, `2` and the digits `0`–`9` are single tokens.
    pub fn new(lm: &'a LoadedLm) -> Result<Self> {
        label_ids(lm)?;
        let mut digits = [0u32; 10];
        for (d, slot) in digits.iter_mut().enumerate() {
            *slot = digit_id(lm, d as u32)?;
        }
        Ok(Self {
            lm,
            digits,
            ratings: HashMap::new(),
            prefixes: HashMap::new(),
            calls: 0,
            cot_tokens: None,
            rationales: Vec::new(),
        })
    }

    /// Pairwise labels with a rationale first: at most `max_tokens` greedy tokens after
    /// `Rationale:` (see [`cot_prompt_text`]), then [`COT_ENDING`] and the label. Errors: 0 tokens.
    pub fn with_chain_of_thought(mut self, max_tokens: usize) -> Result<Self> {
        if max_tokens == 0 {
            return Err(data_err(
                "chain-of-thought labelling needs at least 1 rationale token, found 0",
            ));
        }
        self.cot_tokens = Some(max_tokens);
        Ok(self)
    }

    /// The rationale's tokens, greedy from `logits` (the state after the prompt); every token
    /// returned is in `cache` afterwards. Stops at the end-of-sequence token (not kept), a blank
    /// line or `max` tokens.
    fn rationale(
        &self,
        mut logits: Vec<f32>,
        cache: &mut canon_models::Cache,
        max: usize,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for _ in 0..max {
            let next = argmax(&logits);
            if Some(next) == self.lm.tokenizer.eos_id {
                break;
            }
            out.push(next);
            logits = last_logits(self.lm, &[next], cache)?;
            let text = self
                .lm
                .tokenizer
                .decode(&out, true)
                .map_err(|e| data_err(e.to_string()))?;
            if text.trim_start().contains("\n\n") {
                break;
            }
        }
        Ok(out)
    }

    /// The logits after `text`, reusing the cached KV state of its beginning up to `Question:`
    /// (the preamble every prompt shares): the beginning and the rest are tokenised separately.
    /// Returns the cache positioned after `text`.
    fn logits_after(&mut self, text: &str) -> Result<(Vec<f32>, canon_models::Cache)> {
        self.calls += 1;
        let cut = text.find("Question:").unwrap_or(0);
        let (head, tail) = text.split_at(cut);
        let mut cache = match self.prefixes.get(head) {
            Some(c) => c.clone(),
            None => {
                let mut c = self.lm.model.new_cache();
                if !head.is_empty() {
                    let ids = self
                        .lm
                        .tokenizer
                        .encode(head, true)
                        .map_err(|e| data_err(e.to_string()))?;
                    last_logits(self.lm, &ids, &mut c)?;
                }
                self.prefixes.insert(head.to_string(), c.clone());
                c
            }
        };
        let mut ids = self
            .lm
            .tokenizer
            .encode(tail, true)
            .map_err(|e| data_err(e.to_string()))?;
        if !head.is_empty()
            && ids
                .first()
                .is_some_and(|&t| Some(t) == self.lm.tokenizer.bos_id)
        {
            ids.remove(0);
        }
        let logits = last_logits(self.lm, &ids, &mut cache)?;
        Ok((logits, cache))
    }
}

impl Labeller for LmLabeller<'_> {
    fn name(&self) -> String {
        match self.cot_tokens {
            None => self.lm.name.clone(),
            Some(n) => format!("{} (chain of thought, {n} tokens)", self.lm.name),
        }
    }

    fn p_first(&mut self, p: &Problem, first: &str, second: &str) -> Result<f64> {
        let (one, two) = label_ids(self.lm)?;
        let logits = match self.cot_tokens {
            None => {
                self.logits_after(&prompt_text(self.lm, p, first, second)?)?
                    .0
            }
            Some(max) => {
                let text = cot_prompt_text(self.lm, p, first, second)?;
                let (logits, mut cache) = self.logits_after(&text)?;
                let why = self.rationale(logits, &mut cache, max)?;
                let ending = self
                    .lm
                    .tokenizer
                    .encode(COT_ENDING, false)
                    .map_err(|e| data_err(e.to_string()))?;
                let ending: Vec<u32> = ending
                    .into_iter()
                    .filter(|&t| Some(t) != self.lm.tokenizer.bos_id)
                    .collect();
                let text = self
                    .lm
                    .tokenizer
                    .decode(&why, true)
                    .map_err(|e| data_err(e.to_string()))?;
                self.rationales.push(text.trim().to_string());
                last_logits(self.lm, &ending, &mut cache)?
            }
        };
        let (a, b) = (logits[one as usize] as f64, logits[two as usize] as f64);
        Ok(1.0 / (1.0 + (b - a).exp()))
    }

    /// The likelihood of each rating as a token string after `Rating: `: `2`…`9` are one digit
    /// token each; `10` is the token `1` followed by `0` (one more decoding step), and the rating
    /// `1` is the token `1` not followed by `0`. Normalised over the ten ratings.
    fn rating_probs(&mut self, p: &Problem, answer: &str) -> Result<[f64; 10]> {
        let key = (*p, answer.to_string());
        if let Some(r) = self.ratings.get(&key) {
            return Ok(*r);
        }
        let (first, mut cache) = self.logits_after(&rating_prompt_text(self.lm, p, answer)?)?;
        let next = last_logits(self.lm, &[self.digits[1]], &mut cache)?;
        let p_zero_after_one = log_softmax_at(&next, self.digits[0] as usize).exp();
        let mut lik = [0f64; 10];
        let lp1 = log_softmax_at(&first, self.digits[1] as usize).exp();
        lik[0] = lp1 * (1.0 - p_zero_after_one);
        for (r, slot) in lik.iter_mut().enumerate().take(9).skip(1) {
            *slot = log_softmax_at(&first, self.digits[r + 1] as usize).exp();
        }
        lik[9] = lp1 * p_zero_after_one;
        let z: f64 = lik.iter().sum();
        if !(z > 0.0 && z.is_finite()) {
            return Err(data_err(format!(
                "the labeller gave no probability to any rating 1–10 for {answer:?}"
            )));
        }
        for x in lik.iter_mut() {
            *x /= z;
        }
        self.ratings.insert(key, lik);
        Ok(lik)
    }
}
