//! RLAIF (paper 29): the LM labeller's prefix-cached scoring against a direct computation (on the
//! test kit's tiny GGUF llama, no downloads), and the whole experiment at toy size with scripted
//! labellers (an oracle and a position-biased one).

use std::path::Path;

use canon_align::pipeline::{self, PpoOpts, RewardKind, RmOpts, SftOpts, ValueInit};
use canon_align::ppo::PpoConfig;
use canon_align::rlaif::{
    COT_ENDING, Labeller, LmLabeller, cot_prompt_text, p_first, prompt_ids, rating_prompt_text,
};
use canon_align::rlaif_run::{self, RlaifOpts, SoftRmOpts};
use canon_align::task::{Problem, judge};
use canon_models::{LoadedLm, ModelSpec, Positions, WeightMode, load_causal_lm};
use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};
use canon_testkit::{Tol, check_close};

fn tiny_lm(dir: &Path) -> LoadedLm {
    let p = dir.join("tiny.gguf");
    let opts = TinyLlama {
        context_length: 2048,
        ..TinyLlama::default()
    };
    write_tiny_llama(&p, &opts).unwrap();
    load_causal_lm(
        &ModelSpec::Gguf(p),
        WeightMode::DequantizeF32,
        &canon_assets::Quiet,
    )
    .unwrap()
}

fn full_logits(lm: &LoadedLm, ids: &[u32]) -> Vec<f32> {
    let mut cache = lm.model.new_cache();
    let t = candle_core::Tensor::new(ids, &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    lm.model
        .forward(&t, &mut cache, Positions::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn softmax_at(l: &[f32], i: usize) -> f64 {
    let m = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum();
    (l[i] as f64 - m).exp() / z
}

/// Chain-of-thought labelling: greedy rationale after the prompt, then the ending, then the
/// label, with the prefix cache and the rationale's KV state, equals one uncached computation
/// (greedy decoding by full forward passes, then one pass over prompt + rationale + ending).
#[test]
fn chain_of_thought_labels_match_a_direct_computation() {
    let d = tempfile::tempdir().unwrap();
    let lm = tiny_lm(d.path());
    assert!(
        LmLabeller::new(&lm)
            .unwrap()
            .with_chain_of_thought(0)
            .is_err()
    );
    let max = 6;
    let mut lab = LmLabeller::new(&lm)
        .unwrap()
        .with_chain_of_thought(max)
        .unwrap();
    assert!(
        lab.name().contains("chain of thought, 6 tokens"),
        "{}",
        lab.name()
    );
    let p = Problem { a: 12, b: 30 };
    let strip = |v: Vec<u32>| -> Vec<u32> {
        v.into_iter()
            .filter(|&t| Some(t) != lm.tokenizer.bos_id)
            .collect()
    };
    for (x, y) in [("42.", "sum is 41."), ("sum is 41.", "42.")] {
        let got = lab.p_first(&p, x, y).unwrap();
        let text = cot_prompt_text(&lm, &p, x, y).unwrap();
        let mut ids = lm.tokenizer.encode(&text, true).unwrap();
        let mut why = Vec::new();
        for _ in 0..max {
            let l = full_logits(&lm, &ids);
            let next = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
            if Some(next) == lm.tokenizer.eos_id {
                break;
            }
            why.push(next);
            ids.push(next);
            if lm
                .tokenizer
                .decode(&why, true)
                .unwrap()
                .trim_start()
                .contains("\n\n")
            {
                break;
            }
        }
        ids.extend(strip(lm.tokenizer.encode(COT_ENDING, false).unwrap()));
        let l = full_logits(&lm, &ids);
        let one = strip(lm.tokenizer.encode("1", false).unwrap())[0] as usize;
        let two = strip(lm.tokenizer.encode("2", false).unwrap())[0] as usize;
        let want = 1.0 / (1.0 + (l[two] as f64 - l[one] as f64).exp());
        check_close(&[got], &[want], Tol::new(1e-5, 1e-4)).unwrap();
        let last = lab.rationales.last().unwrap();
        assert_eq!(last, lm.tokenizer.decode(&why, true).unwrap().trim());
    }
    assert_eq!(lab.rationales.len(), 2);
}

#[test]
fn the_prefix_cached_labeller_matches_a_direct_computation() {
    let d = tempfile::tempdir().unwrap();
    let lm = tiny_lm(d.path());
    let mut lab = LmLabeller::new(&lm).unwrap();
    let p = Problem { a: 12, b: 30 };
    // Pairwise preference: cached preamble + question vs one uncached pass over the whole prompt.
    let mut got = Vec::new();
    let mut want = Vec::new();
    for (x, y) in [("42.", "sum is 41."), ("sum is 41.", "42."), ("42", "42.")] {
        got.push(lab.p_first(&p, x, y).unwrap());
        want.push(p_first(&lm, &prompt_ids(&lm, &p, x, y).unwrap()).unwrap());
    }
    check_close(&got, &want, Tol::new(1e-5, 1e-4)).unwrap();
    assert_eq!(lab.calls, 3);
    // Ratings: P(r) ∝ p(r) for r = 2..9, p("1")·p("0"|"1") for 10, p("1")·(1 − p("0"|"1")) for 1.
    let probs = lab.rating_probs(&p, "42.").unwrap();
    let text = rating_prompt_text(&lm, &p, "42.").unwrap();
    let ids = lm.tokenizer.encode(&text, true).unwrap();
    let digit = |c: &str| {
        let v: Vec<u32> = lm
            .tokenizer
            .encode(c, false)
            .unwrap()
            .into_iter()
            .filter(|&t| Some(t) != lm.tokenizer.bos_id)
            .collect();
        assert_eq!(v.len(), 1);
        v[0] as usize
    };
    let first = full_logits(&lm, &ids);
    let mut ext = ids.clone();
    ext.push(digit("1") as u32);
    let p0 = softmax_at(&full_logits(&lm, &ext), digit("0"));
    let p1 = softmax_at(&first, digit("1"));
    let mut lik = vec![p1 * (1.0 - p0)];
    for r in 2..=9 {
        lik.push(softmax_at(&first, digit(&r.to_string())));
    }
    lik.push(p1 * p0);
    let z: f64 = lik.iter().sum();
    let want: Vec<f64> = lik.iter().map(|x| x / z).collect();
    check_close(&probs, &want, Tol::new(1e-6, 1e-4)).unwrap();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    // Memoised: the same answer again costs no labeller call.
    let calls = lab.calls;
    let again = lab.d_rlaif_reward(&p, "42.").unwrap();
    assert_eq!(lab.calls, calls);
    assert!((-1.0..=1.0).contains(&again));
}

/// Prefers the gold judge's better answer with probability 0.9 (0.5 on ties); rates by the judge.
struct Oracle;
impl Labeller for Oracle {
    fn name(&self) -> String {
        "oracle".into()
    }
    fn p_first(&mut self, p: &Problem, first: &str, second: &str) -> canon_align::Result<f64> {
        let (a, b) = (judge(p, first).score(), judge(p, second).score());
        Ok(if a > b {
            0.9
        } else if a < b {
            0.1
        } else {
            0.5
        })
    }
    fn rating_probs(&mut self, p: &Problem, answer: &str) -> canon_align::Result<[f64; 10]> {
        let mut r = [0.0; 10];
        r[(judge(p, answer).score() * 2.0).round().clamp(0.0, 9.0) as usize] = 1.0;
        Ok(r)
    }
}

/// Always prefers the answer shown first (0.8) and rates everything 5.
struct FirstShown;
impl Labeller for FirstShown {
    fn name(&self) -> String {
        "first-shown".into()
    }
    fn p_first(&mut self, _: &Problem, _: &str, _: &str) -> canon_align::Result<f64> {
        Ok(0.8)
    }
    fn rating_probs(&mut self, _: &Problem, _: &str) -> canon_align::Result<[f64; 10]> {
        let mut r = [0.0; 10];
        r[4] = 1.0;
        Ok(r)
    }
}

fn opts(pairs: usize, d_rlaif: bool) -> RlaifOpts {
    RlaifOpts {
        pairs,
        rm: SoftRmOpts {
            epochs: 1,
            batch: 8,
            lr: 1e-3,
        },
        ppo: PpoOpts {
            name: String::new(),
            rollouts: 1,
            lr: 3e-4,
            reward: RewardKind::Model,
            value: ValueInit::RewardModel,
            cfg: PpoConfig {
                rollout_prompts: 8,
                minibatches: 2,
                ppo_epochs: 1,
                ..PpoConfig::default()
            },
        },
        d_rlaif,
    }
}

#[test]
fn the_experiment_runs_at_toy_size_with_scripted_labellers() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sft = SftOpts {
        steps: 150,
        lr: 3e-3,
        batch: 64,
        layers: 1,
        width: 32,
        per_prompt: 1,
    };
    pipeline::sft(dir, 1, &sft, &mut |_| {}).unwrap();
    let rm = RmOpts {
        k: 4,
        train_prompts: 40,
        val_prompts: 40,
        batch: 4,
        lr: 1e-3,
    };
    pipeline::rm(dir, 1, &rm, &mut |_| {}).unwrap();
    let mut stages = Vec::new();
    let r = rlaif_run::run(dir, 1, &mut Oracle, &opts(24, true), &mut |s, _, _| {
        if stages.last().map(String::as_str) != Some(s) {
            stages.push(s.to_string());
        }
    })
    .unwrap();
    assert_eq!((r.agreement_one_order, r.agreement_both_orders), (1.0, 1.0));
    assert!(r.strict_pairs > 0 && r.pairs <= 24);
    assert_eq!(r.arms.len(), 3);
    assert!(r.arms[..2].iter().all(|a| a.rm_pair_accuracy.is_some()));
    assert!(r.arms[2].rm_pair_accuracy.is_none());
    for a in &r.arms {
        assert!((0.0..=1.0).contains(&a.win_rate_vs_sft), "{a:?}");
    }
    assert!(stages.iter().any(|s| s == "label") && stages.iter().any(|s| s == "rm-ai"));
    assert!(dir.join("rlaif/rlaif.png").is_file());
    assert!(
        dir.join("rlaif/ppo-rm-ai/value/model.safetensors")
            .is_file()
    );
    let table = r.table();
    assert!(
        table.contains("| RLAIF |") && table.contains("d-RLAIF"),
        "{table}"
    );
    // The same pairs and labeller: the labels are reused, not asked again.
    let again = rlaif_run::run(dir, 1, &mut Oracle, &opts(24, false), &mut |_, _, _| {}).unwrap();
    assert_eq!(again.label_seconds, 0.0);
    assert_eq!(again.arms.len(), 2);
    // A labeller that only prefers the answer shown first: after the swap every AI label is a
    // 0.5 tie, which never agrees with a strict gold ranking.
    let biased =
        rlaif_run::run(dir, 1, &mut FirstShown, &opts(24, false), &mut |_, _, _| {}).unwrap();
    assert_eq!(biased.agreement_both_orders, 0.0);
    assert!((biased.mean_p_first_shown - 0.8).abs() < 1e-12);
}

#[test]
fn too_few_pairs_and_a_missing_rm_stage_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let e =
        rlaif_run::run(d.path(), 1, &mut Oracle, &opts(1, false), &mut |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("--pairs"), "{e}");
    let e = rlaif_run::run(
        d.path(),
        1,
        &mut Oracle,
        &opts(10, false),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("groups.json"), "{e}");
}
