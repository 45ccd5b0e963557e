//! Exact dense search: cosine similarity against every stored vector (vectors are L2-normalised
//! when stored, so the score is a dot product).

/// L2-normalises `v` in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The `k` rows of `mat` (row-major, `dim` wide) with the largest dot product with `q`, best first,
/// ties by row.
pub fn search(mat: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<(usize, f32)> {
    if dim == 0 || q.len() != dim {
        return Vec::new();
    }
    let mut v: Vec<(usize, f32)> = mat
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, row)| (i, row.iter().zip(q).map(|(a, b)| a * b).sum::<f32>()))
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
