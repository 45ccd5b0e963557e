//! ERNIE's objectives (paper 6): masked LM plus the denoising entity auto-encoder (dEA) for
//! pre-training, and fine-tuning on an entity-centred task (typing a mention as module, class or
//! function) to compare ERNIE with a plain BERT of the same size.
//!
//! dEA (§3.4): each token–entity alignment of a sequence is, independently, replaced by a uniformly
//! drawn different entity with probability 5%, removed (entity input zeroed, mask 0) with 15%, and
//! kept with 80% (the reference `run_pretrain.py` collate). Every originally aligned position is
//! predicted: `p(e_j | w_i) = softmax_j((W w_i)ᵀ e_j)` over the distinct entities of the sequence
//! (the paper's candidate set; the reference code uses the mini-batch's), scored against their frozen
//! TransE vectors. Loss = MLM + dEA (no NSP here).
//!
//! Words map to a word-level vocabulary (the most frequent training words, then `[UNK]`); a sequence
//! is `[CLS] words [SEP]`, at most `block_size` positions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use canon_models::ernie::{EntityInput, Ernie, dea_accuracy, dea_logits, dea_loss};
use canon_nn::{IGNORE_INDEX, SplitMix64, masked_cross_entropy};
use serde::{Deserialize, Serialize};

use crate::engine::{BatchLoss, Objective};
use crate::ernie_data::{EntityKind, KnowledgeGraph, Linker, TextUnit, words};
use crate::objectives::mlm::{MlmConfig, mask_tokens};
use crate::{Result, TrainError, io_err};

mod typing;
pub use typing::{TypingExample, TypingObjective, typing_examples};

pub const PAD: u32 = 0;
pub const UNK: u32 = 1;
pub const CLS: u32 = 2;
pub const SEP: u32 = 3;
pub const MASK: u32 = 4;
const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Word-level vocabulary: the specials, then words by descending frequency (ties by spelling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vocab {
    pub words: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

impl Vocab {
    pub fn build<'a>(texts: impl Iterator<Item = &'a str>, size: usize) -> Result<Self> {
        if size <= SPECIALS.len() {
            return Err(TrainError::Data(format!(
                "the vocabulary size must exceed the {} special tokens, found {size}",
                SPECIALS.len()
            )));
        }
        let mut freq: HashMap<String, usize> = HashMap::new();
        for t in texts {
            for w in words(t) {
                *freq.entry(w.text).or_default() += 1;
            }
        }
        let mut f: Vec<(String, usize)> = freq.into_iter().collect();
        f.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut all: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        all.extend(f.into_iter().take(size - SPECIALS.len()).map(|x| x.0));
        Ok(Self::from_words(all))
    }

    fn from_words(words: Vec<String>) -> Self {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Self { words, index }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn id(&self, w: &str) -> u32 {
        self.index.get(w).copied().unwrap_or(UNK)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(&self.words).map_err(|e| io_err(path, e))?;
        canon_fs::write_atomic(path, text.as_bytes()).map_err(|e| io_err(path, e))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        let words: Vec<String> = serde_json::from_str(&text).map_err(|e| {
            TrainError::Data(format!(
                "{}: not a vocabulary (a JSON list of words): {e}",
                path.display()
            ))
        })?;
        if words.len() <= SPECIALS.len() || words[..SPECIALS.len()] != SPECIALS {
            return Err(TrainError::Data(format!(
                "{}: a vocabulary must start with {SPECIALS:?}",
                path.display()
            )));
        }
        Ok(Self::from_words(words))
    }
}

/// `[CLS] words [SEP]` with the entity aligned to each position (−1 = none).
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub ents: Vec<i64>,
}

/// Whether a module's text is held out (about 1 in 20 modules, by a hash of its name).
pub fn held_out(module: &str) -> bool {
    // FNV-1a: stable across runs and platforms.
    let h = module.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    h % 20 == 7
}

/// Sequences of the text units, cut into pieces of at most `block − 2` words, with the linker's
/// alignments: `(training, held-out)`.
pub fn sequences(
    units: &[TextUnit],
    kg: &KnowledgeGraph,
    vocab: &Vocab,
    block: usize,
) -> Result<(Vec<Sequence>, Vec<Sequence>)> {
    if block < 4 {
        return Err(TrainError::Data(format!(
            "train.block_size must be at least 4 for ERNIE sequences, found {block}"
        )));
    }
    let linker = Linker::new(kg);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for u in units {
        let w = words(&u.text);
        let links = linker.link(&w, &u.module);
        for (wc, lc) in w.chunks(block - 2).zip(links.chunks(block - 2)) {
            let mut ids = vec![CLS];
            let mut ents = vec![-1i64];
            ids.extend(wc.iter().map(|x| vocab.id(&x.text)));
            ents.extend(lc.iter().map(|e| e.map_or(-1, i64::from)));
            ids.push(SEP);
            ents.push(-1);
            let s = Sequence { ids, ents };
            if held_out(&u.module) {
                val.push(s);
            } else {
                train.push(s);
            }
        }
    }
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::Data(format!(
            "ERNIE text: {} training and {} held-out sequences; both must be non-empty",
            train.len(),
            val.len()
        )));
    }
    Ok((train, val))
}

/// dEA corruption proportions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeaConfig {
    /// Alignments replaced by a random entity (0.05).
    pub replace: f64,
    /// Alignments removed (0.15).
    pub mask: f64,
}

impl Default for DeaConfig {
    fn default() -> Self {
        Self {
            replace: 0.05,
            mask: 0.15,
        }
    }
}

/// Corrupted entity input and the labels (the original entity at every aligned position,
/// `IGNORE_INDEX` elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub struct Corrupted {
    pub input: Vec<i64>,
    pub labels: Vec<i64>,
}

pub fn corrupt_alignments(
    ents: &[i64],
    n_entities: usize,
    cfg: &DeaConfig,
    rng: &mut SplitMix64,
) -> Corrupted {
    let mut input = ents.to_vec();
    let mut labels = vec![IGNORE_INDEX; ents.len()];
    for (i, &e) in ents.iter().enumerate() {
        if e < 0 {
            continue;
        }
        labels[i] = e;
        let u = rng.next_f64();
        if u < cfg.replace && n_entities > 1 {
            let mut r = rng.below(n_entities - 1) as i64;
            if r >= e {
                r += 1;
            }
            input[i] = r;
        } else if u < cfg.replace + cfg.mask {
            input[i] = -1;
        }
    }
    Corrupted { input, labels }
}

/// A padded batch of `b` sequences of `t` positions.
pub struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub ents: EntityInput,
    pub b: usize,
    pub t: usize,
    /// Real (non-padding) tokens.
    pub tokens: usize,
}

/// Pads `ids` and the entity ids `ents` into a batch.
pub fn pad_batch(rows: &[(Vec<u32>, Vec<i64>)], table: &Tensor) -> Result<Batch> {
    let dev = &Device::Cpu;
    let ids: Vec<&[u32]> = rows.iter().map(|r| r.0.as_slice()).collect();
    let ids = canon_nn::ops::pad_batch(&ids, PAD, 1);
    let ents: Vec<&[i64]> = rows.iter().map(|r| r.1.as_slice()).collect();
    let ents = canon_nn::ops::pad_batch(&ents, -1i64, ids.width);
    let (b, t) = (ids.rows(), ids.width);
    Ok(Batch {
        ids: ids.ids_tensor(dev)?,
        mask: ids.mask_tensor(1f32, 0f32, dev)?,
        ents: EntityInput::lookup(table, &ents.ids, b, t)?,
        b,
        t,
        tokens: ids.lens.iter().sum(),
    })
}

/// A pre-training batch: MLM-corrupted tokens, dEA-corrupted entities, their labels and each
/// sequence's candidate entities.
pub struct PretrainBatch {
    pub batch: Batch,
    pub mlm_labels: Vec<i64>,
    /// Index of the gold entity among the sequence's candidates, per position.
    pub dea_labels: Vec<i64>,
    /// `[b, c, k]` and `[b, c]`.
    pub candidates: Tensor,
    pub cand_mask: Tensor,
}

pub fn pretrain_batch(
    seqs: &[&Sequence],
    table: &Tensor,
    vocab_size: usize,
    mlm: &MlmConfig,
    dea: &DeaConfig,
    rng: &mut SplitMix64,
) -> Result<PretrainBatch> {
    let n_ent = table.dim(0)?;
    let mut rows = Vec::with_capacity(seqs.len());
    let mut mlm_rows = Vec::with_capacity(seqs.len());
    let mut dea_rows = Vec::with_capacity(seqs.len());
    let mut cands: Vec<Vec<i64>> = Vec::with_capacity(seqs.len());
    for s in seqs {
        let m = mask_tokens(&s.ids, |x| x > MASK, MASK, MASK + 1, vocab_size, mlm, rng);
        let c = corrupt_alignments(&s.ents, n_ent, dea, rng);
        let mut cand: Vec<i64> = Vec::new();
        for &e in s.ents.iter().filter(|&&e| e >= 0) {
            if !cand.contains(&e) {
                cand.push(e);
            }
        }
        let labels: Vec<i64> = c
            .labels
            .iter()
            .map(|&l| {
                if l < 0 {
                    IGNORE_INDEX
                } else {
                    cand.iter()
                        .position(|&x| x == l)
                        .map_or(IGNORE_INDEX, |p| p as i64)
                }
            })
            .collect();
        rows.push((m.input, c.input));
        mlm_rows.push(m.labels);
        dea_rows.push(labels);
        cands.push(cand);
    }
    let batch = pad_batch(&rows, table)?;
    let (b, t) = (batch.b, batch.t);
    let pad_labels = |v: Vec<Vec<i64>>| -> Vec<i64> {
        v.into_iter()
            .flat_map(|mut r| {
                r.resize(t, IGNORE_INDEX);
                r
            })
            .collect()
    };
    let c = cands.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut cidx = vec![0u32; b * c];
    let mut cmask = vec![0f32; b * c];
    for (i, cand) in cands.iter().enumerate() {
        for (j, &e) in cand.iter().enumerate() {
            cidx[i * c + j] = e as u32;
            cmask[i * c + j] = 1.0;
        }
    }
    let dev = &Device::Cpu;
    let k = table.dim(1)?;
    let candidates = table
        .index_select(&Tensor::from_vec(cidx, b * c, dev)?, 0)?
        .reshape((b, c, k))?;
    Ok(PretrainBatch {
        batch,
        mlm_labels: pad_labels(mlm_rows),
        dea_labels: pad_labels(dea_rows),
        candidates,
        cand_mask: Tensor::from_vec(cmask, (b, c), dev)?,
    })
}

/// Losses of one pre-training batch.
pub struct PretrainLosses {
    pub mlm: Tensor,
    /// `None` for a plain BERT (no K-Encoder) or a batch without aligned entities.
    pub dea: Option<Tensor>,
    pub mlm_correct: usize,
    pub mlm_count: usize,
    pub dea_correct: usize,
    pub dea_count: usize,
}

pub fn pretrain_losses(model: &Ernie, pb: &PretrainBatch) -> Result<PretrainLosses> {
    let Batch { b, t, .. } = pb.batch;
    let out = model.forward(&pb.batch.ids, &pb.batch.mask, &pb.batch.ents)?;
    let d = model.config.hidden_size;
    let logits = model.mlm_logits(&out.tokens.reshape((b * t, d))?)?;
    let (mlm, mlm_count) = masked_cross_entropy(&logits, &pb.mlm_labels, 0.0)?;
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let mlm_correct = pred
        .iter()
        .zip(&pb.mlm_labels)
        .filter(|(p, l)| **l >= 0 && **p as i64 == **l)
        .count();
    let (mut dea, mut dea_correct, mut dea_count) = (None, 0, 0);
    if model.config.k_layers > 0 && pb.dea_labels.iter().any(|&l| l >= 0) {
        let proj = model.dea_project(&out.tokens)?;
        let lg = dea_logits(&proj, &pb.candidates, &pb.cand_mask)?;
        let (l, _) = dea_loss(&lg, &pb.dea_labels)?;
        (dea_correct, dea_count) = dea_accuracy(&lg, &pb.dea_labels)?;
        dea = Some(l);
    }
    Ok(PretrainLosses {
        mlm,
        dea,
        mlm_correct,
        mlm_count,
        dea_correct,
        dea_count,
    })
}

/// The corpus of a run: sequences and the frozen entity table.
pub struct ErnieCorpus {
    pub train: Vec<Sequence>,
    pub val: Vec<Sequence>,
    /// `[n_entities, k]`, frozen (zeros for a plain BERT, which never reads it).
    pub table: Tensor,
    /// Kind of each entity.
    pub kinds: Vec<EntityKind>,
    pub vocab_size: usize,
}

/// Pre-training: MLM + dEA.
pub struct PretrainObjective {
    pub model: Ernie,
    pub data: Arc<ErnieCorpus>,
    pub batch_size: usize,
    pub mlm: MlmConfig,
    pub dea: DeaConfig,
    /// Fixed held-out batches (drawn once with a fixed seed).
    eval: Vec<PretrainBatch>,
}

impl PretrainObjective {
    pub fn new(
        model: Ernie,
        data: Arc<ErnieCorpus>,
        batch_size: usize,
        eval_batches: usize,
        dea: DeaConfig,
    ) -> Result<Self> {
        let mlm = MlmConfig::default();
        let mut rng = SplitMix64::new(0xE7A1);
        let mut eval = Vec::new();
        let n = data.val.len();
        for i in 0..eval_batches {
            let seqs: Vec<&Sequence> = (0..batch_size)
                .map(|j| &data.val[(i * batch_size + j) * 7919 % n])
                .collect();
            eval.push(pretrain_batch(
                &seqs,
                &data.table,
                data.vocab_size,
                &mlm,
                &dea,
                &mut rng,
            )?);
        }
        Ok(Self {
            model,
            data,
            batch_size,
            mlm,
            dea,
            eval,
        })
    }
}

impl Objective for PretrainObjective {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        let d = &self.data;
        let seqs: Vec<&Sequence> = (0..self.batch_size)
            .map(|_| &d.train[rng.below(d.train.len())])
            .collect();
        let pb = pretrain_batch(&seqs, &d.table, d.vocab_size, &self.mlm, &self.dea, rng)?;
        let l = pretrain_losses(&self.model, &pb)?;
        let mlm = f64::from(l.mlm.to_scalar::<f32>()?);
        let mut extra = vec![("mlm_loss".to_string(), mlm)];
        let total = match &l.dea {
            Some(dea) => {
                extra.push(("dea_loss".into(), f64::from(dea.to_scalar::<f32>()?)));
                (&l.mlm + dea)?
            }
            None => l.mlm.clone(),
        };
        let loss = f64::from(total.to_scalar::<f32>()?);
        Ok(BatchLoss {
            total,
            loss,
            tokens: pb.batch.tokens,
            extra,
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let (mut mlm, mut dea, mut n_dea_b) = (0.0, 0.0, 0usize);
        let (mut mc, mut mn, mut dc, mut dn) = (0, 0, 0, 0);
        let mut chance = 0.0;
        for pb in &self.eval {
            let l = pretrain_losses(&self.model, pb)?;
            mlm += f64::from(l.mlm.to_scalar::<f32>()?);
            if let Some(x) = &l.dea {
                dea += f64::from(x.to_scalar::<f32>()?);
                n_dea_b += 1;
            }
            (mc, mn, dc, dn) = (
                mc + l.mlm_correct,
                mn + l.mlm_count,
                dc + l.dea_correct,
                dn + l.dea_count,
            );
            // Chance level of the dEA choice: 1 / (number of candidates) per labelled position.
            let cm: Vec<f32> = pb.cand_mask.sum(1)?.to_vec1()?;
            let t = pb.batch.t;
            for (i, l) in pb.dea_labels.iter().enumerate() {
                if *l >= 0 {
                    chance += 1.0 / f64::from(cm[i / t]);
                }
            }
        }
        let n = self.eval.len().max(1) as f64;
        let mut out = vec![
            ("eval_loss".to_string(), mlm / n),
            ("eval_mlm_accuracy".into(), mc as f64 / mn.max(1) as f64),
        ];
        if self.model.config.k_layers > 0 {
            out.push(("eval_dea_loss".into(), dea / n_dea_b.max(1) as f64));
            out.push(("eval_dea_accuracy".into(), dc as f64 / dn.max(1) as f64));
            out.push(("eval_dea_chance".into(), chance / dn.max(1) as f64));
        }
        Ok(out)
    }
}

/// Zeros `[n, k]` (the plain BERT's unused entity table).
pub fn zero_table(n: usize, k: usize) -> Result<Tensor> {
    Ok(Tensor::zeros((n, k), DType::F32, &Device::Cpu)?)
}

#[cfg(test)]
#[path = "ernie_train_tests.rs"]
mod tests;
