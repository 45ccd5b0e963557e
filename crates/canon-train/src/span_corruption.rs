//! T5's span-corruption objective (Raffel et al., 2020, paper 8, §3.1.4 and §3.3.4; the code is
//! `random_spans_noise_mask` and `span_corruption` of `t5/data/preprocessors.py`).
//!
//! Of a sequence of `L` tokens, `num_noise = round(L · density)` (clipped to `[1, L − 1]`) tokens
//! are dropped, in `num_spans = max(1, round(num_noise / mean_span))` spans. The noise tokens and the
//! remaining tokens are each split into `num_spans` random non-empty segments (a uniformly random
//! composition: `num_spans − 1` distinct cut points), and the sequence is laid out as
//! non-noise, noise, non-noise, noise, … (so it starts with kept text and ends with a dropped span).
//! The input replaces span `k` by sentinel `k` and ends with EOS; the target lists sentinel `k`
//! followed by span `k`'s tokens for every span, then one more sentinel and EOS:
//!
//!   original  `Thank you for inviting me to your party last week .`
//!   input     `Thank you <X0> me to your party <X1> week . </s>`   (spans "for inviting", "last")
//!   target    `<X0> for inviting <X1> last <X2> </s>`
//!
//! (The closing sentinel is the paper's Figure 2; T5's code omits it when the text ends in noise.)
//! Sentinel `k` is `<extra_id_k>`, ids counting down from the top of the vocabulary: `first − k`.
//! Rounding is half-to-even, as Python's `round` and TensorFlow's `tf.round`. When `L` is so short
//! that `num_spans` non-empty segments cannot be formed, `num_spans` is lowered to what fits.

use canon_nn::SplitMix64;

use crate::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanConfig {
    /// Fraction of tokens dropped (0.15).
    pub noise_density: f64,
    /// Mean length of a dropped span (3).
    pub mean_span: f64,
}

impl Default for SpanConfig {
    fn default() -> Self {
        Self {
            noise_density: 0.15,
            mean_span: 3.0,
        }
    }
}

impl SpanConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.noise_density > 0.0 && self.noise_density < 1.0) {
            return Err(format!(
                "noise_density must be in (0, 1), found {}",
                self.noise_density
            ));
        }
        if !(self.mean_span >= 1.0 && self.mean_span.is_finite()) {
            return Err(format!("mean_span must be ≥ 1, found {}", self.mean_span));
        }
        Ok(())
    }

    /// `(num_noise, num_spans)` for a sequence of `len ≥ 2` tokens.
    pub fn counts(&self, len: usize) -> (usize, usize) {
        let noise = ((len as f64 * self.noise_density).round_ties_even() as usize)
            .clamp(1, len.saturating_sub(1).max(1));
        let spans = ((noise as f64 / self.mean_span).round_ties_even() as usize).max(1);
        // Each of the `spans` noise and non-noise segments needs at least one token.
        let spans = spans.min(noise).min(len - noise).max(1);
        (noise, spans)
    }

    /// Lengths of the corrupted input and target for `len` original tokens (EOS included).
    pub fn output_lengths(&self, len: usize) -> (usize, usize) {
        let (noise, spans) = self.counts(len);
        (len - noise + spans + 1, noise + spans + 2)
    }

    /// The longest original length whose input and target both fit in `max_len` tokens.
    pub fn raw_length_for(&self, max_len: usize) -> Option<usize> {
        let mut best = None;
        for len in 2..=4 * max_len + 8 {
            let (i, t) = self.output_lengths(len);
            if i <= max_len && t <= max_len {
                best = Some(len);
            }
        }
        best
    }
}

/// The ids of the sentinel tokens: `<extra_id_k>` is `first − k`, for `k < count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sentinels {
    pub first: u32,
    pub count: usize,
}

impl Sentinels {
    /// T5's layout: the `count` highest ids of a vocabulary of `vocab_size`.
    pub fn top_of_vocab(vocab_size: usize, count: usize) -> Self {
        Self {
            first: vocab_size.saturating_sub(1) as u32,
            count,
        }
    }
    pub fn id(&self, k: usize) -> u32 {
        self.first - k as u32
    }
    /// `Some(k)` when `id` is sentinel `k`.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        let k = self.first.checked_sub(id)? as usize;
        (k < self.count).then_some(k)
    }
}

/// A uniformly random composition of `n` items into `parts` non-empty segments (their lengths, in
/// order): `parts − 1` distinct cut points drawn from `1..n`.
pub fn random_segmentation(n: usize, parts: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let parts = parts.clamp(1, n.max(1));
    // Partial Fisher–Yates over the candidate cut points 1..n.
    let mut cand: Vec<usize> = (1..n).collect();
    for i in 0..parts - 1 {
        let j = i + rng.below(cand.len() - i);
        cand.swap(i, j);
    }
    let mut cuts = cand[..parts - 1].to_vec();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(parts);
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(n)) {
        out.push(c - prev);
        prev = c;
    }
    out
}

/// The noise mask of a sequence of `len` tokens: `true` for dropped tokens.
pub fn noise_mask(len: usize, cfg: &SpanConfig, rng: &mut SplitMix64) -> Vec<bool> {
    if len < 2 {
        return vec![false; len];
    }
    let (noise, spans) = cfg.counts(len);
    let noise_lens = random_segmentation(noise, spans, rng);
    let keep_lens = random_segmentation(len - noise, spans, rng);
    let mut mask = Vec::with_capacity(len);
    for (k, n) in keep_lens.iter().zip(&noise_lens) {
        mask.extend(std::iter::repeat_n(false, *k));
        mask.extend(std::iter::repeat_n(true, *n));
    }
    mask
}

/// A corrupted example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupted {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
}

/// Applies a noise mask: each noise span becomes the next sentinel in the input; the target lists
/// sentinel + span pairs, a closing sentinel and EOS.
pub fn apply_mask(
    tokens: &[u32],
    mask: &[bool],
    sentinels: Sentinels,
    eos: u32,
) -> Result<Corrupted> {
    if tokens.len() != mask.len() {
        return Err(TrainError::Data(format!(
            "span corruption: {} tokens but a mask of {}",
            tokens.len(),
            mask.len()
        )));
    }
    let spans = (0..mask.len())
        .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
        .count();
    if spans + 1 > sentinels.count {
        return Err(TrainError::Data(format!(
            "span corruption needs {} sentinel tokens, the vocabulary has {}",
            spans + 1,
            sentinels.count
        )));
    }
    let mut input = Vec::with_capacity(tokens.len());
    let mut target = Vec::new();
    let mut k = 0;
    for (i, (&tok, &noise)) in tokens.iter().zip(mask).enumerate() {
        if noise {
            if i == 0 || !mask[i - 1] {
                input.push(sentinels.id(k));
                target.push(sentinels.id(k));
                k += 1;
            }
            target.push(tok);
        } else {
            input.push(tok);
        }
    }
    input.push(eos);
    target.push(sentinels.id(k));
    target.push(eos);
    Ok(Corrupted { input, target })
}

/// Span corruption of `tokens` with a fresh random mask.
pub fn corrupt(
    tokens: &[u32],
    cfg: &SpanConfig,
    sentinels: Sentinels,
    eos: u32,
    rng: &mut SplitMix64,
) -> Result<Corrupted> {
    let mask = noise_mask(tokens.len(), cfg, rng);
    apply_mask(tokens, &mask, sentinels, eos)
}

/// The inverse: every sentinel of the input replaced by the tokens that follow the same sentinel in
/// the target (up to the next sentinel). Errors when the pair is malformed.
pub fn reconstruct(
    input: &[u32],
    target: &[u32],
    sentinels: Sentinels,
    eos: u32,
) -> Result<Vec<u32>> {
    let bad = |m: &str| TrainError::Data(format!("span corruption: {m}"));
    let strip = |s: &[u32], what: &str| -> Result<Vec<u32>> {
        match s.split_last() {
            Some((&last, rest)) if last == eos => Ok(rest.to_vec()),
            _ => Err(bad(&format!("the {what} does not end with EOS"))),
        }
    };
    let (input, target) = (strip(input, "input")?, strip(target, "target")?);
    // spans[k] = the tokens after sentinel k in the target.
    let mut spans: Vec<Vec<u32>> = Vec::new();
    for &t in &target {
        match sentinels.index_of(t) {
            Some(k) if k == spans.len() => spans.push(Vec::new()),
            Some(k) => return Err(bad(&format!("target sentinel {k} out of order"))),
            None => match spans.last_mut() {
                Some(s) => s.push(t),
                None => return Err(bad("the target does not start with a sentinel")),
            },
        }
    }
    let mut out = Vec::new();
    let mut next = 0;
    for &t in &input {
        match sentinels.index_of(t) {
            Some(k) if k == next && k < spans.len() => {
                out.extend_from_slice(&spans[k]);
                next += 1;
            }
            Some(k) => return Err(bad(&format!("input sentinel {k} out of order"))),
            None => out.push(t),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Sentinels = Sentinels {
        first: 999,
        count: 100,
    };
    const EOS: u32 = 1;

    #[test]
    fn counts_follow_the_formulas() {
        let c = SpanConfig::default();
        // 512 → round(76.8) = 77 noise tokens, round(77/3) = 26 spans.
        assert_eq!(c.counts(512), (77, 26));
        // 10 → round(1.5) = 2 (half to even), round(0.67) = 1.
        assert_eq!(c.counts(10), (2, 1));
        // 30 → round(4.5) = 4 (half to even), round(1.33) = 1.
        assert_eq!(c.counts(30), (4, 1));
        assert_eq!(c.counts(2), (1, 1));
        // T5's default: 568 raw tokens give inputs of 512 (with EOS); targets 85 + 28 + 2 = 115.
        assert_eq!(c.output_lengths(568), (512, 115));
        assert_eq!(c.raw_length_for(512), Some(568));
        assert!(
            SpanConfig {
                noise_density: 1.0,
                mean_span: 3.0
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn segmentation_is_a_composition_into_nonempty_parts() {
        let mut rng = SplitMix64::new(1);
        for (n, parts) in [(10, 1), (10, 10), (77, 26), (5, 3)] {
            for _ in 0..50 {
                let s = random_segmentation(n, parts, &mut rng);
                assert_eq!(s.len(), parts);
                assert_eq!(s.iter().sum::<usize>(), n);
                assert!(s.iter().all(|&x| x > 0));
            }
        }
        // Uniform over compositions: with n = 4, parts = 2 the first part is 1, 2 or 3 equally often.
        let mut hist = [0usize; 4];
        for _ in 0..30_000 {
            hist[random_segmentation(4, 2, &mut rng)[0]] += 1;
        }
        for h in &hist[1..] {
            assert!((*h as f64 - 10_000.0).abs() < 400.0, "{hist:?}");
        }
    }

    #[test]
    fn exact_noise_and_span_counts_alternation_and_round_trip() {
        let cfg = SpanConfig::default();
        let mut rng = SplitMix64::new(7);
        for len in [2usize, 3, 7, 20, 64, 100, 512] {
            for _ in 0..20 {
                let tokens: Vec<u32> = (0..len as u32).map(|i| 2 + (i * 7919) % 500).collect();
                let mask = noise_mask(len, &cfg, &mut rng);
                let (noise, spans) = cfg.counts(len);
                assert_eq!(mask.iter().filter(|&&m| m).count(), noise, "len {len}");
                let starts = (0..len)
                    .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
                    .count();
                assert_eq!(starts, spans, "len {len}");
                assert!(!mask[0], "starts with non-noise");
                assert!(mask[len - 1], "ends with noise");
                let c = apply_mask(&tokens, &mask, S, EOS).unwrap();
                assert_eq!((c.input.len(), c.target.len()), cfg.output_lengths(len));
                // Sentinels in order: <extra_id_0>, <extra_id_1>, … (descending ids).
                let si: Vec<u32> = c.input.iter().copied().filter(|&t| t > 900).collect();
                let st: Vec<u32> = c.target.iter().copied().filter(|&t| t > 900).collect();
                assert_eq!(si, (0..spans).map(|k| 999 - k as u32).collect::<Vec<_>>());
                assert_eq!(st, (0..=spans).map(|k| 999 - k as u32).collect::<Vec<_>>());
                assert_eq!(c.target[0], 999);
                assert_eq!(&c.target[c.target.len() - 2..], &[999 - spans as u32, EOS]);
                assert_eq!(reconstruct(&c.input, &c.target, S, EOS).unwrap(), tokens);
            }
        }
    }

    #[test]
    fn the_papers_example() {
        // "Thank you for inviting me to your party last week ." with spans "for inviting", "last".
        let tokens: Vec<u32> = (10..21).collect();
        let mask: Vec<bool> = [0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0]
            .iter()
            .map(|&m| m == 1)
            .collect();
        let c = apply_mask(&tokens, &mask, S, EOS).unwrap();
        assert_eq!(c.input, vec![10, 11, 999, 14, 15, 16, 17, 998, 19, 20, EOS]);
        assert_eq!(c.target, vec![999, 12, 13, 998, 18, 997, EOS]);
        assert_eq!(reconstruct(&c.input, &c.target, S, EOS).unwrap(), tokens);
        // Malformed pairs are errors.
        assert!(reconstruct(&c.input, &[12, 999, EOS], S, EOS).is_err());
        assert!(reconstruct(&c.input, &c.target[..6], S, EOS).is_err());
        assert!(reconstruct(&[10, 998, EOS], &c.target, S, EOS).is_err());
        let few = Sentinels {
            first: 999,
            count: 2,
        };
        assert!(
            apply_mask(&tokens, &mask, few, EOS)
                .unwrap_err()
                .to_string()
                .contains("3 sentinel")
        );
    }

    #[test]
    fn mean_span_length_over_ten_thousand_samples_of_512_is_three() {
        let cfg = SpanConfig::default();
        let mut rng = SplitMix64::new(42);
        let (mut noise, mut spans) = (0usize, 0usize);
        let mut lengths = [0usize; 80];
        for _ in 0..10_000 {
            let m = noise_mask(512, &cfg, &mut rng);
            let mut run = 0;
            for (i, &x) in m.iter().enumerate() {
                if x {
                    noise += 1;
                    run += 1;
                    if i + 1 == m.len() || !m[i + 1] {
                        spans += 1;
                        lengths[run.min(79)] += 1;
                        run = 0;
                    }
                }
            }
        }
        let mean = noise as f64 / spans as f64;
        assert!((mean - 3.0).abs() < 0.1, "mean span {mean}");
        // Spans vary in length (random segmentation, not fixed-length spans).
        assert!(lengths[1] > 0 && lengths[5] > 0 && lengths[3] < spans / 2);
    }
}
