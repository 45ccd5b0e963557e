//! The best-of-N evaluation protocol of PRM800K (paper 21), reproduced draw for draw.
//!
//! The paper's released evaluation scores a file of sampled solutions (one JSON object per line:
//! `problem`, `answer` or `given_answer`, `prm_score`, `orm_score`, `is_correct`) as follows. For
//! each of `trials` trials and each N, every problem's samples are padded with empty slots up to a
//! fixed per-problem total (1,860 in the paper), shuffled, and the first N slots are kept; empty
//! slots and samples without an answer are dropped; the verifier picks the highest score (the
//! earliest on a tie), and the problem counts as solved when the pick is correct. A trial's pass
//! rate at N is the solved problems over all problems; the report is the mean and the population
//! standard deviation over trials. The padding is what makes a problem with fewer samples than N
//! behave as it did in the paper: fewer of its samples reach the subset.
//!
//! The shuffles draw from Python's `random` module, so this module carries the same generator:
//! MT19937 seeded as `random.seed(int)` seeds it (the integer's 32-bit words as the
//! `init_by_array` key), `getrandbits(k)` as the top `k` bits of one 32-bit draw, `randbelow(n)` by
//! rejection on `n.bit_length()` bits, and Fisher–Yates from the end. With the same seed the
//! trials are the reference's trials, which a golden test checks against Python itself.

use std::collections::HashMap;
use std::path::Path;

use rand_mt::Mt;
use serde::Serialize;

use crate::{Result, data_err};

/// Python's `random.Random` as far as `shuffle` needs it.
pub struct PyRandom(Mt);

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let (lo, hi) = (seed as u32, (seed >> 32) as u32);
        let key: Vec<u32> = if hi == 0 { vec![lo] } else { vec![lo, hi] };
        PyRandom(Mt::new_with_key(key))
    }

    /// `getrandbits(k)` for `1 ≤ k ≤ 32`.
    pub fn getrandbits(&mut self, k: u32) -> u32 {
        debug_assert!((1..=32).contains(&k));
        self.0.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)` for `1 ≤ n < 2³²`: a uniform integer in `[0, n)`.
    pub fn randbelow(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `shuffle(x)`: Fisher–Yates from the last element down.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u32 + 1) as usize;
            x.swap(i, j);
        }
    }
}

/// One scored solution, as the evaluation reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSample {
    pub problem: String,
    /// Whether the solution gave a final answer (`answer`, else `given_answer`, not null).
    pub has_answer: bool,
    pub prm_score: Option<f64>,
    pub orm_score: Option<f64>,
    pub is_correct: bool,
}

/// Which score picks the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Prm,
    Orm,
}

impl Method {
    fn score(self, s: &ScoredSample) -> Option<f64> {
        match self {
            Method::Prm => s.prm_score,
            Method::Orm => s.orm_score,
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            Method::Prm => "prm_score",
            Method::Orm => "orm_score",
        }
    }
}

/// The N values and trial count of the paper's evaluation.
pub const PAPER_NS: [usize; 14] = [
    10, 25, 50, 75, 100, 200, 300, 400, 500, 750, 1000, 1250, 1500, 1860,
];
pub const PAPER_TRIALS: usize = 400;
pub const PAPER_TOTAL: usize = 1860;

/// Pass rates per trial and their summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curve {
    pub method: &'static str,
    pub ns: Vec<usize>,
    pub problems: usize,
    /// `trials[t][i]`: the pass rate of trial `t` at `ns[i]`.
    pub trials: Vec<Vec<f64>>,
    pub mean: Vec<f64>,
    /// Population standard deviation (numpy's default) over trials.
    pub std: Vec<f64>,
}

/// Reads a scored-samples JSONL file. Problems keep the order of their first appearance.
pub fn read_jsonl(path: &Path) -> Result<Vec<ScoredSample>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        data_err(format!(
            "cannot read scored samples {}: {e}",
            path.display()
        ))
    })?;
    parse_jsonl(&text).map_err(|e| data_err(format!("{}: {e}", path.display())))
}

/// Parses scored samples, one JSON object per non-empty line.
pub fn parse_jsonl(text: &str) -> std::result::Result<Vec<ScoredSample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("line {}: expected a JSON object: {e}", i + 1))?;
        let o = v
            .as_object()
            .ok_or_else(|| format!("line {}: expected a JSON object, found {v}", i + 1))?;
        let problem = match o.get("problem") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return Err(format!("line {}: no \"problem\" field", i + 1)),
        };
        // `answer` when the key exists (even as null), else `given_answer`.
        let answer = o.get("answer").or_else(|| o.get("given_answer"));
        let has_answer = answer.is_some_and(|a| !a.is_null());
        let score = |k: &str| -> std::result::Result<Option<f64>, String> {
            match o.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => match x.as_f64() {
                    Some(f) if f.is_finite() => Ok(Some(f)),
                    _ => Err(format!(
                        "line {}: \"{k}\" must be a finite number, found {x}",
                        i + 1
                    )),
                },
            }
        };
        let is_correct = match o.get("is_correct") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::Null) | None => false,
            Some(x) => {
                return Err(format!(
                    "line {}: \"is_correct\" must be true or false, found {x}",
                    i + 1
                ));
            }
        };
        out.push(ScoredSample {
            problem,
            has_answer,
            prm_score: score("prm_score")?,
            orm_score: score("orm_score")?,
            is_correct,
        });
    }
    Ok(out)
}

/// Groups samples by problem, in order of first appearance (Python's dict order).
fn by_problem(samples: &[ScoredSample]) -> Vec<Vec<&ScoredSample>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Vec<&ScoredSample>> = Vec::new();
    for s in samples {
        let g = *index.entry(&s.problem).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(s);
    }
    groups
}

/// The protocol's settings.
#[derive(Debug, Clone)]
pub struct Protocol {
    pub ns: Vec<usize>,
    pub trials: usize,
    /// Every problem is padded with empty slots to this many (at least its own sample count).
    pub total: usize,
    /// Seed of Python's `random` (the reference leaves it unseeded).
    pub seed: u64,
}

/// Runs the protocol. `on_trial(t)` is called after each trial (progress).
pub fn evaluate(
    samples: &[ScoredSample],
    method: Method,
    p: &Protocol,
    on_trial: &mut dyn FnMut(usize),
) -> Result<Curve> {
    if samples.is_empty() {
        return Err(data_err("no scored samples"));
    }
    if p.trials == 0 || p.ns.is_empty() || p.ns.contains(&0) {
        return Err(data_err(
            "expected at least one trial and N values of at least 1",
        ));
    }
    let groups = by_problem(samples);
    let largest = groups.iter().map(Vec::len).max().unwrap_or(0);
    if p.total < largest {
        return Err(data_err(format!(
            "a problem has {largest} samples, more than the per-problem total {}",
            p.total
        )));
    }
    if p.total > u32::MAX as usize {
        return Err(data_err("the per-problem total must be below 2^32"));
    }
    for s in samples {
        if s.has_answer && method.score(s).is_none() {
            return Err(data_err(format!(
                "a sample of problem {:?} has an answer but no \"{}\"",
                s.problem,
                method.key()
            )));
        }
    }
    let mut rng = PyRandom::new(p.seed);
    let np = groups.len();
    let mut slots: Vec<Option<usize>> = Vec::with_capacity(p.total);
    let mut trials = Vec::with_capacity(p.trials);
    for t in 0..p.trials {
        let mut rates = Vec::with_capacity(p.ns.len());
        for &n in &p.ns {
            let mut solved = 0usize;
            for g in &groups {
                slots.clear();
                slots.extend((0..g.len()).map(Some));
                slots.resize(p.total, None);
                rng.shuffle(&mut slots);
                let mut best: Option<(f64, &ScoredSample)> = None;
                for s in slots.iter().take(n).flatten().map(|&i| g[i]) {
                    if !s.has_answer {
                        continue;
                    }
                    let v = method.score(s).unwrap_or(f64::NEG_INFINITY);
                    if best.is_none_or(|(b, _)| v > b) {
                        best = Some((v, s));
                    }
                }
                solved += best.is_some_and(|(_, s)| s.is_correct) as usize;
            }
            rates.push(solved as f64 / np as f64);
        }
        trials.push(rates);
        on_trial(t + 1);
    }
    let k = p.ns.len();
    let nt = trials.len() as f64;
    let mean: Vec<f64> = (0..k)
        .map(|i| trials.iter().map(|r| r[i]).sum::<f64>() / nt)
        .collect();
    let std: Vec<f64> = (0..k)
        .map(|i| {
            let v = trials.iter().map(|r| (r[i] - mean[i]).powi(2)).sum::<f64>() / nt;
            v.sqrt()
        })
        .collect();
    Ok(Curve {
        method: method.key(),
        ns: p.ns.clone(),
        problems: np,
        trials,
        mean,
        std,
    })
}

/// The N values to use when none are given: the paper's when the per-problem total is the
/// paper's, else 1, 2, 4, … up to the total (the total itself last).
pub fn default_ns(total: usize) -> Vec<usize> {
    if total >= PAPER_TOTAL {
        return PAPER_NS.to_vec();
    }
    let mut ns: Vec<usize> = (0..)
        .map(|i| 1usize << i)
        .take_while(|&n| n < total)
        .collect();
    ns.push(total.max(1));
    ns
}

/// Writes `curves` as JSON and a plot of mean ± one standard deviation (percent solved vs N).
pub fn write_outputs(curves: &[Curve], json: &Path, png: &Path) -> Result<()> {
    let io = |_: &Path, e: &dyn std::fmt::Display| data_err(e.to_string());
    for p in [json, png] {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)
                .map_err(|e| data_err(format!("cannot create {}: {e}", d.display())))?;
        }
    }
    let text = serde_json::to_string_pretty(curves).map_err(|e| io(json, &e))?;
    canon_plot::write_atomic(json, text.as_bytes()).map_err(|e| io(json, &e))?;
    let mut fig = canon_plot::Figure::new("Best-of-N, PRM800K protocol")
        .x_title("N (solutions per problem)")
        .y_title("% of problems solved")
        .log_x();
    for (k, c) in curves.iter().enumerate() {
        let color = canon_plot::PALETTE[k % canon_plot::PALETTE.len()];
        let name = if c.method == "prm_score" {
            "PRM"
        } else {
            "ORM"
        };
        let band =
            c.ns.iter()
                .zip(c.mean.iter().zip(&c.std))
                .map(|(&n, (&m, &s))| (n as f64, 100.0 * (m - s), 100.0 * (m + s)))
                .collect();
        let line =
            c.ns.iter()
                .zip(&c.mean)
                .map(|(&n, &m)| (n as f64, 100.0 * m))
                .collect();
        fig = fig
            .series(canon_plot::Series::band(&format!("{name} ± 1 s.d."), band).color(color))
            .series(canon_plot::Series::line_points(name, line).color(color));
    }
    if let Some(c) = curves.first() {
        fig = fig.footnote(&format!(
            "{} problems, {} trials per N",
            c.problems,
            c.trials.len()
        ));
    }
    fig.save(png).map_err(|e| io(png, &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_random_first_draws() {
        // `random.seed(0); [random.getrandbits(32) for _ in range(3)]` in CPython.
        let mut r = PyRandom::new(0);
        let v: Vec<u32> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(v, vec![3626764237, 1654615998, 3255389356]);
    }

    #[test]
    fn default_ns_follow_the_total() {
        assert_eq!(default_ns(1860), PAPER_NS.to_vec());
        assert_eq!(default_ns(64), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(default_ns(10), vec![1, 2, 4, 8, 10]);
        assert_eq!(default_ns(1), vec![1]);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = parse_jsonl("{\"problem\": \"a\", \"prm_score\": \"x\"}\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("prm_score"), "{e}");
        let e = parse_jsonl("[1]\n").unwrap_err();
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = parse_jsonl("{\"answer\": \"1\"}\n").unwrap_err();
        assert!(e.contains("problem"), "{e}");
    }

    #[test]
    fn answer_key_present_as_null_does_not_fall_back() {
        let s = parse_jsonl(
            "{\"problem\":\"p\",\"answer\":null,\"given_answer\":\"3\",\"prm_score\":0.5}\n\
             {\"problem\":\"p\",\"given_answer\":\"3\",\"prm_score\":0.5}\n",
        )
        .unwrap();
        assert!(!s[0].has_answer);
        assert!(s[1].has_answer);
    }

    #[test]
    fn full_subset_picks_the_best_every_trial() {
        let s = parse_jsonl(
            "{\"problem\":\"a\",\"answer\":\"1\",\"prm_score\":0.2,\"orm_score\":0.9,\"is_correct\":true}\n\
             {\"problem\":\"a\",\"answer\":\"2\",\"prm_score\":0.1,\"orm_score\":0.95,\"is_correct\":false}\n\
             {\"problem\":\"b\",\"answer\":null,\"prm_score\":0.9,\"orm_score\":0.9,\"is_correct\":true}\n",
        )
        .unwrap();
        let p = Protocol {
            ns: vec![2],
            trials: 5,
            total: 2,
            seed: 3,
        };
        let c = evaluate(&s, Method::Prm, &p, &mut |_| {}).unwrap();
        // Problem a: the PRM picks the correct sample; problem b has no answered sample.
        assert!(c.trials.iter().all(|t| t == &vec![0.5]));
        assert_eq!(c.std, vec![0.0]);
        let c = evaluate(&s, Method::Orm, &p, &mut |_| {}).unwrap();
        assert_eq!(c.mean, vec![0.0]);
        let bad = Protocol { total: 1, ..p };
        assert!(evaluate(&s, Method::Prm, &bad, &mut |_| {}).is_err());
    }
}
