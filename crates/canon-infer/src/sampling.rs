//! Token sampling as GPT-2/GPT-3-era decoders do it, in llama.cpp's order:
//! repetition penalty (Keskar et al., 2019: divide positive logits, multiply negative ones, over the
//! last `repeat_last_n` tokens; then OpenAI's presence and frequency penalties over the same
//! window) → top-k (Fan et al., 2018) → nucleus/top-p (Holtzman et al., 2020:
//! the smallest set whose probability reaches p) → min-p (keep tokens with p ≥ min_p · p_max) →
//! temperature → a draw from the renormalised distribution. Temperature 0 is greedy (argmax; ties
//! go to the lowest id, as `torch.argmax`).

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::{InferError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    /// 1.0 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt included) the penalties look at.
    pub repeat_last_n: usize,
    /// OpenAI's presence penalty: subtracted once from the logit of every token in the window.
    #[serde(default)]
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted per occurrence of a token in the window.
    #[serde(default)]
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
            min_p: Some(0.05),
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 42,
        }
    }
}

impl SamplingConfig {
    /// Whether top-k, top-p or min-p cuts the candidates.
    fn truncates(&self) -> bool {
        self.top_k.is_some()
            || self.top_p.is_some_and(|p| p < 1.0)
            || self.min_p.is_some_and(|p| p > 0.0)
    }

    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(InferError::Sampling(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be ≥ 0, found {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("top-k must be ≥ 1 (omit it to disable)".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top-p must be in (0, 1], found {p}"));
        }
        if let Some(p) = self.min_p
            && !(0.0..=1.0).contains(&p)
        {
            return bad(format!("min-p must be in [0, 1], found {p}"));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad(format!(
                "repeat penalty must be > 0, found {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
    /// One row's adjusted logits: kept across calls (no allocation a token).
    buf: Vec<f32>,
    /// The untruncated draw's probabilities and block sums (`draw_unsorted`), kept likewise.
    probs: Vec<f32>,
    sums: Vec<f64>,
}

pub use canon_nn::ops::{argmax, log_softmax};

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(Self {
            cfg,
            rng,
            buf: Vec::new(),
            probs: Vec::new(),
            sums: Vec::new(),
        })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` given the ids so far (`history`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = &self.cfg;
        let penalties = c.repeat_last_n > 0
            && (c.repeat_penalty != 1.0 || c.presence_penalty != 0.0 || c.frequency_penalty != 0.0);
        if c.temperature <= 0.0 && !penalties {
            // Greedy with nothing to adjust: no copy of the logits.
            return canon_nn::ops::argmax_f32(logits) as u32;
        }
        if !penalties
            && !c.truncates()
            && let Some(id) = draw_unsorted(
                &mut self.rng,
                c.temperature,
                logits,
                logits,
                (&mut self.probs, &mut self.sums),
            )
        {
            // Untruncated with nothing to adjust: the logits read where they are.
            return id;
        }
        let mut l = std::mem::take(&mut self.buf);
        l.clear();
        l.extend_from_slice(logits);
        let id = self.pick(logits, history, &mut l);
        self.buf = l;
        id
    }

    /// `sample` past greedy-without-penalties, with `l` holding a copy of `logits` to adjust.
    fn pick(&mut self, logits: &[f32], history: &[u32], l: &mut [f32]) -> u32 {
        let c = &self.cfg;
        if c.repeat_penalty != 1.0 && c.repeat_last_n > 0 {
            let start = history.len().saturating_sub(c.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                if let Some(x) = l.get_mut(t as usize)
                    && seen.insert(t)
                {
                    *x = if *x > 0.0 {
                        *x / c.repeat_penalty
                    } else {
                        *x * c.repeat_penalty
                    };
                }
            }
        }
        if (c.presence_penalty != 0.0 || c.frequency_penalty != 0.0) && c.repeat_last_n > 0 {
            // As llama.cpp: over the same window, logit −= count·frequency + [count > 0]·presence.
            let start = history.len().saturating_sub(c.repeat_last_n);
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &t in &history[start..] {
                *counts.entry(t).or_default() += 1;
            }
            for (t, n) in counts {
                if let Some(x) = l.get_mut(t as usize) {
                    *x -= n as f32 * c.frequency_penalty + c.presence_penalty;
                }
            }
        }
        if c.temperature <= 0.0 {
            return canon_nn::ops::argmax_f32(l) as u32;
        }
        if !c.truncates()
            && let Some(id) = draw_unsorted(
                &mut self.rng,
                c.temperature,
                logits,
                l,
                (&mut self.probs, &mut self.sums),
            )
        {
            return id;
        }
        // Candidates sorted by logit, highest first (stable: lower id first on ties). Only those
        // within 40·max(1, T) of the largest logit are kept and sorted (a few dozen of a 49k or
        // 262k vocabulary, instead of all): the weight of any other, exp(−40) < 2^−57 of the
        // largest (which is 1), is below half an ulp of every sum and cumulative probability
        // below, which start at the largest weight (≥ 1, resp. end near 1), so adding it changes
        // no bit. Such a token could only be drawn where rounding left the cumulative sum below
        // the uniform draw; the last kept candidate is returned then.
        let top = canon_nn::fused::max8(l);
        let cut = if top.is_finite() {
            top - 40.0 * c.temperature.max(1.0)
        } else {
            f32::NEG_INFINITY
        };
        let mut cand: Vec<(u32, f32)> = l
            .iter()
            .enumerate()
            .filter(|(_, x)| !x.is_nan() && **x >= cut)
            .map(|(i, &x)| (i as u32, x))
            .collect();
        // Highest logit first, lower id first on ties (`total_cmp` order): only the top k need
        // sorting when top-k is on, and the order is strict, so selecting them first and sorting
        // those gives the candidates a full sort would.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        match c.top_k {
            Some(k) if k.max(1) < cand.len() => {
                cand.select_nth_unstable_by(k.max(1) - 1, order);
                cand.truncate(k.max(1));
                cand.sort_unstable_by(order);
            }
            _ => sort_candidates(&mut cand),
        }
        let probs = |cand: &[(u32, f32)], t: f32| -> Vec<f64> {
            let m = cand.first().map_or(0.0, |x| x.1) as f64;
            let e: Vec<f64> = cand
                .iter()
                .map(|x| ((x.1 as f64 - m) / t as f64).exp())
                .collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect()
        };
        if let Some(p) = c.top_p.filter(|&p| p < 1.0) {
            let pr = probs(&cand, 1.0);
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, q) in pr.iter().enumerate() {
                cum += q;
                if cum >= p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if let Some(mp) = c.min_p.filter(|&m| m > 0.0) {
            let pr = probs(&cand, 1.0);
            let pmax = pr.first().copied().unwrap_or(1.0);
            let keep = pr.iter().take_while(|&&q| q >= mp as f64 * pmax).count();
            cand.truncate(keep.max(1));
        }
        let pr = probs(&cand, c.temperature);
        let u: f64 = self.rng.random();
        let mut cum = 0.0;
        for (i, q) in pr.iter().enumerate() {
            cum += q;
            if u < cum {
                return cand[i].0;
            }
        }
        cand.last().map_or(0, |x| x.0)
    }
}

/// Tokens per block of the untruncated draw's cumulative sums.
const BLOCK: usize = 64;

/// Temperature sampling with no truncation: softmax(l / T) and an inverse-CDF draw in token
/// order, O(vocabulary) with no sort, in three vectorised passes
/// ([`canon_nn::fused::tempered_softmax_blocks`]). A token whose logit in `masked` is −∞ or NaN
/// (a constraint's mask) is never drawn. `None`, with `l` untouched, when no logit is finite
/// (the sorted path handles that case). `scratch` holds the probabilities and block sums.
///
/// The cumulative probabilities are summed per block of [`BLOCK`] tokens in eight f64 lanes,
/// then block by block, and the draw walks token by token only inside the block it lands in:
/// the probabilities and the random number are those of a token-by-token walk, and the sums
/// differ from its sums only by f64 rounding (below 1e-11 of the total for a 262k vocabulary),
/// so a seed draws the token the token-by-token walk draws except where the draw lands that
/// close to a boundary between two tokens.
fn draw_unsorted(
    rng: &mut StdRng,
    temperature: f32,
    masked: &[f32],
    l: &[f32],
    (probs, sums): (&mut Vec<f32>, &mut Vec<f64>),
) -> Option<u32> {
    if !canon_nn::fused::tempered_softmax_blocks(l, masked, 1.0 / temperature, BLOCK, probs, sums) {
        return None;
    }
    let u: f64 = rng.random();
    let live = |i: usize| masked.get(i).is_some_and(|x| *x > f32::NEG_INFINITY);
    let n = l.len().min(masked.len());
    let l = &probs[..n];
    // The probabilities sum to 1 up to rounding: scale the draw by their sum.
    let total: f64 = sums.iter().sum();
    let target = u * total;
    let mut before = 0.0f64;
    let mut last = None;
    for (b, &s) in sums.iter().enumerate() {
        if s > 0.0 && target < before + s {
            // The draw lands in this block: walk it token by token.
            let mut cum = before;
            let end = ((b + 1) * BLOCK).min(n);
            for (i, &p) in l.iter().enumerate().take(end).skip(b * BLOCK) {
                if p > 0.0 && live(i) {
                    cum += f64::from(p);
                    last = Some(i as u32);
                    if target < cum {
                        return last;
                    }
                }
            }
            // Rounding left the walk short of the draw: the block's last token.
            return last;
        }
        before += s;
        if s > 0.0 {
            last = (b * BLOCK..((b + 1) * BLOCK).min(n))
                .rev()
                .find(|&i| l[i] > 0.0 && live(i))
                .map(|i| i as u32)
                .or(last);
        }
    }
    last
}

/// Sorts candidates by logit, highest first, lower id first on ties: the order of
/// `b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))`, by one integer sort of packed keys (each key is
/// unique, so an unstable sort gives that order exactly).
fn sort_candidates(cand: &mut [(u32, f32)]) {
    // `total_cmp`'s order as unsigned integers, then flipped for highest first.
    let desc = |x: f32| {
        let b = x.to_bits();
        let asc = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
        !asc
    };
    let mut keys: Vec<u64> = cand
        .iter()
        .map(|&(id, x)| (u64::from(desc(x)) << 32) | u64::from(id))
        .collect();
    keys.sort_unstable();
    for (c, k) in cand.iter_mut().zip(keys) {
        let asc = !((k >> 32) as u32);
        let bits = if asc >> 31 == 1 {
            asc & 0x7FFF_FFFF
        } else {
            !asc
        };
        *c = (k as u32, f32::from_bits(bits));
    }
}

/// The chosen token's log-probability under `logits` (temperature 1, before any truncation) and
/// the `k` most likely alternatives, most probable first (ties: lower id first).
pub(crate) fn token_logprob(
    tok: &canon_text::Tokenizer,
    logits: &[f32],
    next: u32,
    k: usize,
) -> crate::Result<crate::TokenLogprob> {
    let ls = log_softmax(logits);
    let mut order: Vec<usize> = (0..ls.len()).collect();
    let k = k.min(ls.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| ls[b].total_cmp(&ls[a]));
    }
    order.truncate(k);
    order.sort_by(|&a, &b| ls[b].total_cmp(&ls[a]).then(a.cmp(&b)));
    Ok(crate::TokenLogprob {
        token: next,
        text: tok.piece(next)?,
        logprob: ls[next as usize],
        top: order
            .iter()
            .map(|&i| Ok((i as u32, tok.piece(i as u32)?, ls[i])))
            .collect::<crate::Result<_>>()?,
    })
}

#[cfg(test)]
mod tests;
