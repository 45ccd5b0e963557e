//! The preference task: two-number addition with a programmatic gold judge.
//!
//! A prompt is `"aa+bb="` with `a, b ∈ [0, 50)` written with two digits (every prompt has the same
//! length, so a batch of rollouts decodes in lock-step). The demonstrations the SFT policy learns
//! from are deliberately mixed, as crowd demonstrations are: a concise correct answer `"42."`, a
//! verbose correct one `"sum is 42."`, a wrong number (off by one or by ten) in either form, or an
//! answer without the closing period. The policy therefore starts as a mixture, and preferences can
//! move it.
//!
//! The gold judge scores a response on three checks, in order of weight:
//! `2·correct + 1·on_format + 0.5·concise`, where on-format means `(sum is )?<digits>.` and nothing
//! else, correct means on-format with the right number, concise means on-format without the
//! `sum is ` preamble. It labels training pairs (standing in for the labellers) and scores test
//! outputs (standing in for the evaluators); nothing else sees it.
//!
//! The 2,500 prompts are split once by a seeded shuffle into train and test (`TEST_PROMPTS`).

use canon_nn::SplitMix64;

use crate::{Result, data_err};

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
const CHARS: &str = " +-=.;:?0123456789abcdefghijklmnopqrstuvwxyz\n";

/// A character vocabulary: three control ids, then one id per character of `CHARS`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CharVocab;

impl CharVocab {
    pub fn size(&self) -> usize {
        3 + CHARS.chars().count()
    }

    /// Ids of `text` (no BOS/EOS). Errors on a character outside the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                CHARS
                    .chars()
                    .position(|x| x == c)
                    .map(|i| i as u32 + 3)
                    .ok_or_else(|| {
                        data_err(format!(
                            "character {c:?} is outside the task vocabulary (expected one of {CHARS:?})"
                        ))
                    })
            })
            .collect()
    }

    /// Text of `ids`, stopping at EOS; control ids are dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let chars: Vec<char> = CHARS.chars().collect();
        let mut s = String::new();
        for &i in ids {
            if i == EOS {
                break;
            }
            if let Some(&c) = (i as usize).checked_sub(3).and_then(|k| chars.get(k)) {
                s.push(c);
            }
        }
        s
    }
}

/// Operands are drawn from `[0, MAX_OPERAND)`.
pub const MAX_OPERAND: u32 = 50;
/// Held-out prompts (the rest are for training).
pub const TEST_PROMPTS: usize = 500;
/// Longest response the policy may write (tokens, EOS included).
pub const MAX_RESPONSE: usize = 12;

/// One addition prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub a: u32,
    pub b: u32,
}

impl Problem {
    pub fn prompt(&self) -> String {
        format!("{:02}+{:02}=", self.a, self.b)
    }
    /// BOS then the prompt's characters.
    pub fn prompt_ids(&self) -> Vec<u32> {
        let mut v = vec![BOS];
        // The prompt alphabet is digits, '+' and '=': always inside the vocabulary.
        v.extend(CharVocab.encode(&self.prompt()).unwrap_or_default());
        v
    }
    pub fn answer(&self) -> u32 {
        self.a + self.b
    }
}

/// All prompts, split by a seeded shuffle: (train, test).
pub fn split(seed: u64) -> (Vec<Problem>, Vec<Problem>) {
    let mut all: Vec<Problem> = (0..MAX_OPERAND)
        .flat_map(|a| (0..MAX_OPERAND).map(move |b| Problem { a, b }))
        .collect();
    let mut rng = SplitMix64::new(seed ^ 0x5EED_A11C_0000_0001);
    for i in (1..all.len()).rev() {
        let j = rng.below(i + 1);
        all.swap(i, j);
    }
    let test = all.split_off(all.len() - TEST_PROMPTS);
    (all, test)
}

/// The gold judge's verdict on one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub on_format: bool,
    pub correct: bool,
    pub concise: bool,
}

impl Verdict {
    /// `2·correct + 1·on_format + 0.5·concise`.
    pub fn score(&self) -> f64 {
        2.0 * self.correct as u8 as f64
            + self.on_format as u8 as f64
            + 0.5 * self.concise as u8 as f64
    }
}

/// The gold judge (see the module header).
pub fn judge(p: &Problem, response: &str) -> Verdict {
    let (body, verbose) = match response.strip_prefix("sum is ") {
        Some(rest) => (rest, true),
        None => (response, false),
    };
    let number = body.strip_suffix('.');
    let on_format = number
        .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|c| c.is_ascii_digit()));
    let correct = on_format && number.and_then(|n| n.parse::<u32>().ok()) == Some(p.answer());
    Verdict {
        on_format,
        correct,
        concise: on_format && !verbose,
    }
}

/// One demonstration for `p`, drawn from the mixture of the module header:
/// 45% concise correct, 25% verbose correct, 20% wrong number (either form), 10% no period.
pub fn demonstration(p: &Problem, rng: &mut SplitMix64) -> String {
    let c = p.answer();
    let u = rng.next_f64();
    if u < 0.45 {
        format!("{c}.")
    } else if u < 0.70 {
        format!("sum is {c}.")
    } else if u < 0.90 {
        let delta = [1i64, -1, 10, -10][rng.below(4)];
        let w = (c as i64 + delta).max(0) as u32;
        let w = if w == c { c + 1 } else { w };
        if rng.next_f64() < 0.5 {
            format!("{w}.")
        } else {
            format!("sum is {w}.")
        }
    } else {
        format!("{c}")
    }
}

/// Response ids of a text: its characters then EOS.
pub fn response_ids(text: &str) -> Result<Vec<u32>> {
    let mut v = CharVocab.encode(text)?;
    v.push(EOS);
    Ok(v)
}

/// Text of response ids (up to EOS); `None` when the response never ended (no EOS), which the
/// judge sees as off-format.
pub fn response_text(ids: &[u32]) -> String {
    let s = CharVocab.decode(ids);
    if ids.contains(&EOS) {
        s
    } else {
        format!("{s}?")
    }
}

/// Win rate of `a` over `b` on paired scores: wins + ½ ties, over the pairs.
pub fn win_rate(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() {
        return f64::NAN;
    }
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            if x > y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            }
        })
        .sum();
    s / a.len().min(b.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_checks_correct_format_concise() {
        let p = Problem { a: 12, b: 30 };
        assert_eq!(judge(&p, "42.").score(), 3.5);
        assert_eq!(judge(&p, "sum is 42.").score(), 3.0);
        assert_eq!(judge(&p, "43.").score(), 1.5);
        assert_eq!(judge(&p, "42").score(), 0.0);
        assert_eq!(judge(&p, "42.?").score(), 0.0);
        assert_eq!(judge(&p, "sum is .").score(), 0.0);
        assert_eq!(judge(&p, "").score(), 0.0);
    }

    #[test]
    fn split_is_disjoint_and_seeded() {
        let (tr, te) = split(1);
        assert_eq!(te.len(), TEST_PROMPTS);
        assert_eq!(tr.len() + te.len(), (MAX_OPERAND * MAX_OPERAND) as usize);
        assert!(te.iter().all(|p| !tr.contains(p)));
        assert_eq!(split(1).1, te);
        assert_ne!(split(2).1, te);
    }

    #[test]
    fn vocab_round_trip_and_bad_char() {
        let v = CharVocab;
        let ids = v.encode("sum is 42.").unwrap();
        assert_eq!(v.decode(&ids), "sum is 42.");
        assert!(v.encode("SUM").is_err());
        assert_eq!(response_text(&response_ids("7.").unwrap()), "7.");
        assert_eq!(
            judge(
                &Problem { a: 3, b: 4 },
                &response_text(&v.encode("7.").unwrap())
            )
            .score(),
            0.0
        );
    }

    #[test]
    fn demonstrations_mix_styles() {
        let mut rng = SplitMix64::new(3);
        let p = Problem { a: 20, b: 5 };
        let scores: Vec<f64> = (0..2000)
            .map(|_| judge(&p, &demonstration(&p, &mut rng)).score())
            .collect();
        let frac = |s: f64| scores.iter().filter(|&&x| x == s).count() as f64 / 2000.0;
        assert!((frac(3.5) - 0.45).abs() < 0.04);
        assert!((frac(3.0) - 0.25).abs() < 0.04);
        assert!((frac(0.0) - 0.10).abs() < 0.03);
    }

    #[test]
    fn win_rate_counts_ties_half() {
        assert_eq!(win_rate(&[3.0, 1.0, 2.0, 0.0], &[1.0, 1.0, 3.0, 0.0]), 0.5);
    }
}
