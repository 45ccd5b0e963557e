//! Scoring a policy on the test prompts by the gold judge (standing in for the evaluators):
//! one sample per prompt at temperature 1, the mean gold score, the fraction correct / on-format /
//! concise, and the win rate against a baseline's samples (wins + ½ ties).

use crate::Result;
use crate::lm::Lm;
use crate::task::{MAX_RESPONSE, Problem, judge, response_text, win_rate};

/// What the judge says of a policy on the test prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyEval {
    pub scores: Vec<f64>,
    pub gold: f64,
    pub correct: f64,
    pub on_format: f64,
    pub concise: f64,
    /// Mean response length in tokens (EOS included).
    pub length: f64,
}

impl PolicyEval {
    /// Win rate of this policy's samples over `baseline`'s, prompt by prompt.
    pub fn win_rate(&self, baseline: &PolicyEval) -> f64 {
        win_rate(&self.scores, &baseline.scores)
    }

    /// The figures as metric pairs, keys prefixed by `prefix`.
    pub fn metrics(&self, prefix: &str) -> Vec<(String, f64)> {
        vec![
            (format!("{prefix}gold"), self.gold),
            (format!("{prefix}correct"), self.correct),
            (format!("{prefix}on_format"), self.on_format),
            (format!("{prefix}concise"), self.concise),
            (format!("{prefix}length"), self.length),
        ]
    }
}

/// Samples one response per problem (temperature 1, `seed`) and judges it.
pub fn evaluate_policy(policy: &Lm, problems: &[Problem], seed: u64) -> Result<PolicyEval> {
    let prompts: Vec<Vec<u32>> = problems.iter().map(Problem::prompt_ids).collect();
    let mut resp = Vec::with_capacity(prompts.len());
    for (i, chunk) in prompts.chunks(250).enumerate() {
        resp.extend(policy.sample(chunk, MAX_RESPONSE, 1.0, seed ^ (i as u64 * 7919 + 1))?);
    }
    let n = problems.len().max(1) as f64;
    let verdicts: Vec<_> = problems
        .iter()
        .zip(&resp)
        .map(|(p, r)| judge(p, &response_text(r)))
        .collect();
    let frac = |f: &dyn Fn(&crate::task::Verdict) -> bool| {
        verdicts.iter().filter(|v| f(v)).count() as f64 / n
    };
    let scores: Vec<f64> = verdicts.iter().map(|v| v.score()).collect();
    Ok(PolicyEval {
        gold: scores.iter().sum::<f64>() / n,
        correct: frac(&|v| v.correct),
        on_format: frac(&|v| v.on_format),
        concise: frac(&|v| v.concise),
        length: resp.iter().map(Vec::len).sum::<usize>() as f64 / n,
        scores,
    })
}
