//! Unbiased pass@k — Chen et al., "Evaluating Large Language Models Trained on Code" (Codex), 2021,
//! section 2.1.
//!
//! Idea: draw n >= k samples per problem, count the c that pass, and estimate the probability that at
//! least one of k samples passes without the bias of `1 - (1 - c/n)^k`:
//!
//! ```text
//! pass@k = E_problems[ 1 - C(n-c, k) / C(n, k) ]                          (paper, eq. 1)
//!        = E_problems[ 1 - prod_{i = n-c+1}^{n} (1 - k / i) ]             (stable product form)
//! ```
//!
//! The binomials overflow u64 and f64 at n = 200 or so; the product form never does. It is exactly
//! 1.0 when n - c < k (every k-subset contains a correct sample) and exactly 0.0 when c = 0.
//! Deviations: none.

use crate::{EvalError, Result};

/// pass@k of one problem with `n` samples of which `c` are correct.
pub fn pass_at_k_one(n: usize, c: usize, k: usize) -> Result<f64> {
    if k == 0 || k > n || c > n {
        return Err(EvalError::PassAtK { n, c, k });
    }
    if c == 0 {
        return Ok(0.0);
    }
    if n - c < k {
        return Ok(1.0);
    }
    // C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i): each factor is in (0, 1), no overflow.
    let kf = k as f64;
    let fail: f64 = (n - c + 1..=n).map(|i| 1.0 - kf / i as f64).product();
    Ok(1.0 - fail)
}

/// Mean pass@k over problems, each given as `(n, c)`.
pub fn pass_at_k(counts: &[(usize, usize)], k: usize) -> Result<f64> {
    if counts.is_empty() {
        return Err(EvalError::NoSamples);
    }
    let mut sum = 0.0;
    for &(n, c) in counts {
        sum += pass_at_k_one(n, c, k)?;
    }
    Ok(sum / counts.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact references, made with Python's integers and fractions:
    ///
    /// ```python
    /// from fractions import Fraction
    /// from math import comb
    /// for n, c, k in grid:
    ///     v = 1 - Fraction(comb(n-c, k), comb(n, k)) if n - c >= k else Fraction(1)
    ///     print(f"({n}, {c}, {k}, {float(v)!r}),")
    /// ```
    const GRID: &[(usize, usize, usize, f64)] = &[
        (200, 10, 1, 0.05),
        (200, 10, 10, 0.40854786608141713),
        (200, 10, 100, 0.9992289739372822),
        (20, 5, 5, 0.8063080495356038),
        (20, 5, 10, 0.9837461300309598),
        (10, 1, 5, 0.5),
        (200, 1, 100, 0.5),
        (10, 0, 1, 0.0),
        (5, 3, 3, 1.0),
        (200, 0, 100, 0.0),
        (200, 200, 100, 1.0),
        (200, 1, 1, 0.005),
        (200, 57, 10, 0.9681899279258002),
        (200, 150, 100, 1.0),
        (200, 3, 50, 0.5802497335160651),
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (7, 2, 3, 0.7142857142857143),
        (1000, 1, 500, 0.5),
        (1000, 10, 100, 0.653072285207994),
        (1000, 999, 1, 0.999),
    ];

    #[test]
    fn matches_exact_binomials_on_grid() {
        for &(n, c, k, want) in GRID {
            let got = pass_at_k_one(n, c, k).unwrap();
            assert!(
                (got - want).abs() <= 1e-12,
                "pass@{k} with n={n}, c={c}: got {got}, want {want}"
            );
            assert!((0.0..=1.0).contains(&got));
        }
    }

    #[test]
    fn exact_edges() {
        assert_eq!(pass_at_k_one(200, 0, 1).unwrap(), 0.0);
        assert_eq!(pass_at_k_one(200, 101, 100).unwrap(), 1.0);
        assert_eq!(pass_at_k_one(5, 3, 3).unwrap(), 1.0);
        // n = 100000: binomials are astronomically large, the product is not.
        let v = pass_at_k_one(100_000, 17, 1000).unwrap();
        assert!(v.is_finite() && v > 0.0 && v < 1.0);
    }

    #[test]
    fn naive_estimator_differs() {
        // The biased estimator 1 - (1 - c/n)^k gives 0.4013 here; the unbiased one 0.4085.
        let naive = 1.0 - (1.0f64 - 10.0 / 200.0).powi(10);
        assert!((naive - 0.4013).abs() < 1e-4);
        assert!((pass_at_k_one(200, 10, 10).unwrap() - naive).abs() > 5e-3);
    }

    #[test]
    fn mean_over_tasks_and_errors() {
        let m = pass_at_k(&[(10, 1), (10, 0), (5, 3)], 1).unwrap();
        assert!((m - (0.1 + 0.0 + 0.6) / 3.0).abs() < 1e-15);
        assert!(pass_at_k(&[(5, 1)], 6).is_err());
        assert!(pass_at_k(&[(5, 6)], 1).is_err());
        assert!(pass_at_k(&[(5, 1)], 0).is_err());
        assert!(pass_at_k(&[], 1).is_err());
    }
}
