//! Training data: real text present on the machine, a tokenizer trained on it with the `tokenizers`
//! crate, and seeded batch sampling.
//!
//! Corpora: `python-stdlib` (the `.py` sources of the Python standard library: code) and
//! `python-docs` (the Python Language Reference as shipped in `pydoc_data/topics.py`: English prose),
//! or any file or folder of text. Tokenizers: `char` (one id per character seen in training text)
//! and `byte_bpe` (GPT-2's byte-level BPE, trained here).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::{Result, TrainError, io_err};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    Char,
    ByteBpe,
}

/// Documents of a corpus, in a fixed order.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub name: String,
    pub docs: Vec<String>,
}

impl Corpus {
    pub fn bytes(&self) -> usize {
        self.docs.iter().map(String::len).sum()
    }
}

/// Files under `dir` (path order) whose name ends with `ext`, skipping `site-packages`,
/// `__pycache__` and hidden folders.
fn collect_files(dir: &Path, ext: Option<&str>) -> Result<Vec<PathBuf>> {
    canon_fs::walk_files(
        dir,
        |d| {
            let name = canon_fs::walk::file_name(d);
            name != "site-packages" && name != "__pycache__" && !name.starts_with('.')
        },
        |f| ext.is_none_or(|e| canon_fs::walk::file_name(f).ends_with(e)),
    )
    .map_err(|e| io_err(&e.path, e.error))
}

/// Reads up to `max_bytes` of text from the files (in a seeded shuffled order, so a byte budget
/// samples the whole tree rather than its alphabetical head). Non-UTF-8 files are skipped.
fn read_docs(files: Vec<PathBuf>, max_bytes: usize, seed: u64) -> Vec<String> {
    let mut files = files;
    let mut rng = SplitMix64::new(seed);
    for i in (1..files.len()).rev() {
        files.swap(i, rng.below(i + 1));
    }
    let mut docs = Vec::new();
    let mut total = 0;
    for f in files {
        if total >= max_bytes {
            break;
        }
        if let Ok(text) = std::fs::read_to_string(&f)
            && !text.trim().is_empty()
        {
            total += text.len();
            docs.push(text);
        }
    }
    docs
}

/// The Python standard library's sources under `stdlib_dir`.
pub fn python_stdlib(stdlib_dir: &Path, max_bytes: usize) -> Result<Corpus> {
    let files = collect_files(stdlib_dir, Some(".py"))?;
    let docs = read_docs(files, max_bytes, 0x5eed);
    if docs.is_empty() {
        return Err(TrainError::Data(format!(
            "no .py files under {}",
            stdlib_dir.display()
        )));
    }
    Ok(Corpus {
        name: format!("python-stdlib ({})", stdlib_dir.display()),
        docs,
    })
}

/// Undoes Python string-literal escapes (`\n`, `\t`, `\\`, `\'`, `\"`, `\xNN`, `\uNNNN`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('x') => {
                let h: String = it.by_ref().take(2).collect();
                out.extend(u32::from_str_radix(&h, 16).ok().and_then(char::from_u32));
            }
            Some('u') => {
                let h: String = it.by_ref().take(4).collect();
                out.extend(u32::from_str_radix(&h, 16).ok().and_then(char::from_u32));
            }
            Some('\n') => {}
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

/// The Python Language Reference prose held in `pydoc_data/topics.py` (a dict of topic → text
/// written as adjacent single-quoted string literals): each topic becomes one document.
pub fn python_docs(stdlib_dir: &Path, max_bytes: usize) -> Result<Corpus> {
    let path = stdlib_dir.join("pydoc_data").join("topics.py");
    let src = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    let mut docs: Vec<String> = Vec::new();
    let mut cur = String::new();
    let bytes = src.as_bytes();
    let mut i = 0;
    // Walk string literals; a literal followed by ':' is a key and starts a new document.
    while i < bytes.len() {
        let q = bytes[i];
        if q != b'\'' && q != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < bytes.len() && bytes[j] != q {
            j += if bytes[j] == b'\\' { 2 } else { 1 };
        }
        let lit = src.get(start..j.min(bytes.len())).unwrap_or("");
        let mut k = j + 1;
        while k < bytes.len() && bytes[k].is_ascii_whitespace() {
            k += 1;
        }
        if bytes.get(k) == Some(&b':') {
            if !cur.trim().is_empty() {
                docs.push(std::mem::take(&mut cur));
            }
            cur.clear();
        } else {
            cur.push_str(&unescape(lit));
        }
        i = j + 1;
    }
    if !cur.trim().is_empty() {
        docs.push(cur);
    }
    let mut total = 0;
    docs.retain(|d| {
        total += d.len();
        total <= max_bytes
    });
    if docs.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: found no documentation text",
            path.display()
        )));
    }
    Ok(Corpus {
        name: format!("python-docs ({})", path.display()),
        docs,
    })
}

/// Any file, or every file under a folder.
pub fn text_path(path: &Path, max_bytes: usize) -> Result<Corpus> {
    let mut files = Vec::new();
    if path.is_dir() {
        files = collect_files(path, None)?;
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        return Err(io_err(path, "no such file or folder"));
    }
    let docs = read_docs(files, max_bytes, 0x5eed);
    if docs.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no readable UTF-8 text",
            path.display()
        )));
    }
    Ok(Corpus {
        name: path.display().to_string(),
        docs,
    })
}

fn tok_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Tokenizer(e.to_string())
}

/// Trains a tokenizer of `kind` on `docs`.
pub fn train_tokenizer(
    kind: TokenizerKind,
    docs: &[String],
    vocab_size: usize,
) -> Result<Tokenizer> {
    match kind {
        TokenizerKind::Char => {
            // Every character seen, sorted: BPE with no merges is exactly a character vocabulary;
            // the Fuse decoder joins pieces without spaces.
            let chars: BTreeSet<char> = docs.iter().flat_map(|d| d.chars()).collect();
            let mut vocab: Vec<(String, u32)> = vec![("<unk>".to_string(), 0)];
            vocab.extend(
                chars
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.to_string(), i as u32 + 1)),
            );
            let bpe = BPE::builder()
                .vocab_and_merges(
                    vocab
                        .into_iter()
                        .collect::<tokenizers::models::bpe::Vocab>(),
                    Vec::new(),
                )
                .unk_token("<unk>".into())
                .build()
                .map_err(tok_err)?;
            let mut t = Tokenizer::new(bpe);
            t.with_decoder(Some(tokenizers::decoders::fuse::Fuse::new()));
            t.add_special_tokens(vec![AddedToken::from("<unk>", true)])
                .map_err(tok_err)?;
            Ok(t)
        }
        TokenizerKind::ByteBpe => {
            if vocab_size <= 256 {
                return Err(TrainError::Tokenizer(format!(
                    "data.vocab_size must exceed the 256 byte symbols for byte_bpe, found {vocab_size}"
                )));
            }
            train_byte_bpe(docs.iter(), vocab_size, &["<|endoftext|>"])
        }
    }
}

/// GPT-2's byte-level BPE trained on `texts` with `vocab_size` tokens (merges seen at least
/// twice); `specials` are added first, in order, as special tokens.
pub fn train_byte_bpe<I, S>(texts: I, vocab_size: usize, specials: &[&str]) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let mut t: tokenizers::TokenizerImpl<
        ModelWrapper,
        tokenizers::NormalizerWrapper,
        PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        DecoderWrapper,
    > = tokenizers::TokenizerImpl::new(ModelWrapper::BPE(BPE::default()));
    t.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, true,
    ))));
    t.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    t.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
    let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build()
        .into();
    t.train(&mut trainer, texts).map_err(tok_err)?;
    Ok(Tokenizer::from(t))
}

/// Tokens of the training and held-out splits.
#[derive(Debug, Clone, Default)]
pub struct TokenData {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub vocab_size: usize,
}

impl TokenData {
    /// Encodes every document (in order) and holds out the last `val_fraction` of the documents
    /// (at least one, and at least one token window for evaluation).
    pub fn encode(tok: &Tokenizer, docs: &[String], val_fraction: f64) -> Result<Self> {
        if docs.is_empty() {
            return Err(TrainError::Data("the corpus is empty".into()));
        }
        let eot = tok.token_to_id("<|endoftext|>");
        let mut ids = Vec::new();
        let mut doc_starts = Vec::with_capacity(docs.len());
        for d in docs {
            doc_starts.push(ids.len());
            let enc = tok.encode(d.as_str(), false).map_err(tok_err)?;
            ids.extend_from_slice(enc.get_ids());
            if let Some(e) = eot {
                ids.push(e);
            }
        }
        let n_val_docs = ((docs.len() as f64 * val_fraction).ceil() as usize).clamp(1, docs.len());
        let mut cut = doc_starts[docs.len() - n_val_docs];
        let min_val = (ids.len() as f64 * val_fraction) as usize;
        if docs.len() == 1 || ids.len() - cut < min_val / 2 {
            // One document (or tiny held-out documents): split by tokens instead.
            cut = ids.len() - min_val.max(1);
        }
        let val = ids.split_off(cut);
        Ok(Self {
            train: ids,
            val,
            vocab_size: tok.get_vocab_size(true),
        })
    }

    /// Checks there is room for at least one window of `block` + 1 tokens in each split.
    pub fn check(&self, block: usize) -> Result<()> {
        for (name, s) in [("training", &self.train), ("held-out", &self.val)] {
            if s.len() < block + 2 {
                return Err(TrainError::Data(format!(
                    "the {name} split has {} tokens, fewer than train.block_size + 2 = {}; use more text (data.max_bytes) or a smaller block",
                    s.len(),
                    block + 2
                )));
            }
        }
        Ok(())
    }

    /// `batch` random windows of the training split: inputs and next-token targets, `[batch·block]`.
    pub fn sample(&self, rng: &mut SplitMix64, batch: usize, block: usize) -> (Vec<u32>, Vec<u32>) {
        let mut x = Vec::with_capacity(batch * block);
        let mut y = Vec::with_capacity(batch * block);
        let span = self.train.len() - block - 1;
        for _ in 0..batch {
            let s = rng.below(span + 1);
            x.extend_from_slice(&self.train[s..s + block]);
            y.extend_from_slice(&self.train[s + 1..s + block + 1]);
        }
        (x, y)
    }

    /// Consecutive segments for a recurrent model (Transformer-XL): the split is cut into `batch`
    /// contiguous streams; segment `index` takes tokens `[index·block, (index+1)·block)` of each
    /// stream (wrapping around). Returns the inputs, targets and whether this segment starts a
    /// pass over the streams (memory must be reset).
    pub fn sequential(
        split: &[u32],
        batch: usize,
        block: usize,
        index: usize,
    ) -> (Vec<u32>, Vec<u32>, bool) {
        let n = Self::segments(split, batch, block).max(1);
        let s = index % n;
        let stream = split.len() / batch.max(1);
        let mut x = Vec::with_capacity(batch * block);
        let mut y = Vec::with_capacity(batch * block);
        for b in 0..batch {
            let start = b * stream + s * block;
            x.extend_from_slice(&split[start..start + block]);
            y.extend_from_slice(&split[start + 1..start + block + 1]);
        }
        (x, y, s == 0)
    }

    /// Number of whole segments per stream.
    pub fn segments(split: &[u32], batch: usize, block: usize) -> usize {
        let stream = split.len() / batch.max(1);
        stream.saturating_sub(1) / block.max(1)
    }

    /// `n` evenly spaced windows of the held-out split (the same every evaluation).
    pub fn eval_windows(&self, n: usize, block: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
        let span = self.val.len() - block - 1;
        let n = n.max(1);
        (0..n)
            .map(|i| {
                let s = if n == 1 { 0 } else { i * span / (n - 1) };
                (
                    self.val[s..s + block].to_vec(),
                    self.val[s + 1..s + block + 1].to_vec(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<String> {
        vec![
            "def add(a, b):\n    return a + b\n".into(),
            "class Foo:\n    pass\n".into(),
            "print('héllo wörld')\n".into(),
        ]
    }

    #[test]
    fn char_tokenizer_round_trips_and_has_one_id_per_character() {
        let t = train_tokenizer(TokenizerKind::Char, &docs(), 0).unwrap();
        let text = "def foo(a):\n    pass\n";
        let ids = t.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(t.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn byte_bpe_round_trips_arbitrary_utf8_and_keeps_gpt2_whitespace_rule() {
        let mut d = docs();
        for _ in 0..20 {
            d.push("Hello  world, hello world. return self.value\n".into());
        }
        let t = train_tokenizer(TokenizerKind::ByteBpe, &d, 300).unwrap();
        for text in ["emoji 🦀 and ctrl \u{1}\t", "Hello  world", "naïve café"] {
            let ids = t.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(t.decode(&ids, false).unwrap(), text);
        }
        // "Hello  world": one space is its own token, the other stays with "world" (\s+(?!\S)).
        let enc = t.encode("Hello  world", false).unwrap();
        let toks = enc.get_tokens();
        assert!(toks.iter().any(|s| s == "Ġ"), "{toks:?}");
        assert!(toks.iter().any(|s| s.starts_with("Ġw")), "{toks:?}");
        assert!(train_tokenizer(TokenizerKind::ByteBpe, &d, 100).is_err());
    }

    #[test]
    fn split_holds_out_the_last_documents_and_sampling_is_seeded() {
        let mut d = Vec::new();
        for i in 0..40 {
            d.push(format!("doc number {i} with some text\n"));
        }
        let t = train_tokenizer(TokenizerKind::Char, &d, 0).unwrap();
        let data = TokenData::encode(&t, &d, 0.1).unwrap();
        assert!(!data.val.is_empty() && data.train.len() > data.val.len());
        data.check(8).unwrap();
        let (x1, y1) = data.sample(&mut SplitMix64::new(3), 4, 8);
        let (x2, _) = data.sample(&mut SplitMix64::new(3), 4, 8);
        assert_eq!(x1, x2);
        assert_eq!(&x1[1..8], &y1[..7], "targets are inputs shifted by one");
        assert!(
            data.check(100_000)
                .unwrap_err()
                .to_string()
                .contains("block_size")
        );
        assert!(TokenData::encode(&t, &[], 0.1).is_err());
    }

    #[test]
    fn python_docs_parser_reads_topics_and_unescapes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pydoc_data");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(
            p.join("topics.py"),
            "topics = {'assert': 'The assert statement\\n'\n           'is a way.\\n',\n 'pass': 'The \"pass\" statement.'}\n",
        )
        .unwrap();
        let c = python_docs(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            c.docs,
            vec![
                "The assert statement\nis a way.\n",
                "The \"pass\" statement."
            ]
        );
    }
}
