//! The alignment formulas, each small enough to check against a hand computation.
//!
//! - InstructGPT (Ouyang et al., 2022, paper 20), reward model:
//!   `loss = −1/C(K,2) · Σ_{(w,l)} log σ(r(x, y_w) − r(x, y_l))` over every ranked pair of a
//!   prompt's K responses, all K responses in one batch element ([`pairwise_loss`]).
//! - PPO as in `lm-human-preferences` / TRL: per-token reward `−β (log π − log π_ref)` with the
//!   RM score added at the last response token ([`kl_rewards`]); GAE
//!   `δ_t = r_t + γ V_{t+1} − V_t`, `A_t = δ_t + γλ A_{t+1}` ([`gae`]); the clipped surrogate
//!   `max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))` with `ρ = exp(log π − log π_old)` ([`clipped_pg_loss`]); the
//!   clipped value loss `½·max((V−R)², (V_old + clip(V−V_old, ±ε_v) − R)²)` ([`clipped_value_loss`]).
//! - DPO (Rafailov et al., 2023): `−log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])`.
//! - Let's Verify Step by Step (paper 21): a solution's PRM score is `Π_s p(step s correct)`,
//!   summed in log space ([`prm_log_score`]); best-of-N takes the arg-max, earliest on ties, after
//!   dropping samples without an answer ([`best_of_n`]); majority voting ([`majority`]).
//! - RLAIF (paper 29): position-debiased preference `(P₁(first | A,B) + P₂(second | B,A)) / 2`
//!   ([`debiased_preference`]); the soft-label RM loss ([`soft_pair_loss`]); d-RLAIF's score map.
//! - Weak-to-strong (paper 30): PGR ([`pgr`]) and the auxiliary confidence loss of the reference
//!   `logconf_loss_fn` ([`logconf_loss`]).

use candle_core::{Device, Tensor};

use crate::{Result, data_err};

/// `softplus(x) = log(1 + eˣ)`, stable for large |x| (records a backward pass).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    // relu(x) + log(1 + e^{−|x|})
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

/// Every ordered (winner, loser) pair of a ranking: `scores[w] > scores[l]`; ties give no pair.
/// With K distinct scores this is exactly C(K, 2) pairs.
pub fn comparisons(scores: &[f64]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for i in 0..scores.len() {
        for j in 0..scores.len() {
            if scores[i] > scores[j] {
                v.push((i, j));
            }
        }
    }
    v
}

/// InstructGPT's RM loss for one prompt: mean over `pairs` of `−log σ(r_w − r_l)`; `rewards: [K]`.
pub fn pairwise_loss(rewards: &Tensor, pairs: &[(usize, usize)]) -> Result<Tensor> {
    if pairs.is_empty() {
        return Err(data_err(
            "pairwise loss: no ranked pair (all responses tied)",
        ));
    }
    let w: Vec<u32> = pairs.iter().map(|p| p.0 as u32).collect();
    let l: Vec<u32> = pairs.iter().map(|p| p.1 as u32).collect();
    let n = pairs.len();
    let rw = rewards.index_select(&Tensor::from_vec(w, n, &Device::Cpu)?, 0)?;
    let rl = rewards.index_select(&Tensor::from_vec(l, n, &Device::Cpu)?, 0)?;
    Ok(softplus(&(rl - rw)?)?.mean_all()?)
}

/// RLAIF's distilled RM loss for one pair with AI preference `p1 = P(y1 ≻ y2)`: cross-entropy
/// between `softmax([r1, r2])` and `[p1, 1 − p1]`; `r1, r2: [n]`, `p1: [n]`.
pub fn soft_pair_loss(r1: &Tensor, r2: &Tensor, p1: &Tensor) -> Result<Tensor> {
    let d = (r1 - r2)?;
    let a = (p1 * softplus(&d.neg()?)?)?;
    let b = (p1.affine(-1.0, 1.0)? * softplus(&d)?)?;
    Ok((a + b)?.mean_all()?)
}

/// DPO: `mean −log σ(β[(π_w − ref_w) − (π_l − ref_l)])` over sequence log-probabilities `[n]`.
pub fn dpo_loss(
    pi_w: &Tensor,
    pi_l: &Tensor,
    ref_w: &Tensor,
    ref_l: &Tensor,
    beta: f64,
) -> Result<Tensor> {
    let margin = ((pi_w - ref_w)? - (pi_l - ref_l)?)?;
    Ok(softplus(&(margin * (-beta))?)?.mean_all()?)
}

/// Per-token rewards of one response: `−β (logp_t − ref_t)`, plus `score` at the last token.
pub fn kl_rewards(logp: &[f64], ref_logp: &[f64], beta: f64, score: f64) -> Vec<f64> {
    let mut r: Vec<f64> = logp
        .iter()
        .zip(ref_logp)
        .map(|(a, b)| -beta * (a - b))
        .collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// The adaptive KL controller of Ziegler et al. (2019), used by `lm-human-preferences` and TRL:
/// after each rollout, `β ← β · (1 + e · n / horizon)` with the proportional error
/// `e = clip(KL / target − 1, −0.2, 0.2)`, where KL is the rollout's mean per-response KL and `n`
/// the responses it holds. β rises while the policy drifts faster than the target, and falls when
/// it stays closer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveKl {
    pub value: f64,
    pub target: f64,
    pub horizon: f64,
}

impl AdaptiveKl {
    /// Updates β from a rollout of `n` responses whose mean KL was `kl`; returns the new β.
    pub fn update(&mut self, kl: f64, n: usize) -> f64 {
        let e = (kl / self.target - 1.0).clamp(-0.2, 0.2);
        self.value *= 1.0 + e * n as f64 / self.horizon;
        self.value
    }
}

/// Generalised advantage estimation over one response (value after the last token is 0):
/// returns (advantages, returns = advantages + values).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        last = delta + gamma * lam * last;
        adv[t] = last;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// `(x − mean)/std` (population std, +1e-8), or without the mean shift (`shift_mean = false`,
/// `lm-human-preferences`' reward whitening), over all values.
pub fn whiten(xs: &mut [f64], shift_mean: bool) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return;
    }
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let sd = (var + 1e-8).sqrt();
    for x in xs.iter_mut() {
        *x = if shift_mean {
            (*x - mean) / sd
        } else {
            (*x - mean) / sd + mean
        };
    }
}

/// PPO's clipped surrogate over tokens: `mean max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))` and the fraction
/// of tokens where the clipped term is the larger (TRL's `clipfrac`). All inputs `[n]`.
pub fn clipped_pg_loss(
    new_logp: &Tensor,
    old_logp: &Tensor,
    adv: &Tensor,
    clip: f64,
) -> Result<(Tensor, f64)> {
    let ratio = (new_logp - old_logp)?.exp()?;
    let l1 = (adv.neg()? * &ratio)?;
    let l2 = (adv.neg()? * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
    let frac = {
        let a: Vec<f32> = l1.detach().to_vec1()?;
        let b: Vec<f32> = l2.detach().to_vec1()?;
        a.iter().zip(&b).filter(|(x, y)| y > x).count() as f64 / a.len().max(1) as f64
    };
    Ok((l1.maximum(&l2)?.mean_all()?, frac))
}

/// The clipped value loss `½·mean max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)`; `[n]` each.
pub fn clipped_value_loss(
    v: &Tensor,
    old_v: &Tensor,
    returns: &Tensor,
    clip: f64,
) -> Result<Tensor> {
    let vc = (old_v + (v - old_v)?.clamp(-clip, clip)?)?;
    let a = (v - returns)?.sqr()?;
    let b = (vc - returns)?.sqr()?;
    Ok((a.maximum(&b)?.mean_all()? * 0.5)?)
}

/// `log Π_s p_s = Σ_s log p_s` (no underflow for long solutions).
pub fn prm_log_score(step_probs: &[f64]) -> f64 {
    step_probs.iter().map(|p| p.max(1e-300).ln()).sum()
}

/// Index of the best score among samples that have one; the earliest on ties; `None` when no
/// sample has a score.
pub fn best_of_n(scores: &[Option<f64>]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in scores.iter().enumerate() {
        if let Some(s) = *s
            && best.is_none_or(|(_, b)| s > b)
        {
            best = Some((i, s));
        }
    }
    best.map(|b| b.0)
}

/// The most frequent answer; on a tie the one that appeared first; `None` if no sample answered.
pub fn majority(answers: &[Option<i64>]) -> Option<i64> {
    let mut counts: Vec<(i64, usize, usize)> = Vec::new(); // (answer, count, first index)
    for (i, a) in answers.iter().enumerate() {
        if let Some(a) = *a {
            match counts.iter_mut().find(|c| c.0 == a) {
                Some(c) => c.1 += 1,
                None => counts.push((a, 1, i)),
            }
        }
    }
    counts
        .into_iter()
        .max_by(|x, y| x.1.cmp(&y.1).then(y.2.cmp(&x.2)))
        .map(|c| c.0)
}

/// RLAIF's debiased `P(A ≻ B)` from `p_ab = P(first wins | A, B)` and
/// `p_ba = P(first wins | B, A)`: `(p_ab + (1 − p_ba)) / 2`.
pub fn debiased_preference(p_ab: f64, p_ba: f64) -> f64 {
    (p_ab + (1.0 - p_ba)) / 2.0
}

/// d-RLAIF: expected score `s = Σ i·P(i)` over scores 1..=10, mapped to `(s − 5.5)/4.5 ∈ [−1, 1]`.
pub fn d_rlaif_reward(probs: &[f64; 10]) -> f64 {
    let s: f64 = probs
        .iter()
        .enumerate()
        .map(|(i, p)| (i + 1) as f64 * p)
        .sum();
    (s - 5.5) / 4.5
}

/// Performance gap recovered, `(w2s − weak)/(ceiling − weak)`; `None` when the ceiling does not
/// exceed the weak model (the ratio is undefined).
pub fn pgr(weak: f64, w2s: f64, ceiling: f64) -> Option<f64> {
    let gap = ceiling - weak;
    (gap > 0.0 && gap.is_finite()).then(|| (w2s - weak) / gap)
}

/// The `q`-quantile with linear interpolation between order statistics (NumPy's default).
pub fn quantile_linear(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

/// The confidence loss's schedule in the reference: `aux · (1 if frac > warmup else frac)`.
pub fn logconf_coef(step_frac: f64, aux_coef: f64, warmup_frac: f64) -> f64 {
    aux_coef
        * if step_frac > warmup_frac {
            1.0
        } else {
            step_frac
        }
}

/// The reference `logconf_loss_fn` targets for binary classification: the strong model's
/// class-0 probabilities `p0`, the weak soft labels `weak[i] = [w0, w1]`, and `coef`. Hardened
/// label = class 0 iff `p0 ≥ quantile(p0, mean(weak[:,1]))`; target = `weak·(1−coef) + hard·coef`.
pub fn logconf_targets(p0: &[f64], weak: &[[f64; 2]], coef: f64) -> Result<Vec<[f64; 2]>> {
    if p0.len() != weak.len() || p0.is_empty() {
        return Err(data_err(format!(
            "confidence loss: {} strong predictions for {} weak labels",
            p0.len(),
            weak.len()
        )));
    }
    let m1 = weak.iter().map(|w| w[1]).sum::<f64>() / weak.len() as f64;
    let thr = quantile_linear(p0, m1).ok_or_else(|| data_err("confidence loss: bad quantile"))?;
    Ok(p0
        .iter()
        .zip(weak)
        .map(|(&p, w)| {
            let h = if p >= thr { [1.0, 0.0] } else { [0.0, 1.0] };
            [
                w[0] * (1.0 - coef) + h[0] * coef,
                w[1] * (1.0 - coef) + h[1] * coef,
            ]
        })
        .collect())
}

/// Mean cross-entropy of `logits: [n, 2]` against `targets` (the hardened part is a constant).
pub fn logconf_loss(logits: &Tensor, targets: &[[f64; 2]]) -> Result<Tensor> {
    let n = targets.len();
    let t: Vec<f32> = targets
        .iter()
        .flat_map(|r| [r[0] as f32, r[1] as f32])
        .collect();
    let t = Tensor::from_vec(t, (n, 2), &Device::Cpu)?;
    let lse = canon_nn::loss::logsumexp(logits)?.unsqueeze(1)?; // [n, 1]
    let logp = logits.broadcast_sub(&lse)?;
    Ok(((t * logp)?.sum_all()? * (-1.0 / n as f64))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_testkit::{Tol, check_close};

    #[test]
    fn adaptive_kl_follows_ziegler_et_al() {
        let mut c = AdaptiveKl {
            value: 0.2,
            target: 6.0,
            horizon: 10_000.0,
        };
        // KL 9 over target 6: error 0.5 clipped to 0.2; 512 responses.
        assert!((c.update(9.0, 512) - 0.2 * (1.0 + 0.2 * 512.0 / 10_000.0)).abs() < 1e-15);
        let before = c.value;
        // KL 5.4: error −0.1, inside the clip.
        assert!((c.update(5.4, 512) - before * (1.0 - 0.1 * 512.0 / 10_000.0)).abs() < 1e-15);
        let before = c.value;
        assert_eq!(c.update(6.0, 512), before, "on target β stays");
    }

    fn t(x: &[f64]) -> Tensor {
        Tensor::from_vec(
            x.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            x.len(),
            &Device::Cpu,
        )
        .unwrap()
    }
    fn s(x: &Tensor) -> f64 {
        x.to_scalar::<f32>().unwrap() as f64
    }
    const TOL: Tol = Tol::new(1e-6, 1e-6);

    #[test]
    fn pairwise_loss_on_hand_computed_rewards() {
        let scores = [3.0, 2.0, 1.0, 0.0];
        let pairs = comparisons(&scores);
        assert_eq!(pairs.len(), 6);
        let r = t(&[3.0, 2.0, 1.0, 0.0]);
        check_close(&[s(&pairwise_loss(&r, &pairs).unwrap())], &[0.2070381], TOL).unwrap();
        let eq = t(&[0.5, 0.5, 0.5, 0.5]);
        check_close(
            &[s(&pairwise_loss(&eq, &pairs).unwrap())],
            &[2f64.ln()],
            TOL,
        )
        .unwrap();
        let shifted = t(&[13.0, 12.0, 11.0, 10.0]);
        check_close(
            &[s(&pairwise_loss(&shifted, &pairs).unwrap())],
            &[0.2070381],
            TOL,
        )
        .unwrap();
        // Ties make no pair; 5 responses with one tie give C(5,2) − 1.
        assert_eq!(comparisons(&[1.0, 1.0, 2.0, 3.0, 0.0]).len(), 9);
    }

    #[test]
    fn pairwise_loss_gradient_matches_hand_derivative() {
        // ∂/∂r_w of softplus(r_l − r_w) = −σ(r_l − r_w); mean over the pairs.
        let r = candle_core::Var::from_slice(&[1.0f32, 0.0, 2.0], 3, &Device::Cpu).unwrap();
        let pairs = [(0, 1), (2, 1), (2, 0)];
        let loss = pairwise_loss(r.as_tensor(), &pairs).unwrap();
        let g: Vec<f32> = loss.backward().unwrap().get(&r).unwrap().to_vec1().unwrap();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (r0, r1, r2) = (1.0, 0.0, 2.0);
        let want = [
            (-sig(r1 - r0) + sig(r0 - r2)) / 3.0,
            (sig(r1 - r0) + sig(r1 - r2)) / 3.0,
            (-sig(r1 - r2) - sig(r0 - r2)) / 3.0,
        ];
        let got: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        check_close(&got, &want, TOL).unwrap();
    }

    #[test]
    fn per_token_kl_reward() {
        let r = kl_rewards(&[-1.0, -2.0, -0.5], &[-1.2, -1.5, -0.5], 0.02, 1.0);
        check_close(&r, &[-0.004, 0.010, 1.000], Tol::new(1e-12, 0.0)).unwrap();
        // A policy equal to its reference pays no penalty.
        assert_eq!(
            kl_rewards(&[-1.0, -3.0], &[-1.0, -3.0], 0.5, 0.0),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn gae_against_direct_computation() {
        let (adv, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], 1.0, 0.95);
        check_close(&adv, &[0.46575, 0.385, 0.3], Tol::new(1e-12, 1e-12)).unwrap();
        check_close(&ret, &[0.96575, 0.985, 1.0], Tol::new(1e-12, 1e-12)).unwrap();
        // λ = 1, γ = 1: the advantage is the sum of future rewards minus the value.
        let (a1, _) = gae(&[0.2, -0.1, 1.0], &[0.1, 0.3, 0.4], 1.0, 1.0);
        check_close(
            &a1,
            &[1.1 - 0.1, 0.9 - 0.3, 1.0 - 0.4],
            Tol::new(1e-12, 1e-12),
        )
        .unwrap();
    }

    #[test]
    fn clipped_objective_against_direct_computation() {
        let old = t(&[0.0, 0.0, 0.0]);
        let new = t(&[1.5f64.ln(), 0.5f64.ln(), 0.0]);
        let adv = t(&[2.0, -1.0, 3.0]);
        let (loss, frac) = clipped_pg_loss(&new, &old, &adv, 0.2).unwrap();
        // Per token: −1.2·2 (clipped), −(0.8·(−1)) = 0.8 (pessimistic), −3 (ratio 1).
        check_close(&[s(&loss)], &[(-2.4 + 0.8 - 3.0) / 3.0], TOL).unwrap();
        check_close(&[frac], &[2.0 / 3.0], TOL).unwrap();
        // Clipped tokens pass no gradient; the unclipped one gets −A/n.
        let nv = candle_core::Var::from_tensor(&new).unwrap();
        let (l, _) = clipped_pg_loss(nv.as_tensor(), &old, &adv, 0.2).unwrap();
        let g: Vec<f32> = l.backward().unwrap().get(&nv).unwrap().to_vec1().unwrap();
        check_close(
            &g.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &[0.0, 0.0, -1.0],
            TOL,
        )
        .unwrap();
        let vl =
            clipped_value_loss(&t(&[1.0, 0.0]), &t(&[0.5, 0.0]), &t(&[0.0, 1.0]), 0.2).unwrap();
        // token 0: max(1, 0.7²) = 1; token 1: max(1, 1) = 1; ½·mean = 0.5.
        check_close(&[s(&vl)], &[0.5], TOL).unwrap();
    }

    #[test]
    fn dpo_loss_is_ln2_at_reference_and_falls_with_margin() {
        let z = t(&[-3.0, -2.0]);
        let l0 = dpo_loss(&z, &z, &z, &z, 0.1).unwrap();
        check_close(&[s(&l0)], &[2f64.ln()], TOL).unwrap();
        let l1 = dpo_loss(&t(&[-1.0]), &t(&[-3.0]), &t(&[-2.0]), &t(&[-2.0]), 0.5).unwrap();
        check_close(&[s(&l1)], &[(1.0 + (-1.0f64).exp()).ln()], TOL).unwrap();
    }

    #[test]
    fn prm_product_and_best_of_n_rules() {
        check_close(&[prm_log_score(&[0.9, 0.8, 0.5]).exp()], &[0.36], TOL).unwrap();
        let long = prm_log_score(&[0.9; 200]);
        check_close(&[long], &[200.0 * 0.9f64.ln()], Tol::new(1e-9, 1e-12)).unwrap();
        // A short solution with one bad step ranks below a long all-good one.
        let bad = prm_log_score(&[0.95, 0.01]);
        let good = prm_log_score(&[0.95; 10]);
        check_close(&[good.exp()], &[0.5987369], TOL).unwrap();
        assert!(bad < good);
        assert_eq!(best_of_n(&[Some(0.5), Some(0.9), Some(0.9)]), Some(1));
        assert_eq!(best_of_n(&[None, Some(0.1)]), Some(1));
        assert_eq!(best_of_n(&[Some(0.2)]), Some(0));
        assert_eq!(best_of_n(&[None, None]), None);
        assert_eq!(
            majority(&[Some(3), Some(4), Some(4), None, Some(3)]),
            Some(3)
        );
        assert_eq!(majority(&[Some(3), Some(4), Some(4)]), Some(4));
        assert_eq!(majority(&[None]), None);
    }

    #[test]
    fn rlaif_order_swap_soft_labels_and_direct_reward() {
        check_close(&[debiased_preference(0.9, 0.9)], &[0.5], TOL).unwrap();
        check_close(&[debiased_preference(0.9, 0.7)], &[0.6], TOL).unwrap();
        // The soft-label loss is minimised at r1 − r2 = ln(0.6/0.4).
        let p = t(&[0.6]);
        let at = |d: f64| s(&soft_pair_loss(&t(&[d]), &t(&[0.0]), &p).unwrap());
        let opt = (0.6f64 / 0.4).ln();
        assert!((opt - 0.405465).abs() < 1e-6);
        assert!(at(opt) < at(opt + 0.05) && at(opt) < at(opt - 0.05));
        // A hard target is the pairwise loss.
        let hard = soft_pair_loss(&t(&[2.0]), &t(&[0.5]), &t(&[1.0])).unwrap();
        let pw = pairwise_loss(&t(&[2.0, 0.5]), &[(0, 1)]).unwrap();
        check_close(&[s(&hard)], &[s(&pw)], TOL).unwrap();
        check_close(&[d_rlaif_reward(&[0.1; 10])], &[0.0], Tol::new(1e-12, 0.0)).unwrap();
        let mut top = [0.0; 10];
        top[9] = 1.0;
        assert_eq!(d_rlaif_reward(&top), 1.0);
        let mut bottom = [0.0; 10];
        bottom[0] = 1.0;
        assert_eq!(d_rlaif_reward(&bottom), -1.0);
    }

    #[test]
    fn pgr_and_confidence_loss_on_known_numbers() {
        check_close(&[pgr(0.6, 0.75, 0.9).unwrap()], &[0.5], TOL).unwrap();
        assert_eq!(pgr(0.7, 0.8, 0.7), None);
        let p0 = [0.9, 0.6, 0.3, 0.2];
        let weak = [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]];
        check_close(&[quantile_linear(&p0, 0.55).unwrap()], &[0.495], TOL).unwrap();
        let tg = logconf_targets(&p0, &weak, 0.5).unwrap();
        let flat: Vec<f64> = tg.iter().flatten().copied().collect();
        check_close(&flat, &[0.9, 0.1, 0.65, 0.35, 0.3, 0.7, 0.05, 0.95], TOL).unwrap();
        let logits: Vec<f32> = p0
            .iter()
            .flat_map(|&p| [(p as f32).ln(), (1.0 - p as f32).ln()])
            .collect();
        let lg = Tensor::from_vec(logits, (4, 2), &Device::Cpu).unwrap();
        check_close(
            &[s(&logconf_loss(&lg, &tg).unwrap())],
            &[0.4702860],
            Tol::new(1e-6, 1e-5),
        )
        .unwrap();
        // coef 0 is the soft-label cross-entropy on the weak labels.
        assert_eq!(logconf_targets(&p0, &weak, 0.0).unwrap(), weak.to_vec());
        assert_eq!(logconf_coef(0.05, 0.5, 0.1), 0.025);
        assert_eq!(logconf_coef(0.2, 0.5, 0.1), 0.5);
        assert!(logconf_targets(&p0, &weak[..2], 0.5).is_err());
    }
}
