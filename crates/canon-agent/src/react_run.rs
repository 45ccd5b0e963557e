//! Running ReAct (paper 23) over a question set: demonstrations drawn one kind after another,
//! the oracle's trajectories as fine-tuning records, episodes in parallel on the batched engine,
//! and the per-mode score.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::react::{self, EngineLm, Episode, LoopConfig, Mode, Wiki, WikiEnv};
use crate::react_data::Question;
use crate::tools::Limits;
use crate::{AgentError, Result};

/// `shots` oracle demonstrations of train questions, one kind after another.
pub fn demos_for(qs: &[Question], wiki: &Arc<Wiki>, mode: Mode, shots: usize) -> Vec<String> {
    let mut kinds: Vec<&str> = qs.iter().map(|q| q.kind.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    let mut by_kind: Vec<Vec<&Question>> = kinds
        .iter()
        .map(|k| {
            qs.iter()
                .filter(|q| q.split == "train" && q.kind == *k)
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < shots && by_kind.iter().any(|v| !v.is_empty()) {
        let k = i % by_kind.len();
        if !by_kind[k].is_empty() {
            let q = by_kind[k].remove(0);
            out.push(react::demonstration(q, &WikiEnv::new(wiki.clone()), mode));
        }
        i += 1;
    }
    out
}

/// The oracle's trajectories of `run` under each mode, as JSONL records `{prompt, completion}`
/// (the prompt holds the demonstrations and the question).
pub fn oracle_records(
    qs: &[Question],
    run: &[&Question],
    wiki: &Arc<Wiki>,
    modes: &[Mode],
    shots: usize,
) -> String {
    let mut text = String::new();
    for m in modes {
        let demos = demos_for(qs, wiki, *m, shots);
        for q in run {
            let full = react::demonstration(q, &WikiEnv::new(wiki.clone()), *m);
            let head = format!("Question: {}\n", q.question);
            let p = react::prompt(*m, &demos, &q.question);
            let completion = full.strip_prefix(&head).unwrap_or(&full);
            text.push_str(&json!({"prompt": p, "completion": completion}).to_string());
            text.push('\n');
        }
    }
    text
}

/// Runs one episode per question on `parallel` threads sharing the engine; returns the episodes
/// in question order. `on_done()` is called after each episode.
pub fn run_episodes(
    elm: &EngineLm,
    run: &[&Question],
    demos: &[String],
    cfg: &LoopConfig,
    wiki: &Arc<Wiki>,
    parallel: usize,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Episode>> {
    let next = AtomicUsize::new(0);
    let results: Vec<Result<(usize, Episode)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..parallel.min(run.len()))
            .map(|_| {
                let mut lm = elm.clone();
                let next = &next;
                s.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= run.len() {
                            break;
                        }
                        let env = WikiEnv::new(wiki.clone());
                        let tb = react::episode_tools(&env, &[], Limits::default());
                        let r =
                            react::run_episode(&mut lm, &tb, demos, run[i], cfg).map(|e| (i, e));
                        on_done();
                        out.push(r);
                    }
                    out
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(AgentError::Task("an episode thread panicked".into()))]
                })
            })
            .collect()
    });
    let mut eps: Vec<(usize, Episode)> = results.into_iter().collect::<Result<_>>()?;
    eps.sort_by_key(|e| e.0);
    Ok(eps.into_iter().map(|e| e.1).collect())
}

/// The score of one mode's episodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub questions: usize,
    pub correct: usize,
    pub finished: usize,
    pub steps: usize,
    pub invalid_actions: usize,
}

impl Score {
    pub fn of(eps: &[Episode]) -> Score {
        Score {
            questions: eps.len(),
            correct: eps.iter().filter(|e| e.exact_match).count(),
            finished: eps.iter().filter(|e| e.finished).count(),
            steps: eps.iter().map(|e| e.steps.len()).sum(),
            invalid_actions: eps
                .iter()
                .flat_map(|e| &e.steps)
                .filter(|s| s.observation.starts_with("Invalid action"))
                .count(),
        }
    }

    pub fn exact_match(&self) -> f64 {
        self.correct as f64 / self.questions as f64
    }
}

/// The question set in `data` (pages.jsonl, questions.jsonl): the wiki, every question (the
/// demonstrations come from the train split), and the indices of `split`'s questions, the first
/// `limit`; none is an error.
pub fn load_split(
    data: &std::path::Path,
    split: &str,
    limit: Option<usize>,
) -> Result<(Arc<Wiki>, Vec<Question>, Vec<usize>)> {
    if split != "test" && split != "train" {
        return Err(AgentError::Task(format!(
            "--split: expected train or test, found {split:?}"
        )));
    }
    let pages: Vec<crate::react_data::Page> =
        crate::react_data::from_jsonl(&data.join("pages.jsonl"))?;
    let qs: Vec<Question> = crate::react_data::from_jsonl(&data.join("questions.jsonl"))?;
    let mut run: Vec<usize> = (0..qs.len()).filter(|&i| qs[i].split == split).collect();
    if let Some(n) = limit {
        run.truncate(n);
    }
    if run.is_empty() {
        return Err(AgentError::Task(format!(
            "{}: expected {split} questions, found none",
            data.display()
        )));
    }
    Ok((Arc::new(Wiki::new(pages)), qs, run))
}

/// Settings of an evaluation over several modes.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub shots: usize,
    pub max_steps: usize,
    pub max_tokens: usize,
    /// Actions constrained to `Name[argument]`.
    pub constrained: bool,
    /// Episodes decoding at once on the engine.
    pub parallel: usize,
}

impl RunOpts {
    /// At least one step and one episode at a time.
    pub fn check(&self) -> Result<()> {
        if self.max_steps == 0 || self.parallel == 0 {
            return Err(AgentError::Task(
                "--max-steps and --parallel must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// One mode's result.
#[derive(Debug, Clone)]
pub struct ModeRun {
    pub mode: Mode,
    pub score: Score,
    pub seconds: f64,
}

impl ModeRun {
    /// The scores as one JSON object (`canon agent react --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let sc = &self.score;
        json!({"mode": self.mode, "questions": sc.questions, "exact_match": sc.exact_match(),
            "correct": sc.correct, "finished": sc.finished, "steps": sc.steps,
            "invalid_actions": sc.invalid_actions, "seconds": self.seconds})
    }
}

/// `--mode`: one of react, act, cot, or `all` for the three in that order.
pub fn parse_modes(mode: &str) -> Result<Vec<Mode>> {
    if mode == "all" {
        return Ok(vec![Mode::React, Mode::Act, Mode::Cot]);
    }
    Ok(vec![mode.parse()?])
}

/// What `run_modes` reports along the way.
pub enum RunEvent<'a> {
    /// A mode begins over `n` questions.
    Start(Mode, usize),
    /// An episode ended (called from the worker threads).
    Episode,
    /// A mode is done.
    Done(&'a ModeRun),
}

/// Runs every question of `run` in each of `modes` on `lm` (on the batched engine, `parallel`
/// episodes at once), with demonstrations from `qs`' train split; returns every episode and each
/// mode's score.
pub fn run_modes(
    lm: canon_models::LoadedLm,
    qs: &[Question],
    run: &[&Question],
    wiki: &Arc<Wiki>,
    modes: &[Mode],
    o: &RunOpts,
    on: &(dyn Fn(RunEvent<'_>) + Sync),
) -> Result<(Vec<Episode>, Vec<ModeRun>)> {
    o.check()?;
    let texts = Arc::new(crate::react::TokenTexts::new(&lm.tokenizer));
    let engine = canon_infer::Engine::start(
        lm,
        canon_infer::EngineConfig {
            slots: o.parallel.min(15),
            ..Default::default()
        },
    )
    .map_err(|e| AgentError::Task(e.to_string()))?;
    let elm = crate::react::EngineLm {
        engine: engine.clone(),
        texts,
    };
    let mut all = Vec::new();
    let mut runs = Vec::new();
    for &m in modes {
        let demos = demos_for(qs, wiki, m, o.shots);
        let cfg = LoopConfig {
            mode: m,
            max_steps: o.max_steps,
            max_tokens: o.max_tokens,
            constrained: o.constrained,
        };
        on(RunEvent::Start(m, run.len()));
        let t0 = std::time::Instant::now();
        let eps = run_episodes(&elm, run, &demos, &cfg, wiki, o.parallel, &|| {
            on(RunEvent::Episode)
        });
        let eps = match eps {
            Ok(e) => e,
            Err(e) => {
                engine.shutdown();
                return Err(e);
            }
        };
        let r = ModeRun {
            mode: m,
            score: Score::of(&eps),
            seconds: t0.elapsed().as_secs_f64(),
        };
        on(RunEvent::Done(&r));
        runs.push(r);
        all.extend(eps);
    }
    engine.shutdown();
    Ok((all, runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_scores_print_as_json() {
        assert_eq!(
            parse_modes("all").unwrap(),
            [Mode::React, Mode::Act, Mode::Cot]
        );
        assert_eq!(parse_modes("act").unwrap(), [Mode::Act]);
        let e = parse_modes("x").unwrap_err().to_string();
        assert_eq!(e, "expected a mode react, act or cot, found 'x'");
        let r = ModeRun {
            mode: Mode::Cot,
            score: Score {
                questions: 4,
                correct: 1,
                finished: 3,
                steps: 9,
                invalid_actions: 0,
            },
            seconds: 2.0,
        };
        let v = r.to_json();
        assert_eq!(v["exact_match"], 0.25);
        assert_eq!(v["mode"], serde_json::to_value(Mode::Cot).unwrap());
        assert_eq!(v["steps"], 9);
    }
}
