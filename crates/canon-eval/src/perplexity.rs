//! Perplexity of a causal LM over a long token sequence with a sliding window (the strided method of
//! Hugging Face's "Perplexity of fixed-length models" guide).
//!
//! `PPL = exp( −1/N Σ_j log p(x_j | x_{b(j)} … x_{j−1}) )` over every token but the first. Windows of
//! at most `context` input tokens advance by `stride`; each window scores only the `stride` tokens
//! the previous one did not reach, so every token is scored exactly once, with `context − stride + 1`
//! to `context` tokens of left context (fewer at the start of the text).
//!
//! Deviation from the guide's code: the guide averages per-window mean losses weighted by the window
//! stride; here the average is over tokens exactly (the same when every window scores equally many).

use candle_core::Tensor;
use canon_models::{CausalLm, Positions};

use crate::{EvalError, Result};

/// Window settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerplexityConfig {
    /// Most tokens per forward pass.
    pub context: usize,
    /// Distance between window starts (`1 ≤ stride ≤ context`); smaller = more context per token,
    /// more compute.
    pub stride: usize,
}

/// The result.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: f64,
    /// Tokens scored (all but the first).
    pub tokens: usize,
    /// Forward passes.
    pub windows: usize,
    pub context: usize,
    pub stride: usize,
}

/// The windows of the strided method, as `(start, first target, end)`: the targets
/// `first..end` (chunks of `stride`, from token 1) are predicted from the input `start..end−1`,
/// at most `context` tokens ending just before the last target. Target `j` thus sees
/// `j − start` tokens of left context, between `context − stride + 1` and `context` once the text
/// is long enough.
pub fn windows(n: usize, cfg: PerplexityConfig) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut first = 1;
    while first < n {
        let end = (first + cfg.stride).min(n);
        let start = (end - 1).saturating_sub(cfg.context);
        out.push((start, first, end));
        first = end;
    }
    out
}

/// Sliding-window perplexity of `ids` under `model`. `progress(done, total)` is called after each
/// window.
pub fn perplexity(
    model: &dyn CausalLm,
    ids: &[u32],
    cfg: PerplexityConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    let bad = |message: String| Err(EvalError::Perplexity(message));
    if cfg.context < 2 {
        return bad(format!(
            "the context must hold at least 2 tokens, found {}",
            cfg.context
        ));
    }
    if cfg.stride == 0 || cfg.stride > cfg.context {
        return bad(format!(
            "expected 1 <= stride <= context ({}), found stride {}",
            cfg.context, cfg.stride
        ));
    }
    if cfg.context > model.max_seq_len() {
        return bad(format!(
            "context {} exceeds the model's maximum sequence length {}",
            cfg.context,
            model.max_seq_len()
        ));
    }
    if ids.len() < 2 {
        return bad(format!(
            "the text has {} token(s); perplexity needs at least 2",
            ids.len()
        ));
    }
    let vocab = model.vocab_size();
    if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
        return bad(format!("token id {t} is outside the vocabulary of {vocab}"));
    }
    let wins = windows(ids.len(), cfg);
    let (mut nll, mut count) = (0.0f64, 0usize);
    for (w, &(start, first, end)) in wins.iter().enumerate() {
        let input = Tensor::new(&ids[start..end - 1], &candle_core::Device::Cpu)?.unsqueeze(0)?; // [1, t]
        let mut cache = model.new_cache();
        let logits = model.forward(&input, &mut cache, Positions::All)?; // [1, t, vocab]
        // Logits at position p predict token p + 1: rows first−1 .. end−2 predict first .. end−1.
        let rows = logits
            .squeeze(0)?
            .narrow(0, first - 1 - start, end - first)?
            .to_dtype(candle_core::DType::F32)?; // [s, vocab]
        let logp = canon_nn::ops::log_softmax_last(&rows)?;
        let targets = Tensor::new(&ids[first..end], &candle_core::Device::Cpu)?.unsqueeze(1)?; // [s, 1]
        let picked = logp.gather(&targets, 1)?.squeeze(1)?.to_vec1::<f32>()?; // [s]
        nll -= picked.iter().map(|&v| v as f64).sum::<f64>();
        count += picked.len();
        progress(w + 1, wins.len());
    }
    let mean = nll / count as f64;
    Ok(Perplexity {
        perplexity: mean.exp(),
        nll: mean,
        tokens: count,
        windows: wins.len(),
        context: cfg.context,
        stride: cfg.stride,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_models::Cache;

    /// A toy LM whose logits at a position depend on every token before it in the window (their
    /// sum and count), so the amount of context changes the result.
    struct Toy;
    const V: usize = 7;

    fn toy_logits(prefix: &[u32]) -> Vec<f64> {
        let s: u32 = prefix.iter().sum();
        (0..V)
            .map(|v| {
                ((s as f64 + 1.0) * 0.37 * (v as f64 + 1.0)).sin()
                    + 0.1 * prefix.len() as f64 * v as f64 / V as f64
            })
            .collect()
    }

    impl CausalLm for Toy {
        fn forward(
            &self,
            ids: &Tensor,
            _cache: &mut Cache,
            _which: Positions,
        ) -> canon_models::Result<Tensor> {
            let ids = ids.squeeze(0)?.to_vec1::<u32>()?;
            let rows: Vec<f32> = (0..ids.len())
                .flat_map(|p| toy_logits(&ids[..=p]).into_iter().map(|v| v as f32))
                .collect();
            Ok(Tensor::from_vec(
                rows,
                (1, ids.len(), V),
                &candle_core::Device::Cpu,
            )?)
        }
        fn new_cache(&self) -> Cache {
            Cache::new(0)
        }
        fn vocab_size(&self) -> usize {
            V
        }
        fn max_seq_len(&self) -> usize {
            64
        }
    }

    /// Direct computation: token j is a target of chunk `k = ⌊(j − 1)/S⌋`, which ends at
    /// `e = min(1 + (k + 1)·S, n)`; its context starts at `max(0, e − 1 − C)`.
    fn direct(ids: &[u32], c: usize, s: usize) -> f64 {
        let n = ids.len();
        let mut nll = 0.0;
        for j in 1..n {
            let e = (1 + ((j - 1) / s + 1) * s).min(n);
            let from = (e - 1).saturating_sub(c);
            assert!(j - from <= c && (from == 0 || j - from > c - s));
            let l = toy_logits(&ids[from..j]);
            let lse = l.iter().map(|v| v.exp()).sum::<f64>().ln();
            nll -= l[ids[j] as usize] - lse;
        }
        (nll / (ids.len() - 1) as f64).exp()
    }

    #[test]
    fn strided_perplexity_equals_the_direct_per_token_computation() {
        let ids: Vec<u32> = (0..53u32).map(|i| (i * 5 + i / 3) % V as u32).collect();
        for (c, s) in [(8, 8), (8, 3), (8, 1), (16, 5), (64, 64), (2, 1)] {
            let cfg = PerplexityConfig {
                context: c,
                stride: s,
            };
            let mut calls = 0;
            let r = perplexity(&Toy, &ids, cfg, &mut |_, _| calls += 1).unwrap();
            let want = direct(&ids, c, s);
            assert_eq!(r.tokens, ids.len() - 1, "c={c} s={s}");
            assert_eq!(calls, r.windows);
            assert!(
                (r.perplexity - want).abs() < 1e-5 * want,
                "c={c} s={s}: {} vs {want}",
                r.perplexity
            );
        }
        // More context changes the value (the test above would notice wrong windows).
        assert!((direct(&ids, 8, 8) - direct(&ids, 8, 1)).abs() > 1e-3);
    }

    /// On a tiny random LLaMA (written by the test kit): every token's log-probability computed
    /// directly, one forward pass over exactly its context per token, gives the same perplexity.
    #[test]
    fn a_tiny_llama_scores_as_the_direct_per_token_computation() {
        use canon_models::WeightMode;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tiny.gguf");
        canon_testkit::tiny_gguf::write_tiny_llama(&p, &Default::default()).unwrap();
        let lm = canon_models::load::load_gguf_lm(&p, WeightMode::DequantizeF32).unwrap();
        let model = lm.model.as_ref();
        let ids: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % 250 + 3).collect();
        for (c, s) in [(16, 16), (16, 5), (64, 64)] {
            let cfg = PerplexityConfig {
                context: c,
                stride: s,
            };
            let r = perplexity(model, &ids, cfg, &mut |_, _| {}).unwrap();
            let mut nll = 0.0f64;
            for j in 1..ids.len() {
                let e = (1 + ((j - 1) / s + 1) * s).min(ids.len());
                let from = (e - 1).saturating_sub(c);
                let x = Tensor::new(&ids[from..j], &candle_core::Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let mut cache = model.new_cache();
                let logits = model.forward(&x, &mut cache, Positions::Last).unwrap();
                let l: Vec<f64> = logits
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f64::from)
                    .collect();
                let max = l.iter().copied().fold(f64::MIN, f64::max);
                let lse = max + l.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                nll -= l[ids[j] as usize] - lse;
            }
            let want = (nll / (ids.len() - 1) as f64).exp();
            assert!(
                (r.perplexity - want).abs() < 1e-4 * want,
                "c={c} s={s}: {} vs {want}",
                r.perplexity
            );
        }
    }

    #[test]
    fn windows_cover_every_token_once() {
        for (n, c, s) in [(10, 4, 4), (10, 4, 3), (11, 5, 2), (3, 8, 8), (100, 17, 9)] {
            let w = windows(
                n,
                PerplexityConfig {
                    context: c,
                    stride: s,
                },
            );
            let mut seen = vec![0; n];
            for (b, f, e) in w {
                assert!(b < f && f < e && e - 1 - b <= c && e - f <= s);
                (f..e).for_each(|j| seen[j] += 1);
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|&v| v == 1), "{n} {c} {s}: {seen:?}");
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        let ids = [1u32, 2, 3];
        let run = |c, s, ids: &[u32]| {
            perplexity(
                &Toy,
                ids,
                PerplexityConfig {
                    context: c,
                    stride: s,
                },
                &mut |_, _| {},
            )
            .unwrap_err()
            .to_string()
        };
        assert!(run(8, 0, &ids).contains("stride"));
        assert!(run(8, 9, &ids).contains("stride"));
        assert!(run(128, 8, &ids).contains("maximum sequence length 64"));
        assert!(run(8, 8, &[1]).contains("at least 2"));
        assert!(run(8, 8, &[1, 99]).contains("99"));
    }
}
