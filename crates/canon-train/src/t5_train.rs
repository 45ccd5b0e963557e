//! Training T5 (paper 8): span-corruption pre-training (§3.1.4) on a token stream, then multitask
//! text-to-text fine-tuning (§3.5.2: every task as "prefix: input" → "target" text, mixed in
//! proportion to their sizes with an artificial limit `K`).
//!
//! Both stages minimise the teacher-forced cross-entropy of the target tokens (decoder input = the
//! decoder start id then the target shifted right; padding labels ignored) and report held-out loss
//! and token accuracy. The tokenizer is a byte-level BPE trained on the corpus plus `<pad>`, `</s>`
//! and `extra_ids` sentinels `<extra_id_k>` whose ids count down from the top of the vocabulary, as
//! T5's SentencePiece vocabulary has them.
//!
//! Deviations from the paper's recipe (sized for a CPU): AdamW instead of Adafactor, the `[train]`
//! schedule instead of `1/√max(step, 10⁴)`, and no packing of several examples per sequence.

pub mod tasks;

use candle_core::{D, DType, Device, Tensor};
use canon_models::Seq2SeqLm;
use canon_models::t5::T5;
use canon_nn::ops::pad_batch;
use canon_nn::{IGNORE_INDEX, SplitMix64, masked_cross_entropy};
use serde::{Deserialize, Serialize};
use tokenizers::{AddedToken, Tokenizer};

use crate::data::{TokenData, TokenizerKind, train_tokenizer};
use crate::engine::{BatchLoss, Objective};
use crate::span_corruption::{Sentinels, SpanConfig, corrupt};
use crate::{Result, TrainError};

pub use tasks::{Example, Mixture, TextRecord};

/// Which objective a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    SpanCorruption,
    Multitask,
}

/// The special tokens of a T5 vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialIds {
    pub pad: u32,
    pub eos: u32,
    /// `<extra_id_0>`; `<extra_id_k>` is `first_sentinel − k`.
    pub first_sentinel: u32,
    pub n_sentinels: usize,
}

impl SpecialIds {
    pub fn sentinels(&self) -> Sentinels {
        Sentinels {
            first: self.first_sentinel,
            count: self.n_sentinels,
        }
    }

    /// Reads the ids from a tokenizer built by [`t5_tokenizer`] (errors name the missing token).
    pub fn of(tok: &Tokenizer) -> Result<Self> {
        let id = |s: &str| {
            tok.token_to_id(s)
                .ok_or_else(|| TrainError::Tokenizer(format!("the vocabulary has no '{s}' token")))
        };
        let first = id("<extra_id_0>")?;
        let mut n = 1;
        while let Some(i) = tok.token_to_id(&format!("<extra_id_{n}>")) {
            if i + n as u32 != first {
                return Err(TrainError::Tokenizer(format!(
                    "<extra_id_{n}> has id {i}, expected {} (sentinel ids count down)",
                    first as i64 - n as i64
                )));
            }
            n += 1;
        }
        Ok(Self {
            pad: id("<pad>")?,
            eos: id("</s>")?,
            first_sentinel: first,
            n_sentinels: n,
        })
    }
}

/// A byte-level BPE of about `vocab_size` ids in all: trained on `docs`, then `<pad>`, `</s>` and
/// `<extra_id_{n−1}>` … `<extra_id_0>` appended, so `<extra_id_0>` is the last id.
pub fn t5_tokenizer(docs: &[String], vocab_size: usize, extra_ids: usize) -> Result<Tokenizer> {
    if extra_ids == 0 {
        return Err(TrainError::Tokenizer(
            "data.extra_ids must be positive (span corruption needs sentinels)".into(),
        ));
    }
    let base = vocab_size.saturating_sub(extra_ids + 2);
    let mut tok = train_tokenizer(TokenizerKind::ByteBpe, docs, base)?;
    let mut special = vec![
        AddedToken::from("<pad>", true),
        AddedToken::from("</s>", true),
    ];
    special.extend(
        (0..extra_ids)
            .rev()
            .map(|k| AddedToken::from(format!("<extra_id_{k}>"), true)),
    );
    tok.add_special_tokens(special)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    let ids = SpecialIds::of(&tok)?;
    if ids.first_sentinel as usize + 1 != tok.get_vocab_size(true) {
        return Err(TrainError::Tokenizer(format!(
            "<extra_id_0> has id {}, expected the last id {}",
            ids.first_sentinel,
            tok.get_vocab_size(true) - 1
        )));
    }
    Ok(tok)
}

/// A padded batch of (source, target) pairs for teacher forcing.
#[derive(Debug, Clone)]
pub struct Seq2SeqBatch {
    /// `[b, s]` u32, padded with `pad`.
    pub src: Tensor,
    /// `[b, s]` u32: 1 for tokens, 0 for padding.
    pub src_mask: Tensor,
    /// `[b, t]` u32: the start id, then the target shifted right.
    pub tgt_in: Tensor,
    /// `[b·t]`: the target ids, `IGNORE_INDEX` on padding.
    pub labels: Vec<i64>,
    /// Non-padding source and target tokens.
    pub tokens: usize,
}

/// Pads `pairs` (source ids, target ids ending with EOS) into one batch.
pub fn collate(pairs: &[(Vec<u32>, Vec<u32>)], pad: u32, start: u32) -> Result<Seq2SeqBatch> {
    let b = pairs.len();
    let s = pairs.iter().map(|p| p.0.len()).max().unwrap_or(0);
    let t = pairs.iter().map(|p| p.1.len()).max().unwrap_or(0);
    if b == 0 || s == 0 || t == 0 {
        return Err(TrainError::Data(
            "a batch needs at least one example with a non-empty source and target".into(),
        ));
    }
    if let Some(i) = pairs.iter().position(|(x, y)| x.is_empty() || y.is_empty()) {
        return Err(TrainError::Data(format!(
            "example {i} of the batch has an empty source or target"
        )));
    }
    let srcs: Vec<&[u32]> = pairs.iter().map(|p| p.0.as_slice()).collect();
    let tgts: Vec<&[u32]> = pairs.iter().map(|p| p.1.as_slice()).collect();
    seq2seq_batch(&srcs, &tgts, pad, start)
}

/// Sources and targets (each ending with EOS, none empty) padded into one teacher-forcing batch:
/// the one seq2seq collation (T5 and the Transformer use it).
pub fn seq2seq_batch(
    srcs: &[&[u32]],
    tgts: &[&[u32]],
    pad: u32,
    start: u32,
) -> Result<Seq2SeqBatch> {
    let dev = Device::Cpu;
    let src = pad_batch(srcs, pad, 0);
    let shifted: Vec<Vec<u32>> = tgts
        .iter()
        .map(|y| {
            std::iter::once(start)
                .chain(y[..y.len().saturating_sub(1)].iter().copied())
                .collect()
        })
        .collect();
    let tgt_in = pad_batch(&shifted, pad, 0);
    let labels: Vec<Vec<i64>> = tgts
        .iter()
        .map(|y| y.iter().map(|&id| id as i64).collect())
        .collect();
    let labels = pad_batch(&labels, IGNORE_INDEX, 0);
    Ok(Seq2SeqBatch {
        src: src.ids_tensor(&dev)?,
        src_mask: src.mask_tensor(1u32, 0u32, &dev)?,
        tgt_in: tgt_in.ids_tensor(&dev)?,
        labels: labels.ids,
        tokens: src.lens.iter().sum::<usize>() + tgt_in.lens.iter().sum::<usize>(),
    })
}

/// The teacher-forced loss of a batch and its token accuracy.
pub struct Seq2SeqLoss {
    /// Mean cross-entropy over target tokens (graph kept).
    pub loss: Tensor,
    pub value: f64,
    pub predicted: usize,
    pub correct: usize,
}

pub fn seq2seq_loss(model: &T5, batch: &Seq2SeqBatch) -> Result<Seq2SeqLoss> {
    let logits = model.forward_train(&batch.src, &batch.src_mask, &batch.tgt_in)?;
    let (b, t, v) = logits.dims3()?;
    let flat = logits.reshape((b * t, v))?;
    let (loss, predicted) = masked_cross_entropy(&flat, &batch.labels, 0.0)?;
    let argmax = flat.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
    let correct = argmax
        .iter()
        .zip(&batch.labels)
        .filter(|(p, l)| **l != IGNORE_INDEX && **p as i64 == **l)
        .count();
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(Seq2SeqLoss {
        loss,
        value,
        predicted,
        correct,
    })
}

/// Where training examples come from.
pub enum Source {
    /// Span corruption of random windows of `raw_len` tokens of a token stream.
    Spans {
        data: TokenData,
        raw_len: usize,
        cfg: SpanConfig,
    },
    /// Text-to-text tasks, already tokenized, mixed by `mixture`.
    Tasks {
        train: Vec<Vec<Example>>,
        test: Vec<Vec<Example>>,
        names: Vec<String>,
        mixture: Mixture,
    },
}

/// The T5 objective for the training engine (either stage).
pub struct T5Objective {
    pub model: T5,
    pub source: Source,
    pub ids: SpecialIds,
    pub batch_size: usize,
    pub eval_batches: usize,
    /// Fixed held-out batches (built once, so every evaluation sees the same examples).
    eval: Vec<(String, Vec<Seq2SeqBatch>)>,
}

/// The seed of the held-out corruption (fixed: every evaluation corrupts the same way).
const EVAL_SEED: u64 = 0xE7A1_5EED;

impl T5Objective {
    pub fn new(
        model: T5,
        source: Source,
        ids: SpecialIds,
        batch_size: usize,
        eval_batches: usize,
    ) -> Result<Self> {
        let mut me = Self {
            model,
            source,
            ids,
            batch_size: batch_size.max(1),
            eval_batches: eval_batches.max(1),
            eval: Vec::new(),
        };
        me.eval = me.build_eval()?;
        Ok(me)
    }

    fn start(&self) -> u32 {
        self.model.decoder_start_id()
    }

    fn span_pair(
        &self,
        window: &[u32],
        cfg: &SpanConfig,
        rng: &mut SplitMix64,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let c = corrupt(window, cfg, self.ids.sentinels(), self.ids.eos, rng)?;
        Ok((c.input, c.target))
    }

    fn build_eval(&self) -> Result<Vec<(String, Vec<Seq2SeqBatch>)>> {
        let (bs, nb) = (self.batch_size, self.eval_batches);
        let (pad, start) = (self.ids.pad, self.start());
        match &self.source {
            Source::Spans { data, raw_len, cfg } => {
                let span = data.val.len().checked_sub(*raw_len).ok_or_else(|| {
                    TrainError::Data(format!(
                        "the held-out split has {} tokens, fewer than one window of {raw_len}",
                        data.val.len()
                    ))
                })?;
                let mut rng = SplitMix64::new(EVAL_SEED);
                let n = bs * nb;
                let mut batches = Vec::new();
                let mut pairs = Vec::new();
                for i in 0..n {
                    let s = if n == 1 { 0 } else { i * span / (n - 1) };
                    pairs.push(self.span_pair(&data.val[s..s + raw_len], cfg, &mut rng)?);
                    if pairs.len() == bs {
                        batches.push(collate(&pairs, pad, start)?);
                        pairs.clear();
                    }
                }
                Ok(vec![(String::new(), batches)])
            }
            Source::Tasks { test, names, .. } => {
                let mut out = Vec::new();
                for (name, ex) in names.iter().zip(test) {
                    // Spread over the whole test split (records come grouped by file and class).
                    let picked: Vec<&Example> = spread(ex, bs * nb).collect();
                    let batches = picked
                        .chunks(bs)
                        .map(|c| {
                            let pairs: Vec<_> =
                                c.iter().map(|e| (e.src.clone(), e.tgt.clone())).collect();
                            collate(&pairs, pad, start)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    out.push((name.clone(), batches));
                }
                Ok(out)
            }
        }
    }

    /// The training pairs of one micro-batch.
    pub fn sample(&self, rng: &mut SplitMix64) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let mut pairs = Vec::with_capacity(self.batch_size);
        match &self.source {
            Source::Spans { data, raw_len, cfg } => {
                let span = data.train.len().checked_sub(*raw_len).ok_or_else(|| {
                    TrainError::Data(format!(
                        "the training split has {} tokens, fewer than one window of {raw_len}",
                        data.train.len()
                    ))
                })?;
                for _ in 0..self.batch_size {
                    let s = rng.below(span + 1);
                    pairs.push(self.span_pair(&data.train[s..s + raw_len], cfg, rng)?);
                }
            }
            Source::Tasks { train, mixture, .. } => {
                for _ in 0..self.batch_size {
                    let task = mixture.pick(rng);
                    let ex = &train[task][rng.below(train[task].len())];
                    pairs.push((ex.src.clone(), ex.tgt.clone()));
                }
            }
        }
        Ok(pairs)
    }
}

impl Objective for T5Objective {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        let pairs = self.sample(rng)?;
        let batch = collate(&pairs, self.ids.pad, self.start())?;
        let l = seq2seq_loss(&self.model, &batch)?;
        let acc = l.correct as f64 / l.predicted.max(1) as f64;
        Ok(BatchLoss {
            total: l.loss,
            loss: l.value,
            tokens: batch.tokens,
            extra: vec![("token_accuracy".into(), acc)],
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        let (mut nll, mut n, mut correct) = (0.0, 0usize, 0usize);
        let mut per_task = Vec::new();
        for (name, batches) in &self.eval {
            let (mut tn, mut tp, mut tc) = (0.0, 0usize, 0usize);
            for b in batches {
                let l = seq2seq_loss(&self.model, b)?;
                tn += l.value * l.predicted as f64;
                tp += l.predicted;
                tc += l.correct;
            }
            nll += tn;
            n += tp;
            correct += tc;
            if !name.is_empty() {
                per_task.push((format!("eval_loss_{name}"), tn / tp.max(1) as f64));
                per_task.push((
                    format!("eval_accuracy_{name}"),
                    tc as f64 / tp.max(1) as f64,
                ));
            }
        }
        out.push(("eval_loss".into(), nll / n.max(1) as f64));
        out.push(("eval_accuracy".into(), correct as f64 / n.max(1) as f64));
        out.extend(per_task);
        Ok(out)
    }
}

/// At most `n` items evenly spaced over `items` (every `⌈len/n⌉`-th, from the first): held-out
/// subsets that see every part of a split whose records come grouped (by file, by class).
pub fn spread<T>(items: &[T], n: usize) -> impl Iterator<Item = &T> {
    let stride = items.len().div_ceil(n.max(1)).max(1);
    items.iter().step_by(stride)
}

/// Tokenizes text records into examples: source `prefix + input` and target `target`, each cut to
/// `max_len − 1` tokens and ended with EOS.
pub fn encode_records(
    tok: &Tokenizer,
    records: &[TextRecord],
    eos: u32,
    max_len: usize,
) -> Result<Vec<Example>> {
    let keep = max_len.saturating_sub(1).max(1);
    records
        .iter()
        .map(|r| {
            let enc = |s: &str| -> Result<Vec<u32>> {
                let mut ids = tok
                    .encode(s, false)
                    .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", r.origin)))?
                    .get_ids()
                    .to_vec();
                ids.truncate(keep);
                ids.push(eos);
                Ok(ids)
            };
            Ok(Example {
                src: enc(&format!("{}{}", r.prefix, r.input))?,
                tgt: enc(&r.target)?,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "t5_train_tests.rs"]
mod tests;
