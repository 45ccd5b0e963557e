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
    /// One row's adjusted logits, then probabilities: kept across calls (no allocation a token).
    buf: Vec<f32>,
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
        let truncates = c.top_k.is_some()
            || c.top_p.is_some_and(|p| p < 1.0)
            || c.min_p.is_some_and(|p| p > 0.0);
        if !truncates && let Some(id) = draw_unsorted(&mut self.rng, c.temperature, logits, l) {
            return id;
        }
        // Candidates sorted by logit, highest first (stable: lower id first on ties). Only those
        // within 40·max(1, T) of the largest logit are kept and sorted (a few dozen of a 49k or
        // 262k vocabulary, instead of all): the weight of any other, exp(−40) < 2^−57 of the
        // largest (which is 1), is below half an ulp of every sum and cumulative probability
        // below, which start at the largest weight (≥ 1, resp. end near 1), so adding it changes
        // no bit. Such a token could only be drawn where rounding left the cumulative sum below
        // the uniform draw; the last kept candidate is returned then.
        let top = max_ignoring_nan(l);
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

/// Temperature sampling with no truncation: softmax(l / T) in one vectorised pass and an
/// inverse-CDF draw in token order, O(vocabulary) with no sort. A token whose logit in `masked` is
/// −∞ or NaN (a constraint's mask) is never drawn. `None`, with `l` untouched, when no logit is
/// finite (the sorted path handles that case).
///
/// The cumulative probabilities are summed per block of [`BLOCK`] tokens in eight f64 lanes
/// (vectorised), then block by block, and the draw walks token by token only inside the block it
/// lands in: the probabilities and the random number are those of a token-by-token walk, and
/// the sums differ from its sums only by f64 rounding (below 1e-11 of the total for a 262k
/// vocabulary), so a seed draws the token the token-by-token walk draws except where the draw
/// lands that close to a boundary between two tokens.
fn draw_unsorted(rng: &mut StdRng, temperature: f32, masked: &[f32], l: &mut [f32]) -> Option<u32> {
    let top = max_ignoring_nan(l);
    if !top.is_finite() {
        return None;
    }
    let inv_t = 1.0 / temperature;
    for x in l.iter_mut() {
        *x = if x.is_nan() {
            f32::NEG_INFINITY
        } else {
            *x * inv_t
        };
    }
    canon_nn::fused::softmax_inplace(l);
    let u: f64 = rng.random();
    let live = |i: usize| masked.get(i).is_some_and(|x| *x > f32::NEG_INFINITY);
    // A token's probability if it can be drawn, else 0 (vectorisable: a compare and a select).
    let weight = |p: f32, m: f32| -> f64 {
        if m > f32::NEG_INFINITY {
            f64::from(p)
        } else {
            0.0
        }
    };
    let n = l.len().min(masked.len());
    let (l, masked) = (&l[..n], &masked[..n]);
    let sums: Vec<f64> = l
        .chunks(BLOCK)
        .zip(masked.chunks(BLOCK))
        .map(|(p, m)| {
            let mut acc = [0.0f64; 8];
            let (pc, mc) = (p.chunks_exact(8), m.chunks_exact(8));
            let tail: f64 = pc
                .remainder()
                .iter()
                .zip(mc.remainder())
                .map(|(&p, &m)| weight(p, m))
                .sum();
            for (p8, m8) in pc.zip(mc) {
                for k in 0..8 {
                    acc[k] += weight(p8[k], m8[k]);
                }
            }
            acc.iter().sum::<f64>() + tail
        })
        .collect();
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

/// The largest non-NaN value (−∞ for none), in eight lanes.
fn max_ignoring_nan(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let it = x.chunks_exact(8);
    let tail = it
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for c in it {
        for k in 0..8 {
            // `f32::max` ignores a NaN operand.
            acc[k] = acc[k].max(c[k]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.max(b))
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
mod tests {
    use super::*;

    /// The sampler as it was before candidates far below the top were dropped: every candidate
    /// sorted. Same config handling (no penalties here), same random stream.
    fn sample_all_sorted(cfg: &SamplingConfig, rng: &mut StdRng, l: &[f32]) -> u32 {
        let mut cand: Vec<(u32, f32)> = l
            .iter()
            .enumerate()
            .filter(|(_, x)| !x.is_nan())
            .map(|(i, &x)| (i as u32, x))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = cfg.top_k {
            cand.truncate(k.max(1));
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
        if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
            let pr = probs(&cand, 1.0);
            let (mut cum, mut keep) = (0.0, cand.len());
            for (i, q) in pr.iter().enumerate() {
                cum += q;
                if cum >= p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if let Some(mp) = cfg.min_p.filter(|&m| m > 0.0) {
            let pr = probs(&cand, 1.0);
            let pmax = pr.first().copied().unwrap_or(1.0);
            let keep = pr.iter().take_while(|&&q| q >= mp as f64 * pmax).count();
            cand.truncate(keep.max(1));
        }
        let pr = probs(&cand, cfg.temperature);
        let u: f64 = rng.random();
        let mut cum = 0.0;
        for (i, q) in pr.iter().enumerate() {
            cum += q;
            if u < cum {
                return cand[i].0;
            }
        }
        cand.last().map_or(0, |x| x.0)
    }

    /// Dropping the candidates 40·max(1, T) below the top before sorting draws exactly the tokens
    /// the full sort drew, seed for seed, on wide logit ranges (most of the vocabulary dropped),
    /// flat ones (nothing dropped) and with every truncation option.
    #[test]
    fn dropping_negligible_candidates_draws_the_same_tokens() {
        let mut noise = StdRng::seed_from_u64(9);
        // (Without top-k, top-p or min-p, sampling takes the unsorted path: see
        // `untruncated_draws_follow_softmax_and_skip_masked_tokens`.)
        let configs = [
            (2.0, None, None, Some(1e-12)),
            (0.8, None, Some(0.95), None),
            (1.0, Some(40), Some(0.9), Some(0.05)),
            (0.3, None, None, Some(0.01)),
            (5.0, Some(3), None, None),
            (1.0, None, Some(0.999_999), None),
        ];
        let mut dropped = 0usize;
        for (ci, &(temperature, top_k, top_p, min_p)) in configs.iter().enumerate() {
            for spread in [0.5f32, 4.0, 20.0, 60.0] {
                let cfg = SamplingConfig {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    repeat_penalty: 1.0,
                    seed: 1000 + ci as u64,
                    ..SamplingConfig::default()
                };
                let mut fast = Sampler::new(cfg.clone()).unwrap();
                let mut rng = StdRng::seed_from_u64(cfg.seed);
                for _ in 0..200 {
                    let l: Vec<f32> = (0..2000)
                        .map(|_| spread * (noise.random::<f32>() * 2.0 - 1.0))
                        .collect();
                    let top = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    dropped += l
                        .iter()
                        .filter(|&&x| x < top - 40.0 * temperature.max(1.0))
                        .count();
                    assert_eq!(
                        fast.sample(&l, &[]),
                        sample_all_sorted(&cfg, &mut rng, &l),
                        "config {ci}, spread {spread}"
                    );
                }
            }
        }
        assert!(
            dropped > 100_000,
            "the test must drop candidates: {dropped}"
        );
    }

    /// The untruncated draw as it was before the block sums: the same probabilities, summed
    /// token by token.
    fn draw_token_by_token(rng: &mut StdRng, t: f32, masked: &[f32]) -> Option<u32> {
        let mut l = masked.to_vec();
        let top = l
            .iter()
            .filter(|x| !x.is_nan())
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        if !top.is_finite() {
            return None;
        }
        for x in l.iter_mut() {
            *x = if x.is_nan() {
                f32::NEG_INFINITY
            } else {
                *x * (1.0 / t)
            };
        }
        canon_nn::fused::softmax_inplace(&mut l);
        let u: f64 = rng.random();
        let live = |i: usize| masked.get(i).is_some_and(|x| *x > f32::NEG_INFINITY);
        let total: f64 = l
            .iter()
            .enumerate()
            .filter(|&(i, _)| live(i))
            .map(|(_, &p)| p as f64)
            .sum();
        let target = u * total;
        let (mut cum, mut last) = (0.0f64, None);
        for (i, &p) in l.iter().enumerate() {
            if p > 0.0 && live(i) {
                cum += p as f64;
                last = Some(i as u32);
                if target < cum {
                    return last;
                }
            }
        }
        last
    }

    /// Seed for seed, the block-summed draw picks the token the token-by-token walk picks: on
    /// vocabularies that do and do not fill the last block, wide and flat logits, masked and NaN
    /// logits, one live token, none.
    #[test]
    fn block_sums_draw_the_tokens_of_the_token_by_token_walk() {
        let mut noise = StdRng::seed_from_u64(21);
        let mut draws = 0;
        for &n in &[1usize, 7, 64, 65, 1000, 49_152] {
            for spread in [0.1f32, 3.0, 30.0] {
                for t in [0.3f32, 0.8, 1.0, 2.5] {
                    let seed = noise.random::<u64>();
                    let (mut a, mut b) = (StdRng::seed_from_u64(seed), StdRng::seed_from_u64(seed));
                    for round in 0..20 {
                        let mut l: Vec<f32> = (0..n)
                            .map(|_| spread * (noise.random::<f32>() * 2.0 - 1.0))
                            .collect();
                        if round % 3 == 1 {
                            for (i, x) in l.iter_mut().enumerate() {
                                if i % 5 != 2 {
                                    *x = if i % 7 == 0 {
                                        f32::NAN
                                    } else {
                                        f32::NEG_INFINITY
                                    };
                                }
                            }
                        }
                        let mut buf = l.clone();
                        assert_eq!(
                            draw_unsorted(&mut a, t, &l, &mut buf),
                            draw_token_by_token(&mut b, t, &l),
                            "n {n} spread {spread} T {t} round {round}"
                        );
                        draws += 1;
                    }
                }
            }
        }
        assert!(draws > 1000);
        let none = [f32::NEG_INFINITY, f32::NAN];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            draw_unsorted(&mut rng, 1.0, &none, &mut none.to_vec()),
            None
        );
    }

    #[test]
    fn presence_and_frequency_penalties_subtract_per_window_counts() {
        // Token 0 leads by 1.5; seen twice in the window.
        let logits = [3.0f32, 1.5, 1.0];
        let greedy = |presence: f32, frequency: f32| {
            let mut s = Sampler::new(SamplingConfig {
                presence_penalty: presence,
                frequency_penalty: frequency,
                ..SamplingConfig::greedy()
            })
            .unwrap();
            s.sample(&logits, &[0, 0, 2])
        };
        assert_eq!(greedy(0.0, 0.0), 0);
        assert_eq!(greedy(1.0, 0.0), 0); // 3 − 1 = 2 > 1.5
        assert_eq!(greedy(2.0, 0.0), 1); // 3 − 2 = 1 < 1.5
        assert_eq!(greedy(0.0, 0.8), 1); // 3 − 2·0.8 = 1.4 < 1.5
        assert_eq!(greedy(-2.0, 0.0), 0);
    }

    fn cfg(t: f32) -> SamplingConfig {
        SamplingConfig {
            temperature: t,
            top_k: None,
            top_p: None,
            min_p: None,
            ..SamplingConfig::greedy()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(cfg(0.0)).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_draws_and_frequencies_follow_softmax() {
        let logits = [1.0f32, 2.0, 0.5, 1.5];
        let draw = |seed| {
            let mut s = Sampler::new(SamplingConfig { seed, ..cfg(1.0) }).unwrap();
            (0..20000)
                .map(|_| s.sample(&logits, &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let p: Vec<f32> = log_softmax(&logits).iter().map(|x| x.exp()).collect();
        for (i, &pi) in p.iter().enumerate() {
            let f = a.iter().filter(|&&t| t as usize == i).count() as f32 / a.len() as f32;
            assert!(
                (f - pi).abs() < 0.015,
                "token {i}: frequency {f} vs probability {pi}"
            );
        }
    }

    #[test]
    fn untruncated_draws_follow_softmax_and_skip_masked_tokens() {
        // Temperature 0.5 doubles the logit gaps.
        let logits = [1.0f32, 2.0, f32::NEG_INFINITY, 0.5, f32::NAN, 1.5];
        let mut s = Sampler::new(SamplingConfig {
            seed: 3,
            ..cfg(0.5)
        })
        .unwrap();
        let n = 40_000;
        let draws: Vec<u32> = (0..n).map(|_| s.sample(&logits, &[])).collect();
        let live = [0usize, 1, 3, 5];
        let z: f64 = live.iter().map(|&i| (2.0 * logits[i] as f64).exp()).sum();
        for (i, &logit) in logits.iter().enumerate() {
            let f = draws.iter().filter(|&&t| t as usize == i).count() as f64 / n as f64;
            let p = if live.contains(&i) {
                (2.0 * logit as f64).exp() / z
            } else {
                0.0
            };
            assert!((f - p).abs() < 0.01, "token {i}: frequency {f} vs {p}");
            if p == 0.0 {
                assert_eq!(f, 0.0, "masked token {i} was drawn");
            }
        }
        // One finite logit among masked ones: always that one, whatever the temperature.
        let mut s = Sampler::new(cfg(3.0)).unwrap();
        let one = [f32::NEG_INFINITY, -50.0, f32::NEG_INFINITY];
        assert!((0..100).all(|_| s.sample(&one, &[]) == 1));
        // No finite logit: the sorted path's answer (the last candidate), no panic.
        let none = [f32::NEG_INFINITY; 3];
        let _ = s.sample(&none, &[]);
    }

    #[test]
    fn packed_key_sort_orders_as_total_cmp_then_id() {
        let mut noise = StdRng::seed_from_u64(5);
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-30,
            -1e-30,
        ];
        for round in 0..50 {
            let mut cand: Vec<(u32, f32)> = (0..500u32)
                .map(|i| {
                    let x = match noise.random_range(0..4) {
                        0 => specials[noise.random_range(0..specials.len())],
                        // Few distinct values: many ties.
                        1 => (noise.random_range(0..5) as f32) - 2.0,
                        _ => (noise.random::<f32>() - 0.5) * 100.0,
                    };
                    (i * 7 % 503 + round, x)
                })
                .collect();
            let mut want = cand.clone();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            sort_candidates(&mut cand);
            assert_eq!(
                cand.iter()
                    .map(|c| (c.0, c.1.to_bits()))
                    .collect::<Vec<_>>(),
                want.iter()
                    .map(|c| (c.0, c.1.to_bits()))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_support() {
        let logits = [5.0f32, 4.0, 3.0, 0.0, -2.0];
        let support = |c: SamplingConfig| {
            let mut s = Sampler::new(c).unwrap();
            let mut seen: Vec<u32> = (0..3000).map(|_| s.sample(&logits, &[])).collect();
            seen.sort();
            seen.dedup();
            seen
        };
        assert_eq!(
            support(SamplingConfig {
                top_k: Some(2),
                ..cfg(1.0)
            }),
            vec![0, 1]
        );
        // p(0) = 0.6652, p(0)+p(1) = 0.9099: top-p 0.9 keeps two tokens.
        assert_eq!(
            support(SamplingConfig {
                top_p: Some(0.9),
                ..cfg(1.0)
            }),
            vec![0, 1]
        );
        // min-p 0.2: p(2)/p(0) = e^-2 = 0.135 < 0.2, p(1)/p(0) = 0.37.
        assert_eq!(
            support(SamplingConfig {
                min_p: Some(0.2),
                ..cfg(1.0)
            }),
            vec![0, 1]
        );
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = Sampler::new(SamplingConfig {
            repeat_penalty: 2.0,
            ..cfg(0.0)
        })
        .unwrap();
        // Token 0 (3.0 → 1.5) loses to token 1 (2.0) once it was seen.
        assert_eq!(s.sample(&[3.0, 2.0], &[0]), 1);
        assert_eq!(s.sample(&[3.0, 2.0], &[]), 0);
        // Negative: -1.0 → -2.0 < -1.5.
        assert_eq!(s.sample(&[-1.0, -1.5], &[0]), 1);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(
            Sampler::new(SamplingConfig {
                top_p: Some(1.5),
                ..cfg(1.0)
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingConfig {
                top_k: Some(0),
                ..cfg(1.0)
            })
            .is_err()
        );
        assert!(Sampler::new(cfg(-1.0)).is_err());
    }
}
