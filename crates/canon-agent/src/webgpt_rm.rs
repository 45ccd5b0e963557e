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
//!
//! The parts: `compare` (the candidates and their pairs), `features` (the frozen model's
//! hidden states), `head` (the linear head and its fit), `model` (the saved file), `scorer` (the
//! scorers and re-scoring); this module trains the head from outcomes.

mod compare;
mod features;
mod head;
mod model;
mod scorer;
#[cfg(test)]
mod tests;

pub use compare::{Candidates, Comparison, candidates, comparisons};
pub use features::{Featurizer, HiddenStates};
pub use head::{FitConfig, RewardHead};
pub use model::RewardModel;
pub use scorer::{AnswerScorer, Heuristic, RewardScorer, rescore};

use crate::webgpt::Outcome;
use crate::{AgentError, Result};

/// The reward model's file inside its folder.
pub const FILE: &str = "reward_model.json";

fn task(m: impl Into<String>) -> AgentError {
    AgentError::Task(m.into())
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
