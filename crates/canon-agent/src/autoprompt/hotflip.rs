//! The trigger search itself: gradients with respect to the triggers' input embeddings, HotFlip
//! candidates, exact candidate scores, the search loop with its dev-set selection, and
//! precision@1.
//!
//! Facts run in batches: prompts of the same length (the same trigger and slot positions, which is
//! every fact whose subject has the same number of tokens) go through the model together, at most
//! [`MAX_TOKENS`] positions per forward, so the weights are read once per batch rather than once
//! per fact. No padding is needed, so a batch computes exactly what fact-by-fact runs compute.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{Compiled, EncodedFact, SlotLm};
use crate::{AgentError, Result};

/// Positions per forward pass (sequences × prompt length) when facts run in batches.
pub const MAX_TOKENS: usize = 2048;

/// Search settings.
#[derive(Debug, Clone, Serialize)]
pub struct SearchConfig {
    /// Search iterations (each may change one trigger position).
    pub steps: usize,
    /// Facts per batch.
    pub batch_size: usize,
    /// Batches per step: the gradient averages over `accumulation × batch_size` training facts and
    /// the candidates are scored on as many others (at most one pass over the training facts).
    pub accumulation: usize,
    /// HotFlip candidates scored per step (k).
    pub candidates: usize,
    pub seed: u64,
}

impl SearchConfig {
    /// Facts per step's gradient and per step's candidate scoring, given `n` training facts.
    pub fn facts_per_step(&self, n: usize) -> usize {
        (self.batch_size * self.accumulation.max(1)).min(n)
    }
}

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    /// The trigger position drawn for this step.
    pub position: usize,
    /// Mean label log-likelihood on the step's scoring facts with the current trigger and with the
    /// best candidate (`after == before` when no candidate beat it).
    pub before: f64,
    pub after: f64,
    pub from: u32,
    pub to: u32,
    /// Mean label log-likelihood on the dev facts after an accepted change.
    pub dev: Option<f64>,
    /// The triggers after this step are the best on the dev facts so far.
    pub best: bool,
}

/// The triggers found and the search's history.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// The triggers with the best dev log-likelihood (the last ones when there are no dev facts
    /// or no step changed a trigger).
    pub triggers: Vec<u32>,
    /// The triggers when the search ended.
    pub last: Vec<u32>,
    /// The best triggers' mean label log-likelihood on the dev facts.
    pub dev: Option<f64>,
    pub history: Vec<StepLog>,
}

/// Input embeddings of `ids` with position `p` replaced by `v: [1, d]`.
#[cfg(test)]
pub(super) fn with_row(emb: &Tensor, p: usize, v: &Tensor) -> Result<Tensor> {
    let t = emb.dim(0)?;
    let mut parts = Vec::with_capacity(3);
    if p > 0 {
        parts.push(emb.narrow(0, 0, p)?);
    }
    parts.push(v.clone());
    if p + 1 < t {
        parts.push(emb.narrow(0, p + 1, t - p - 1)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Facts whose assembled prompts share a length, and so their trigger and slot positions.
struct Group {
    /// Indices into the facts given.
    facts: Vec<usize>,
    /// Each fact's prompt ids, all of one length.
    ids: Vec<Vec<u32>>,
    trigger_pos: Vec<usize>,
    slot: usize,
}

impl Group {
    fn len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// Facts per forward when each fact becomes `per_fact` sequences.
    fn chunk(&self, per_fact: usize) -> usize {
        (MAX_TOKENS / (self.len().max(1) * per_fact.max(1))).max(1)
    }

    /// Input embeddings `[g, t, d]` of facts `range` of the group.
    fn embed(&self, lm: &dyn SlotLm, range: std::ops::Range<usize>) -> Result<Tensor> {
        let g = range.len();
        let flat: Vec<u32> = self.ids[range].iter().flatten().copied().collect();
        let e = lm.embed(&flat)?;
        let d = e.dim(1)?;
        Ok(e.reshape((g, self.len(), d))?)
    }

    fn labels(&self, facts: &[&EncodedFact], range: std::ops::Range<usize>) -> Vec<u32> {
        self.facts[range].iter().map(|i| facts[*i].label).collect()
    }
}

/// The facts' prompts with `triggers` in place, grouped by length (groups in order of length;
/// facts in each group in the order given).
fn groups(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    facts: &[&EncodedFact],
    triggers: &[u32],
) -> Vec<Group> {
    let mut by_shape: BTreeMap<(usize, Vec<usize>, usize), Group> = BTreeMap::new();
    for (i, f) in facts.iter().enumerate() {
        let a = prompt.assemble(lm, f, triggers);
        let g = by_shape
            .entry((a.ids.len(), a.trigger_pos.clone(), a.slot))
            .or_insert_with(|| Group {
                facts: Vec::new(),
                ids: Vec::new(),
                trigger_pos: a.trigger_pos.clone(),
                slot: a.slot,
            });
        g.facts.push(i);
        g.ids.push(a.ids);
    }
    by_shape.into_values().collect()
}

/// `emb: [g, t, d]` with the rows at `positions` taken from `rows: [g, n, d]` (row `k` to
/// `positions[k]`), the other positions as they are.
fn splice(emb: &Tensor, positions: &[usize], rows: &Tensor) -> Result<Tensor> {
    let t = emb.dim(1)?;
    let mut at: Vec<(usize, usize)> = positions.iter().copied().zip(0..).collect();
    at.sort_unstable();
    let mut parts = Vec::with_capacity(2 * at.len() + 1);
    let mut from = 0;
    for (p, k) in at {
        if p > from {
            parts.push(emb.narrow(1, from, p - from)?);
        }
        parts.push(rows.narrow(1, k, 1)?);
        from = p + 1;
    }
    if from < t {
        parts.push(emb.narrow(1, from, t - from)?);
    }
    Ok(Tensor::cat(&parts, 1)?)
}

/// `log p(label_i)` from slot log-probabilities `lp: [b, V]`, as `[b]`.
fn label_log_probs(lp: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let idx = Tensor::new(labels, lp.device())?.unsqueeze(1)?;
    Ok(lp.gather(&idx, 1)?.squeeze(1)?)
}

/// The gradient of the mean label log-likelihood over `batch` with respect to the input
/// embedding of every trigger position, `[n_triggers, d]`, and that mean log-likelihood.
pub fn trigger_gradients(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    batch: &[&EncodedFact],
    triggers: &[u32],
) -> Result<(Tensor, f64)> {
    let n = triggers.len();
    let d = lm.embed(&triggers[..n.min(1)])?.dim(1)?;
    let mut sum = Tensor::zeros((n, d), DType::F32, &Device::Cpu)?;
    let mut ll = 0.0;
    for grp in groups(lm, prompt, batch, triggers) {
        let step = grp.chunk(1);
        for start in (0..grp.facts.len()).step_by(step) {
            let range = start..(start + step).min(grp.facts.len());
            let emb = grp.embed(lm, range.clone())?;
            let cols = grp
                .trigger_pos
                .iter()
                .map(|p| emb.narrow(1, *p, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let v = Var::from_tensor(&Tensor::cat(&cols, 1)?)?; // [g, n, d]
            let x = splice(&emb, &grp.trigger_pos, v.as_tensor())?;
            let lp = lm.slot_log_probs(&x, grp.slot)?;
            let y = label_log_probs(&lp, &grp.labels(batch, range))?.sum_all()?;
            ll += y.to_scalar::<f32>()? as f64;
            let grads = y.backward()?;
            let g = grads.get(v.as_tensor()).ok_or_else(|| {
                AgentError::Task(
                    "the model recorded no gradient through its input embeddings".into(),
                )
            })?;
            sum = (sum + g.sum(0)?)?;
        }
    }
    let count = batch.len().max(1) as f64;
    Ok(((sum / count)?, ll / count))
}

/// The gradient of the mean label log-likelihood over `batch` with respect to the input embedding
/// of trigger `j`, `[d]`, and that mean log-likelihood.
pub fn trigger_gradient(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    batch: &[&EncodedFact],
    triggers: &[u32],
    j: usize,
) -> Result<(Tensor, f64)> {
    let (g, ll) = trigger_gradients(lm, prompt, batch, triggers)?;
    Ok((g.get(j)?, ll))
}

/// HotFlip scores `(e_w − e_cur) · g` for every vocabulary token `w`: the first-order estimate of
/// the change in mean log-likelihood when trigger `cur` becomes `w`. `table: [V, d]`.
pub fn first_order_scores(table: &Tensor, cur: u32, g: &Tensor) -> Result<Vec<f32>> {
    let e_cur = table.get(cur as usize)?;
    let s = table
        .broadcast_sub(&e_cur.unsqueeze(0)?)?
        .matmul(&g.unsqueeze(1)?)?
        .squeeze(1)?;
    Ok(s.to_vec1::<f32>()?)
}

/// The `k` best-scoring ids, best first, skipping `exclude` and `cur` (ties: lower id first).
pub fn top_candidates(scores: &[f32], k: usize, exclude: &BTreeSet<u32>, cur: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..scores.len() as u32)
        .filter(|i| *i != cur && !exclude.contains(i) && scores[*i as usize].is_finite())
        .collect();
    ids.sort_by(|a, b| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    });
    ids.truncate(k);
    ids
}

/// Mean label log-likelihood over `batch` for each option of trigger `j` (`options[c]` in place).
pub fn score_options(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    batch: &[&EncodedFact],
    triggers: &[u32],
    j: usize,
    options: &[u32],
) -> Result<Vec<f64>> {
    let c = options.len();
    let mut totals = vec![0.0f64; c];
    if c == 0 || batch.is_empty() {
        return Ok(totals);
    }
    let rows = lm.embed(options)?; // [c, d]
    let d = rows.dim(1)?;
    for grp in groups(lm, prompt, batch, triggers) {
        let p = grp.trigger_pos[j];
        let t = grp.len();
        let step = grp.chunk(c);
        for start in (0..grp.facts.len()).step_by(step) {
            let range = start..(start + step).min(grp.facts.len());
            let g = range.len();
            let emb = grp.embed(lm, range.clone())?;
            // Option-major: sequences c·g + i hold option c for fact i.
            let xs = (0..c)
                .map(|o| {
                    let row = rows
                        .narrow(0, o, 1)?
                        .unsqueeze(0)?
                        .broadcast_as((g, 1, d))?;
                    splice(&emb, &[p], &row)
                })
                .collect::<Result<Vec<_>>>()?;
            let x = Tensor::cat(&xs, 0)?.reshape((c * g, t, d))?;
            let lp = lm.slot_log_probs(&x, grp.slot)?;
            let labels = grp.labels(batch, range);
            let all: Vec<u32> = (0..c).flat_map(|_| labels.iter().copied()).collect();
            let y = label_log_probs(&lp, &all)?.to_vec1::<f32>()?;
            for (o, total) in totals.iter_mut().enumerate() {
                *total += y[o * g..(o + 1) * g].iter().map(|v| *v as f64).sum::<f64>();
            }
        }
    }
    let n = batch.len() as f64;
    Ok(totals.into_iter().map(|t| t / n).collect())
}

/// One fact's outcome under a prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FactScore {
    /// `log p(label)` at the slot.
    pub log_prob: f32,
    /// The arg-max over the whole vocabulary.
    pub vocabulary: u32,
    /// The arg-max over the relation's objects.
    pub objects: u32,
}

/// Every fact's label log-probability and predictions with `triggers` in place (in the order
/// given); `progress` gets the number of facts done.
pub fn evaluate(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    facts: &[EncodedFact],
    triggers: &[u32],
    objects: &[u32],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<FactScore>> {
    let refs: Vec<&EncodedFact> = facts.iter().collect();
    let mut out = vec![None; facts.len()];
    let mut done = 0;
    for grp in groups(lm, prompt, &refs, triggers) {
        let step = grp.chunk(1);
        for start in (0..grp.facts.len()).step_by(step) {
            let range = start..(start + step).min(grp.facts.len());
            let x = grp.embed(lm, range.clone())?;
            let lp = lm.slot_log_probs(&x, grp.slot)?.to_vec2::<f32>()?;
            for (row, &i) in lp.iter().zip(&grp.facts[range]) {
                let argmax = |ids: &mut dyn Iterator<Item = u32>| -> u32 {
                    let mut best: Option<u32> = None;
                    for k in ids {
                        if best.is_none_or(|b| row[k as usize] > row[b as usize]) {
                            best = Some(k);
                        }
                    }
                    best.unwrap_or(0)
                };
                out[i] = Some(FactScore {
                    log_prob: row[facts[i].label as usize],
                    vocabulary: argmax(&mut (0..row.len() as u32)),
                    objects: argmax(&mut objects.iter().copied()),
                });
                done += 1;
            }
            progress(done);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// The word-embedding table `[V, d]` as the model sees it.
pub fn embedding_table(lm: &dyn SlotLm) -> Result<Tensor> {
    let ids: Vec<u32> = (0..lm.vocab_size() as u32).collect();
    // In chunks: a quantized table dequantizes row by row.
    let chunks = ids
        .chunks(4096)
        .map(|c| lm.embed(c))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&chunks, 0)?)
}

/// The first `k` facts of a fresh shuffle of `train`.
fn draw<'a>(train: &'a [EncodedFact], k: usize, rng: &mut StdRng) -> Vec<&'a EncodedFact> {
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(rng);
    order.into_iter().take(k).map(|i| &train[i]).collect()
}

/// Mean label log-likelihood of `facts` with `triggers` in place.
pub fn mean_log_likelihood(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    facts: &[EncodedFact],
    triggers: &[u32],
) -> Result<f64> {
    let s = evaluate(lm, prompt, facts, triggers, &[], &mut |_| {})?;
    Ok(s.iter().map(|f| f.log_prob as f64).sum::<f64>() / facts.len().max(1) as f64)
}

/// AutoPrompt's search from `init` triggers on `train` facts, keeping the triggers that do best
/// on `dev` (mean label log-likelihood).
///
/// Each step, as the paper's reference implementation does it: the gradient with respect to every
/// trigger's input embedding, averaged over `accumulation` batches of a fresh shuffle of the
/// training facts; one trigger position drawn at random (so no position's gradient goes stale);
/// its top `candidates` by the HotFlip estimate, each scored exactly on the first `accumulation`
/// batches of another shuffle, beside the current trigger; the best candidate replaces the
/// trigger if it beats it. After each change the triggers are scored on `dev`, and the best so
/// far are what the search returns.
#[allow(clippy::too_many_arguments)]
pub fn search(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    train: &[EncodedFact],
    dev: &[EncodedFact],
    init: &[u32],
    exclude: &BTreeSet<u32>,
    cfg: &SearchConfig,
    progress: &mut dyn FnMut(&StepLog),
) -> Result<SearchResult> {
    let n = prompt.n_triggers();
    if init.len() != n {
        return Err(AgentError::Task(format!(
            "expected {n} initial triggers, found {}",
            init.len()
        )));
    }
    if n == 0 {
        return Err(AgentError::Task(
            "template: AutoPrompt needs at least one [T]".into(),
        ));
    }
    if train.is_empty() {
        return Err(AgentError::Task("no training facts".into()));
    }
    let table = embedding_table(lm)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let k = cfg.facts_per_step(train.len());
    let mut triggers = init.to_vec();
    let mut best: Option<(f64, Vec<u32>)> = None;
    let mut history = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let grad_facts = draw(train, k, &mut rng);
        let (g, _) = trigger_gradients(lm, prompt, &grad_facts, &triggers)?;
        let j = rng.random_range(0..n);
        let cur = triggers[j];
        let scores = first_order_scores(&table, cur, &g.get(j)?)?;
        let mut options = vec![cur];
        options.extend(top_candidates(&scores, cfg.candidates, exclude, cur));
        let score_facts = draw(train, k, &mut rng);
        let lls = score_options(lm, prompt, &score_facts, &triggers, j, &options)?;
        let mut pick = 0;
        for (c, v) in lls.iter().enumerate() {
            if *v > lls[pick] {
                pick = c;
            }
        }
        triggers[j] = options[pick];
        let mut log = StepLog {
            step,
            position: j,
            before: lls[0],
            after: lls[pick],
            from: cur,
            to: options[pick],
            dev: None,
            best: false,
        };
        if pick != 0 && !dev.is_empty() {
            let m = mean_log_likelihood(lm, prompt, dev, &triggers)?;
            log.dev = Some(m);
            if best.as_ref().is_none_or(|(b, _)| m > *b) {
                best = Some((m, triggers.clone()));
                log.best = true;
            }
        }
        progress(&log);
        history.push(log);
    }
    let (dev_ll, chosen) = match best {
        Some((m, t)) => (Some(m), t),
        None => (None, triggers.clone()),
    };
    Ok(SearchResult {
        triggers: chosen,
        last: triggers,
        dev: dev_ll,
        history,
    })
}

/// Precision@1 of a prompt on `facts`.
#[derive(Debug, Clone, Serialize)]
pub struct Precision {
    pub facts: usize,
    /// The arg-max over the whole vocabulary is the label.
    pub vocabulary: f64,
    /// The arg-max over the relation's objects is the label.
    pub objects: f64,
    /// Mean label log-likelihood (the search's objective).
    pub log_likelihood: f64,
    /// Per fact: the predicted id over the vocabulary and over the objects.
    pub predicted: Vec<(u32, u32)>,
}

/// Precision@1 of `prompt` with `triggers` on `facts`; `objects` are the relation's label ids.
pub fn precision_at_1(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    facts: &[EncodedFact],
    triggers: &[u32],
    objects: &[u32],
    progress: &mut dyn FnMut(usize),
) -> Result<Precision> {
    let scores = evaluate(lm, prompt, facts, triggers, objects, progress)?;
    let hit = |f: &dyn Fn(&FactScore) -> u32| {
        scores
            .iter()
            .zip(facts)
            .filter(|(s, fact)| f(s) == fact.label)
            .count() as f64
            / facts.len().max(1) as f64
    };
    Ok(Precision {
        facts: facts.len(),
        vocabulary: hit(&|s| s.vocabulary),
        objects: hit(&|s| s.objects),
        log_likelihood: scores.iter().map(|s| s.log_prob as f64).sum::<f64>()
            / facts.len().max(1) as f64,
        predicted: scores.iter().map(|s| (s.vocabulary, s.objects)).collect(),
    })
}
