#![allow(clippy::needless_range_loop)]
//! RAG-Sequence and RAG-Token against brute force on a toy generator with 3 documents and a
//! 4-token vocabulary whose next-token distribution depends on the document and the prefix.

use canon_rag::marginal::*;

fn toy(z: usize, prefix: &[u32]) -> Vec<f64> {
    let h = prefix
        .iter()
        .fold(z as u64 * 7 + 3, |a, &t| a * 31 + t as u64 + 1);
    let logits: Vec<f64> = (0..4u64)
        .map(|t| (((h * 17 + t * 13) % 11) as f64) / 3.0)
        .collect();
    let lse = logsumexp(&logits);
    logits.iter().map(|l| l - lse).collect()
}

fn all_seqs(n: usize) -> Vec<Vec<u32>> {
    (0..4usize.pow(n as u32))
        .map(|mut c| {
            (0..n)
                .map(|_| {
                    let t = (c % 4) as u32;
                    c /= 4;
                    t
                })
                .collect()
        })
        .collect()
}

#[test]
fn prior_is_softmax_of_scores() {
    let p = doc_log_prior(&[1.0, 2.0, 0.5]);
    let e: Vec<f64> = [1.0f64, 2.0, 0.5].iter().map(|s| s.exp()).collect();
    let z: f64 = e.iter().sum();
    for i in 0..3 {
        assert!((p[i].exp() - e[i] / z).abs() < 1e-12);
    }
}

#[test]
fn rag_sequence_and_token_match_brute_force() {
    let prior = doc_log_prior(&[0.3, 1.1, -0.4]);
    let mut f = |z: usize, p: &[u32]| toy(z, p);
    for y in all_seqs(3) {
        // RAG-Sequence: Σ_z p(z) Π_i p(y_i | z, y<i), by explicit products.
        let mut seq = 0.0;
        for z in 0..3 {
            let mut p = prior[z].exp();
            for i in 0..y.len() {
                p *= toy(z, &y[..i])[y[i] as usize].exp();
            }
            seq += p;
        }
        assert!((rag_sequence_logprob(&prior, &y, &mut f).exp() - seq).abs() < 1e-12);
        // RAG-Token: a sum over every per-token document assignment (z_1..z_n).
        let mut tok = 0.0;
        for a in 0..27usize {
            let zs = [a % 3, a / 3 % 3, a / 9];
            let mut p = 1.0;
            for i in 0..3 {
                p *= prior[zs[i]].exp() * toy(zs[i], &y[..i])[y[i] as usize].exp();
            }
            tok += p;
        }
        assert!((rag_token_logprob(&prior, &y, &mut f).exp() - tok).abs() < 1e-12);
    }
    // Both are distributions over sequences of a fixed length.
    let s: f64 = all_seqs(3)
        .iter()
        .map(|y| rag_sequence_logprob(&prior, y, &mut f).exp())
        .sum();
    let t: f64 = all_seqs(3)
        .iter()
        .map(|y| rag_token_logprob(&prior, y, &mut f).exp())
        .sum();
    assert!((s - 1.0).abs() < 1e-9 && (t - 1.0).abs() < 1e-9);
}

#[test]
fn decoding_rag_token_greedy_and_rag_sequence_thorough_vs_fast() {
    let prior = doc_log_prior(&[0.3, 1.1, -0.4]);
    let mut f = |z: usize, p: &[u32]| toy(z, p);
    let y = rag_token_greedy(&prior, &[], 3, &mut f);
    for i in 0..3 {
        let m = rag_token_next(&prior, &y[..i], &mut f);
        assert!(m.iter().all(|&v| v <= m[y[i] as usize]));
        assert!((m.iter().map(|v| v.exp()).sum::<f64>() - 1.0).abs() < 1e-12);
    }
    let cands: Vec<Vec<Vec<u32>>> = (0..3)
        .map(|z| vec![greedy_for_doc(z, &[], 3, &mut f)])
        .collect();
    let thorough = rag_sequence_decode(&prior, &cands, SeqDecoding::Thorough, &mut f);
    let fast = rag_sequence_decode(&prior, &cands, SeqDecoding::Fast, &mut f);
    for (y, lp) in &thorough {
        assert!((lp - rag_sequence_logprob(&prior, y, &mut f)).abs() < 1e-12);
        let fl = fast.iter().find(|c| &c.0 == y).unwrap().1;
        assert!(
            fl <= *lp + 1e-12,
            "fast drops terms, so it never exceeds thorough"
        );
    }
}

#[test]
fn token_logprob_matrix_forms_agree_and_discriminate() {
    let prior = doc_log_prior(&[0.3, 1.1, -0.4]);
    let mut f = |z: usize, p: &[u32]| toy(z, p);
    for y in all_seqs(3) {
        let m: Vec<Vec<f64>> = (0..3)
            .map(|z| {
                (0..y.len())
                    .map(|i| toy(z, &y[..i])[y[i] as usize])
                    .collect()
            })
            .collect();
        let s = rag_sequence_from_token_logprobs(&prior, &m);
        let t = rag_token_from_token_logprobs(&prior, &m);
        assert!((s - rag_sequence_logprob(&prior, &y, &mut f)).abs() < 1e-9);
        assert!((t - rag_token_logprob(&prior, &y, &mut f)).abs() < 1e-9);
    }
    // The discriminating example: weights [0.5, 0.5]; under z1 p(y1)=1, p(y2|y1)=0, under z2
    // p(y1)=0, p(y2|y1)=1. RAG-Sequence = 0, RAG-Token = 0.25.
    let half = [0.5f64.ln(), 0.5f64.ln()];
    let ninf = f64::NEG_INFINITY;
    let m = vec![vec![0.0, ninf], vec![ninf, 0.0]];
    assert_eq!(rag_sequence_from_token_logprobs(&half, &m), ninf);
    assert!((rag_token_from_token_logprobs(&half, &m).exp() - 0.25).abs() < 1e-12);
    // One-token targets: both forms agree.
    let one = vec![vec![-0.7], vec![-2.0]];
    assert!(
        (rag_sequence_from_token_logprobs(&half, &one)
            - rag_token_from_token_logprobs(&half, &one))
        .abs()
            < 1e-12
    );
}

#[test]
fn beam_search_finds_what_greedy_misses_and_equals_greedy_at_width_one() {
    // Greedy takes token 0 (p 0.6) and then can only continue at p 0.34; token 1 (p 0.4) leads to
    // a continuation at p 0.95: the better sequence is [1, 0] (0.38 > 0.204).
    let mut next = |y: &[u32]| -> Vec<f64> {
        let p: [f64; 3] = match y {
            [] => [0.6, 0.4, 0.0],
            [0] => [0.34, 0.33, 0.33],
            [1] => [0.95, 0.03, 0.02],
            _ => [0.0, 0.0, 1.0],
        };
        p.iter().map(|v| v.ln()).collect()
    };
    let eos = [2u32];
    let greedy = beam_search(1, &eos, 2, &mut next);
    assert_eq!(greedy[0].0, vec![0, 0]);
    let wide = beam_search(2, &eos, 2, &mut next);
    assert_eq!(wide[0].0, vec![1, 0]);
    assert!((wide[0].1 - (0.4f64 * 0.95).ln()).abs() < 1e-12);
    assert_eq!(wide.len(), 2);
    // On the toy generator, width 1 is greedy decoding for RAG-Token and per document.
    let prior = doc_log_prior(&[0.3, 1.1, -0.4]);
    let mut f = |z: usize, p: &[u32]| toy(z, p);
    assert_eq!(
        rag_token_beam(&prior, 1, &[], 3, &mut f),
        rag_token_greedy(&prior, &[], 3, &mut f)
    );
    for z in 0..3 {
        assert_eq!(
            beams_for_doc(z, 1, &[], 3, &mut f),
            vec![greedy_for_doc(z, &[], 3, &mut f)]
        );
    }
    // Wider beams never find a worse best sequence (exhaustive over length-3 sequences here).
    let best_token = rag_token_beam(&prior, 4, &[], 3, &mut f);
    let greedy_token = rag_token_greedy(&prior, &[], 3, &mut f);
    assert!(
        rag_token_logprob(&prior, &best_token, &mut f)
            >= rag_token_logprob(&prior, &greedy_token, &mut f) - 1e-12
    );
    let exhaustive = all_seqs(3)
        .into_iter()
        .map(|y| rag_token_logprob(&prior, &y, &mut f))
        .fold(f64::NEG_INFINITY, f64::max);
    let wide = rag_token_beam(&prior, 27, &[], 3, &mut f);
    assert!((rag_token_logprob(&prior, &wide, &mut f) - exhaustive).abs() < 1e-12);
}
