//! The capability law measured on a pass/fail task (GPT-4 report, §3.1: HumanEval's
//! `−E[log pass_rate]` predicted from smaller runs).
//!
//! The task is answer-only addition, `a+b=` → `c` followed by a newline, with operands in
//! `0..=max_operand` (an easy version of the prompting issue's arithmetic problems, so that
//! models with a few thousand parameters reach pass rates well above zero). All
//! `(max_operand + 1)²` problems are shuffled once with a seed; the first `heldout` are the
//! evaluation problems and never appear in training; the ladder trains on documents of the other
//! problems, one per line.
//!
//! The estimator: a sampled answer (temperature 1, stopping at the newline) passes exactly when it
//! is the answer string, so a problem's pass rate under sampling is
//! `P(answer + "\n" | prompt) = Π_t p(answer_t | prompt, answer_<t)`, read off the model's
//! logits in one forward pass, with no sampling noise and never zero. The metric is
//! `−mean over problems of log pass_rate` (the mean answer negative log-likelihood in nats). The
//! greedy pass rate is exact too: greedy decoding reproduces the answer exactly when every
//! teacher-forced arg-max is the answer's token. The prompt shows `context` solved training
//! problems first, one per line, so the question is in the format the model trained on.

use candle_core::{Device, Tensor};
use canon_models::{CausalLm, Positions};
use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Result, ScaleError};

fn d_heldout() -> usize {
    200
}
fn d_context() -> usize {
    3
}
fn d_docs() -> usize {
    2000
}
fn d_lines() -> usize {
    16
}
fn d_seed() -> u64 {
    26
}

/// The `[scale.capability]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitySpec {
    /// The task; only `"addition"` for now.
    pub task: String,
    /// Operands are drawn from `0..=max_operand`.
    pub max_operand: u32,
    /// Evaluation problems, held out of training.
    #[serde(default = "d_heldout")]
    pub heldout: usize,
    /// Solved training problems shown before each evaluation question.
    #[serde(default = "d_context")]
    pub context: usize,
    /// Training documents (the ladder's training data), each `lines` problems.
    #[serde(default = "d_docs")]
    pub docs: usize,
    #[serde(default = "d_lines")]
    pub lines: usize,
    #[serde(default = "d_seed")]
    pub seed: u64,
}

/// One addition problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    pub a: u32,
    pub b: u32,
}

impl Problem {
    pub fn question(&self) -> String {
        format!("{}+{}=", self.a, self.b)
    }
    /// The answer string, terminator included.
    pub fn answer(&self) -> String {
        format!("{}\n", self.a + self.b)
    }
    pub fn line(&self) -> String {
        format!("{}{}", self.question(), self.answer())
    }
}

/// The task's problems split into training and held-out evaluation problems.
#[derive(Debug, Clone)]
pub struct Task {
    pub spec: CapabilitySpec,
    pub train: Vec<Problem>,
    pub eval: Vec<Problem>,
}

impl CapabilitySpec {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.task != "addition" {
            return Err(format!(
                "scale.capability.task: expected \"addition\", found {:?}",
                self.task
            ));
        }
        let n = (self.max_operand as usize + 1).pow(2);
        if self.max_operand == 0 || self.max_operand > 999 {
            return Err(format!(
                "scale.capability.max_operand must be in 1..=999, found {}",
                self.max_operand
            ));
        }
        if self.heldout == 0 || self.heldout + self.context.max(1) > n {
            return Err(format!(
                "scale.capability.heldout must be positive and leave training problems: {} problems, found heldout = {}",
                n, self.heldout
            ));
        }
        if self.docs == 0 || self.lines == 0 {
            return Err(format!(
                "scale.capability.docs and .lines must be positive, found {} and {}",
                self.docs, self.lines
            ));
        }
        Ok(())
    }

    /// Characters of the longest evaluation sequence (context lines, question and answer, less
    /// the last character, which is never fed): a bound on its tokens.
    pub fn longest_chars(&self) -> usize {
        let m = self.max_operand;
        let line = Problem { a: m, b: m }.line().len();
        (self.context + 1) * line - 1
    }

    /// Every problem, shuffled by the seed and split.
    pub fn task(&self) -> Result<Task> {
        self.validate().map_err(ScaleError::Msg)?;
        let m = self.max_operand;
        let mut all: Vec<Problem> = (0..=m)
            .flat_map(|a| (0..=m).map(move |b| Problem { a, b }))
            .collect();
        let mut rng = SplitMix64::new(self.seed);
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i + 1));
        }
        let train = all.split_off(self.heldout);
        Ok(Task {
            spec: self.clone(),
            train,
            eval: all,
        })
    }
}

impl Task {
    /// The training documents: `docs` documents of `lines` random training problems each.
    pub fn train_docs(&self) -> Vec<String> {
        let mut rng = SplitMix64::new(self.spec.seed ^ 0xd0c5);
        (0..self.spec.docs)
            .map(|_| {
                (0..self.spec.lines)
                    .map(|_| self.train[rng.below(self.train.len())].line())
                    .collect()
            })
            .collect()
    }

    /// The prompt of evaluation problem `i`: `context` solved training problems, then its
    /// question.
    pub fn prompt(&self, i: usize) -> String {
        let mut s = String::new();
        for k in 0..self.spec.context {
            s += &self.train[(i * 7 + k * 13) % self.train.len()].line();
        }
        s + &self.eval[i].question()
    }
}

/// The capability of one model on the held-out problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    pub problems: usize,
    /// `−mean log pass_rate` (nats): the capability metric.
    pub neg_mean_log_pass_rate: f64,
    /// Mean pass rate under sampling at temperature 1.
    pub mean_pass_rate: f64,
    /// Fraction of problems greedy decoding answers exactly.
    pub greedy_pass_rate: f64,
}

/// `log P(answer | prompt)` and whether greedy decoding produces the answer, from the logits of
/// every position of `prompt ++ answer` (`logits[t]` predicts token `t + 1`).
pub fn answer_logprob(
    logits: &[Vec<f32>],
    prompt_len: usize,
    answer: &[u32],
) -> Result<(f64, bool)> {
    if prompt_len == 0 || answer.is_empty() || logits.len() < prompt_len + answer.len() - 1 {
        return Err(ScaleError::Msg(format!(
            "capability: expected logits for {} positions (prompt {prompt_len} + answer {}), found {}",
            prompt_len + answer.len() - 1,
            answer.len(),
            logits.len()
        )));
    }
    let mut lp = 0.0;
    let mut greedy = true;
    for (k, &tok) in answer.iter().enumerate() {
        let row = &logits[prompt_len - 1 + k];
        let Some(&x) = row.get(tok as usize) else {
            return Err(ScaleError::Msg(format!(
                "capability: token {tok} outside the {} logits",
                row.len()
            )));
        };
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        lp += x as f64 - m - z.ln();
        // Ties resolve to the lowest id, as an arg-max over the row would.
        let best = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| {
                    if v > b.1 { (i, v) } else { b }
                },
            )
            .0;
        greedy &= best == tok as usize;
    }
    Ok((lp, greedy))
}

/// The logits of every position of a token sequence.
pub type LogitsOf<'a> = &'a mut dyn FnMut(&[u32]) -> Result<Vec<Vec<f32>>>;

/// Scores every held-out problem with `logits_of` (the logits of every position of a token
/// sequence).
pub fn evaluate_with(
    task: &Task,
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
    logits_of: LogitsOf<'_>,
) -> Result<Capability> {
    let n = task.eval.len();
    let (mut nll, mut pass, mut greedy) = (0.0, 0.0, 0usize);
    for (i, p) in task.eval.iter().enumerate() {
        let prompt = encode(&task.prompt(i))?;
        let answer = encode(&p.answer())?;
        let mut ids = prompt.clone();
        ids.extend(&answer);
        let logits = logits_of(&ids[..ids.len() - 1])?;
        let (lp, g) = answer_logprob(&logits, prompt.len(), &answer)?;
        nll -= lp;
        pass += lp.exp();
        greedy += g as usize;
    }
    Ok(Capability {
        problems: n,
        neg_mean_log_pass_rate: nll / n as f64,
        mean_pass_rate: pass / n as f64,
        greedy_pass_rate: greedy as f64 / n as f64,
    })
}

/// Scores a trained model with its tokenizer (no special tokens added).
pub fn evaluate(task: &Task, model: &dyn CausalLm, tok: &Tokenizer) -> Result<Capability> {
    let encode = |s: &str| -> Result<Vec<u32>> {
        Ok(tok
            .encode(s, false)
            .map_err(|e| ScaleError::Msg(format!("capability tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    };
    let mut logits_of = |ids: &[u32]| -> Result<Vec<Vec<f32>>> {
        let t = Tensor::new(ids, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| ScaleError::Msg(format!("capability input: {e}")))?;
        let mut cache = model.new_cache();
        model
            .forward(&t, &mut cache, Positions::All)?
            .squeeze(0)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(|e| ScaleError::Msg(format!("capability logits: {e}")))
    };
    evaluate_with(task, &encode, &mut logits_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CapabilitySpec {
        CapabilitySpec {
            task: "addition".into(),
            max_operand: 9,
            heldout: 20,
            context: 2,
            docs: 5,
            lines: 4,
            seed: 1,
        }
    }

    #[test]
    fn held_out_problems_never_train_and_prompts_are_in_the_training_format() {
        let t = spec().task().unwrap();
        assert_eq!(t.eval.len(), 20);
        assert_eq!(t.train.len(), 80);
        assert!(t.eval.iter().all(|p| !t.train.contains(p)));
        let docs = t.train_docs();
        assert_eq!(docs.len(), 5);
        for p in &t.eval {
            assert!(
                docs.iter()
                    .all(|d| !d.lines().any(|l| l == p.line().trim_end()))
            );
        }
        let p = t.prompt(0);
        assert_eq!(p.lines().count(), 3);
        assert!(p.ends_with(&t.eval[0].question()));
        let bad = CapabilitySpec {
            heldout: 100,
            ..spec()
        };
        assert!(bad.task().unwrap_err().to_string().contains("heldout"));
    }

    /// A scripted model over characters (id = byte): it gives probability `q` to the correct next
    /// character of the answer and spreads the rest over the other 15 symbols.
    #[test]
    fn the_estimator_reads_the_exact_pass_rate_off_a_scripted_model() {
        let t = spec().task().unwrap();
        let vocab = 16usize;
        let sym = |c: char| -> u32 { "0123456789+=\n ab".find(c).unwrap() as u32 };
        let encode = |s: &str| -> Result<Vec<u32>> { Ok(s.chars().map(sym).collect()) };
        for q in [0.5f64, 0.9] {
            let mut calls = 0;
            // The scripted model knows each problem's answer from the question's position.
            let mut logits_of = |ids: &[u32]| -> Result<Vec<Vec<f32>>> {
                calls += 1;
                let text: String = ids
                    .iter()
                    .map(|&i| "0123456789+=\n ab".as_bytes()[i as usize] as char)
                    .collect();
                let q_line = text.rsplit('\n').next().unwrap().to_string();
                let (question, partial) = q_line.split_once('=').unwrap();
                let (a, b) = question.split_once('+').unwrap();
                let full = format!(
                    "{}={}\n",
                    question,
                    a.parse::<u32>().unwrap() + b.parse::<u32>().unwrap()
                );
                let start = ids.len() - partial.len() - 1; // the position of '='
                let mut rows = vec![vec![0.0f32; vocab]; ids.len()];
                for (k, row) in rows.iter_mut().enumerate().skip(start) {
                    let next = full.as_bytes()[question.len() + 1 + k - start] as char;
                    let other = ((1.0 - q) / (vocab - 1) as f64).ln();
                    row.iter_mut().for_each(|v| *v = other as f32);
                    row[sym(next) as usize] = q.ln() as f32;
                }
                Ok(rows)
            };
            let c = evaluate_with(&t, &encode, &mut logits_of).unwrap();
            assert_eq!(calls, 20);
            // Each answer has (digits + 1) tokens; the pass rate is q^(len).
            let want: f64 = t
                .eval
                .iter()
                .map(|p| -(p.answer().len() as f64) * q.ln())
                .sum::<f64>()
                / 20.0;
            assert!((c.neg_mean_log_pass_rate - want).abs() < 1e-5, "{c:?}");
            let mean_pass: f64 = t
                .eval
                .iter()
                .map(|p| q.powi(p.answer().len() as i32))
                .sum::<f64>()
                / 20.0;
            assert!((c.mean_pass_rate - mean_pass).abs() < 1e-5);
            assert_eq!(
                c.greedy_pass_rate, 1.0,
                "q > 1/16 makes the answer the arg-max"
            );
        }
    }

    /// Per-problem pass rates from a planted law: problem `i` has difficulty `d_i` (mean 1) and
    /// pass rate `exp(−d_i · α · C^(−k))`, so `−E[log pass rate] = α · C^(−k)` exactly; the pass
    /// rates are then perturbed by 2 % multiplicative noise.
    #[test]
    fn the_fit_recovers_a_planted_law_from_synthetic_pass_rates() {
        let (alpha, k) = (40.0, 0.2);
        let mut rng = SplitMix64::new(9);
        let d: Vec<f64> = (0..200).map(|i| 0.5 + (i as f64) / 199.0).collect();
        let computes: Vec<f64> = (0..6).map(|i| 1e8 * 3f64.powi(i)).collect();
        let mut pts = Vec::new();
        for &c in &computes {
            let m = alpha * c.powf(-k);
            let rates: Vec<f64> = d
                .iter()
                .map(|di| ((-di * m).exp() * (1.0 + 0.02 * rng.normal())).clamp(1e-300, 1.0))
                .collect();
            let (v, skipped) = crate::fit::neg_mean_log_pass_rate(&rates, false).unwrap();
            assert_eq!(skipped, 0);
            pts.push((c, v));
        }
        let f = crate::fit::fit(&pts, crate::fit::Law::Power).unwrap();
        assert!((-f.params.b - k).abs() < 0.01, "k = {}", -f.params.b);
        assert!((f.params.a / alpha - 1.0).abs() < 0.1, "α = {}", f.params.a);
        let target = computes[5] * 30.0;
        let truth = alpha * target.powf(-k);
        assert!((f.predict(target) / truth - 1.0).abs() < 0.02);
    }

    #[test]
    fn greedy_fails_when_a_wrong_token_leads() {
        let logits = vec![vec![0.0, 0.0], vec![1.0, 2.0], vec![3.0, 0.0]];
        let (lp, g) = answer_logprob(&logits, 2, &[0, 0]).unwrap();
        assert!(!g);
        let want = (1.0f64 - (1f64.exp() + 2f64.exp()).ln()) + (3.0 - (3f64.exp() + 1.0).ln());
        assert!((lp - want).abs() < 1e-6);
        let (_, g) = answer_logprob(&logits, 2, &[1, 0]).unwrap();
        assert!(g);
        assert!(answer_logprob(&logits, 3, &[0, 0]).is_err());
    }
}
