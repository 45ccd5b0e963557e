use super::*;
use crate::lm::{ScalarHead, tiny_config};
use crate::task::{CharVocab, split};
use canon_train::{Engine, OptimizerConfig, Schedule, TrainConfig};

fn engine_cfg(steps: u64) -> TrainConfig {
    TrainConfig {
        batch_size: 1,
        block_size: 1,
        grad_accum: 1,
        max_steps: steps,
        lr: 1e-2,
        schedule: Schedule::Constant { warmup: 0 },
        optimizer: OptimizerConfig::default(),
        grad_clip: Some(1.0),
        eval_every: 1000,
        eval_batches: 1,
        log_every: 1,
        checkpoint_every: 1000,
        seed: 3,
        z_loss: 0.0,
        moe_aux_weight: 0.0,
    }
}

/// Mean planted reward of the first and last rollouts and the last rollout's KL.
fn run_planted(beta: f64, rollouts: u64) -> (f64, f64, f64) {
    let (first, last, kl, _) = run_planted_kl(beta, rollouts, None);
    (first, last, kl)
}

/// The planted reward: how many times the response writes '7'.
fn planted_reward() -> impl Fn(&[Problem], &[Vec<u32>]) -> Result<Vec<f64>> {
    let target = CharVocab.encode("7").unwrap()[0];
    move |_: &[Problem], resp: &[Vec<u32>]| {
        Ok(resp
            .iter()
            .map(|r| r.iter().filter(|&&t| t == target).count() as f64)
            .collect())
    }
}

/// As `run_planted`, with the adaptive KL controller when `kl_target` is set; also returns
/// each rollout's (KL, β used) and β after the last rollout.
#[allow(clippy::type_complexity)]
fn run_planted_kl(
    beta: f64,
    rollouts: u64,
    kl_target: Option<f64>,
) -> (f64, f64, f64, (Vec<(f64, f64)>, f64)) {
    let cfg = tiny_config(CharVocab.size(), 1, 16, 16);
    let reference = Lm::new_random(cfg.clone(), 9).unwrap();
    let mut policy = Lm::new_random(cfg, 9).unwrap();
    policy.head = Some(ScalarHead::zeros(16).unwrap());
    let reward = planted_reward();
    let (train, _) = split(1);
    let ppo = PpoConfig {
        rollout_prompts: 32,
        max_new: 6,
        minibatches: 2,
        ppo_epochs: 2,
        beta,
        kl_target,
        // A short horizon, so that a few rollouts move β visibly.
        kl_horizon: 320.0,
        ..PpoConfig::default()
    };
    let per = ppo.steps_per_rollout();
    let mut obj = PpoObjective::new(
        &policy,
        &reference,
        &reward,
        &train,
        &[],
        &[],
        &[],
        None,
        ppo,
        1,
    )
    .unwrap();
    let mut engine = Engine::new(policy.params(), engine_cfg(rollouts * per)).unwrap();
    let (mut first, mut last, mut kl) = (f64::NAN, 0.0, 0.0);
    let mut per_rollout = Vec::new();
    for s in 0..rollouts * per {
        let r = engine.train_step(&mut obj).unwrap();
        if s % per == 0 {
            per_rollout.push((r.get("kl").unwrap(), r.get("beta").unwrap()));
        }
        if s == 0 {
            first = r.get("reward").unwrap();
        }
        last = r.get("reward").unwrap();
        kl = r.get("kl").unwrap();
        assert!(r.get("clipfrac").unwrap() >= 0.0);
    }
    assert_eq!(obj.rollouts, rollouts);
    (first, last, kl, (per_rollout, obj.beta))
}

#[test]
fn the_adaptive_controller_moves_beta_toward_the_kl_target() {
    // Without a target β stays put.
    let (.., (rows, b)) = run_planted_kl(0.1, 4, None);
    assert_eq!(b, 0.1);
    assert!(rows.iter().all(|&(_, beta)| beta == 0.1));
    // With one, each rollout's β follows from the previous rollout's KL by Ziegler et al.'s
    // rule (32 responses a rollout, horizon 320): a step of at most ±2 %.
    for target in [1e-3, 0.05, 1e6] {
        let (.., (rows, last)) = run_planted_kl(0.1, 5, Some(target));
        let mut want = 0.1;
        for (i, &(kl, beta)) in rows.iter().enumerate() {
            assert!(
                (beta - want).abs() < 1e-12,
                "rollout {i}: β {beta}, expected {want}"
            );
            want *= 1.0 + (kl / target - 1.0).clamp(-0.2, 0.2) * 32.0 / 320.0;
        }
        assert!((last - want).abs() < 1e-12);
        if target == 1e6 {
            assert!((last / 0.1 - 0.98f64.powi(5)).abs() < 1e-9, "{last}");
        }
    }
}

#[test]
fn tiny_ppo_learns_a_planted_reward() {
    let (first, last, kl) = run_planted(0.01, 30);
    assert!(last > 2.0 * first.max(0.05), "reward {first} -> {last}");
    assert!(kl > 0.0, "the policy moved away from the reference");
    // A strong KL penalty holds the policy closer to the reference.
    let (_, _, kl_strong) = run_planted(1.0, 30);
    assert!(
        kl_strong < kl,
        "KL with β=1: {kl_strong}, with β=0.01: {kl}"
    );
}

/// PPO with a LoRA policy (paper 13's adapters on every dense linear, base frozen): the
/// optimizer sees only the adapters and the value head, the planted reward is learned, the
/// trunk's weights do not move, and merging the adapters gives the same logits.
#[test]
fn a_lora_policy_learns_the_planted_reward_with_its_base_frozen() {
    use candle_core::Tensor;
    use canon_models::{CausalLm, Positions};
    let cfg = tiny_config(CharVocab.size(), 1, 16, 16);
    let reference = Lm::new_random(cfg.clone(), 9).unwrap();
    let mut policy = Lm::new_random(cfg, 9).unwrap();
    let set = crate::pipeline::attach_policy_lora(&mut policy, 4, 8.0, 5).unwrap();
    // One layer: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj.
    assert_eq!(set.modules.len(), 4);
    policy.head = Some(ScalarHead::zeros(16).unwrap());
    let trunk = |lm: &Lm| -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<_> = lm
            .store
            .vars()
            .into_iter()
            .map(|(n, var, _)| {
                let x = var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                (n, x)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let before = trunk(&policy);
    let reward = planted_reward();
    let (train, _) = split(1);
    let ppo = PpoConfig {
        rollout_prompts: 32,
        max_new: 6,
        minibatches: 2,
        ppo_epochs: 2,
        beta: 0.01,
        lora_rank: 4,
        lora_alpha: 8.0,
        ..PpoConfig::default()
    };
    let per = ppo.steps_per_rollout();
    let rollouts = 30;
    let mut obj = PpoObjective::new(
        &policy,
        &reference,
        &reward,
        &train,
        &[],
        &[],
        &[],
        None,
        ppo,
        1,
    )
    .unwrap()
    .with_trainable(set.params());
    let params = obj.params();
    let mut names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names.len(), 2 * 4 + 2, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.contains(".lora_") || n.starts_with("head.")),
        "{names:?}"
    );
    let mut engine = Engine::new(params, engine_cfg(rollouts * per)).unwrap();
    let (mut first, mut last) = (f64::NAN, 0.0);
    for s in 0..rollouts * per {
        let r = engine.train_step(&mut obj).unwrap();
        if s == 0 {
            first = r.get("reward").unwrap();
        }
        last = r.get("reward").unwrap();
    }
    assert!(last > 2.0 * first.max(0.05), "reward {first} -> {last}");
    drop(obj);
    // Only the adapters (and the head, not in the store) moved.
    assert_eq!(trunk(&policy), before);
    let b_norm: f32 = set.modules[0]
        .b
        .as_tensor()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(b_norm > 0.0, "the adapters did not train");
    // Merging keeps the function and changes the stored weights.
    let ids = Tensor::new(&[[3u32, 9, 14, 2, 7]], &candle_core::Device::Cpu).unwrap();
    let logits = |lm: &Lm| {
        lm.gpt
            .forward(&ids, &mut lm.gpt.new_cache(), Positions::All)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let adapted = logits(&policy);
    crate::pipeline::merge_policy_lora(&mut policy, &set).unwrap();
    let merged = logits(&policy);
    for (a, m) in adapted.iter().zip(&merged) {
        assert!((a - m).abs() <= 1e-4 + 1e-4 * a.abs(), "{a} vs {m}");
    }
    assert_ne!(trunk(&policy), before);
}

#[test]
fn reward_whitening_keeps_the_mean_and_scales_to_unit_std() {
    let mut rows = vec![vec![1.0, 2.0], vec![3.0], vec![6.0, 0.0, 0.0]];
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let mean = flat.iter().sum::<f64>() / 6.0;
    whiten_rows(&mut rows, false);
    let w: Vec<f64> = rows.iter().flatten().copied().collect();
    let m2 = w.iter().sum::<f64>() / 6.0;
    let sd = (w.iter().map(|x| (x - m2).powi(2)).sum::<f64>() / 6.0).sqrt();
    assert!(
        (m2 - mean).abs() < 1e-12 && (sd - 1.0).abs() < 1e-6,
        "{m2} {sd}"
    );
    assert_eq!(rows.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1, 3]);
    whiten_rows(&mut rows, true);
    assert!(rows.iter().flatten().sum::<f64>().abs() < 1e-9);
}

#[test]
fn a_separate_value_model_trains_beside_a_headless_policy() {
    let cfg = tiny_config(CharVocab.size(), 1, 16, 16);
    let reference = Lm::new_random(cfg.clone(), 9).unwrap();
    let policy = Lm::new_random(cfg.clone(), 9).unwrap();
    let mut value = Lm::new_random(cfg, 11).unwrap();
    value.head = Some(ScalarHead::zeros(16).unwrap());
    let target = CharVocab.encode("7").unwrap()[0];
    let reward = move |_: &[Problem], resp: &[Vec<u32>]| -> Result<Vec<f64>> {
        Ok(resp
            .iter()
            .map(|r| 3.0 * r.iter().filter(|&&t| t == target).count() as f64)
            .collect())
    };
    let (train, _) = split(1);
    let ppo = PpoConfig {
        rollout_prompts: 16,
        max_new: 6,
        minibatches: 2,
        ppo_epochs: 2,
        beta: 0.01,
        whiten_rewards: true,
        ..PpoConfig::default()
    };
    let make = || {
        PpoObjective::new(
            &policy,
            &reference,
            &reward,
            &train,
            &[],
            &[],
            &[],
            None,
            ppo.clone(),
            1,
        )
        .unwrap()
    };
    // Without a head anywhere there is no value function.
    let mut bare = make();
    let mut rng = SplitMix64::new(1);
    match bare.train_batch(&mut rng, 0) {
        Err(e) => assert!(e.to_string().contains("value"), "{e}"),
        Ok(_) => panic!("PPO ran without a value function"),
    }
    let mut obj = make().with_value_model(&value).unwrap();
    let params = obj.params();
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"value.head.weight") && !names.contains(&"head.weight"));
    assert_eq!(params.len(), 2 * policy.params().len() + 2);
    let w0: Vec<f32> = value
        .head
        .as_ref()
        .unwrap()
        .w
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut engine = Engine::new(params, engine_cfg(8)).unwrap();
    for _ in 0..8 {
        let r = engine.train_step(&mut obj).unwrap();
        assert!(r.get("value_loss").unwrap().is_finite());
    }
    let w1: Vec<f32> = value
        .head
        .as_ref()
        .unwrap()
        .w
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(w0 != w1, "the value model's head did not move");
}

#[test]
fn bad_configs_are_rejected() {
    let c = PpoConfig {
        minibatches: 100,
        ..PpoConfig::default()
    };
    assert!(c.validate().is_err());
    let c = PpoConfig {
        beta: -1.0,
        ..PpoConfig::default()
    };
    assert!(c.validate().unwrap_err().contains("beta"));
}
