//! Sparsely gated mixture of experts (GLaM, Du et al., 2022, paper 16; routing as in GShard).
//!
//! Idea: replace a dense FFN by `E` expert FFNs and a router; each token is processed by its top-2
//! experts only, so parameters grow with `E` while compute per token stays that of ~2 FFNs.
//! Equations: `g = softmax(x W_g)` over experts; top-2 experts per token, combine weights
//! `g̃_e = g_e / (g_top1 + g_top2)`; `y = Σ_{e ∈ top2} g̃_e · FFN_e(x)`.
//! Capacity (GShard): each expert takes at most `C = ceil(capacity_factor · k · S / E)` token slots
//! per group of `S` tokens; all first choices are placed (in token order) before any second choice;
//! an overflowing assignment is dropped (that expert contributes 0; the residual carries the token).
//! Auxiliary load-balancing loss: `l_aux = E · Σ_e f_e · P_e`, `f_e` the fraction of tokens whose
//! top-1 expert is `e` (a count, no gradient) and `P_e` the mean router probability (differentiable).
//! Uniform routing gives 1; everything on one expert gives `E`.
//!
//! Second expert: the arg-max of the remaining gates (`second_expert = "argmax"`, the default), or,
//! in training, sampled among the other experts with probability proportional to their gates
//! (`"sampled"`, GShard's random second expert; the Gumbel-max trick of DeepSpeed draws from the
//! same distribution). Evaluation and inference always take the arg-max.
//! Deviation: the group is the whole batch (`S` = all tokens of the forward call).
//!
//! Shapes: `x: [..., d]` → `y: [..., d]`; router `[E, d]`.

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Linear, Mlp, SplitMix64, SwiGlu};

/// One expert (or the dense FFN a mixture replaces).
#[derive(Debug, Clone)]
pub enum DenseFfn {
    Mlp(Mlp),
    SwiGlu(SwiGlu),
}

impl DenseFfn {
    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        match self {
            DenseFfn::Mlp(m) => m.forward(x),
            DenseFfn::SwiGlu(s) => s.forward(x),
        }
    }
}

fn default_top_k() -> usize {
    2
}
fn default_capacity_factor() -> f64 {
    2.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    pub n_experts: usize,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default = "default_capacity_factor")]
    pub capacity_factor: f64,
    #[serde(default)]
    pub second_expert: SecondExpert,
}

/// How the second of the top-2 experts is chosen during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondExpert {
    #[default]
    Argmax,
    /// Drawn among the other experts with probability proportional to their gates.
    Sampled,
}

impl MoeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.n_experts == 0 {
            return Err("moe.n_experts must be positive, found 0".into());
        }
        if !(1..=2).contains(&self.top_k) || self.top_k > self.n_experts {
            return Err(format!(
                "moe.top_k must be 1 or 2 and at most n_experts ({}), found {}",
                self.n_experts, self.top_k
            ));
        }
        if !(self.capacity_factor > 0.0 && self.capacity_factor.is_finite()) {
            return Err(format!(
                "moe.capacity_factor must be positive, found {}",
                self.capacity_factor
            ));
        }
        Ok(())
    }

    /// `C = ceil(capacity_factor · k · S / E)` token slots per expert for a group of `S` tokens.
    pub fn capacity(&self, tokens: usize) -> usize {
        (self.capacity_factor * (self.top_k * tokens) as f64 / self.n_experts as f64).ceil()
            as usize
    }
}

/// Which token goes where: the outcome of top-k selection under the capacity limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Per token, its top-k experts in order of preference.
    pub choices: Vec<Vec<usize>>,
    /// Per expert, the accepted `(token, choice rank)` pairs in the order they were placed.
    pub assigned: Vec<Vec<(usize, usize)>>,
    /// `f_e`: fraction of tokens whose top-1 expert is `e` (before capacity).
    pub top1_fraction: Vec<f32>,
    /// Assignments dropped for lack of capacity.
    pub dropped: usize,
}

/// Top-k routing with capacity over router probabilities `probs` (`n` rows of `e`).
pub fn route(probs: &[f32], n: usize, e: usize, k: usize, capacity: usize) -> Routing {
    route_with(probs, n, e, k, capacity, None)
}

/// [`route`], with the second expert drawn from `sample` (∝ the gates of the experts other than
/// the first) when given.
pub fn route_with(
    probs: &[f32],
    n: usize,
    e: usize,
    k: usize,
    capacity: usize,
    mut sample: Option<&mut SplitMix64>,
) -> Routing {
    let mut choices = Vec::with_capacity(n);
    for row in probs.chunks(e).take(n) {
        let mut idx: Vec<usize> = (0..e).collect();
        // Highest probability first; ties go to the lower expert index (stable sort).
        idx.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        idx.truncate(k);
        if k == 2
            && let Some(rng) = sample.as_deref_mut()
        {
            let first = idx[0];
            let rest: f64 = (0..e).filter(|&j| j != first).map(|j| row[j] as f64).sum();
            let mut u = rng.next_f64() * rest;
            for j in (0..e).filter(|&j| j != first) {
                idx[1] = j;
                u -= row[j] as f64;
                if u < 0.0 {
                    break;
                }
            }
        }
        choices.push(idx);
    }
    let mut assigned = vec![Vec::new(); e];
    let mut dropped = 0;
    // All first choices (in token order) before any second choice.
    for rank in 0..k {
        for (t, c) in choices.iter().enumerate() {
            let ex = c[rank];
            if assigned[ex].len() < capacity {
                assigned[ex].push((t, rank));
            } else {
                dropped += 1;
            }
        }
    }
    let mut top1 = vec![0f32; e];
    for c in &choices {
        top1[c[0]] += 1.0;
    }
    top1.iter_mut().for_each(|f| *f /= n.max(1) as f32);
    Routing {
        choices,
        assigned,
        top1_fraction: top1,
        dropped,
    }
}

#[derive(Debug, Clone)]
pub struct Moe {
    /// `W_g`, `[E, d]`, no bias.
    pub router: Linear,
    pub experts: Vec<DenseFfn>,
    pub config: MoeConfig,
}

#[derive(Debug, Clone)]
pub struct MoeOutput {
    pub y: Tensor,
    /// `l_aux = E · Σ_e f_e P_e` (scalar, differentiable through `P_e`).
    pub aux_loss: Tensor,
    pub routing: Routing,
}

impl Moe {
    /// Routing with the arg-max second expert.
    pub fn forward(&self, x: &Tensor) -> crate::Result<MoeOutput> {
        self.forward_with(x, None)
    }

    /// `rng`: the stream a sampled second expert draws from (training); `None` = arg-max.
    pub fn forward_with(&self, x: &Tensor, rng: Option<SplitMix64>) -> crate::Result<MoeOutput> {
        let mut rng = match self.config.second_expert {
            SecondExpert::Sampled => rng,
            SecondExpert::Argmax => None,
        };
        let dims = x.dims().to_vec();
        let d = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("moe: scalar input".into()))?;
        let n = x.elem_count() / d.max(1);
        let e = self.experts.len();
        let k = self.config.top_k;
        let x2 = x.reshape((n, d))?; // [n, d]
        let logits = self.router.forward(&x2)?; // [n, E]
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?; // [n, E]
        let pv: Vec<f32> = probs.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let routing = route_with(&pv, n, e, k, self.config.capacity(n), rng.as_mut());
        // Combine weights: the top-k gate values renormalised to sum to 1 per token, [n, k].
        let top_idx: Vec<u32> = routing
            .choices
            .iter()
            .flat_map(|c| c.iter().map(|&i| i as u32))
            .collect();
        let top_idx = Tensor::from_vec(top_idx, (n, k), x.device())?;
        let g = probs.gather(&top_idx, 1)?; // [n, k]
        let comb = g.broadcast_div(&g.sum_keepdim(1)?)?.flatten_all()?; // [n·k]
        let mut y = Tensor::zeros((n, d), x.dtype(), x.device())?;
        for (ex, slots) in self.experts.iter().zip(&routing.assigned) {
            if slots.is_empty() {
                continue;
            }
            let toks: Vec<u32> = slots.iter().map(|&(t, _)| t as u32).collect();
            let widx: Vec<u32> = slots.iter().map(|&(t, r)| (t * k + r) as u32).collect();
            let m = toks.len();
            let toks = Tensor::from_vec(toks, m, x.device())?;
            let widx = Tensor::from_vec(widx, m, x.device())?;
            let xe = x2.index_select(&toks, 0)?; // [m, d]
            let w = comb.index_select(&widx, 0)?.unsqueeze(1)?; // [m, 1]
            let out = ex.forward(&xe)?.broadcast_mul(&w)?; // [m, d]
            y = y.index_add(&toks, &out, 0)?;
        }
        let f =
            Tensor::new(routing.top1_fraction.as_slice(), x.device())?.to_dtype(probs.dtype())?;
        let p_mean = probs.mean(0)?; // [E]
        let aux_loss = ((f * p_mean)?.sum_all()? * e as f64)?;
        Ok(MoeOutput {
            y: y.reshape(dims)?,
            aux_loss,
            routing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_gradients;
    use crate::{Activation, Weight};
    use candle_core::{Device, Var};
    use canon_testkit::{Tol, assert_close, randn, to_vec};

    fn r64(shape: &[usize], seed: u64) -> Tensor {
        randn(shape, seed).to_dtype(DType::F64).unwrap()
    }

    fn mlp(seed: u64, d: usize, h: usize) -> DenseFfn {
        DenseFfn::Mlp(Mlp {
            fc1: Linear::new(Weight::Dense(r64(&[h, d], seed)), Some(r64(&[h], seed + 1))),
            fc2: Linear::new(Weight::Dense(r64(&[d, h], seed + 2)), None),
            act: Activation::GeluTanh,
        })
    }

    fn moe(e: usize, k: usize, cf: f64) -> Moe {
        Moe {
            router: Linear::new(Weight::Dense(r64(&[e, 6], 99)), None),
            experts: (0..e).map(|i| mlp(10 * i as u64 + 1, 6, 8)).collect(),
            config: MoeConfig {
                n_experts: e,
                top_k: k,
                capacity_factor: cf,
                second_expert: SecondExpert::Argmax,
            },
        }
    }

    #[test]
    fn aux_loss_is_one_for_uniform_and_e_for_collapsed_routing() {
        // Uniform: f_e = P_e = 1/E.
        let e = 8;
        let f = [1.0 / e as f32; 8];
        let l: f32 = e as f32 * f.iter().map(|x| x * x).sum::<f32>();
        assert!((l - 1.0).abs() < 1e-6);
        // Through the layer: a router that sends every token to expert 0 with probability ~1.
        let mut m = moe(8, 2, 2.0);
        let mut w = vec![0f32; 8 * 6];
        w[0] = 1000.0; // expert 0's logit = 1000·x₀
        m.router = Linear::new(
            Weight::Dense(
                Tensor::from_vec(w, (8, 6), &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap(),
            ),
            None,
        );
        let x = r64(&[16, 6], 4).abs().unwrap(); // x₀ > 0 so expert 0 wins everywhere
        let out = m.forward(&x).unwrap();
        let aux = out.aux_loss.to_scalar::<f64>().unwrap();
        assert!(
            (aux - 8.0).abs() < 1e-3,
            "collapsed routing gives E = 8, found {aux}"
        );
        assert_eq!(out.routing.top1_fraction[0], 1.0);
    }

    #[test]
    fn capacity_keeps_the_first_tokens_in_order() {
        // S = 64, E = 8, capacity factor 1, top-2: C = ceil(1·2·64/8) = 16.
        let cfg = MoeConfig {
            n_experts: 8,
            top_k: 2,
            capacity_factor: 1.0,
            second_expert: SecondExpert::Argmax,
        };
        assert_eq!(cfg.capacity(64), 16);
        // 20 tokens prefer expert 0 (tokens 0..20), the rest prefer expert (t % 7) + 1.
        let mut probs = vec![0f32; 64 * 8];
        for t in 0..64 {
            let first = if t < 20 { 0 } else { 1 + t % 7 };
            for ex in 0..8 {
                probs[t * 8 + ex] = if ex == first {
                    0.5
                } else {
                    0.5 / 7.0 - ex as f32 * 1e-4
                };
            }
        }
        let r = route(&probs, 64, 8, 2, 16);
        let firsts: Vec<usize> = r.assigned[0]
            .iter()
            .filter(|(_, rank)| *rank == 0)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            firsts,
            (0..16).collect::<Vec<_>>(),
            "the first 16 in token order"
        );
        assert_eq!(r.assigned[0].len(), 16);
        // Reversing token order changes which tokens are dropped, not how many.
        let mut rev = Vec::new();
        for t in (0..64).rev() {
            rev.extend_from_slice(&probs[t * 8..t * 8 + 8]);
        }
        let r2 = route(&rev, 64, 8, 2, 16);
        assert_eq!(r2.dropped, r.dropped);
        let firsts2: Vec<usize> = r2.assigned[0].iter().map(|(t, _)| 63 - *t).collect();
        assert!(firsts2.iter().all(|t| (4..20).contains(t)), "{firsts2:?}");
    }

    #[test]
    fn one_expert_top1_equals_the_dense_ffn() {
        let m = moe(1, 1, 1.0);
        let x = r64(&[2, 5, 6], 3);
        let out = m.forward(&x).unwrap();
        let dense = m.experts[0].forward(&x).unwrap();
        assert_close(&out.y, &dense, Tol::EXACT);
    }

    #[test]
    fn gather_scatter_equals_a_per_token_loop_and_weights_sum_to_one() {
        let m = moe(4, 2, 4.0); // capacity large enough: nothing dropped
        let x = r64(&[10, 6], 5);
        let out = m.forward(&x).unwrap();
        assert_eq!(out.routing.dropped, 0);
        let logits = m.router.forward(&x).unwrap();
        let p = to_vec(&candle_nn::ops::softmax(&logits, 1).unwrap());
        let mut rows = Vec::new();
        for t in 0..10 {
            let xt = x.narrow(0, t, 1).unwrap();
            let c = &out.routing.choices[t];
            let (g1, g2) = (p[t * 4 + c[0]], p[t * 4 + c[1]]);
            let (w1, w2) = (g1 / (g1 + g2), g2 / (g1 + g2));
            assert!((w1 + w2 - 1.0).abs() < 1e-6);
            let y = ((m.experts[c[0]].forward(&xt).unwrap() * w1 as f64).unwrap()
                + (m.experts[c[1]].forward(&xt).unwrap() * w2 as f64).unwrap())
            .unwrap();
            rows.push(y);
        }
        let naive = Tensor::cat(&rows, 0).unwrap();
        assert_close(&out.y, &naive, Tol::new(1e-6, 1e-5));
    }

    #[test]
    fn aux_loss_gradient_pushes_probability_away_from_the_overloaded_expert() {
        // Router logits as the variable; expert 0 is overloaded (most tokens' top-1).
        let n = 12;
        let mut l = vec![0f32; n * 4];
        for t in 0..n {
            l[t * 4] = 1.0 + 0.1 * t as f32;
            l[t * 4 + 1 + t % 3] = 0.5;
        }
        let logits = Var::from_tensor(
            &Tensor::from_vec(l, (n, 4), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap(),
        )
        .unwrap();
        let aux = |lg: &Tensor| -> Tensor {
            let p = candle_nn::ops::softmax(lg, 1).unwrap();
            let pv = to_vec(&p);
            let r = route(&pv, n, 4, 2, n);
            let f = Tensor::new(r.top1_fraction.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            ((f * p.mean(0).unwrap()).unwrap().sum_all().unwrap() * 4.0).unwrap()
        };
        let g = aux(logits.as_tensor()).backward().unwrap();
        let g = to_vec(g.get(logits.as_tensor()).unwrap());
        // Gradient descent lowers expert 0's logit for every token: d l_aux / d logit₀ > 0.
        for t in 0..n {
            assert!(g[t * 4] > 0.0, "token {t}: {}", g[t * 4]);
        }
        // Finite differences agree with the analytic gradient (routing is piecewise constant).
        check_gradients(&[logits], |v| Ok(aux(&v[0])), 1e-5, 1e-7, 1e-5).unwrap();
    }

    #[test]
    fn finite_differences_through_router_and_experts() {
        let x = Var::from_tensor(&r64(&[6, 6], 11)).unwrap();
        let wr = Var::from_tensor(&(r64(&[3, 6], 12) * 0.3).unwrap()).unwrap();
        let base = moe(3, 2, 4.0);
        check_gradients(
            &[x, wr],
            |v| {
                let mut m = base.clone();
                m.router = Linear::new(Weight::Dense(v[1].clone()), None);
                let out = m.forward(&v[0])?;
                out.y.sqr()?.sum_all()? + out.aux_loss
            },
            1e-5,
            1e-5,
            1e-4,
        )
        .unwrap();
    }

    #[test]
    fn sampled_second_expert_follows_the_gates_and_never_repeats_the_first() {
        // Gates 0.5 / 0.3 / 0.15 / 0.05: the second expert is drawn from {1, 2, 3} ∝ {0.3, 0.15, 0.05}.
        let row = [0.5f32, 0.3, 0.15, 0.05];
        let n = 40_000;
        let probs: Vec<f32> = row.iter().copied().cycle().take(4 * n).collect();
        let mut rng = SplitMix64::new(5);
        let r = route_with(&probs, n, 4, 2, 2 * n, Some(&mut rng));
        let mut counts = [0usize; 4];
        for c in &r.choices {
            assert_eq!(c[0], 0);
            counts[c[1]] += 1;
        }
        assert_eq!(counts[0], 0);
        for (j, want) in [(1, 0.6), (2, 0.3), (3, 0.1)] {
            let got = counts[j] as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "expert {j}: {got} vs {want}");
        }
        // Without a stream the arg-max is taken.
        let r = route_with(&probs[..8], 2, 4, 2, 4, None);
        assert_eq!(r.choices, vec![vec![0, 1], vec![0, 1]]);
    }
}
