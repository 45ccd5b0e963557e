//! The two RAG models of Lewis et al. (2020), over the top-k retrieved documents `z`:
//!
//! * document prior `p(z|x) = softmax_z(score(z, x))` over the top-k retrieval scores;
//! * RAG-Sequence: `p(y|x) = Σ_z p(z|x) Π_i p(y_i | x, z, y_<i)` (one document per sequence);
//! * RAG-Token: `p(y|x) = Π_i Σ_z p(z|x) p(y_i | x, z, y_<i)` (a document per token), whose
//!   per-step marginal `p'(y_i | x, y_<i) = Σ_z p(z|x) p(y_i | x, z, y_<i)` drives decoding.
//!
//! The generator is abstract: `next_logprobs(z, prefix)` returns log-probabilities over the
//! vocabulary for the next token given document `z` (and the fixed input x) and the prefix.

/// `p(z|x)`: log-softmax of the retrieval scores.
pub fn doc_log_prior(scores: &[f64]) -> Vec<f64> {
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln();
    scores.iter().map(|s| s - lse).collect()
}

/// `log Σ exp(v)`, `-inf` for an empty or all `-inf` input.
pub fn logsumexp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// `log p(y | x, z)` for one document: the sum of token log-probabilities.
pub fn seq_logprob(
    z: usize,
    y: &[u32],
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> f64 {
    (0..y.len())
        .map(|i| {
            next_logprobs(z, &y[..i])
                .get(y[i] as usize)
                .copied()
                .unwrap_or(f64::NEG_INFINITY)
        })
        .sum()
}

/// RAG-Sequence `log p(y|x)`.
pub fn rag_sequence_logprob(
    log_prior: &[f64],
    y: &[u32],
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> f64 {
    let per: Vec<f64> = (0..log_prior.len())
        .map(|z| log_prior[z] + seq_logprob(z, y, next_logprobs))
        .collect();
    logsumexp(&per)
}

/// RAG-Token per-step marginal: log `p'(· | x, prefix)` over the vocabulary.
pub fn rag_token_next(
    log_prior: &[f64],
    prefix: &[u32],
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> Vec<f64> {
    let per: Vec<Vec<f64>> = (0..log_prior.len())
        .map(|z| next_logprobs(z, prefix))
        .collect();
    let vocab = per.iter().map(Vec::len).min().unwrap_or(0);
    (0..vocab)
        .map(|t| {
            logsumexp(
                &(0..per.len())
                    .map(|z| log_prior[z] + per[z][t])
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// RAG-Token `log p(y|x)`.
pub fn rag_token_logprob(
    log_prior: &[f64],
    y: &[u32],
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> f64 {
    (0..y.len())
        .map(|i| {
            rag_token_next(log_prior, &y[..i], next_logprobs)
                .get(y[i] as usize)
                .copied()
                .unwrap_or(f64::NEG_INFINITY)
        })
        .sum()
}

/// The first index of the largest value, `None` for an empty row.
fn argmax(v: &[f64]) -> Option<u32> {
    (!v.is_empty()).then(|| canon_nn::ops::argmax(v) as u32)
}

/// RAG-Token greedy decoding: at each step the argmax of the per-step marginal; stops after an `eos` token
/// (included) or `max_new` tokens.
pub fn rag_token_greedy(
    log_prior: &[f64],
    eos: &[u32],
    max_new: usize,
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> Vec<u32> {
    let mut y = Vec::new();
    while y.len() < max_new {
        let Some(t) = argmax(&rag_token_next(log_prior, &y, next_logprobs)) else {
            break;
        };
        y.push(t);
        if eos.contains(&t) {
            break;
        }
    }
    y
}

/// Greedy decoding with one document: the per-document hypothesis of RAG-Sequence decoding.
pub fn greedy_for_doc(
    z: usize,
    eos: &[u32],
    max_new: usize,
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> Vec<u32> {
    let mut y = Vec::new();
    while y.len() < max_new {
        let Some(t) = argmax(&next_logprobs(z, &y)) else {
            break;
        };
        y.push(t);
        if eos.contains(&t) {
            break;
        }
    }
    y
}

/// Beam search over a next-token scorer: `beam` hypotheses are extended by their `beam` best next
/// tokens each step and the `beam` best prefixes (sum of log-probabilities) kept; a hypothesis ends
/// at an `eos` token (included) or at `max_new` tokens. Returns the finished hypotheses with their
/// log-probabilities, best first (at most `beam`). `beam = 1` is greedy decoding.
pub fn beam_search(
    beam: usize,
    eos: &[u32],
    max_new: usize,
    next: &mut dyn FnMut(&[u32]) -> Vec<f64>,
) -> Vec<(Vec<u32>, f64)> {
    let beam = beam.max(1);
    let mut live: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    let mut done: Vec<(Vec<u32>, f64)> = Vec::new();
    for _ in 0..max_new {
        let mut grown: Vec<(Vec<u32>, f64)> = Vec::new();
        for (y, lp) in &live {
            let dist = next(y);
            let mut order: Vec<usize> = (0..dist.len()).filter(|&t| dist[t].is_finite()).collect();
            order.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
            for &t in order.iter().take(beam) {
                let mut z = y.clone();
                z.push(t as u32);
                grown.push((z, lp + dist[t]));
            }
        }
        grown.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        grown.truncate(beam);
        live.clear();
        for (y, lp) in grown {
            if y.last().is_some_and(|t| eos.contains(t)) {
                done.push((y, lp));
            } else {
                live.push((y, lp));
            }
        }
        // Every live hypothesis already scores below the beam's worst finished one: stop.
        if done.len() >= beam {
            done.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let worst = done[beam - 1].1;
            if live.iter().all(|(_, lp)| *lp <= worst) {
                break;
            }
        }
        if live.is_empty() {
            break;
        }
    }
    done.extend(live.into_iter().filter(|(y, _)| !y.is_empty()));
    done.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    done.truncate(beam);
    done
}

/// RAG-Sequence's per-document search: beam search under `p(y_i | x, z, y_<i)` for document `z`;
/// the hypotheses form that document's candidate set for [`rag_sequence_decode`].
pub fn beams_for_doc(
    z: usize,
    beam: usize,
    eos: &[u32],
    max_new: usize,
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> Vec<Vec<u32>> {
    beam_search(beam, eos, max_new, &mut |y| next_logprobs(z, y))
        .into_iter()
        .map(|(y, _)| y)
        .collect()
}

/// RAG-Token beam decoding: a standard beam search under the per-step marginal
/// `p'(y_i | x, y_<i) = Σ_z p(z|x) p(y_i | x, z, y_<i)`; returns the best hypothesis.
pub fn rag_token_beam(
    log_prior: &[f64],
    beam: usize,
    eos: &[u32],
    max_new: usize,
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> Vec<u32> {
    beam_search(beam, eos, max_new, &mut |y| {
        rag_token_next(log_prior, y, next_logprobs)
    })
    .into_iter()
    .next()
    .map(|(y, _)| y)
    .unwrap_or_default()
}

/// RAG-Sequence decoding mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqDecoding {
    /// Every candidate is scored under every document (an extra forward pass per pair).
    Thorough,
    /// A candidate not produced by document z gets `p(y|x,z) ≈ 0` for that document.
    Fast,
}

/// RAG-Sequence decoding over candidate sets: `candidates[z]` are the hypotheses document z's own
/// search produced (a greedy hypothesis per document when built with [`greedy_for_doc`]). Returns
/// every distinct candidate with its `log p(y|x)` estimate, best first.
pub fn rag_sequence_decode(
    log_prior: &[f64],
    candidates: &[Vec<Vec<u32>>],
    mode: SeqDecoding,
    next_logprobs: &mut dyn FnMut(usize, &[u32]) -> Vec<f64>,
) -> Vec<(Vec<u32>, f64)> {
    let mut all: Vec<Vec<u32>> = candidates.iter().flatten().cloned().collect();
    all.sort();
    all.dedup();
    let mut out: Vec<(Vec<u32>, f64)> = all
        .into_iter()
        .map(|y| {
            let per: Vec<f64> = (0..log_prior.len())
                .filter(|&z| {
                    mode == SeqDecoding::Thorough
                        || candidates.get(z).is_some_and(|c| c.contains(&y))
                })
                .map(|z| log_prior[z] + seq_logprob(z, &y, next_logprobs))
                .collect();
            let lp = logsumexp(&per);
            (y, lp)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// RAG-Sequence `log p(y|x)` from the target tokens' log-probabilities under each document,
/// `token_lp[z][i] = log p(y_i | x, z, y_<i)` (what a model scoring the target gives).
pub fn rag_sequence_from_token_logprobs(log_prior: &[f64], token_lp: &[Vec<f64>]) -> f64 {
    let per: Vec<f64> = log_prior
        .iter()
        .zip(token_lp)
        .map(|(p, lps)| p + lps.iter().sum::<f64>())
        .collect();
    logsumexp(&per)
}

/// RAG-Token `log p(y|x)` from the same matrix: `Σ_i log Σ_z p(z|x) p(y_i | x, z, y_<i)`.
pub fn rag_token_from_token_logprobs(log_prior: &[f64], token_lp: &[Vec<f64>]) -> f64 {
    let n = token_lp.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|i| {
            logsumexp(
                &log_prior
                    .iter()
                    .zip(token_lp)
                    .map(|(p, lps)| p + lps[i])
                    .collect::<Vec<_>>(),
            )
        })
        .sum()
}
