//! The task: four-addend sums, demonstrations with planted step errors, the programmatic checker
//! and the step and outcome labels.

use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::task::{BOS, CharVocab, response_text};

pub const TERMS: usize = 4;
pub const MAX_TERM: u32 = 20;
/// Probability that a demonstration's step sum is off (by ±1 or ±2).
pub const PLANTED_ERROR: f64 = 0.12;
/// Longest solution the generator may write (tokens).
pub const MAX_SOLUTION: usize = 44;

/// One multi-step sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub terms: [u32; TERMS],
}

impl Chain {
    pub fn prompt(&self) -> String {
        let t: Vec<String> = self.terms.iter().map(|x| format!("{x:02}")).collect();
        format!("{}=", t.join("+"))
    }
    pub fn prompt_ids(&self) -> Vec<u32> {
        let mut v = vec![BOS];
        v.extend(CharVocab.encode(&self.prompt()).unwrap_or_default());
        v
    }
    pub fn answer(&self) -> u32 {
        self.terms.iter().sum()
    }
}

/// `n_train` and `n_test` distinct problems drawn by `seed`.
pub fn chains(seed: u64, n_train: usize, n_test: usize) -> (Vec<Chain>, Vec<Chain>) {
    let mut rng = SplitMix64::new(seed ^ 0xC4A1_0000_0000_0001);
    let mut seen = std::collections::HashSet::new();
    let mut all = Vec::new();
    let cap = (MAX_TERM as usize).pow(TERMS as u32);
    while all.len() < (n_train + n_test).min(cap) {
        let mut terms = [0u32; TERMS];
        for t in terms.iter_mut() {
            *t = 1 + rng.below(MAX_TERM as usize) as u32;
        }
        if seen.insert(terms) {
            all.push(Chain { terms });
        }
    }
    let test = all.split_off(all.len().saturating_sub(n_test));
    (all, test)
}

/// A demonstration with planted step errors (see the module header).
pub fn demonstration(c: &Chain, rng: &mut SplitMix64) -> String {
    let mut s = String::new();
    let mut prev = c.terms[0];
    for &y in &c.terms[1..] {
        let mut z = prev + y;
        if rng.next_f64() < PLANTED_ERROR {
            let d = [1i64, -1, 2, -2][rng.below(4)];
            z = (z as i64 + d).max(0) as u32;
        }
        s.push_str(&format!("{prev}+{y}={z};"));
        prev = z;
    }
    s.push_str(&format!("ans {prev}."));
    s
}

/// A solution as the checker sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Per step: the character index of its last character (`;`, or the answer step's last
    /// character) and whether it is correct.
    pub steps: Vec<(usize, bool)>,
    pub answer: Option<i64>,
    pub correct: bool,
}

/// Splits and checks a solution text (see the module header for the step rule).
pub fn check(c: &Chain, text: &str) -> Checked {
    let mut steps = Vec::new();
    let mut prev: Option<i64> = Some(c.terms[0] as i64);
    let mut pos = 0usize;
    let mut pieces: Vec<&str> = text.split(';').collect();
    let last = pieces.pop().unwrap_or("");
    let mut sums_ok = pieces.len() == TERMS - 1;
    for (k, p) in pieces.iter().enumerate() {
        pos += p.chars().count();
        let parsed = p.split_once('+').and_then(|(x, rest)| {
            let (y, z) = rest.split_once('=')?;
            Some((
                x.parse::<i64>().ok()?,
                y.parse::<i64>().ok()?,
                z.parse::<i64>().ok()?,
            ))
        });
        let ok = match parsed {
            Some((x, y, z)) => {
                let ok = Some(x) == prev
                    && c.terms.get(k + 1).map(|&t| t as i64) == Some(y)
                    && z == x + y;
                prev = Some(z);
                ok
            }
            None => {
                prev = None;
                sums_ok = false;
                false
            }
        };
        steps.push((pos, ok));
        pos += 1; // the ';'
    }
    let answer = last
        .strip_prefix("ans ")
        .and_then(|r| r.strip_suffix('.'))
        .and_then(|n| n.parse::<i64>().ok());
    if !last.is_empty() {
        let end = pos + last.chars().count() - 1;
        let ok = sums_ok && answer.is_some() && answer == prev;
        steps.push((end, ok));
    }
    Checked {
        steps,
        answer,
        correct: answer == Some(c.answer() as i64),
    }
}

/// A solution with the positions the verifier reads and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Labeled {
    pub ids: Vec<u32>,
    pub targets: Vec<(usize, f32)>,
}

/// Which supervision a verifier gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervision {
    Process,
    Outcome,
}

/// Labels a sampled solution for a PRM (one target per step) or an ORM (one at the last token).
pub fn label(c: &Chain, response: &[u32], sup: Supervision) -> Labeled {
    let mut ids = c.prompt_ids();
    let pl = ids.len();
    ids.extend_from_slice(response);
    let text = response_text(response);
    let ch = check(c, &text);
    let targets = match sup {
        Supervision::Outcome => vec![(ids.len() - 1, ch.correct as u8 as f32)],
        Supervision::Process => ch
            .steps
            .iter()
            .map(|&(p, ok)| ((pl + p).min(ids.len() - 1), ok as u8 as f32))
            .collect(),
    };
    Labeled { ids, targets }
}
