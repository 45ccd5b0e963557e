use super::*;

/// The sampler as it was before candidates far below the top were dropped: every candidate
/// sorted. Same config handling (no penalties here), same random stream.
fn sample_all_sorted(cfg: &SamplingConfig, rng: &mut StdRng, l: &[f32]) -> u32 {
    let mut cand: Vec<(u32, f32)> = l
        .iter()
        .enumerate()
        .filter(|(_, x)| !x.is_nan())
        .map(|(i, &x)| (i as u32, x))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = cfg.top_k {
        cand.truncate(k.max(1));
    }
    let probs = |cand: &[(u32, f32)], t: f32| -> Vec<f64> {
        let m = cand.first().map_or(0.0, |x| x.1) as f64;
        let e: Vec<f64> = cand
            .iter()
            .map(|x| ((x.1 as f64 - m) / t as f64).exp())
            .collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    };
    if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
        let pr = probs(&cand, 1.0);
        let (mut cum, mut keep) = (0.0, cand.len());
        for (i, q) in pr.iter().enumerate() {
            cum += q;
            if cum >= p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    if let Some(mp) = cfg.min_p.filter(|&m| m > 0.0) {
        let pr = probs(&cand, 1.0);
        let pmax = pr.first().copied().unwrap_or(1.0);
        let keep = pr.iter().take_while(|&&q| q >= mp as f64 * pmax).count();
        cand.truncate(keep.max(1));
    }
    let pr = probs(&cand, cfg.temperature);
    let u: f64 = rng.random();
    let mut cum = 0.0;
    for (i, q) in pr.iter().enumerate() {
        cum += q;
        if u < cum {
            return cand[i].0;
        }
    }
    cand.last().map_or(0, |x| x.0)
}

/// Dropping the candidates 40·max(1, T) below the top before sorting draws exactly the tokens
/// the full sort drew, seed for seed, on wide logit ranges (most of the vocabulary dropped),
/// flat ones (nothing dropped) and with every truncation option.
#[test]
fn dropping_negligible_candidates_draws_the_same_tokens() {
    let mut noise = StdRng::seed_from_u64(9);
    // (Without top-k, top-p or min-p, sampling takes the unsorted path: see
    // `untruncated_draws_follow_softmax_and_skip_masked_tokens`.)
    let configs = [
        (2.0, None, None, Some(1e-12)),
        (0.8, None, Some(0.95), None),
        (1.0, Some(40), Some(0.9), Some(0.05)),
        (0.3, None, None, Some(0.01)),
        (5.0, Some(3), None, None),
        (1.0, None, Some(0.999_999), None),
    ];
    let mut dropped = 0usize;
    for (ci, &(temperature, top_k, top_p, min_p)) in configs.iter().enumerate() {
        for spread in [0.5f32, 4.0, 20.0, 60.0] {
            let cfg = SamplingConfig {
                temperature,
                top_k,
                top_p,
                min_p,
                repeat_penalty: 1.0,
                seed: 1000 + ci as u64,
                ..SamplingConfig::default()
            };
            let mut fast = Sampler::new(cfg.clone()).unwrap();
            let mut rng = StdRng::seed_from_u64(cfg.seed);
            for _ in 0..200 {
                let l: Vec<f32> = (0..2000)
                    .map(|_| spread * (noise.random::<f32>() * 2.0 - 1.0))
                    .collect();
                let top = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                dropped += l
                    .iter()
                    .filter(|&&x| x < top - 40.0 * temperature.max(1.0))
                    .count();
                assert_eq!(
                    fast.sample(&l, &[]),
                    sample_all_sorted(&cfg, &mut rng, &l),
                    "config {ci}, spread {spread}"
                );
            }
        }
    }
    assert!(
        dropped > 100_000,
        "the test must drop candidates: {dropped}"
    );
}

/// The untruncated draw as it was before the block sums: the same probabilities, summed
/// token by token.
fn draw_token_by_token(rng: &mut StdRng, t: f32, masked: &[f32]) -> Option<u32> {
    let mut l = masked.to_vec();
    let top = l
        .iter()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if !top.is_finite() {
        return None;
    }
    for x in l.iter_mut() {
        *x = if x.is_nan() {
            f32::NEG_INFINITY
        } else {
            *x * (1.0 / t)
        };
    }
    canon_nn::fused::softmax_inplace(&mut l);
    let u: f64 = rng.random();
    let live = |i: usize| masked.get(i).is_some_and(|x| *x > f32::NEG_INFINITY);
    let total: f64 = l
        .iter()
        .enumerate()
        .filter(|&(i, _)| live(i))
        .map(|(_, &p)| p as f64)
        .sum();
    let target = u * total;
    let (mut cum, mut last) = (0.0f64, None);
    for (i, &p) in l.iter().enumerate() {
        if p > 0.0 && live(i) {
            cum += p as f64;
            last = Some(i as u32);
            if target < cum {
                return last;
            }
        }
    }
    last
}

/// Seed for seed, the block-summed draw picks the token the token-by-token walk picks: on
/// vocabularies that do and do not fill the last block, wide and flat logits, masked and NaN
/// logits, one live token, none.
#[test]
fn block_sums_draw_the_tokens_of_the_token_by_token_walk() {
    let mut noise = StdRng::seed_from_u64(21);
    let mut draws = 0;
    for &n in &[1usize, 7, 64, 65, 1000, 49_152] {
        for spread in [0.1f32, 3.0, 30.0] {
            for t in [0.3f32, 0.8, 1.0, 2.5] {
                let seed = noise.random::<u64>();
                let (mut a, mut b) = (StdRng::seed_from_u64(seed), StdRng::seed_from_u64(seed));
                for round in 0..20 {
                    let mut l: Vec<f32> = (0..n)
                        .map(|_| spread * (noise.random::<f32>() * 2.0 - 1.0))
                        .collect();
                    if round % 3 == 1 {
                        for (i, x) in l.iter_mut().enumerate() {
                            if i % 5 != 2 {
                                *x = if i % 7 == 0 {
                                    f32::NAN
                                } else {
                                    f32::NEG_INFINITY
                                };
                            }
                        }
                    }
                    let (mut probs, mut sums) = (Vec::new(), Vec::new());
                    assert_eq!(
                        draw_unsorted(&mut a, t, &l, &l, (&mut probs, &mut sums)),
                        draw_token_by_token(&mut b, t, &l),
                        "n {n} spread {spread} T {t} round {round}"
                    );
                    draws += 1;
                }
            }
        }
    }
    assert!(draws > 1000);
    let none = [f32::NEG_INFINITY, f32::NAN];
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(
        draw_unsorted(
            &mut rng,
            1.0,
            &none,
            &none,
            (&mut Vec::new(), &mut Vec::new())
        ),
        None
    );
}

#[test]
fn presence_and_frequency_penalties_subtract_per_window_counts() {
    // Token 0 leads by 1.5; seen twice in the window.
    let logits = [3.0f32, 1.5, 1.0];
    let greedy = |presence: f32, frequency: f32| {
        let mut s = Sampler::new(SamplingConfig {
            presence_penalty: presence,
            frequency_penalty: frequency,
            ..SamplingConfig::greedy()
        })
        .unwrap();
        s.sample(&logits, &[0, 0, 2])
    };
    assert_eq!(greedy(0.0, 0.0), 0);
    assert_eq!(greedy(1.0, 0.0), 0); // 3 − 1 = 2 > 1.5
    assert_eq!(greedy(2.0, 0.0), 1); // 3 − 2 = 1 < 1.5
    assert_eq!(greedy(0.0, 0.8), 1); // 3 − 2·0.8 = 1.4 < 1.5
    assert_eq!(greedy(-2.0, 0.0), 0);
}

fn cfg(t: f32) -> SamplingConfig {
    SamplingConfig {
        temperature: t,
        top_k: None,
        top_p: None,
        min_p: None,
        ..SamplingConfig::greedy()
    }
}

#[test]
fn greedy_takes_the_first_maximum() {
    let mut s = Sampler::new(cfg(0.0)).unwrap();
    assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
}

#[test]
fn same_seed_same_draws_and_frequencies_follow_softmax() {
    let logits = [1.0f32, 2.0, 0.5, 1.5];
    let draw = |seed| {
        let mut s = Sampler::new(SamplingConfig { seed, ..cfg(1.0) }).unwrap();
        (0..20000)
            .map(|_| s.sample(&logits, &[]))
            .collect::<Vec<_>>()
    };
    let a = draw(7);
    assert_eq!(a, draw(7));
    assert_ne!(a, draw(8));
    let p: Vec<f32> = log_softmax(&logits).iter().map(|x| x.exp()).collect();
    for (i, &pi) in p.iter().enumerate() {
        let f = a.iter().filter(|&&t| t as usize == i).count() as f32 / a.len() as f32;
        assert!(
            (f - pi).abs() < 0.015,
            "token {i}: frequency {f} vs probability {pi}"
        );
    }
}

#[test]
fn untruncated_draws_follow_softmax_and_skip_masked_tokens() {
    // Temperature 0.5 doubles the logit gaps.
    let logits = [1.0f32, 2.0, f32::NEG_INFINITY, 0.5, f32::NAN, 1.5];
    let mut s = Sampler::new(SamplingConfig {
        seed: 3,
        ..cfg(0.5)
    })
    .unwrap();
    let n = 40_000;
    let draws: Vec<u32> = (0..n).map(|_| s.sample(&logits, &[])).collect();
    let live = [0usize, 1, 3, 5];
    let z: f64 = live.iter().map(|&i| (2.0 * logits[i] as f64).exp()).sum();
    for (i, &logit) in logits.iter().enumerate() {
        let f = draws.iter().filter(|&&t| t as usize == i).count() as f64 / n as f64;
        let p = if live.contains(&i) {
            (2.0 * logit as f64).exp() / z
        } else {
            0.0
        };
        assert!((f - p).abs() < 0.01, "token {i}: frequency {f} vs {p}");
        if p == 0.0 {
            assert_eq!(f, 0.0, "masked token {i} was drawn");
        }
    }
    // One finite logit among masked ones: always that one, whatever the temperature.
    let mut s = Sampler::new(cfg(3.0)).unwrap();
    let one = [f32::NEG_INFINITY, -50.0, f32::NEG_INFINITY];
    assert!((0..100).all(|_| s.sample(&one, &[]) == 1));
    // No finite logit: the sorted path's answer (the last candidate), no panic.
    let none = [f32::NEG_INFINITY; 3];
    let _ = s.sample(&none, &[]);
}

#[test]
fn packed_key_sort_orders_as_total_cmp_then_id() {
    let mut noise = StdRng::seed_from_u64(5);
    let specials = [
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-30,
        -1e-30,
    ];
    for round in 0..50 {
        let mut cand: Vec<(u32, f32)> = (0..500u32)
            .map(|i| {
                let x = match noise.random_range(0..4) {
                    0 => specials[noise.random_range(0..specials.len())],
                    // Few distinct values: many ties.
                    1 => (noise.random_range(0..5) as f32) - 2.0,
                    _ => (noise.random::<f32>() - 0.5) * 100.0,
                };
                (i * 7 % 503 + round, x)
            })
            .collect();
        let mut want = cand.clone();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        sort_candidates(&mut cand);
        assert_eq!(
            cand.iter()
                .map(|c| (c.0, c.1.to_bits()))
                .collect::<Vec<_>>(),
            want.iter()
                .map(|c| (c.0, c.1.to_bits()))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn top_k_top_p_min_p_restrict_the_support() {
    let logits = [5.0f32, 4.0, 3.0, 0.0, -2.0];
    let support = |c: SamplingConfig| {
        let mut s = Sampler::new(c).unwrap();
        let mut seen: Vec<u32> = (0..3000).map(|_| s.sample(&logits, &[])).collect();
        seen.sort();
        seen.dedup();
        seen
    };
    assert_eq!(
        support(SamplingConfig {
            top_k: Some(2),
            ..cfg(1.0)
        }),
        vec![0, 1]
    );
    // p(0) = 0.6652, p(0)+p(1) = 0.9099: top-p 0.9 keeps two tokens.
    assert_eq!(
        support(SamplingConfig {
            top_p: Some(0.9),
            ..cfg(1.0)
        }),
        vec![0, 1]
    );
    // min-p 0.2: p(2)/p(0) = e^-2 = 0.135 < 0.2, p(1)/p(0) = 0.37.
    assert_eq!(
        support(SamplingConfig {
            min_p: Some(0.2),
            ..cfg(1.0)
        }),
        vec![0, 1]
    );
}

#[test]
fn repeat_penalty_divides_positive_and_multiplies_negative_logits() {
    let mut s = Sampler::new(SamplingConfig {
        repeat_penalty: 2.0,
        ..cfg(0.0)
    })
    .unwrap();
    // Token 0 (3.0 → 1.5) loses to token 1 (2.0) once it was seen.
    assert_eq!(s.sample(&[3.0, 2.0], &[0]), 1);
    assert_eq!(s.sample(&[3.0, 2.0], &[]), 0);
    // Negative: -1.0 → -2.0 < -1.5.
    assert_eq!(s.sample(&[-1.0, -1.5], &[0]), 1);
}

#[test]
fn invalid_settings_are_rejected() {
    assert!(
        Sampler::new(SamplingConfig {
            top_p: Some(1.5),
            ..cfg(1.0)
        })
        .is_err()
    );
    assert!(
        Sampler::new(SamplingConfig {
            top_k: Some(0),
            ..cfg(1.0)
        })
        .is_err()
    );
    assert!(Sampler::new(cfg(-1.0)).is_err());
}
