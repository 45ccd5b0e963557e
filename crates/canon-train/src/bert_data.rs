//! BERT's pre-training data (Devlin et al., 2019, paper 3, §3.1 and appendix A.1): a WordPiece
//! vocabulary trained here, documents cut into sentences, and sentence-pair examples
//! `[CLS] A [SEP] B [SEP]` where B is the text that follows A (IsNext) half of the time and text from
//! another document (NotNext) otherwise, in the manner of the reference `create_pretraining_data.py`
//! (`create_instances_from_document`): A and B are runs of whole sentences filling a target length
//! (`max_len − 3` tokens, shorter with probability `short_seq_prob`), the pair truncated from the
//! longer side. Examples are drawn on line from a seeded generator (a fresh pair and mask every
//! batch, like RoBERTa's dynamic masking), so a resumed run continues the same stream.
//!
//! Corpora on this machine: `python-docs` (the Language Reference prose in `pydoc_data/topics.py`)
//! and `python-docstrings` (the triple-quoted docstrings of the standard library's modules).

use std::path::Path;

use canon_nn::SplitMix64;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};
use tokenizers::{Tokenizer, TokenizerImpl};

use crate::data::Corpus;
use crate::objectives::mlm::{IGNORE, Masked, MlmConfig, mask_tokens};
use crate::{Result, TrainError};

/// The special tokens, in the id order the trained vocabulary gives them.
pub const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn tok_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Tokenizer(e.to_string())
}

/// Trains a WordPiece vocabulary of `vocab_size` on `docs` with BERT's uncased normaliser (clean
/// text, CJK spacing, strip accents, lowercase) and pre-tokenizer (whitespace and punctuation);
/// continuation pieces carry `##`. `[PAD] [UNK] [CLS] [SEP] [MASK]` get ids 0–4, and the saved
/// tokenizer adds `[CLS] … [SEP]` when asked for special tokens.
pub fn train_wordpiece(docs: &[String], vocab_size: usize) -> Result<Tokenizer> {
    if vocab_size < 100 {
        return Err(TrainError::Tokenizer(format!(
            "data.vocab_size must be at least 100 for WordPiece, found {vocab_size}"
        )));
    }
    let mut t: TokenizerImpl<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(ModelWrapper::WordPiece(WordPiece::default()));
    t.with_normalizer(Some(NormalizerWrapper::BertNormalizer(
        BertNormalizer::new(true, true, None, true),
    )))
    .map_err(tok_err)?;
    t.with_pre_tokenizer(Some(PreTokenizerWrapper::BertPreTokenizer(
        BertPreTokenizer,
    )));
    t.with_decoder(Some(DecoderWrapper::WordPiece(
        tokenizers::decoders::wordpiece::WordPiece::default(),
    )));
    let mut trainer: tokenizers::models::TrainerWrapper = WordPieceTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            SPECIALS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build()
        .into();
    t.train(&mut trainer, docs.iter()).map_err(tok_err)?;
    let (cls, sep) = (t.token_to_id("[CLS]"), t.token_to_id("[SEP]"));
    if let (Some(cls), Some(sep)) = (cls, sep) {
        t.with_post_processor(Some(PostProcessorWrapper::Bert(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        ))));
    }
    Ok(Tokenizer::from(t))
}

/// The ids of the special tokens of a BERT vocabulary (ours or MiniLM's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub pad: u32,
    pub unk: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
    /// Random MLM replacements are drawn from `random_from..vocab` (past every special and
    /// `[unused]` token).
    pub random_from: u32,
}

impl Specials {
    pub fn of(tok: &Tokenizer) -> Result<Self> {
        let id = |s: &str| {
            tok.token_to_id(s)
                .ok_or_else(|| TrainError::Tokenizer(format!("the vocabulary has no {s} token")))
        };
        let (pad, unk, cls, sep, mask) = (
            id("[PAD]")?,
            id("[UNK]")?,
            id("[CLS]")?,
            id("[SEP]")?,
            id("[MASK]")?,
        );
        let mut random_from = pad.max(unk).max(cls).max(sep).max(mask) + 1;
        // MiniLM/BERT-base vocabularies keep `[unusedN]` slots after the specials.
        while tok
            .id_to_token(random_from)
            .is_some_and(|t| t.starts_with("[unused"))
        {
            random_from += 1;
        }
        Ok(Self {
            pad,
            unk,
            cls,
            sep,
            mask,
            random_from,
        })
    }

    /// Whether MLM may select this position (never [CLS], [SEP], [PAD] or [MASK]).
    pub fn maskable(&self, id: u32) -> bool {
        id != self.pad && id != self.cls && id != self.sep && id != self.mask
    }
}

/// Cuts prose into sentences: paragraphs at blank lines, then at `.`, `?` or `!` followed by
/// whitespace; whitespace runs become one space. Pieces shorter than 2 characters are dropped.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let flat: String = para.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut cur = String::new();
        let mut chars = flat.chars().peekable();
        while let Some(c) = chars.next() {
            cur.push(c);
            if matches!(c, '.' | '?' | '!') && chars.peek().is_some_and(|n| *n == ' ') {
                chars.next();
                let s = cur.trim();
                if s.chars().count() >= 2 {
                    out.push(s.to_string());
                }
                cur.clear();
            }
        }
        let s = cur.trim();
        if s.chars().count() >= 2 {
            out.push(s.to_string());
        }
    }
    out
}

/// The docstrings (triple-quoted literals of at least 40 characters that read as prose: mostly
/// letters and spaces) of each Python source in `sources`, one document per source file.
pub fn docstrings(sources: &Corpus) -> Corpus {
    let mut docs = Vec::new();
    for src in &sources.docs {
        let mut doc = String::new();
        let mut rest = src.as_str();
        while let Some((q, at)) = ["\"\"\"", "'''"]
            .iter()
            .filter_map(|q| rest.find(q).map(|i| (*q, i)))
            .min_by_key(|x| x.1)
        {
            let body = &rest[at + 3..];
            let Some(end) = body.find(q) else { break };
            let lit = body[..end].trim();
            let n = lit.chars().count();
            let prose = lit
                .chars()
                .filter(|c| c.is_alphabetic() || c.is_whitespace() || matches!(c, '.' | ','))
                .count();
            if n >= 40 && prose * 10 >= n * 8 {
                doc.push_str(lit);
                doc.push_str("\n\n");
            }
            rest = &body[end + 3..];
        }
        if !doc.is_empty() {
            docs.push(doc);
        }
    }
    Corpus {
        name: format!("python-docstrings (from {})", sources.name),
        docs,
    }
}

/// Documents as tokenized sentences, split into training and held-out documents.
#[derive(Debug, Clone)]
pub struct SentenceData {
    /// `train[d][s]`: the WordPiece ids of sentence `s` of training document `d`.
    pub train: Vec<Vec<Vec<u32>>>,
    pub val: Vec<Vec<Vec<u32>>>,
}

impl SentenceData {
    /// Tokenizes the sentences of every document; the last `val_fraction` of the documents
    /// (at least 2) are held out. Needs at least 2 documents on each side (NotNext draws from
    /// another document) and sentences with tokens.
    pub fn encode(tok: &Tokenizer, corpus: &Corpus, val_fraction: f64) -> Result<Self> {
        let mut docs: Vec<Vec<Vec<u32>>> = Vec::new();
        for d in &corpus.docs {
            let mut sents = Vec::new();
            for s in sentences(d) {
                let enc = tok.encode(s.as_str(), false).map_err(tok_err)?;
                if !enc.get_ids().is_empty() {
                    sents.push(enc.get_ids().to_vec());
                }
            }
            if !sents.is_empty() {
                docs.push(sents);
            }
        }
        if docs.len() < 4 {
            return Err(TrainError::Data(format!(
                "{}: {} documents with text; sentence pairs need at least 4 (2 held out)",
                corpus.name,
                docs.len()
            )));
        }
        let n_val = ((docs.len() as f64 * val_fraction).ceil() as usize).clamp(2, docs.len() - 2);
        let val = docs.split_off(docs.len() - n_val);
        for (what, split) in [("training", &docs), ("held-out", &val)] {
            if !split.iter().any(|d| d.len() >= 2) {
                return Err(TrainError::Data(format!(
                    "{}: no {what} document has two sentences, so no IsNext pair exists",
                    corpus.name
                )));
            }
        }
        Ok(Self { train: docs, val })
    }

    pub fn tokens(split: &[Vec<Vec<u32>>]) -> usize {
        split.iter().flatten().map(Vec::len).sum()
    }
}

/// One sentence-pair example before masking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExample {
    /// `[CLS] A [SEP] B [SEP]`
    pub ids: Vec<u32>,
    /// 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`.
    pub types: Vec<u32>,
    /// true when B is random text from another document (NotNext = class 1).
    pub random_next: bool,
}

/// How examples are built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairConfig {
    /// Longest example, special tokens included (`train.block_size`).
    pub max_len: usize,
    /// Probability of a shorter target length (0.1 in the reference).
    pub short_seq_prob: f64,
    /// Sentence pairs with NSP (BERT), or single segments `[CLS] text [SEP]` (DistilBERT).
    pub pairs: bool,
}

/// Sentences of `doc` from `start`, whole, until `target` tokens are reached (at least `min`
/// sentences when the document has them).
fn take_run(doc: &[Vec<u32>], start: usize, target: usize, min: usize) -> Vec<&[u32]> {
    let mut run = Vec::new();
    let mut len = 0;
    for s in &doc[start..] {
        if len >= target && run.len() >= min {
            break;
        }
        len += s.len();
        run.push(s.as_slice());
    }
    run
}

/// Removes tokens from the end of the longer of `a`, `b` until they fit in `max` (the reference
/// drops from the front or back at random; the end keeps A's start and B's start, which carry the
/// IsNext signal).
fn truncate_pair(a: &mut Vec<u32>, b: &mut Vec<u32>, max: usize) {
    while a.len() + b.len() > max {
        if a.len() >= b.len() {
            a.pop();
        } else {
            b.pop();
        }
    }
}

/// Draws one example from `docs` (pairs need a document of two sentences).
pub fn draw_example(
    docs: &[Vec<Vec<u32>>],
    sp: &Specials,
    cfg: &PairConfig,
    rng: &mut SplitMix64,
) -> Result<PairExample> {
    if docs.iter().all(|d| d.is_empty()) || (cfg.pairs && !docs.iter().any(|d| d.len() >= 2)) {
        return Err(TrainError::Data(
            "no document to draw from (sentence pairs need one with two sentences)".into(),
        ));
    }
    let specials = if cfg.pairs { 3 } else { 2 };
    let max_tokens = cfg.max_len.saturating_sub(specials).max(2);
    let target = if rng.next_f64() < cfg.short_seq_prob {
        2 + rng.below(max_tokens - 1)
    } else {
        max_tokens
    };
    if !cfg.pairs {
        let d = loop {
            let d = rng.below(docs.len());
            if !docs[d].is_empty() {
                break d;
            }
        };
        let start = rng.below(docs[d].len());
        let mut a: Vec<u32> = take_run(&docs[d], start, target, 1).concat();
        a.truncate(max_tokens);
        let mut ids = Vec::with_capacity(a.len() + 2);
        ids.push(sp.cls);
        ids.extend(a);
        ids.push(sp.sep);
        return Ok(PairExample {
            types: vec![0; ids.len()],
            ids,
            random_next: false,
        });
    }
    let random_next = rng.next_f64() < 0.5;
    // A document with a sentence that has a successor (IsNext needs one).
    let (d, start) = loop {
        let d = rng.below(docs.len());
        if docs[d].len() >= 2 {
            break (d, rng.below(docs[d].len() - 1));
        }
    };
    let run = take_run(&docs[d], start, target, 2);
    // A is the first `a_end` sentences of the run.
    let a_end = 1 + rng.below(run.len() - 1);
    let mut a: Vec<u32> = run[..a_end].concat();
    let mut b: Vec<u32> = if random_next {
        let other = loop {
            let o = rng.below(docs.len());
            if o != d || docs.len() == 1 {
                break o;
            }
        };
        let want = target.saturating_sub(a.len()).max(1);
        let s = rng.below(docs[other].len().max(1));
        take_run(&docs[other], s, want, 1).concat()
    } else {
        run[a_end..].concat()
    };
    truncate_pair(&mut a, &mut b, max_tokens);
    let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
    ids.push(sp.cls);
    ids.extend_from_slice(&a);
    ids.push(sp.sep);
    let na = ids.len();
    ids.extend_from_slice(&b);
    ids.push(sp.sep);
    let mut types = vec![0u32; ids.len()];
    types[na..].iter_mut().for_each(|t| *t = 1);
    Ok(PairExample {
        ids,
        types,
        random_next,
    })
}

/// A padded, masked batch.
#[derive(Debug, Clone, PartialEq)]
pub struct MlmBatch {
    pub b: usize,
    pub t: usize,
    /// `[b·t]` corrupted inputs, padded with `[PAD]`.
    pub input: Vec<u32>,
    /// `[b·t]` the uncorrupted ids (padded).
    pub original: Vec<u32>,
    pub types: Vec<u32>,
    /// `[b·t]` 1 for real tokens, 0 for padding.
    pub mask: Vec<f32>,
    /// Flat positions `i·t + j` that are predicted, and their labels.
    pub rows: Vec<u32>,
    pub labels: Vec<i64>,
    /// NotNext (1) / IsNext (0) per row.
    pub nsp: Vec<u32>,
    /// Real tokens in the batch.
    pub tokens: usize,
}

/// Masks each example with BERT's 80/10/10 rule and pads the batch to its longest example.
pub fn collate(
    examples: &[PairExample],
    sp: &Specials,
    vocab: usize,
    mlm: &MlmConfig,
    rng: &mut SplitMix64,
) -> MlmBatch {
    let b = examples.len();
    let t = examples
        .iter()
        .map(|e| e.ids.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut batch = MlmBatch {
        b,
        t,
        input: vec![sp.pad; b * t],
        original: vec![sp.pad; b * t],
        types: vec![0; b * t],
        mask: vec![0.0; b * t],
        rows: Vec::new(),
        labels: Vec::new(),
        nsp: Vec::with_capacity(b),
        tokens: 0,
    };
    for (i, e) in examples.iter().enumerate() {
        let Masked { input, labels } = mask_tokens(
            &e.ids,
            |id| sp.maskable(id),
            sp.mask,
            sp.random_from,
            vocab,
            mlm,
            rng,
        );
        let r = i * t..i * t + e.ids.len();
        batch.input[r.clone()].copy_from_slice(&input);
        batch.original[r.clone()].copy_from_slice(&e.ids);
        batch.types[r.clone()].copy_from_slice(&e.types);
        batch.mask[r].iter_mut().for_each(|m| *m = 1.0);
        for (j, &l) in labels.iter().enumerate() {
            if l != IGNORE {
                batch.rows.push((i * t + j) as u32);
                batch.labels.push(l);
            }
        }
        batch.nsp.push(u32::from(e.random_next));
        batch.tokens += e.ids.len();
    }
    batch
}

/// Reads the corpus a BERT-family `[data]` table names: `python-docs`, `python-docstrings`,
/// `python-stdlib` (the `.py` sources under the standard library's folder, its `site-packages`
/// included: code, for a model that should know which module a function comes from), or a text
/// file or folder.
pub fn load_corpus(
    corpus: &str,
    stdlib: impl Fn() -> Result<std::path::PathBuf>,
    max_bytes: usize,
) -> Result<Corpus> {
    match corpus {
        "python-docs" => crate::data::python_docs(&stdlib()?, max_bytes),
        "python-stdlib" => crate::data::python_stdlib(&stdlib()?, max_bytes),
        "python-docstrings" => {
            // Docstrings are a fraction of the sources: read more source than the budget asks.
            let src = crate::data::python_stdlib(&stdlib()?, max_bytes.saturating_mul(10))?;
            let mut c = docstrings(&src);
            let mut total = 0;
            c.docs.retain(|d| {
                total += d.len();
                total <= max_bytes
            });
            if c.docs.is_empty() {
                return Err(TrainError::Data(format!("{}: no docstrings found", c.name)));
            }
            Ok(c)
        }
        p => crate::data::text_path(Path::new(p), max_bytes),
    }
}

#[cfg(test)]
#[path = "bert_data_tests.rs"]
mod tests;
