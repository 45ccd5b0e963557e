//! RLAIF (Lee et al., 2023, paper 29): an off-the-shelf LLM as the preference labeller.
//!
//! The labeller sees a preamble (what makes an answer good), the question and two candidate
//! answers, then the ending `Preferred answer: `; the preference is the softmax over just the
//! logits of the label tokens `1` and `2` at that position. Position bias is removed as the paper
//! does: score both orders and average, `P(A ≻ B) = (P₁(first | A,B) + P₂(second | B,A)) / 2`
//! ([`crate::losses::debiased_preference`]).
//!
//! Reported: the labeller's agreement with the gold judge (accuracy of its arg-max preference on
//! pairs the judge ranks strictly) from one order and after the order swap.

use candle_core::{Device, Tensor};
use canon_models::{LoadedLm, Positions};
use canon_text::Message;
use serde::{Deserialize, Serialize};

use crate::losses::debiased_preference;
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

/// The labelling prompt for one ordered pair, as token ids.
pub fn prompt_ids(lm: &LoadedLm, p: &Problem, first: &str, second: &str) -> Result<Vec<u32>> {
    let q = format!("What is {} + {}?", p.a, p.b);
    let user = format!(
        "A good answer gives the correct sum, written as just the number followed by a period \
         (for example \"12.\"), with no other words.\n\nQuestion: {q}\nAnswer 1: {first}\n\
         Answer 2: {second}\n\nWhich answer is better? Reply with 1 or 2."
    );
    let msgs = [Message::new("user", user)];
    let text = match &lm.chat_template {
        Some(t) => t.render(&msgs, true).map_err(|e| data_err(e.to_string()))?,
        None => format!("{}\n", msgs[0].content),
    };
    lm.tokenizer
        .encode(&format!("{text}Preferred answer: "), true)
        .map_err(|e| data_err(e.to_string()))
}

/// `P(first answer is better)` = softmax over the logits of `1` and `2`.
pub fn p_first(lm: &LoadedLm, ids: &[u32]) -> Result<f64> {
    let (one, two) = label_ids(lm)?;
    let mut cache = lm.model.new_cache();
    let t = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    let logits: Vec<f32> = lm
        .model
        .forward(&t, &mut cache, Positions::Last)?
        .flatten_all()?
        .to_vec1()?;
    let (a, b) = (logits[one as usize] as f64, logits[two as usize] as f64);
    Ok(1.0 / (1.0 + (b - a).exp()))
}

/// One labelled pair: the gold winner is `a`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiLabel {
    pub problem: Problem,
    pub a: String,
    pub b: String,
    /// `P(first wins)` with `a` shown first, and with `b` shown first.
    pub p_ab: f64,
    pub p_ba: f64,
}

impl AiLabel {
    /// The debiased `P(a ≻ b)`.
    pub fn debiased(&self) -> f64 {
        debiased_preference(self.p_ab, self.p_ba)
    }
}

/// Agreement with the gold judge: (single order with the gold winner shown first on even pairs
/// and second on odd ones, both orders averaged).
pub fn agreement(labels: &[AiLabel]) -> Option<(f64, f64)> {
    if labels.is_empty() {
        return None;
    }
    let n = labels.len() as f64;
    let single = labels
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            if i % 2 == 0 {
                l.p_ab > 0.5
            } else {
                l.p_ba < 0.5
            }
        })
        .count() as f64
        / n;
    let swapped = labels.iter().filter(|l| l.debiased() > 0.5).count() as f64 / n;
    Some((single, swapped))
}

/// Labels every pair (the gold winner `a` first) in both orders.
pub fn label_pairs(
    lm: &LoadedLm,
    pairs: &[(Problem, String, String)],
    on_pair: &mut dyn FnMut(usize),
) -> Result<Vec<AiLabel>> {
    let mut out = Vec::with_capacity(pairs.len());
    for (i, (p, a, b)) in pairs.iter().enumerate() {
        let p_ab = p_first(lm, &prompt_ids(lm, p, a, b)?)?;
        let p_ba = p_first(lm, &prompt_ids(lm, p, b, a)?)?;
        out.push(AiLabel {
            problem: *p,
            a: a.clone(),
            b: b.clone(),
            p_ab,
            p_ba,
        });
        on_pair(i + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(p_ab: f64, p_ba: f64) -> AiLabel {
        AiLabel {
            problem: Problem { a: 1, b: 2 },
            a: "3.".into(),
            b: "4.".into(),
            p_ab,
            p_ba,
        }
    }

    #[test]
    fn a_first_position_labeller_agrees_half_the_time_in_one_order_and_never_after_the_swap() {
        // Always prefers whatever is shown first, at 0.9: one order is right on the even pairs
        // only; after the swap every pair is a 0.5 tie, which is not agreement.
        let labels: Vec<AiLabel> = (0..10).map(|_| l(0.9, 0.9)).collect();
        let (single, swapped) = agreement(&labels).unwrap();
        assert_eq!(single, 0.5);
        assert_eq!(swapped, 0.0);
        assert!((labels[0].debiased() - 0.5).abs() < 1e-12);
        // A labeller that knows the answer agrees in both.
        let good: Vec<AiLabel> = (0..4).map(|_| l(0.8, 0.3)).collect();
        assert_eq!(agreement(&good).unwrap(), (1.0, 1.0));
        assert!(agreement(&[]).is_none());
    }
}
