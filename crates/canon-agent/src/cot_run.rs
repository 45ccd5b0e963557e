//! Running the chain-of-thought evaluation (`canon eval cot`, papers 17–19) on the batched
//! engine: per problem a greedy direct answer, a greedy chain of thought and `m` sampled
//! rationales; then accuracy of each, self-consistency votes over the first `m` samples, and the
//! same by number of steps.

use std::collections::BTreeMap;

use canon_infer::{Engine, FinishReason, Request, SamplingConfig};

use crate::cot::{self, Problem, Style};
use crate::{AgentError, Result};

/// How the problems are asked.
#[derive(Debug, Clone, PartialEq)]
pub struct CotRun {
    /// Demonstrations in the prompt (0: zero-shot "Let's think step by step").
    pub shots: usize,
    /// Sampled rationales per problem (the largest vote size).
    pub samples: usize,
    pub temperature: f32,
    pub max_tokens: usize,
    pub seed: u64,
}

impl CotRun {
    /// Requests per problem: the direct answer, the greedy chain of thought and the samples.
    fn per_problem(&self) -> usize {
        self.samples + 2
    }

    /// Problems sent to the engine together, so that small models fill its slots.
    fn chunk(&self) -> usize {
        (32 / self.per_problem()).max(1)
    }

    /// The engine slots a run uses.
    pub fn engine_slots(&self) -> usize {
        (self.chunk() * self.per_problem()).min(32)
    }
}

/// One problem's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CotRow {
    pub problem: Problem,
    pub direct: Option<String>,
    pub greedy: Option<String>,
    pub sampled: Vec<Option<String>>,
    /// The generated texts: direct, greedy chain of thought, then the samples.
    pub texts: Vec<String>,
    /// Per text, whether it ended at the length limit (`max_tokens`, or the model's context)
    /// rather than at a stop: a rationale cut short, whose answer is read from what was written.
    pub cut: Vec<bool>,
}

/// Asks every problem (with `demos` as the demonstrations); `on_problem` is called after each.
pub fn run_cot(
    engine: &Engine,
    problems: &[Problem],
    demos: &[Problem],
    o: &CotRun,
    on_problem: &mut dyn FnMut(),
) -> Result<Vec<CotRow>> {
    let tok = engine.tokenizer().clone();
    let (per, chunk) = (o.per_problem(), o.chunk());
    let cot_style = if o.shots == 0 {
        Style::ZeroShotCot
    } else {
        Style::FewShotCot
    };
    let stops = vec!["\nQ:".to_string(), "\n\n".to_string()];
    let mut rows = Vec::with_capacity(problems.len());
    for (ci, group) in problems.chunks(chunk).enumerate() {
        let mut reqs = Vec::new();
        let mut push = |text: String, temperature: f32, seed: u64| -> Result<()> {
            let ids = tok
                .encode(&text, false)
                .map_err(|e| AgentError::Text(e.to_string()))?;
            let mut r = Request::new(ids, o.max_tokens);
            r.sampling = SamplingConfig {
                temperature,
                seed,
                ..Default::default()
            };
            r.stop = stops.clone();
            reqs.push(r);
            Ok(())
        };
        for (j, p) in group.iter().enumerate() {
            let pi = ci * chunk + j;
            // 0: greedy direct answer (few-shot answers only; zero-shot asks for the answer).
            let direct = if o.shots == 0 {
                format!("Q: {}\nA: The answer is", p.question)
            } else {
                cot::prompt(p, demos, Style::FewShotDirect)
            };
            push(direct, 0.0, 0)?;
            // 1: greedy chain of thought; 2..: sampled rationales.
            let cot_prompt = cot::prompt(p, demos, cot_style);
            push(cot_prompt.clone(), 0.0, 0)?;
            for s in 0..o.samples {
                push(
                    cot_prompt.clone(),
                    o.temperature,
                    o.seed.wrapping_mul(1_000_003) ^ ((pi as u64) << 20) ^ s as u64,
                )?;
            }
        }
        let outs = engine
            .generate_batch(reqs)
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let cut: Vec<bool> = outs
            .iter()
            .map(|c| c.finish_reason == FinishReason::Length)
            .collect();
        let all: Vec<String> = outs.into_iter().map(|c| c.text).collect();
        for ((p, texts), cut) in group.iter().zip(all.chunks(per)).zip(cut.chunks(per)) {
            let direct = if o.shots == 0 {
                cot::extract_answer(&format!("The answer is{}", texts[0]))
            } else {
                cot::extract_answer(&texts[0])
            };
            rows.push(CotRow {
                problem: p.clone(),
                direct,
                greedy: cot::extract_answer(&texts[1]),
                sampled: texts[2..].iter().map(|t| cot::extract_answer(t)).collect(),
                texts: texts.to_vec(),
                cut: cut.to_vec(),
            });
            on_problem();
        }
    }
    Ok(rows)
}

/// The figures of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct CotSummary {
    pub direct: f64,
    pub greedy: f64,
    /// Per vote size `m` (sorted, distinct): accuracy of the majority of the first `m` samples.
    pub vote: Vec<(usize, f64)>,
    /// Per number of steps: (problems, direct right, greedy chain of thought right).
    pub by_steps: BTreeMap<usize, (usize, usize, usize)>,
    /// Greedy rationales and sampled ones that ended at the length limit (see [`CotRow::cut`]).
    pub cut_greedy: usize,
    pub cut_sampled: usize,
}

/// Accuracies of `rows`, with self-consistency votes of each size in `votes`.
pub fn summarize(rows: &[CotRow], votes: &[usize]) -> CotSummary {
    let n = rows.len().max(1) as f64;
    let acc = |f: &dyn Fn(&CotRow) -> bool| rows.iter().filter(|r| f(r)).count() as f64 / n;
    let right = |a: &Option<String>, r: &CotRow| cot::is_correct(a.as_deref(), &r.problem.answer);
    let mut ms = votes.to_vec();
    ms.sort_unstable();
    ms.dedup();
    let vote = ms
        .iter()
        .map(|&m| {
            let m_of = |r: &CotRow| cot::majority(&r.sampled[..m.min(r.sampled.len())]);
            (m, acc(&|r| right(&m_of(r), r)))
        })
        .collect();
    let mut by_steps: BTreeMap<usize, (usize, usize, usize)> = BTreeMap::new();
    for r in rows {
        let e = by_steps.entry(r.problem.steps).or_default();
        e.0 += 1;
        e.1 += right(&r.direct, r) as usize;
        e.2 += right(&r.greedy, r) as usize;
    }
    let cut = |r: &CotRow, i: usize| r.cut.get(i).copied().unwrap_or(false);
    CotSummary {
        direct: acc(&|r| right(&r.direct, r)),
        greedy: acc(&|r| right(&r.greedy, r)),
        vote,
        by_steps,
        cut_greedy: rows.iter().filter(|r| cut(r, 1)).count(),
        cut_sampled: rows
            .iter()
            .map(|r| (2..r.cut.len()).filter(|&i| cut(r, i)).count())
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_answers_votes_and_steps() {
        let p = |answer: &str, steps| Problem {
            question: "q".into(),
            rationale: "r".into(),
            answer: answer.into(),
            steps,
        };
        let s = |v: &str| Some(v.to_string());
        let rows = vec![
            CotRow {
                problem: p("3", 1),
                direct: s("3"),
                greedy: s("4"),
                sampled: vec![s("3"), s("4"), s("3")],
                texts: vec![],
                // The greedy rationale and one sample cut at the length limit.
                cut: vec![false, true, false, true, false],
            },
            CotRow {
                problem: p("5", 2),
                direct: None,
                greedy: s("5"),
                sampled: vec![s("1"), s("5"), s("5")],
                texts: vec![],
                cut: vec![true, false, true, true, false],
            },
        ];
        let sum = summarize(&rows, &[3, 1, 3]);
        assert_eq!((sum.direct, sum.greedy), (0.5, 0.5));
        assert_eq!(sum.vote, vec![(1, 0.5), (3, 1.0)]);
        assert_eq!(sum.by_steps[&1], (1, 1, 0));
        assert_eq!(sum.by_steps[&2], (1, 0, 1));
        // A cut direct answer is not counted; greedy rationales 1 of 2, samples 3 of 6.
        assert_eq!((sum.cut_greedy, sum.cut_sampled), (1, 3));
        let o = CotRun {
            shots: 0,
            samples: 5,
            temperature: 0.7,
            max_tokens: 64,
            seed: 0,
        };
        assert_eq!(o.engine_slots(), 28);
    }
}
