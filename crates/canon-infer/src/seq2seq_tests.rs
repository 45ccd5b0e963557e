use super::*;
use canon_models::VarStore;
use canon_models::transformer::{Transformer, TransformerConfig};

fn tiny(seed: u64, eos: u32) -> Transformer {
    let c = TransformerConfig {
        family: Default::default(),
        vocab_size: 13,
        n_encoder_layers: 1,
        n_decoder_layers: 2,
        d_model: 16,
        n_head: 2,
        d_ff: 32,
        max_seq_len: 16,
        dropout: 0.0,
        norm_eps: 1e-6,
        pad_id: 0,
        bos_id: 1,
        eos_id: eos,
    };
    let store = VarStore::new_random(seed, c.init_policy());
    Transformer::load(c, &store).unwrap()
}

fn opts(beam: usize, alpha: f64) -> DecodeOptions {
    DecodeOptions {
        beam_size: beam,
        length_penalty: alpha,
        extra_len: 4,
        max_tokens: None,
    }
}

/// `log P(y | x)` by one teacher-forced pass (no cache), for checking the searches' sums.
fn score_of(m: &Transformer, src: &[u32], h: &Hypothesis) -> f64 {
    let mut tgt = vec![m.decoder_start_id()];
    tgt.extend(&h.tokens);
    let mut gold = h.tokens.clone();
    if h.finished {
        gold.push(m.eos_id());
    } else {
        tgt.pop();
    }
    let (s, mask) = pad_batch(&[src.to_vec()], 0, &Device::Cpu).unwrap();
    let t = Tensor::new(tgt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = m.forward_train(&s, &mask, &t).unwrap();
    let rows: Vec<Vec<f32>> = logits.squeeze(0).unwrap().to_vec2().unwrap();
    gold.iter()
        .zip(&rows)
        .map(|(&g, r)| log_softmax(r)[g as usize] as f64)
        .sum()
}

#[test]
fn beam_of_one_is_greedy_and_sums_are_teacher_forced_log_probs() {
    for seed in 0..6 {
        // eos = 2 is likely enough to end some searches early, never others.
        let m = tiny(seed, 2 + (seed % 3) as u32);
        let srcs = vec![vec![3u32, 4, 5, 6], vec![7, 8], vec![9, 10, 11, 12, 3]];
        let g = greedy(&m, &srcs, 0, &opts(1, 0.6)).unwrap();
        for (src, gh) in srcs.iter().zip(&g) {
            let b = beam_search(&m, src, &opts(1, 0.6)).unwrap();
            assert_eq!(b[0].tokens, gh.tokens, "seed {seed}");
            assert_eq!(b[0].finished, gh.finished);
            assert!((b[0].logprob - gh.logprob).abs() < 1e-4);
            assert!((score_of(&m, src, gh) - gh.logprob).abs() < 1e-4);
            assert!(gh.finished || gh.tokens.len() == src.len() + 4);
        }
        // Batched greedy equals one source at a time (padding does not leak).
        let one = greedy(&m, &srcs[1..2], 0, &opts(1, 0.6)).unwrap();
        assert_eq!(
            (&one[0].tokens, one[0].finished),
            (&g[1].tokens, g[1].finished)
        );
        assert!((one[0].logprob - g[1].logprob).abs() < 1e-4);
    }
}

#[test]
fn beam_never_scores_below_greedy_and_its_scores_are_consistent() {
    let mut strictly_better = 0;
    for seed in 0..8 {
        let m = tiny(100 + seed, 2);
        let src = vec![3u32, 4, 5, 6, 7];
        for alpha in [0.0, 0.6] {
            let g = greedy(&m, std::slice::from_ref(&src), 0, &opts(1, alpha)).unwrap();
            let b = beam_search(&m, &src, &opts(4, alpha)).unwrap();
            assert!(!b.is_empty() && b.len() <= 8);
            assert!(b.windows(2).all(|w| w[0].score >= w[1].score));
            assert!(
                b[0].score >= g[0].score - 1e-6,
                "seed {seed} α {alpha}: beam {} < greedy {}",
                b[0].score,
                g[0].score
            );
            if b[0].score > g[0].score + 1e-6 {
                strictly_better += 1;
            }
            for h in &b {
                // The cache reordering kept each hypothesis's own prefix.
                assert!(
                    (score_of(&m, &src, h) - h.logprob).abs() < 1e-3,
                    "seed {seed}"
                );
                let n = h.tokens.len() + usize::from(h.finished);
                assert!((h.score - h.logprob / length_penalty(n, alpha)).abs() < 1e-9);
            }
        }
    }
    // A search that only ever returned greedy's answer would not exercise the beams.
    assert!(strictly_better > 0);
}

#[test]
fn length_penalty_and_limits_follow_gnmt_and_the_paper() {
    assert_eq!(length_penalty(1, 0.6), 1.0);
    assert!((length_penalty(10, 0.6) - (15.0f64 / 6.0).powf(0.6)).abs() < 1e-12);
    assert_eq!(length_penalty(30, 0.0), 1.0);
    let m = tiny(1, 2);
    assert_eq!(DecodeOptions::default().limit(3, &m), 16); // 3 + 50, capped by the table
    assert_eq!(opts(4, 0.6).limit(3, &m), 7);
    let mut o = opts(0, 0.6);
    assert!(o.validate().is_err());
    o.beam_size = 2;
    o.length_penalty = -1.0;
    assert!(o.validate().is_err());
    assert!(greedy(&m, &[vec![]], 0, &opts(1, 0.0)).is_err());
}
