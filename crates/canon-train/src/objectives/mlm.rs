//! BERT's masked-LM corruption (paper 3, §3.1): select 15% of the maskable positions; of those,
//! 80% become `[MASK]`, 10% a uniformly random token, 10% stay unchanged. Only selected positions
//! are predicted.

use canon_nn::SplitMix64;

/// Label of a position that is not predicted (the cross-entropy skips it).
pub const IGNORE: i64 = canon_nn::IGNORE_INDEX;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlmConfig {
    /// Fraction of maskable positions selected for prediction (0.15).
    pub select: f64,
    /// Of the selected: fraction replaced by `[MASK]` (0.8).
    pub mask: f64,
    /// Of the selected: fraction replaced by a random token (0.1); the rest stay unchanged.
    pub random: f64,
}

impl Default for MlmConfig {
    fn default() -> Self {
        Self {
            select: 0.15,
            mask: 0.8,
            random: 0.1,
        }
    }
}

impl MlmConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.select > 0.0 && self.select <= 1.0) {
            return Err(format!(
                "mlm select probability must be in (0, 1], found {}",
                self.select
            ));
        }
        if self.mask < 0.0 || self.random < 0.0 || self.mask + self.random > 1.0 {
            return Err(format!(
                "mlm mask ({}) and random ({}) fractions must be ≥ 0 and sum to at most 1",
                self.mask, self.random
            ));
        }
        Ok(())
    }
}

/// A corrupted sequence and its labels (`IGNORE` where nothing is predicted).
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    pub input: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Corrupts `ids`. Positions where `maskable` is false (special tokens, padding) are never
/// selected. Each maskable position is selected independently with probability `cfg.select`; if
/// that selects none in a sequence with maskable positions, one is chosen uniformly so that every
/// sequence contributes a prediction. Random replacements are drawn from
/// `random_from..vocab_size` (pass the first non-special id so that no special token is injected).
pub fn mask_tokens(
    ids: &[u32],
    maskable: impl Fn(u32) -> bool,
    mask_id: u32,
    random_from: u32,
    vocab_size: usize,
    cfg: &MlmConfig,
    rng: &mut SplitMix64,
) -> Masked {
    let mut input = ids.to_vec();
    let mut labels = vec![IGNORE; ids.len()];
    let candidates: Vec<usize> = (0..ids.len()).filter(|&i| maskable(ids[i])).collect();
    let mut chosen: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|_| rng.next_f64() < cfg.select)
        .collect();
    if chosen.is_empty() && !candidates.is_empty() {
        chosen.push(candidates[rng.below(candidates.len())]);
    }
    let span = (vocab_size as u32).saturating_sub(random_from).max(1) as usize;
    for i in chosen {
        labels[i] = ids[i] as i64;
        let u = rng.next_f64();
        if u < cfg.mask {
            input[i] = mask_id;
        } else if u < cfg.mask + cfg.random {
            input[i] = random_from + rng.below(span) as u32;
        }
    }
    Masked { input, labels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_follow_the_paper() {
        // 200k maskable positions: selected ≈ 15%; of those 80% [MASK], 10% random, 10% kept.
        let ids: Vec<u32> = (0..200_000u32).map(|i| 10 + i % 900).collect();
        let mut rng = SplitMix64::new(7);
        let m = mask_tokens(&ids, |_| true, 3, 10, 1000, &MlmConfig::default(), &mut rng);
        let sel: Vec<usize> = (0..ids.len()).filter(|&i| m.labels[i] != IGNORE).collect();
        let n = sel.len() as f64;
        let frac = n / ids.len() as f64;
        assert!((frac - 0.15).abs() < 0.005, "selected {frac}");
        let masked = sel.iter().filter(|&&i| m.input[i] == 3).count() as f64 / n;
        let kept = sel.iter().filter(|&&i| m.input[i] == ids[i]).count() as f64 / n;
        // A random replacement can equal the original token (1/990 of the time).
        let random = 1.0 - masked - kept;
        assert!((masked - 0.8).abs() < 0.01, "mask {masked}");
        assert!((random - 0.1).abs() < 0.01, "random {random}");
        assert!((kept - 0.1).abs() < 0.01, "kept {kept}");
        // Unselected positions are untouched and carry no label.
        assert!(
            (0..ids.len())
                .filter(|&i| m.labels[i] == IGNORE)
                .all(|i| m.input[i] == ids[i])
        );
        // Labels hold the original ids.
        assert!(sel.iter().all(|&i| m.labels[i] == ids[i] as i64));
        // Random replacements never inject special ids.
        assert!(m.input.iter().all(|&t| t == 3 || t >= 10));
    }

    #[test]
    fn specials_are_never_selected_and_one_position_is_always_predicted() {
        let ids = [0u32, 101, 55, 102, 0, 0];
        let special = |t: u32| t != 0 && t != 101 && t != 102;
        let cfg = MlmConfig {
            select: 1e-9,
            ..Default::default()
        };
        for seed in 0..20 {
            let m = mask_tokens(&ids, special, 3, 10, 200, &cfg, &mut SplitMix64::new(seed));
            assert_eq!(m.labels, vec![IGNORE, IGNORE, 55, IGNORE, IGNORE, IGNORE]);
        }
        let all = mask_tokens(
            &[0u32, 0],
            special,
            3,
            10,
            200,
            &cfg,
            &mut SplitMix64::new(1),
        );
        assert!(all.labels.iter().all(|&l| l == IGNORE));
        assert_eq!(all.input, vec![0, 0]);
    }

    #[test]
    fn config_is_validated() {
        assert!(MlmConfig::default().validate().is_ok());
        for bad in [(0.0, 0.8, 0.1), (0.15, 0.9, 0.2), (1.5, 0.8, 0.1)] {
            let c = MlmConfig {
                select: bad.0,
                mask: bad.1,
                random: bad.2,
            };
            assert!(c.validate().is_err());
        }
    }
}
