//! What scores a question's sampled answers for best-of-n: the heuristic or the reward model.

use super::{Featurizer, RewardHead, task};
use crate::Result;
use crate::browser::heuristic_score;
use crate::webgpt::Outcome;

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
