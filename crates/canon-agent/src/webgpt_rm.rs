//! A reward model for WebGPT's best-of-n (paper 17), in miniature.
//!
//! The paper samples n answers and keeps the one a reward model (the whole 175B model fine-tuned
//! on human comparisons of answers) scores highest. Here:
//!
//! **Comparisons** without a human ([`comparisons`]): for each question of the training split,
//! the answers sampled in an evaluation of that split (its `outcomes.jsonl`) and three written
//! ones — the oracle's (the gold answer citing the quote that holds it), the gold answer citing a
//! quote that does not hold it, and another question's answer citing the right quote — are ranked
//! by (accurate, supported) as [`crate::webgpt::grade`] judges them: supported 2, accurate only 1,
//! wrong 0. Every two answers of a question with different ranks make a pair; ties make none.
//!
//! **The model**: the frozen SmolLM2 (the policy's base) reads `answer prompt + " " + answer`;
//! the features are the final hidden state (after the last norm) at the answer's last token,
//! recovered from the logits through the tied embedding matrix `E` (`h = (EᵀE)⁻¹Eᵀ·logits`, as the
//! model's public interface gives logits, not hidden states). A linear head `r = w·(x − μ)/σ` on
//! them is trained with InstructGPT's pairwise loss `−log σ(r⁺ − r⁻)` (`canon_align::losses::
//! pairwise_loss`, the same function its reward model trains with), full-batch Adam with a small
//! L2 penalty. The base model is not fine-tuned (no LoRA): a linear head over frozen features is
//! what fits the shared CPU; the paper fine-tunes every weight.
//!
//! **Scorers** ([`AnswerScorer`]): the documented heuristic ([`crate::browser::heuristic_score`])
//! and the reward model; best-of-n keeps the highest score, the first of ties.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use canon_models::{CausalLm, Positions};
use canon_text::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::browser::{Quote, heuristic_score};
use crate::webgpt::{Outcome, grade};
use crate::{AgentError, Result};

/// The reward model's file inside its folder.
pub const FILE: &str = "reward_model.json";

fn task(m: impl Into<String>) -> AgentError {
    AgentError::Task(m.into())
}

/// What gives an answer's feature vector: the frozen model's hidden state, or scripted in tests.
pub trait Featurizer {
    /// One vector per answer, read after `prompt`.
    fn features(&mut self, prompt: &str, answers: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// The final hidden state at the last token of `prompt + " " + answer`, from a causal LM with
/// tied embeddings (see the module header).
pub struct HiddenStates<'m> {
    model: &'m dyn CausalLm,
    tokenizer: &'m Tokenizer,
    /// `E (EᵀE)⁻¹`, `[vocab, d]`: logits `[1, vocab]` times this is the hidden state.
    recover: Tensor,
}

/// `a⁻¹` of a symmetric positive definite `n × n` matrix (row-major), by Cholesky.
fn spd_inverse(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return Err(task(format!(
                        "the embedding matrix is not of full rank (pivot {i} is {s})"
                    )));
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    // Columns of L⁻¹, then a⁻¹ = L⁻ᵀ L⁻¹.
    let mut linv = vec![0.0; n * n];
    for c in 0..n {
        for i in c..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= l[i * n + k] * linv[k * n + c];
            }
            linv[i * n + c] = s / l[i * n + i];
        }
    }
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (i.max(j)..n)
                .map(|k| linv[k * n + i] * linv[k * n + j])
                .sum();
            inv[i * n + j] = s;
            inv[j * n + i] = s;
        }
    }
    Ok(inv)
}

impl<'m> HiddenStates<'m> {
    pub fn new(model: &'m dyn CausalLm, tokenizer: &'m Tokenizer) -> Result<Self> {
        let v = model.vocab_size();
        let ids = Tensor::arange(0u32, v as u32, &Device::Cpu)?.unsqueeze(0)?;
        let e = model.embed(&ids)?.squeeze(0)?.to_dtype(DType::F32)?; // [V, d]
        let d = e.dim(1)?;
        let g: Vec<f64> = e
            .t()?
            .matmul(&e)?
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1()?;
        let ginv = spd_inverse(&g, d)?;
        let ginv = Tensor::from_vec(ginv, (d, d), &Device::Cpu)?.to_dtype(DType::F32)?;
        let recover = e.matmul(&ginv)?;
        Ok(Self {
            model,
            tokenizer,
            recover,
        })
    }

    fn encode(&self, s: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(s, false)
            .map_err(|e| AgentError::Text(e.to_string()))
    }

    fn hidden(&self, logits: &Tensor) -> Result<Vec<f32>> {
        let v = self.recover.dim(0)?;
        let l = logits.to_dtype(DType::F32)?.reshape((1, v))?;
        Ok(l.matmul(&self.recover)?.flatten_all()?.to_vec1()?)
    }
}

impl Featurizer for HiddenStates<'_> {
    fn features(&mut self, prompt: &str, answers: &[String]) -> Result<Vec<Vec<f32>>> {
        let p = self.encode(prompt)?;
        if p.is_empty() {
            return Err(task("the reward model's prompt is empty"));
        }
        let max = self.model.max_seq_len();
        let mut cache = self.model.new_cache();
        let t = Tensor::new(p.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let base = self.model.forward(&t, &mut cache, Positions::Last)?;
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            let ids = if a.trim().is_empty() {
                Vec::new()
            } else {
                self.encode(&format!(" {}", a.trim()))?
            };
            if p.len() + ids.len() > max {
                return Err(task(format!(
                    "the answer prompt and an answer have {} tokens; the model reads at most {max}",
                    p.len() + ids.len()
                )));
            }
            let logits = if ids.is_empty() {
                base.clone()
            } else {
                let mut c = cache.clone();
                let t = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
                self.model.forward(&t, &mut c, Positions::Last)?
            };
            out.push(self.hidden(&logits)?);
        }
        Ok(out)
    }
}

/// The linear head over standardised features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardHead {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub w: Vec<f32>,
}

/// How the head is fitted.
#[derive(Debug, Clone, Copy)]
pub struct FitConfig {
    pub steps: usize,
    pub lr: f64,
    /// L2 penalty on `w` (added to the mean pairwise loss as `l2 · |w|²`).
    pub l2: f64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 0.01,
            l2: 1e-3,
        }
    }
}

impl RewardHead {
    pub fn dim(&self) -> usize {
        self.w.len()
    }

    /// The reward of one feature vector.
    pub fn reward(&self, x: &[f32]) -> f64 {
        x.iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .zip(&self.w)
            .map(|(((x, m), s), w)| f64::from((x - m) / s * w))
            .sum()
    }

    /// Fits the head to `pairs` (winner, loser) of rows of `x` with the pairwise loss; returns it
    /// and the loss at each step.
    pub fn fit(x: &[Vec<f32>], pairs: &[(usize, usize)], c: FitConfig) -> Result<(Self, Vec<f64>)> {
        let n = x.len();
        let d = x.first().map_or(0, Vec::len);
        if n == 0 || d == 0 || pairs.is_empty() {
            return Err(task(format!(
                "expected feature rows and ranked pairs to fit a reward head, found {n} rows and {} pairs",
                pairs.len()
            )));
        }
        if let Some(r) = x.iter().find(|r| r.len() != d) {
            return Err(task(format!(
                "expected feature rows of width {d}, found one of {}",
                r.len()
            )));
        }
        if let Some(p) = pairs.iter().find(|p| p.0 >= n || p.1 >= n) {
            return Err(task(format!(
                "a pair {p:?} names a row beyond the {n} feature rows"
            )));
        }
        let mut mean = vec![0f64; d];
        for r in x {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += f64::from(*v) / n as f64;
            }
        }
        let mut var = vec![0f64; d];
        for r in x {
            for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2) / n as f64;
            }
        }
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let scale: Vec<f32> = var.iter().map(|&v| (v.sqrt() as f32).max(1e-6)).collect();
        let flat: Vec<f32> = x
            .iter()
            .flat_map(|r| {
                r.iter()
                    .zip(&mean)
                    .zip(&scale)
                    .map(|((v, m), s)| (v - m) / s)
            })
            .collect();
        let xs = Tensor::from_vec(flat, (n, d), &Device::Cpu)?;
        let w = Var::zeros((d, 1), DType::F32, &Device::Cpu)?;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let mut m1 = vec![0f64; d];
        let mut m2 = vec![0f64; d];
        let mut losses = Vec::with_capacity(c.steps);
        for step in 1..=c.steps {
            let r = xs.matmul(w.as_tensor())?.squeeze(D::Minus1)?;
            let pl =
                canon_align::losses::pairwise_loss(&r, pairs).map_err(|e| task(e.to_string()))?;
            let loss = (pl + (w.as_tensor().sqr()?.sum_all()? * c.l2)?)?;
            losses.push(f64::from(loss.to_scalar::<f32>()?));
            let grads = loss.backward()?;
            let g: Vec<f32> = grads
                .get(&w)
                .ok_or_else(|| task("the pairwise loss has no gradient for the head"))?
                .flatten_all()?
                .to_vec1()?;
            let mut wv: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
            let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            for i in 0..d {
                let gi = f64::from(g[i]);
                m1[i] = b1 * m1[i] + (1.0 - b1) * gi;
                m2[i] = b2 * m2[i] + (1.0 - b2) * gi * gi;
                wv[i] -= (c.lr * (m1[i] / c1) / ((m2[i] / c2).sqrt() + eps)) as f32;
            }
            w.set(&Tensor::from_vec(wv, (d, 1), &Device::Cpu)?)?;
        }
        let w: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
        Ok((Self { mean, scale, w }, losses))
    }
}

/// The saved reward model: the head and what it was trained on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardModel {
    /// The model whose frozen features the head reads.
    pub model: String,
    pub features: String,
    pub head: RewardHead,
    pub train_pairs: usize,
    pub heldout_pairs: usize,
    /// Pairwise accuracies (`None` without pairs).
    pub train_accuracy: Option<f64>,
    pub heldout_accuracy: Option<f64>,
    /// Held-out pairs of two sampled answers (the choice best-of-n makes).
    pub heldout_sample_pairs: usize,
    pub heldout_sample_accuracy: Option<f64>,
}

impl RewardModel {
    /// Reads `dir/reward_model.json`; a missing or malformed file is one error naming it.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            task(format!(
                "expected a reward model at {} (written by `canon agent webgpt --train-reward-model`), found none: {e}",
                path.display()
            ))
        })?;
        let rm: RewardModel = serde_json::from_str(&text).map_err(|e| {
            task(format!(
                "expected a reward model in {}, found something else: {e}",
                path.display()
            ))
        })?;
        let h = &rm.head;
        if h.w.is_empty() || h.mean.len() != h.w.len() || h.scale.len() != h.w.len() {
            return Err(task(format!(
                "expected a head with equally long mean, scale and w in {}, found {}, {} and {}",
                path.display(),
                h.mean.len(),
                h.scale.len(),
                h.w.len()
            )));
        }
        Ok(rm)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| task(e.to_string()))?;
        std::fs::write(&path, text).map_err(|error| AgentError::Io {
            path: path.display().to_string(),
            error,
        })
    }
}

/// What scores a question's sampled answers for best-of-n.
pub trait AnswerScorer {
    fn name(&self) -> &'static str;
    fn scores(&mut self, o: &Outcome) -> Result<Vec<f64>>;
}

/// The documented heuristic (`browser::heuristic_score`).
pub struct Heuristic;

impl AnswerScorer for Heuristic {
    fn name(&self) -> &'static str {
        "heuristic"
    }
    fn scores(&mut self, o: &Outcome) -> Result<Vec<f64>> {
        Ok(o.answers
            .answers
            .iter()
            .map(|a| heuristic_score(a, o.quotes.len()))
            .collect())
    }
}

/// The reward model: its head over a featurizer's vectors of `answer prompt + answer`.
pub struct RewardScorer<F> {
    pub head: RewardHead,
    pub features: F,
}

impl<F: Featurizer> AnswerScorer for RewardScorer<F> {
    fn name(&self) -> &'static str {
        "reward model"
    }
    fn scores(&mut self, o: &Outcome) -> Result<Vec<f64>> {
        if o.answer_prompt.is_empty() {
            return Err(task(format!(
                "{}: expected the answer prompt in the outcome (outcome files written before it was recorded cannot be re-scored)",
                o.id
            )));
        }
        let xs = self
            .features
            .features(&o.answer_prompt, &o.answers.answers)?;
        xs.iter()
            .map(|x| {
                if x.len() == self.head.dim() {
                    Ok(self.head.reward(x))
                } else {
                    Err(task(format!(
                        "the reward head reads {} features, the model gives {}",
                        self.head.dim(),
                        x.len()
                    )))
                }
            })
            .collect()
    }
}

/// Replaces each outcome's scores and pick with `scorer`'s.
pub fn rescore(outcomes: &mut [Outcome], scorer: &mut dyn AnswerScorer) -> Result<()> {
    for o in outcomes.iter_mut() {
        let s = scorer.scores(o)?;
        o.answers.best = crate::browser::best_of_n(&s);
        o.answers.scores = s;
    }
    Ok(())
}

/// One comparison of two answers to the same question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub id: String,
    pub question: String,
    pub quotes: Vec<Quote>,
    pub answer_a: String,
    pub answer_b: String,
    /// "A" or "B".
    pub preferred: String,
    /// How the two answers were made and which rank each has, e.g. `oracle(2)>sample(0)`.
    pub how: String,
}

/// One question's ranked candidate answers.
#[derive(Debug, Clone)]
pub struct Candidates {
    pub id: String,
    pub question: String,
    pub answer_prompt: String,
    pub quotes: Vec<Quote>,
    /// (answer, how it was made, rank)
    pub answers: Vec<(String, &'static str, u8)>,
}

impl Candidates {
    /// Pairs (winner, loser) of strictly different rank.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for i in 0..self.answers.len() {
            for j in i + 1..self.answers.len() {
                let (ri, rj) = (self.answers[i].2, self.answers[j].2);
                if ri > rj {
                    out.push((i, j));
                } else if rj > ri {
                    out.push((j, i));
                }
            }
        }
        out
    }
}

fn rank(answer: &str, gold: &str, quotes: &[Quote]) -> u8 {
    let (a, s) = grade(answer, gold, quotes);
    a as u8 + s as u8
}

/// Each outcome's candidates: its distinct non-empty sampled answers and the three written ones
/// (see the module header); `other` is another question's gold answer for each outcome.
pub fn candidates(outcomes: &[Outcome]) -> Vec<Candidates> {
    let norm = crate::webgpt::norm;
    outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let g = norm(&o.gold);
            let holds: Vec<usize> = (0..o.quotes.len())
                .filter(|&k| norm(&o.quotes[k].text).contains(&g))
                .collect();
            let other = outcomes
                .iter()
                .cycle()
                .skip(i + 1)
                .take(outcomes.len())
                .map(|p| p.gold.clone())
                .find(|a| norm(a) != g && !g.contains(&norm(a)) && !norm(a).contains(&g));
            let mut written: Vec<(String, &'static str)> = Vec::new();
            if let Some(&k) = holds.last() {
                written.push((format!("{} [{}]", o.gold, k + 1), "oracle"));
                if let Some(other) = &other {
                    written.push((format!("{other} [{}]", k + 1), "wrong-answer"));
                }
            }
            if let Some(j) = (0..o.quotes.len()).find(|k| !holds.contains(k)) {
                written.push((format!("{} [{}]", o.gold, j + 1), "wrong-citation"));
            }
            let mut answers: Vec<(String, &'static str, u8)> = Vec::new();
            let sampled = o.answers.answers.iter().map(|a| (a.clone(), "sample"));
            for (a, how) in written.into_iter().chain(sampled) {
                if a.trim().is_empty() || answers.iter().any(|x| x.0 == a) {
                    continue;
                }
                let r = rank(&a, &o.gold, &o.quotes);
                answers.push((a, how, r));
            }
            Candidates {
                id: o.id.clone(),
                question: o.question.clone(),
                answer_prompt: o.answer_prompt.clone(),
                quotes: o.quotes.clone(),
                answers,
            }
        })
        .collect()
}

/// The comparisons of `cands` as records, the preferred side alternating between A and B.
pub fn comparisons(cands: &[Candidates]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for c in cands {
        for (w, l) in c.pairs() {
            let (aw, hw, rw) = &c.answers[w];
            let (al, hl, rl) = &c.answers[l];
            let how = format!("{hw}({rw})>{hl}({rl})");
            let flip = out.len() % 2 == 1;
            let (a, b) = if flip { (al, aw) } else { (aw, al) };
            out.push(Comparison {
                id: c.id.clone(),
                question: c.question.clone(),
                quotes: c.quotes.clone(),
                answer_a: a.clone(),
                answer_b: b.clone(),
                preferred: if flip { "B" } else { "A" }.into(),
                how,
            });
        }
    }
    out
}

/// Pairwise accuracy (`r⁺ > r⁻`) of `rewards` over `pairs`; `None` without pairs.
pub fn pair_accuracy(rewards: &[f64], pairs: &[(usize, usize)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let right = pairs
        .iter()
        .filter(|(w, l)| rewards[*w] > rewards[*l])
        .count();
    Some(right as f64 / pairs.len() as f64)
}

/// The trained reward model, the comparisons and the loss curve.
pub struct Trained {
    pub model: RewardModel,
    pub comparisons: Vec<Comparison>,
    pub losses: Vec<f64>,
}

/// Builds the candidates of `outcomes`, their features, and fits the head on the pairs of all
/// questions but every fifth (held out, by question).
pub fn train(
    outcomes: &[Outcome],
    feats: &mut dyn Featurizer,
    model_name: &str,
    cfg: FitConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Trained> {
    if let Some(o) = outcomes.iter().find(|o| o.answer_prompt.is_empty()) {
        return Err(task(format!(
            "{}: expected the answer prompt in the outcome (rerun the evaluation of the training split)",
            o.id
        )));
    }
    let cands = candidates(outcomes);
    let mut x: Vec<Vec<f32>> = Vec::new();
    let (mut train_pairs, mut held, mut held_samples) = (Vec::new(), Vec::new(), Vec::new());
    for (qi, c) in cands.iter().enumerate() {
        progress(qi, cands.len());
        let texts: Vec<String> = c.answers.iter().map(|a| a.0.clone()).collect();
        let off = x.len();
        x.extend(feats.features(&c.answer_prompt, &texts)?);
        for (w, l) in c.pairs() {
            let p = (off + w, off + l);
            if qi % 5 == 4 {
                held.push(p);
                if c.answers[w].1 == "sample" && c.answers[l].1 == "sample" {
                    held_samples.push(p);
                }
            } else {
                train_pairs.push(p);
            }
        }
    }
    progress(cands.len(), cands.len());
    let (head, losses) = RewardHead::fit(&x, &train_pairs, cfg)?;
    let r: Vec<f64> = x.iter().map(|v| head.reward(v)).collect();
    let acc = |p: &[(usize, usize)]| pair_accuracy(&r, p);
    let model = RewardModel {
        model: model_name.to_string(),
        features: "final hidden state at the answer's last token (frozen model; recovered from the logits through the tied embeddings)".into(),
        train_pairs: train_pairs.len(),
        heldout_pairs: held.len(),
        train_accuracy: acc(&train_pairs),
        heldout_accuracy: acc(&held),
        heldout_sample_pairs: held_samples.len(),
        heldout_sample_accuracy: acc(&held_samples),
        head,
    };
    Ok(Trained {
        model,
        comparisons: comparisons(&cands),
        losses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browse_run::Answers;

    /// Scripted features: whether the answer names the entity the prompt asks about (its id is
    /// the gold answer in lower case), whether it cites [2], and two noise dimensions.
    struct Scripted;

    impl Featurizer for Scripted {
        fn features(&mut self, prompt: &str, answers: &[String]) -> Result<Vec<Vec<f32>>> {
            let who = prompt
                .split("maintains ")
                .nth(1)
                .and_then(|r| r.split('?').next())
                .unwrap_or("")
                .to_string();
            Ok(answers
                .iter()
                .map(|a| {
                    let right = a.to_lowercase().starts_with(&who) as u8 as f32;
                    let cites = a.contains("[2]") as u8 as f32;
                    let h = a
                        .bytes()
                        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
                    vec![right, cites, (h % 97) as f32 / 97.0, (h % 89) as f32 / 89.0]
                })
                .collect())
        }
    }

    fn outcome(gold: &str, answers: &[&str]) -> Outcome {
        let id = gold.to_lowercase();
        let q = |t: &str| Quote {
            title: "t".into(),
            url: "u".into(),
            text: t.into(),
        };
        Outcome {
            id: id.clone(),
            question: format!("Who maintains {id}?"),
            gold: gold.into(),
            turns: Vec::new(),
            quotes: vec![
                q("It is provided by a package."),
                q(&format!("It is maintained by {gold}.")),
            ],
            found: true,
            answer_prompt: format!("Question: who maintains {id}?\nAnswer:"),
            answers: Answers {
                answers: answers.iter().map(|s| s.to_string()).collect(),
                scores: vec![0.0; answers.len()],
                best: None,
            },
        }
    }

    #[test]
    fn the_pairwise_loss_ranks_a_planted_preference() {
        // Planted: feature 0 is 1 for the preferred rows; the others are noise.
        let mut x = Vec::new();
        let mut pairs = Vec::new();
        for i in 0..40u32 {
            let noise = |k: u32| ((i * 37 + k * 11) % 17) as f32 / 17.0;
            x.push(vec![1.0, noise(1), noise(2)]);
            x.push(vec![0.0, noise(3), noise(4)]);
            pairs.push((2 * i as usize, 2 * i as usize + 1));
        }
        let (train, held) = pairs.split_at(30);
        let (head, losses) = RewardHead::fit(&x, train, FitConfig::default()).unwrap();
        assert!(losses[0] > losses[losses.len() - 1] + 0.3, "{losses:?}");
        let r: Vec<f64> = x.iter().map(|v| head.reward(v)).collect();
        assert_eq!(pair_accuracy(&r, held), Some(1.0));
        assert!(head.w[0].abs() > head.w[1].abs() && head.w[0] > 0.0);
        // Bad input is an error, not a panic.
        assert!(RewardHead::fit(&x, &[], FitConfig::default()).is_err());
        assert!(RewardHead::fit(&x, &[(0, 999)], FitConfig::default()).is_err());
    }

    #[test]
    fn candidates_rank_by_accuracy_and_support() {
        let os = vec![
            outcome("Alice", &["Alice [2]", "Alice", "Bob [1]", ""]),
            outcome("Bob", &["Bob [1]"]),
        ];
        let c = candidates(&os);
        let a: Vec<(&str, &str, u8)> = c[0]
            .answers
            .iter()
            .map(|(t, h, r)| (t.as_str(), *h, *r))
            .collect();
        assert_eq!(
            a,
            vec![
                ("Alice [2]", "oracle", 2),
                ("Bob [2]", "wrong-answer", 0),
                ("Alice [1]", "wrong-citation", 1),
                ("Alice", "sample", 1),
                ("Bob [1]", "sample", 0),
            ]
        );
        let cmp = comparisons(&c[..1]);
        assert_eq!(cmp.len(), c[0].pairs().len());
        assert_eq!(cmp.len(), 4 + 2 + 2);
        assert_eq!(cmp[0].how, "oracle(2)>wrong-answer(0)");
        assert_eq!(
            (cmp[0].answer_a.as_str(), cmp[0].preferred.as_str()),
            ("Alice [2]", "A")
        );
        assert_eq!(
            (cmp[1].answer_b.as_str(), cmp[1].preferred.as_str()),
            ("Alice [2]", "B")
        );
    }

    #[test]
    fn the_scorer_seam_picks_the_highest_reward() {
        let mut os = vec![outcome(
            "Alice",
            &["Alice [1]", "Alice [2]", "Bob [2]", "x"],
        )];
        let trained = train(
            &[
                outcome("Alice", &["Alice [1]", "Alice"]),
                outcome("Bob", &["Bob [1]", "Bob [2]"]),
                outcome("Carol", &["Carol [1]"]),
                outcome("Dan", &["Dan [1]", "Dan [2]"]),
                outcome("Eve", &["Eve [2]", "Eve [1]"]),
            ],
            &mut Scripted,
            "scripted",
            FitConfig::default(),
            |_, _| {},
        )
        .unwrap();
        assert!(
            trained.model.train_accuracy > Some(0.99),
            "{:?}",
            trained.model
        );
        let mut rm = RewardScorer {
            head: trained.model.head.clone(),
            features: Scripted,
        };
        rescore(&mut os, &mut rm).unwrap();
        let s = &os[0].answers.scores;
        let top = (0..s.len()).max_by(|&i, &j| s[i].total_cmp(&s[j])).unwrap();
        assert_eq!(os[0].answers.best, Some(top));
        assert!(os[0].answers.answers[top].contains("[2]"));
        // The heuristic through the same seam: the first valid citation wins ties.
        rescore(&mut os, &mut Heuristic).unwrap();
        assert_eq!(os[0].answers.best, Some(0));
        // A head of the wrong width is an error naming both widths.
        let mut narrow = RewardScorer {
            head: RewardHead {
                mean: vec![0.0],
                scale: vec![1.0],
                w: vec![1.0],
            },
            features: Scripted,
        };
        let e = rescore(&mut os, &mut narrow).unwrap_err().to_string();
        assert!(e.contains("reads 1 features, the model gives 4"), "{e}");
    }

    #[test]
    fn a_missing_or_bad_reward_model_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = RewardModel::load(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("expected a reward model at "), "{e}");
        assert!(e.contains("reward_model.json"), "{e}");
        std::fs::write(dir.path().join(FILE), "{\"model\": 3}").unwrap();
        let e = RewardModel::load(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("expected a reward model in "), "{e}");
        let ok = RewardModel {
            model: "m".into(),
            features: "f".into(),
            head: RewardHead {
                mean: vec![0.0, 0.0],
                scale: vec![1.0],
                w: vec![1.0, 2.0],
            },
            train_pairs: 1,
            heldout_pairs: 0,
            train_accuracy: Some(1.0),
            heldout_accuracy: None,
            heldout_sample_pairs: 0,
            heldout_sample_accuracy: None,
        };
        ok.save(dir.path()).unwrap();
        let e = RewardModel::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("equally long mean, scale and w"), "{e}");
    }

    #[test]
    fn cholesky_inverse() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let inv = spd_inverse(&a, 2).unwrap();
        let want = [0.375, -0.25, -0.25, 0.5];
        for (x, y) in inv.iter().zip(want) {
            assert!((x - y).abs() < 1e-12, "{inv:?}");
        }
        assert!(spd_inverse(&[0.0, 0.0, 0.0, 0.0], 2).is_err());
    }
}
