//! Generating HumanEval completions with any [`TextGenerator`] — Codex section 3.3: the prompt is
//! the problem's prompt verbatim, generation stops at the Codex stop sequences, n samples per task
//! with nucleus sampling (the paper: top-p 0.95, temperature 0.2 for pass@1, 0.8 for pass@100).
//!
//! Deviation: at temperature 0 (greedy) the generator is deterministic, so one generation per task
//! is repeated n times instead of generating n identical ones.

use super::{Problem, STOP_SEQUENCES, Sample, truncate_at_stop};
use crate::{EvalError, Result};
use canon_infer::{GenerateRequest, SamplingConfig, TextGenerator};

/// How completions are sampled.
#[derive(Debug, Clone)]
pub struct GenerationOptions {
    pub samples_per_task: usize,
    pub max_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: Option<f32>,
    /// Base seed; sample j of task i uses `seed + i * samples_per_task + j`.
    pub seed: u64,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        GenerationOptions {
            samples_per_task: 1,
            max_tokens: 384,
            temperature: 0.0,
            top_p: None,
            seed: 0,
        }
    }
}

fn request(problem: &Problem, opts: &GenerationOptions, seed: u64) -> GenerateRequest {
    let sampling = if opts.temperature <= 0.0 {
        SamplingConfig::greedy()
    } else {
        SamplingConfig {
            temperature: opts.temperature,
            top_p: opts.top_p,
            seed,
            ..SamplingConfig::greedy()
        }
    };
    let mut req = GenerateRequest::new(problem.prompt.clone(), opts.max_tokens);
    req.sampling = sampling;
    req.stop = STOP_SEQUENCES.iter().map(|s| s.to_string()).collect();
    req
}

/// Generates `samples_per_task` completions for every problem, task by task. `on_sample(done,
/// total, sample)` follows each one; returning false stops early with [`EvalError::Cancelled`].
pub fn generate_completions(
    generator: &mut dyn TextGenerator,
    problems: &[Problem],
    opts: &GenerationOptions,
    on_sample: &mut dyn FnMut(usize, usize, &Sample) -> bool,
) -> Result<Vec<Sample>> {
    let n = opts.samples_per_task.max(1);
    let total = problems.len() * n;
    let mut out = Vec::with_capacity(total);
    for (i, p) in problems.iter().enumerate() {
        let greedy = opts.temperature <= 0.0;
        let mut first: Option<String> = None;
        for j in 0..n {
            let completion = match (&first, greedy) {
                (Some(c), true) => c.clone(),
                _ => {
                    let seed = opts.seed.wrapping_add((i * n + j) as u64);
                    let g = generator
                        .generate(&request(p, opts, seed))
                        .map_err(|source| EvalError::Generate {
                            task_id: p.task_id.clone(),
                            source,
                        })?;
                    // The generator already stops before a stop string; cutting again is idempotent
                    // and guards generators that ignore `stop`.
                    truncate_at_stop(&g.text, &STOP_SEQUENCES).to_string()
                }
            };
            first.get_or_insert_with(|| completion.clone());
            let sample = Sample {
                task_id: p.task_id.clone(),
                completion,
            };
            if !on_sample(out.len() + 1, total, &sample) {
                return Err(EvalError::Cancelled);
            }
            out.push(sample);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_infer::{FinishReason, Generation};

    /// Returns scripted texts and records the requests.
    struct Scripted {
        texts: Vec<&'static str>,
        seen: Vec<GenerateRequest>,
    }

    impl TextGenerator for Scripted {
        fn generate(&mut self, req: &GenerateRequest) -> canon_infer::Result<Generation> {
            let text = self.texts[self.seen.len() % self.texts.len()].to_string();
            self.seen.push(req.clone());
            Ok(Generation {
                prompt_tokens: vec![],
                tokens: vec![],
                text,
                finish_reason: FinishReason::Stop,
                logprobs: None,
                prefill_ms: 0.0,
                decode_ms: 0.0,
            })
        }
    }

    fn problems() -> Vec<Problem> {
        (0..2)
            .map(|i| Problem {
                task_id: format!("T/{i}"),
                prompt: format!("def f{i}():\n"),
                canonical_solution: String::new(),
                test: String::new(),
                entry_point: format!("f{i}"),
            })
            .collect()
    }

    #[test]
    fn sampling_uses_stops_seeds_and_truncates() {
        let mut g = Scripted {
            texts: vec!["    return 1\ndef extra():\n", "    return 2\n"],
            seen: vec![],
        };
        let opts = GenerationOptions {
            samples_per_task: 2,
            temperature: 0.8,
            top_p: Some(0.95),
            seed: 10,
            ..Default::default()
        };
        let mut calls = 0;
        let s = generate_completions(&mut g, &problems(), &opts, &mut |_, total, _| {
            calls += 1;
            total == 4
        })
        .unwrap();
        assert_eq!(calls, 4);
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            Sample {
                task_id: "T/0".into(),
                completion: "    return 1".into()
            }
        );
        assert_eq!(s[3].task_id, "T/1");
        let seeds: Vec<u64> = g.seen.iter().map(|r| r.sampling.seed).collect();
        assert_eq!(seeds, vec![10, 11, 12, 13]);
        assert!(
            g.seen
                .iter()
                .all(|r| r.stop.len() == 5 && r.sampling.top_p == Some(0.95))
        );
        assert_eq!(g.seen[2].prompt, "def f1():\n");
    }

    #[test]
    fn greedy_generates_once_per_task_and_cancel_stops() {
        let mut g = Scripted {
            texts: vec!["    pass\n"],
            seen: vec![],
        };
        let opts = GenerationOptions {
            samples_per_task: 3,
            ..Default::default()
        };
        let s = generate_completions(&mut g, &problems(), &opts, &mut |_, _, _| true).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(g.seen.len(), 2);
        let r = generate_completions(&mut g, &problems(), &opts, &mut |done, _, _| done < 2);
        assert!(matches!(r, Err(EvalError::Cancelled)));
    }
}
