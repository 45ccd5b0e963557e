//! Reciprocal rank fusion (Cormack et al., 2009): `score(d) = Σ_r 1 / (k + rank_r(d))`, ranks from 1.

use std::collections::HashMap;

/// The usual constant.
pub const RRF_K: f64 = 60.0;

/// Fuses rankings of ids (best first) into one, best first; ties broken by id.
pub fn rrf(rankings: &[Vec<usize>], k: f64) -> Vec<(usize, f64)> {
    let mut score: HashMap<usize, f64> = HashMap::new();
    for r in rankings {
        for (rank, id) in r.iter().enumerate() {
            *score.entry(*id).or_default() += 1.0 / (k + rank as f64 + 1.0);
        }
    }
    let mut v: Vec<(usize, f64)> = score.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}
