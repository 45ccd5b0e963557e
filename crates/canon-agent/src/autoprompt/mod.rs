//! AutoPrompt (Shin et al., 2020, paper 11): gradient-guided search for trigger tokens.
//!
//! A template such as `[X] [T] [T] [T] [P]` places the subject of a fact at `[X]`, trigger tokens
//! at each `[T]` and the predicted slot at `[P]`; the label `[Y]` is the fact's object, one token.
//! In a masked LM the slot is a `[MASK]` token; in a causal LM the slot is the next token after the
//! prompt, so `[P]` ends the template.
//!
//! One search step (§2.2 of the paper, with its reference implementation's protocol):
//! 1. on `accumulation` batches of training facts, the gradient `g` of the mean label
//!    log-likelihood `(1/B) Σ log p(y | x_prompt)` with respect to every trigger's input embedding;
//! 2. one trigger position `j`, drawn at random; its HotFlip candidates: the `k` vocabulary tokens
//!    `w` with the largest first-order estimate of the change, `(e_w − e_cur) · g_j` (the same
//!    ranking as the paper's `e_w · g_j`: `e_cur · g_j` is the same for every `w`);
//! 3. every candidate replaces trigger `j` and is scored by the exact mean log-likelihood on
//!    another `accumulation` batches; the best is kept if it beats the current trigger;
//! 4. after a change, the triggers are scored on held-out dev facts; the search returns the
//!    triggers that did best there.
//!
//! Candidates never include the excluded ids (special tokens, and by the caller's choice the
//! relation's object tokens, so that a trigger is not itself an answer). Evaluation is
//! precision@1: the arg-max over the whole vocabulary at the slot equals the label, and also
//! restricted to the relation's objects.
//!
//! The model seam is [`SlotLm`]: input embeddings in, log-probabilities at the slot out, with a
//! backward pass through the embeddings. [`CausalSlot`] adapts any [`CausalLm`] that implements
//! `embed`/`forward_embeds` (SmolLM2's LLaMA, this project's GPTs); [`MaskedSlot`] adapts BERT with
//! its MLM head. Facts run in batches of prompts of one length ([`hotflip`]).

mod hotflip;

pub use hotflip::{
    FactScore, MAX_TOKENS, Precision, SearchConfig, SearchResult, StepLog, embedding_table,
    evaluate, first_order_scores, mean_log_likelihood, precision_at_1, score_options, search,
    top_candidates, trigger_gradient, trigger_gradients,
};

use canon_nn::ops::log_softmax_last;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
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
mod tests;
