//! AutoPrompt (Shin et al., 2020, paper 11): gradient-guided search for trigger tokens.
//!
//! A template such as `[X] [T] [T] [T] [P]` places the subject of a fact at `[X]`, trigger tokens
//! at each `[T]` and the predicted slot at `[P]`; the label `[Y]` is the fact's object, one token.
//! In a masked LM the slot is a `[MASK]` token; in a causal LM the slot is the next token after the
//! prompt, so `[P]` ends the template.
//!
//! One search step (§2.2 of the paper) updates one trigger position `j`:
//! 1. on a batch of training facts, the gradient `g` of the mean label log-likelihood
//!    `(1/B) Σ log p(y | x_prompt)` with respect to the input embedding of trigger `j`;
//! 2. HotFlip candidates: the `k` vocabulary tokens `w` with the largest first-order estimate of the
//!    change, `(e_w − e_cur) · g` (the same ranking as the paper's `e_w · g`: `e_cur · g` is the
//!    same for every `w`);
//! 3. every candidate replaces trigger `j` and is scored by the exact mean log-likelihood on the
//!    same batch; the best is kept if it beats the current trigger.
//!
//! Triggers cycle `0, 1, …, n−1, 0, …` over steps. Candidates never include the excluded ids
//! (special tokens, and by the caller's choice the relation's object tokens, so that a trigger is
//! not itself an answer). Evaluation is precision@1: the arg-max over the whole vocabulary at the
//! slot equals the label, and also restricted to the relation's objects.
//!
//! The model seam is [`SlotLm`]: input embeddings in, log-probabilities at the slot out, with a
//! backward pass through the embeddings. [`CausalSlot`] adapts any [`CausalLm`] that implements
//! `embed`/`forward_embeds` (SmolLM2's LLaMA, this project's GPTs); [`MaskedSlot`] adapts BERT with
//! its MLM head.

use canon_nn::ops::log_softmax_last;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use canon_models::bert_heads::BertPretraining;
use canon_models::{CausalLm, Positions};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::{AgentError, Result};

/// A (subject, relation, object) fact of one relation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact {
    pub subject: String,
    pub object: String,
}

/// One element of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text, tokenized as written (after a space unless it starts the prompt).
    Text(String),
    /// `[X]`: the fact's subject.
    Subject,
    /// `[T]`: a trigger token.
    Trigger,
    /// `[P]`: the predicted slot.
    Slot,
}

/// A prompt template: `[X]`, `[T]` and `[P]` markers with text between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    /// Parses `"[X] [T] [T] [P] ."`: exactly one `[X]` and one `[P]`, any number of `[T]`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let next = ["[X]", "[T]", "[P]"]
                .iter()
                .filter_map(|m| rest.find(m).map(|i| (i, *m)))
                .min();
            let (i, marker) = match next {
                Some(x) => x,
                None => (rest.len(), ""),
            };
            let text = rest[..i].trim();
            if !text.is_empty() {
                parts.push(Part::Text(text.to_string()));
            }
            match marker {
                "[X]" => parts.push(Part::Subject),
                "[T]" => parts.push(Part::Trigger),
                "[P]" => parts.push(Part::Slot),
                _ => {}
            }
            rest = &rest[(i + marker.len()).min(rest.len())..];
        }
        let count = |p: &Part| parts.iter().filter(|q| *q == p).count();
        if count(&Part::Subject) != 1 || count(&Part::Slot) != 1 {
            return Err(AgentError::Task(format!(
                "template: expected exactly one [X] and one [P], found {} and {} in {s:?}",
                count(&Part::Subject),
                count(&Part::Slot)
            )));
        }
        Ok(Self { parts })
    }

    /// Number of `[T]` positions.
    pub fn triggers(&self) -> usize {
        self.parts.iter().filter(|p| **p == Part::Trigger).count()
    }

    /// The template with `triggers` written in place of the `[T]` markers (for printing).
    pub fn render(&self, triggers: &[String]) -> String {
        let mut t = triggers.iter();
        let words: Vec<String> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(s) => s.clone(),
                Part::Subject => "[X]".into(),
                Part::Slot => "[P]".into(),
                Part::Trigger => t.next().cloned().unwrap_or_else(|| "[T]".into()),
            })
            .collect();
        words.join(" ")
    }
}

/// A model that predicts the token at a slot from input embeddings.
pub trait SlotLm {
    fn vocab_size(&self) -> usize;
    /// Input embeddings of `ids`, `[t, d]` f32.
    fn embed(&self, ids: &[u32]) -> Result<Tensor>;
    /// Log-probabilities over the vocabulary at position `slot`, `[b, V]`, from `x: [b, t, d]`;
    /// differentiable with respect to `x`.
    fn slot_log_probs(&self, x: &Tensor, slot: usize) -> Result<Tensor>;
    /// The `[MASK]` id of a masked LM; `None` for a causal LM (the slot is the next token).
    fn mask_id(&self) -> Option<u32>;
    /// Ids before the template (`[CLS]`) and after it (`[SEP]`).
    fn frame(&self) -> (Vec<u32>, Vec<u32>);
}

/// A causal LM: the slot is the token after the last prompt position.
pub struct CausalSlot<'a>(pub &'a dyn CausalLm);

impl SlotLm for CausalSlot<'_> {
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let t = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
        Ok(self.0.embed(&t)?.squeeze(0)?.to_dtype(DType::F32)?)
    }
    fn slot_log_probs(&self, x: &Tensor, slot: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        if slot + 1 != t {
            return Err(AgentError::Task(format!(
                "a causal LM predicts the token after the prompt: the slot must follow the last \
                 position ({}), found {slot}",
                t - 1
            )));
        }
        let mut cache = self.0.new_cache();
        let logits = self.0.forward_embeds(x, &mut cache, Positions::Last)?; // [b, 1, V]
        Ok(log_softmax_last(&logits.squeeze(1)?)?)
    }
    fn mask_id(&self) -> Option<u32> {
        None
    }
    fn frame(&self) -> (Vec<u32>, Vec<u32>) {
        (Vec::new(), Vec::new())
    }
}

/// BERT with its masked-LM head: `[CLS] template [SEP]`, the slot holds `[MASK]`.
pub struct MaskedSlot<'a> {
    pub model: &'a BertPretraining,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
}

impl SlotLm for MaskedSlot<'_> {
    fn vocab_size(&self) -> usize {
        self.model.bert.config.vocab_size
    }
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let t = Tensor::new(ids, &Device::Cpu)?;
        Ok(self
            .model
            .bert
            .word_embeddings()
            .index_select(&t, 0)?
            .to_dtype(DType::F32)?)
    }
    fn slot_log_probs(&self, x: &Tensor, slot: usize) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let mask = Tensor::ones((b, t), DType::U32, &Device::Cpu)?;
        let hidden = self.model.bert.forward_embeds(x, None, &mask)?;
        let rows = hidden.narrow(1, slot, 1)?.reshape((b, d))?;
        let logits = self.model.mlm.forward(&rows)?;
        Ok(log_softmax_last(&logits)?)
    }
    fn mask_id(&self) -> Option<u32> {
        Some(self.mask)
    }
    fn frame(&self) -> (Vec<u32>, Vec<u32>) {
        (vec![self.cls], vec![self.sep])
    }
}

/// A template with its literal text tokenized.
#[derive(Debug, Clone)]
pub struct Compiled {
    pieces: Vec<Piece>,
    n_triggers: usize,
}

#[derive(Debug, Clone)]
enum Piece {
    Ids(Vec<u32>),
    Subject,
    Trigger(usize),
    Slot,
}

/// A fact in token ids: the subject's ids and the label's single id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncodedFact {
    pub subject: Vec<u32>,
    pub label: u32,
}

/// One assembled prompt: ids, the positions of the triggers, and the slot position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub ids: Vec<u32>,
    pub trigger_pos: Vec<usize>,
    pub slot: usize,
}

/// Tokenizes the template's text with `encode` (`encode(text, after_space)`); a causal LM's
/// template must end at `[P]`.
pub fn compile(
    template: &Template,
    lm: &dyn SlotLm,
    encode: &dyn Fn(&str, bool) -> Result<Vec<u32>>,
) -> Result<Compiled> {
    if lm.mask_id().is_none() && template.parts.last() != Some(&Part::Slot) {
        return Err(AgentError::Task(
            "template: for a causal LM [P] is the next token, so it must end the template".into(),
        ));
    }
    let mut pieces = Vec::new();
    let mut j = 0;
    for (i, p) in template.parts.iter().enumerate() {
        pieces.push(match p {
            Part::Text(s) => Piece::Ids(encode(s, i > 0)?),
            Part::Subject => Piece::Subject,
            Part::Slot => Piece::Slot,
            Part::Trigger => {
                j += 1;
                Piece::Trigger(j - 1)
            }
        });
    }
    Ok(Compiled {
        pieces,
        n_triggers: j,
    })
}

impl Compiled {
    pub fn n_triggers(&self) -> usize {
        self.n_triggers
    }

    /// The prompt of `fact` with `triggers` in place.
    pub fn assemble(&self, lm: &dyn SlotLm, fact: &EncodedFact, triggers: &[u32]) -> Assembled {
        let (pre, post) = lm.frame();
        let mut ids = pre;
        let mut trigger_pos = vec![0; self.n_triggers];
        let mut slot = 0;
        for p in &self.pieces {
            match p {
                Piece::Ids(v) => ids.extend_from_slice(v),
                Piece::Subject => ids.extend_from_slice(&fact.subject),
                Piece::Trigger(j) => {
                    trigger_pos[*j] = ids.len();
                    ids.push(triggers[*j]);
                }
                Piece::Slot => match lm.mask_id() {
                    Some(m) => {
                        slot = ids.len();
                        ids.push(m);
                    }
                    // The causal model predicts the slot from the last prompt position.
                    None => slot = ids.len().saturating_sub(1),
                },
            }
        }
        ids.extend(post);
        Assembled {
            ids,
            trigger_pos,
            slot,
        }
    }
}

/// Search settings.
#[derive(Debug, Clone, Serialize)]
pub struct SearchConfig {
    /// Trigger updates (each updates one position).
    pub steps: usize,
    /// Facts per batch (gradient and candidate scoring).
    pub batch_size: usize,
    /// HotFlip candidates scored per step (k).
    pub candidates: usize,
    pub seed: u64,
}

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub position: usize,
    /// Mean label log-likelihood on the step's batch before and after the step.
    pub before: f64,
    pub after: f64,
    pub from: u32,
    pub to: u32,
}

/// The triggers found and the search's history.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub triggers: Vec<u32>,
    pub history: Vec<StepLog>,
}

/// Input embeddings of `ids` with position `p` replaced by `v: [1, d]`.
fn with_row(emb: &Tensor, p: usize, v: &Tensor) -> Result<Tensor> {
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

/// The gradient of the mean label log-likelihood over `batch` with respect to the input embedding
/// of trigger `j`, `[d]`, and that mean log-likelihood.
pub fn trigger_gradient(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    batch: &[&EncodedFact],
    triggers: &[u32],
    j: usize,
) -> Result<(Tensor, f64)> {
    let mut sum: Option<Tensor> = None;
    let mut ll = 0.0;
    for f in batch {
        let a = prompt.assemble(lm, f, triggers);
        let emb = lm.embed(&a.ids)?;
        let p = a.trigger_pos[j];
        let cur = Var::from_tensor(&emb.narrow(0, p, 1)?)?;
        let x = with_row(&emb, p, cur.as_tensor())?.unsqueeze(0)?;
        let lp = lm.slot_log_probs(&x, a.slot)?; // [1, V]
        let y = lp.get(0)?.get(f.label as usize)?;
        ll += y.to_scalar::<f32>()? as f64;
        let grads = y.backward()?;
        let g = grads
            .get(cur.as_tensor())
            .ok_or_else(|| {
                AgentError::Task(
                    "the model recorded no gradient through its input embeddings".into(),
                )
            })?
            .flatten_all()?;
        sum = Some(match sum {
            Some(s) => (s + g)?,
            None => g,
        });
    }
    let n = batch.len().max(1) as f64;
    let g = match sum {
        Some(s) => (s / n)?,
        None => Tensor::zeros(lm.embed(&[triggers[j]])?.dim(1)?, DType::F32, &Device::Cpu)?,
    };
    Ok((g, ll / n))
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
    let mut totals = vec![0.0f64; options.len()];
    if options.is_empty() {
        return Ok(totals);
    }
    for f in batch {
        let a = prompt.assemble(lm, f, triggers);
        let emb = lm.embed(&a.ids)?;
        let rows = lm.embed(options)?; // [c, d]
        let p = a.trigger_pos[j];
        let xs = (0..options.len())
            .map(|c| with_row(&emb, p, &rows.narrow(0, c, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let x = Tensor::stack(&xs, 0)?;
        let lp = lm.slot_log_probs(&x, a.slot)?; // [c, V]
        let y = lp
            .narrow(1, f.label as usize, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (t, v) in totals.iter_mut().zip(y) {
            *t += v as f64;
        }
    }
    let n = batch.len() as f64;
    Ok(totals.into_iter().map(|t| t / n).collect())
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

/// AutoPrompt's search from `init` triggers on `train` facts.
pub fn search(
    lm: &dyn SlotLm,
    prompt: &Compiled,
    train: &[EncodedFact],
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
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut next = order.len();
    let mut triggers = init.to_vec();
    let mut history = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        // A fresh batch: the next `batch_size` facts of a shuffled pass over the training set.
        let mut batch = Vec::with_capacity(cfg.batch_size);
        while batch.len() < cfg.batch_size.min(train.len()) {
            if next == order.len() {
                order.shuffle(&mut rng);
                next = 0;
            }
            batch.push(&train[order[next]]);
            next += 1;
        }
        let j = step % n;
        let cur = triggers[j];
        let (g, _) = trigger_gradient(lm, prompt, &batch, &triggers, j)?;
        let scores = first_order_scores(&table, cur, &g)?;
        let mut options = vec![cur];
        options.extend(top_candidates(&scores, cfg.candidates, exclude, cur));
        let lls = score_options(lm, prompt, &batch, &triggers, j, &options)?;
        let mut best = 0;
        for (c, v) in lls.iter().enumerate() {
            if *v > lls[best] {
                best = c;
            }
        }
        triggers[j] = options[best];
        let log = StepLog {
            step,
            position: j,
            before: lls[0],
            after: lls[best],
            from: cur,
            to: options[best],
        };
        progress(&log);
        history.push(log);
    }
    Ok(SearchResult { triggers, history })
}

/// Precision@1 of a prompt on `facts`.
#[derive(Debug, Clone, Serialize)]
pub struct Precision {
    pub facts: usize,
    /// The arg-max over the whole vocabulary is the label.
    pub vocabulary: f64,
    /// The arg-max over the relation's objects is the label.
    pub objects: f64,
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
    let (mut hit_v, mut hit_o) = (0usize, 0usize);
    let mut predicted = Vec::with_capacity(facts.len());
    for (i, f) in facts.iter().enumerate() {
        let a = prompt.assemble(lm, f, triggers);
        let x = lm.embed(&a.ids)?.unsqueeze(0)?;
        let lp = lm.slot_log_probs(&x, a.slot)?.get(0)?.to_vec1::<f32>()?;
        let argmax = |ids: &mut dyn Iterator<Item = u32>| -> u32 {
            let mut best: Option<u32> = None;
            for i in ids {
                if best.is_none_or(|b| lp[i as usize] > lp[b as usize]) {
                    best = Some(i);
                }
            }
            best.unwrap_or(0)
        };
        let pv = argmax(&mut (0..lp.len() as u32));
        let po = argmax(&mut objects.iter().copied());
        hit_v += usize::from(pv == f.label);
        hit_o += usize::from(po == f.label);
        predicted.push((pv, po));
        progress(i + 1);
    }
    let n = facts.len().max(1) as f64;
    Ok(Precision {
        facts: facts.len(),
        vocabulary: hit_v as f64 / n,
        objects: hit_o as f64 / n,
        predicted,
    })
}

/// Which standard-library module defines each public top-level function: `(function, module)`
/// for every `def name(` at the start of a line of a top-level `*.py` module of `dir` (modules and
/// names starting with `_` skipped; a name defined by several modules is dropped as ambiguous).
pub fn stdlib_function_facts(dir: &Path) -> Result<Vec<Fact>> {
    let rd = std::fs::read_dir(dir).map_err(|e| AgentError::Io {
        path: dir.display().to_string(),
        error: e,
    })?;
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    files.sort();
    let mut by_name: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in files {
        let Some(module) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        if module.starts_with('_') || module.contains('-') {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("def ") else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() || name.starts_with('_') || !rest[name.len()..].starts_with('(') {
                continue;
            }
            by_name.entry(name).or_default().insert(module.clone());
        }
    }
    Ok(by_name
        .into_iter()
        .filter(|(_, m)| m.len() == 1)
        .filter_map(|(name, m)| {
            m.into_iter().next().map(|module| Fact {
                subject: name,
                object: module,
            })
        })
        .collect())
}

/// Which section of the manual each command's page is in: `(name, section)` for every
/// `NAME.S[.gz]` in `root/manS/` for S in 1–8 (a name in several sections is dropped).
pub fn man_section_facts(root: &Path) -> Result<Vec<Fact>> {
    if !root.is_dir() {
        return Err(AgentError::Task(format!(
            "{}: expected a man page folder with man1 … man8, found no folder",
            root.display()
        )));
    }
    let mut by_name: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in 1..=8 {
        let Ok(rd) = std::fs::read_dir(root.join(format!("man{s}"))) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let file = e.file_name().to_string_lossy().into_owned();
            let base = file.strip_suffix(".gz").unwrap_or(&file);
            if let Some(name) = base.strip_suffix(&format!(".{s}"))
                && !name.is_empty()
            {
                by_name
                    .entry(name.to_string())
                    .or_default()
                    .insert(s.to_string());
            }
        }
    }
    Ok(by_name
        .into_iter()
        .filter(|(_, s)| s.len() == 1)
        .filter_map(|(name, s)| {
            s.into_iter().next().map(|section| Fact {
                subject: name,
                object: section,
            })
        })
        .collect())
}

/// Whether a vocabulary piece starts with a capital letter once the space markers of byte-level
/// BPE (`Ġ`, a leading space) are removed: the paper's optional filter against proper nouns.
pub fn is_capitalised(piece: &str) -> bool {
    piece
        .trim_start_matches([' ', 'Ġ', '▁'])
        .chars()
        .next()
        .is_some_and(char::is_uppercase)
}

/// At most `per_object` items of each label (seeded choice), then a split by item: the first
/// `1 − test_fraction` to train, the rest to test, shuffled by `seed`.
pub fn balance_and_split<T: Clone>(
    items: &[T],
    label: impl Fn(&T) -> u32,
    per_object: usize,
    test_fraction: f64,
    seed: u64,
) -> (Vec<T>, Vec<T>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_label: BTreeMap<u32, Vec<&T>> = BTreeMap::new();
    for f in items {
        by_label.entry(label(f)).or_default().push(f);
    }
    let mut kept: Vec<T> = Vec::new();
    for (_, mut v) in by_label {
        v.shuffle(&mut rng);
        kept.extend(v.into_iter().take(per_object).cloned());
    }
    kept.shuffle(&mut rng);
    let n_test = ((kept.len() as f64) * test_fraction).round() as usize;
    let test = kept.split_off(kept.len() - n_test.min(kept.len()));
    (kept, test)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    #[test]
    fn templates_parse_render_and_reject_missing_markers() {
        let t = Template::parse("[X] [T] [T] is in [P] .").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Subject,
                Part::Trigger,
                Part::Trigger,
                Part::Text("is in".into()),
                Part::Slot,
                Part::Text(".".into())
            ]
        );
        assert_eq!(t.triggers(), 2);
        assert_eq!(t.render(&["a".into(), "b".into()]), "[X] a b is in [P] .");
        assert!(Template::parse("[T] [P]").is_err());
        assert!(Template::parse("[X] [P] [P]").is_err());
    }

    /// A masked toy LM over `V` tokens: the slot's logits are `Σ_pos x_pos · A_vᵀ` (a linear
    /// read-out of every input vector), so a row of `A` planted on one token's embedding makes
    /// that token, anywhere in the prompt, push the slot towards the row's label.
    struct Toy {
        table: Tensor,
        a: Tensor,
    }

    impl SlotLm for Toy {
        fn vocab_size(&self) -> usize {
            self.table.dim(0).unwrap()
        }
        fn embed(&self, ids: &[u32]) -> Result<Tensor> {
            Ok(self
                .table
                .index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?)
        }
        fn slot_log_probs(&self, x: &Tensor, _slot: usize) -> Result<Tensor> {
            let s = x.sum(1)?; // [b, d]
            Ok(log_softmax_last(&s.matmul(&self.a.t()?)?)?)
        }
        fn mask_id(&self) -> Option<u32> {
            Some(0)
        }
        fn frame(&self) -> (Vec<u32>, Vec<u32>) {
            (vec![1], vec![2])
        }
    }

    fn unit_rows(v: usize, d: usize, seed: u64) -> Tensor {
        let t = canon_testkit::randn(&[v, d], seed);
        let n = t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        t.broadcast_div(&n).unwrap()
    }

    #[test]
    fn a_planted_trigger_is_found_and_makes_the_toy_mlm_predict_the_label() {
        let (v, d) = (60usize, 24usize);
        let label = 5u32;
        let planted = 42u32;
        let table = unit_rows(v, d, 3);
        // Every read-out row small and random, except the label's: it points at the planted token.
        let mut a = (canon_testkit::randn(&[v, d], 4) * 0.3).unwrap();
        let e_planted = table.get(planted as usize).unwrap();
        let rows: Vec<Tensor> = (0..v)
            .map(|i| {
                if i == label as usize {
                    (&e_planted * 6.0).unwrap()
                } else {
                    a.get(i).unwrap()
                }
            })
            .collect();
        a = Tensor::stack(&rows, 0).unwrap();
        let lm = Toy { table, a };
        let template = Template::parse("[X] [T] [T] [P] .").unwrap();
        let encode =
            |s: &str, _: bool| -> Result<Vec<u32>> { Ok(if s == "." { vec![3] } else { vec![] }) };
        let prompt = compile(&template, &lm, &encode).unwrap();
        // Subjects are tokens 10..40; every fact's object is the label.
        let facts: Vec<EncodedFact> = (10..40)
            .map(|s| EncodedFact {
                subject: vec![s],
                label,
            })
            .collect();
        let (train, test) = (&facts[..20], &facts[20..]);
        let exclude: BTreeSet<u32> = [0, 1, 2, 3, label].into_iter().collect();
        let init = [0u32, 0];
        let objects: Vec<u32> = (4..10).collect();
        let before = precision_at_1(&lm, &prompt, test, &init, &objects, &mut |_| {}).unwrap();
        let cfg = SearchConfig {
            steps: 4,
            batch_size: 8,
            candidates: 5,
            seed: 0,
        };
        let r = search(&lm, &prompt, train, &init, &exclude, &cfg, &mut |_| {}).unwrap();
        assert!(
            r.triggers.contains(&planted),
            "triggers {:?} miss the planted token {planted}",
            r.triggers
        );
        for s in &r.history {
            assert!(
                s.after >= s.before,
                "a step lowered the batch likelihood: {s:?}"
            );
            // A rejected step leaves the trigger as it was.
            if s.after == s.before {
                assert_eq!(s.from, s.to, "{s:?}");
            }
        }
        let after = precision_at_1(&lm, &prompt, test, &r.triggers, &objects, &mut |_| {}).unwrap();
        assert!(
            before.vocabulary < 1.0,
            "the label wins without the trigger"
        );
        assert_eq!(after.vocabulary, 1.0);
        assert_eq!(after.objects, 1.0);
    }

    fn tiny_llama() -> Box<dyn canon_models::TrainableLm> {
        use canon_models::family::{LlamaTrainConfig, ModelConfig};
        let cfg = ModelConfig::Llama(LlamaTrainConfig {
            vocab_size: 40,
            n_layer: 2,
            n_head: 4,
            n_kv_head: Some(2),
            d_model: 16,
            d_ff: None,
            multiple_of: Some(8),
            max_seq_len: 32,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_embeddings: false,
            init_std: 0.3,
        });
        cfg.build(&canon_models::VarStore::new_random(11, cfg.init_policy()))
            .unwrap()
    }

    #[test]
    fn running_from_input_embeddings_equals_running_from_ids() {
        let ids = Tensor::new(&[[3u32, 9, 1, 30, 7]], &Device::Cpu).unwrap();
        // LLaMA (SmolLM2's family), through the causal slot.
        let m = tiny_llama();
        let by_ids = m.forward(&ids, &mut m.new_cache(), Positions::All).unwrap();
        let x = m.embed(&ids).unwrap();
        let by_x = m
            .forward_embeds(&x, &mut m.new_cache(), Positions::All)
            .unwrap();
        canon_testkit::assert_close(&by_x, &by_ids, canon_testkit::Tol::EXACT);
        // BERT with its MLM head, through the masked slot.
        let cfg = canon_models::BertConfig {
            vocab_size: 40,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 32,
            hidden_act: canon_nn::Activation::Gelu,
            layer_norm_eps: 1e-12,
            max_position_embeddings: 16,
            type_vocab_size: 2,
        };
        let store =
            canon_models::VarStore::new_random(5, canon_models::bert_heads::bert_init_policy(0.02));
        let bert = BertPretraining::load(cfg, &store, false).unwrap();
        let mask = Tensor::ones((1, 5), DType::U32, &Device::Cpu).unwrap();
        let by_ids = bert.bert.forward_composed(&ids, None, &mask).unwrap();
        let lm = MaskedSlot {
            model: &bert,
            cls: 1,
            sep: 2,
            mask: 3,
        };
        let x = lm.embed(&[3, 9, 1, 30, 7]).unwrap().unsqueeze(0).unwrap();
        let by_x = bert.bert.forward_embeds(&x, None, &mask).unwrap();
        canon_testkit::assert_close(&by_x, &by_ids, canon_testkit::Tol::EXACT);
        let lp = lm.slot_log_probs(&x, 2).unwrap();
        let direct = bert
            .mlm
            .forward(&by_ids.narrow(1, 2, 1).unwrap().reshape((1, 16)).unwrap())
            .unwrap();
        let p: f32 = lp.exp().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!((p - 1.0).abs() < 1e-5);
        let (a, b) = (
            lp.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap(),
            direct.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap(),
        );
        assert_eq!(a, b);
    }

    /// A toy whose label log-likelihood is exactly linear in the input vectors (no
    /// normalisation): `score_v = Σ_pos x_pos · A_v`.
    struct Linear {
        table: Tensor,
        a: Tensor,
    }

    impl SlotLm for Linear {
        fn vocab_size(&self) -> usize {
            self.table.dim(0).unwrap()
        }
        fn embed(&self, ids: &[u32]) -> Result<Tensor> {
            Ok(self
                .table
                .index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?)
        }
        fn slot_log_probs(&self, x: &Tensor, _slot: usize) -> Result<Tensor> {
            Ok(x.sum(1)?.matmul(&self.a.t()?)?)
        }
        fn mask_id(&self) -> Option<u32> {
            Some(0)
        }
        fn frame(&self) -> (Vec<u32>, Vec<u32>) {
            (vec![], vec![])
        }
    }

    #[test]
    fn on_a_linear_toy_the_top_candidate_is_the_exact_best_and_the_sign_matters() {
        let lm = Linear {
            table: canon_testkit::randn(&[30, 8], 21),
            a: canon_testkit::randn(&[30, 8], 22),
        };
        let prompt = compile(
            &Template::parse("[X] [T] [P]").unwrap(),
            &lm,
            &|_: &str, _: bool| Ok(vec![]),
        )
        .unwrap();
        let facts = [
            EncodedFact {
                subject: vec![4],
                label: 7,
            },
            EncodedFact {
                subject: vec![9],
                label: 7,
            },
        ];
        let batch: Vec<&EncodedFact> = facts.iter().collect();
        let (g, _) = trigger_gradient(&lm, &prompt, &batch, &[1], 0).unwrap();
        let table = embedding_table(&lm).unwrap();
        let scores = first_order_scores(&table, 1, &g).unwrap();
        let all: Vec<u32> = (0..30).collect();
        let exact = score_options(&lm, &prompt, &batch, &[1], 0, &all).unwrap();
        let argmax =
            |v: &[f64]| (0..v.len()).max_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap() as u32;
        let argmin =
            |v: &[f64]| (0..v.len()).min_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap() as u32;
        let none = BTreeSet::new();
        // The exact best replacement (the current token 1 is not a candidate; it is not the best
        // here) is the top HotFlip candidate.
        assert_ne!(argmax(&exact), 1);
        assert_eq!(top_candidates(&scores, 1, &none, 1), vec![argmax(&exact)]);
        // The opposite sign (descending the likelihood) selects the exact worst instead.
        let flipped: Vec<f32> = scores.iter().map(|x| -x).collect();
        assert_eq!(top_candidates(&flipped, 1, &none, 1), vec![argmin(&exact)]);
    }

    #[test]
    fn capitalised_pieces_are_recognised_for_the_filter() {
        assert!(is_capitalised(" Hello"));
        assert!(is_capitalised("ĠHello"));
        assert!(is_capitalised("World"));
        assert!(!is_capitalised(" hello"));
        assert!(!is_capitalised("##ing"));
        assert!(!is_capitalised("('.')"));
    }

    #[test]
    fn candidate_ranking_equals_an_explicit_first_order_estimate_on_a_tiny_causal_lm() {
        let model = tiny_llama();
        let lm = CausalSlot(model.as_ref());
        let template = Template::parse("[X] [T] is [P]").unwrap();
        let encode = |_: &str, _: bool| -> Result<Vec<u32>> { Ok(vec![7]) };
        let prompt = compile(&template, &lm, &encode).unwrap();
        let facts = [
            EncodedFact {
                subject: vec![12, 13],
                label: 30,
            },
            EncodedFact {
                subject: vec![21],
                label: 31,
            },
        ];
        let batch: Vec<&EncodedFact> = facts.iter().collect();
        let triggers = [5u32];
        let (g, ll) = trigger_gradient(&lm, &prompt, &batch, &triggers, 0).unwrap();
        let table = embedding_table(&lm).unwrap();
        let scores = first_order_scores(&table, 5, &g).unwrap();
        // The explicit estimate: the directional derivative of the mean log-likelihood along
        // e_w − e_cur by central differences, with the trigger's input vector moved by hand.
        let mean_ll = |v: &Tensor| -> f64 {
            let mut s = 0.0;
            for f in &facts {
                let a = prompt.assemble(&lm, f, &triggers);
                let emb = lm.embed(&a.ids).unwrap();
                let x = with_row(&emb, a.trigger_pos[0], v)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let lp = lm.slot_log_probs(&x, a.slot).unwrap();
                s += lp
                    .get(0)
                    .unwrap()
                    .get(f.label as usize)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64;
            }
            s / facts.len() as f64
        };
        let e_cur = table.narrow(0, 5, 1).unwrap();
        assert!((mean_ll(&e_cur) - ll).abs() < 1e-5);
        let h = 3e-3;
        let mut explicit = Vec::new();
        for w in 0..40usize {
            let dir = (table.narrow(0, w, 1).unwrap() - &e_cur).unwrap();
            let plus = (&e_cur + (&dir * h).unwrap()).unwrap();
            let minus = (&e_cur - (&dir * h).unwrap()).unwrap();
            explicit.push(((mean_ll(&plus) - mean_ll(&minus)) / (2.0 * h)) as f32);
        }
        canon_testkit::assert_close(
            &Tensor::new(scores.as_slice(), &Device::Cpu).unwrap(),
            &Tensor::new(explicit.as_slice(), &Device::Cpu).unwrap(),
            canon_testkit::Tol::new(5e-3, 1e-2),
        );
        let none = BTreeSet::new();
        let k = 8;
        assert_eq!(
            top_candidates(&scores, k, &none, 5),
            top_candidates(&explicit, k, &none, 5)
        );
        // Excluded ids and the current trigger are never candidates.
        let ex: BTreeSet<u32> = top_candidates(&scores, 2, &none, 5).into_iter().collect();
        let rest = top_candidates(&scores, k, &ex, 5);
        assert!(rest.iter().all(|i| !ex.contains(i) && *i != 5));
    }

    #[test]
    fn stdlib_and_man_facts_are_read_and_ambiguous_names_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(
            p.join("alpha.py"),
            "def load(x):\n    pass\ndef _hidden():\n    def inner(): pass\ndef shared(): pass\n",
        )
        .unwrap();
        std::fs::write(p.join("beta.py"), "def shared(): pass\ndef dump(a, b):\n").unwrap();
        std::fs::write(p.join("_private.py"), "def secret(): pass\n").unwrap();
        let f = stdlib_function_facts(p).unwrap();
        let pairs: Vec<(&str, &str)> = f
            .iter()
            .map(|f| (f.subject.as_str(), f.object.as_str()))
            .collect();
        assert_eq!(pairs, vec![("dump", "beta"), ("load", "alpha")]);
        let man = p.join("man");
        std::fs::create_dir_all(man.join("man1")).unwrap();
        std::fs::create_dir_all(man.join("man8")).unwrap();
        std::fs::write(man.join("man1/ls.1.gz"), "").unwrap();
        std::fs::write(man.join("man8/mount.8.gz"), "").unwrap();
        std::fs::write(man.join("man1/both.1.gz"), "").unwrap();
        std::fs::write(man.join("man8/both.8.gz"), "").unwrap();
        let m = man_section_facts(&man).unwrap();
        let pairs: Vec<(&str, &str)> = m
            .iter()
            .map(|f| (f.subject.as_str(), f.object.as_str()))
            .collect();
        assert_eq!(pairs, vec![("ls", "1"), ("mount", "8")]);
        assert!(man_section_facts(&p.join("nowhere")).is_err());
    }

    #[test]
    fn split_is_by_fact_balanced_and_seeded() {
        let facts: Vec<EncodedFact> = (0..50)
            .map(|i| EncodedFact {
                subject: vec![i],
                label: if i < 40 { 1 } else { 2 },
            })
            .collect();
        let (tr, te) = balance_and_split(&facts, |f| f.label, 10, 0.25, 7);
        assert_eq!(tr.len() + te.len(), 20);
        assert_eq!(te.len(), 5);
        assert!(tr.iter().all(|f| !te.contains(f)));
        assert_eq!(balance_and_split(&facts, |f| f.label, 10, 0.25, 7).1, te);
    }

    #[test]
    fn causal_templates_must_end_at_the_slot() {
        struct C;
        impl SlotLm for C {
            fn vocab_size(&self) -> usize {
                4
            }
            fn embed(&self, _: &[u32]) -> Result<Tensor> {
                unreachable!()
            }
            fn slot_log_probs(&self, _: &Tensor, _: usize) -> Result<Tensor> {
                unreachable!()
            }
            fn mask_id(&self) -> Option<u32> {
                None
            }
            fn frame(&self) -> (Vec<u32>, Vec<u32>) {
                (vec![], vec![])
            }
        }
        let enc = |_: &str, _: bool| -> Result<Vec<u32>> { Ok(vec![1]) };
        let t = Template::parse("[X] [T] [P] .").unwrap();
        assert!(compile(&t, &C, &enc).is_err());
        let t = Template::parse("[X] [T] is [P]").unwrap();
        let p = compile(&t, &C, &enc).unwrap();
        let a = p.assemble(
            &C,
            &EncodedFact {
                subject: vec![2, 3],
                label: 0,
            },
            &[9],
        );
        assert_eq!(a.ids, vec![2, 3, 9, 1]);
        assert_eq!(a.trigger_pos, vec![2]);
        assert_eq!(a.slot, 3);
    }
}
