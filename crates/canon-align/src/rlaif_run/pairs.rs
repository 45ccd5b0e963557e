//! The experiment's pairs: two differing responses per prompt, the gold judge's and the labeller's
//! labels (kept in `rlaif/labels.json`), and their agreement.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Progress;
use crate::Result;
use crate::losses::debiased_preference;
use crate::pipeline::{read_json, write_json};
use crate::rlaif::Labeller;
use crate::rm::Group;
use crate::task::{Problem, response_text};

/// One pair of the experiment with its gold and AI labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledPair {
    pub problem: Problem,
    pub a: Vec<u32>,
    pub b: Vec<u32>,
    /// The gold judge's `P(a ≻ b)`: 1, 0 or ½ (tie).
    pub gold: f64,
    /// The labeller's `P(first wins)` with `a` shown first, and with `b` shown first.
    pub p_ab: f64,
    pub p_ba: f64,
}

impl LabelledPair {
    /// The AI label: the order-debiased `P(a ≻ b)`.
    pub fn ai(&self) -> f64 {
        debiased_preference(self.p_ab, self.p_ba)
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct LabelFile {
    labeller: String,
    pairs: Vec<LabelledPair>,
}

/// The pairs of the experiment (unlabelled): `(problem, a, b, gold P(a ≻ b))`.
pub fn experiment_pairs(groups: &[Group], n: usize) -> Vec<(Problem, Vec<u32>, Vec<u32>, f64)> {
    let mut out = Vec::new();
    for g in groups {
        if out.len() >= n {
            break;
        }
        let Some(first) = g.responses.first() else {
            continue;
        };
        if let Some(j) = (1..g.responses.len()).find(|&j| g.responses[j] != *first) {
            let gold = match g.scores[0].total_cmp(&g.scores[j]) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Less => 0.0,
                std::cmp::Ordering::Equal => 0.5,
            };
            out.push((g.problem, first.clone(), g.responses[j].clone(), gold));
        }
    }
    out
}

/// Agreement of the AI labels with the gold judge on the strictly ranked pairs: (one order, `a`
/// shown first; both orders averaged; the number of such pairs). An AI label of exactly ½ agrees
/// with neither order. `None` when no pair is strictly ranked.
pub fn agreement(pairs: &[LabelledPair]) -> Option<(f64, f64, usize)> {
    let strict: Vec<&LabelledPair> = pairs.iter().filter(|p| p.gold != 0.5).collect();
    if strict.is_empty() {
        return None;
    }
    let n = strict.len() as f64;
    let agrees = |q: f64, gold: f64| (q > 0.5 && gold > 0.5) || (q < 0.5 && gold < 0.5);
    let one = strict.iter().filter(|p| agrees(p.p_ab, p.gold)).count() as f64;
    let both = strict.iter().filter(|p| agrees(p.ai(), p.gold)).count() as f64;
    Some((one / n, both / n, strict.len()))
}

pub(super) fn label_all(
    dir: &Path,
    labeller: &mut dyn Labeller,
    raw: Vec<(Problem, Vec<u32>, Vec<u32>, f64)>,
    on: &mut Progress,
) -> Result<(Vec<LabelledPair>, f64)> {
    let path = dir.join("rlaif/labels.json");
    if path.is_file() {
        let f: LabelFile = read_json(&path, "RLAIF labels")?;
        let same = f.labeller == labeller.name()
            && f.pairs.len() == raw.len()
            && f.pairs
                .iter()
                .zip(&raw)
                .all(|(l, r)| l.problem == r.0 && l.a == r.1 && l.b == r.2);
        if same {
            return Ok((f.pairs, 0.0));
        }
    }
    let t0 = Instant::now();
    let n = raw.len() as u64;
    let mut pairs = Vec::with_capacity(raw.len());
    for (i, (problem, a, b, gold)) in raw.into_iter().enumerate() {
        let (ta, tb) = (response_text(&a), response_text(&b));
        let p_ab = labeller.p_first(&problem, &ta, &tb)?;
        let p_ba = labeller.p_first(&problem, &tb, &ta)?;
        pairs.push(LabelledPair {
            problem,
            a,
            b,
            gold,
            p_ab,
            p_ba,
        });
        on("label", i as u64 + 1, n);
    }
    write_json(
        &path,
        &LabelFile {
            labeller: labeller.name(),
            pairs: pairs.clone(),
        },
    )?;
    Ok((pairs, t0.elapsed().as_secs_f64()))
}
