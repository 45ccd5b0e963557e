//! Exact dense search: cosine similarity against every stored vector (vectors are L2-normalised
//! when stored, so the score is a dot product).

/// L2-normalises `v` in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

pub use canon_nn::fused::dot;

/// The `k` rows of `mat` (row-major, `dim` wide) with the largest dot product with `q`, best first,
/// ties by row.
pub fn search(mat: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<(usize, f32)> {
    if dim == 0 || q.len() != dim {
        return Vec::new();
    }
    let mut v: Vec<(usize, f32)> = mat
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, row)| (i, dot(row, q)))
        .collect();
    let k = k.min(v.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    v.select_nth_unstable_by(k - 1, cmp);
    v.truncate(k);
    v.sort_by(cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_wide_sum_for_every_tail_length() {
        for n in [0usize, 1, 15, 16, 17, 33, 384, 385] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 9) as f32 - 4.0) / 3.0).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let got = f64::from(dot(&a, &b));
            assert!(
                (got - want).abs() <= 1e-5 + 1e-6 * want.abs(),
                "n {n}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn search_ranks_by_dot_product_ties_by_row() {
        let mat = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8, 1.0, 0.0];
        let hits = search(&mat, 2, &[1.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 3, 2]);
        assert!(search(&mat, 2, &[1.0], 3).is_empty());
    }
}
