//! English→German sentence pairs for the Transformer (paper 1), read from the GNU gettext catalogs
//! installed on the machine (`/usr/share/locale/de/LC_MESSAGES/*.mo`), with a shared BPE vocabulary,
//! length-bucketed padded batches and the label-smoothed loss.
//!
//! Catalog format (GNU gettext manual, "The Format of GNU MO Files"): a magic number `0x950412de`
//! (its byte order is the file's), a revision, the string count `N`, the offsets of the original
//! and translation tables (`N` pairs of `(length, offset)`), then NUL-terminated strings.
//!
//! How a catalog becomes pairs:
//! - the header (empty msgid) gives the charset (UTF-8, or ISO-8859-1/-15 and ASCII); it is not a pair;
//! - `msgctxt` (`context \x04 msgid`) is dropped, keeping the msgid;
//! - plural entries (`singular \0 plural`, translations `\0`-separated): the singular msgid with the
//!   first translation (German's singular form);
//! - untranslated entries (empty msgstr) are skipped; fuzzy entries never reach an `.mo` file
//!   (`msgfmt` leaves them out);
//! - whitespace runs (newlines of help texts included) become one space, both ends trimmed;
//! - a GTK mnemonic `_` is removed when the source and the translation each hold exactly one `_`,
//!   before a letter: it marks a keyboard accelerator, not text (`"_Open"` / `"Ö_ffnen"`). `&`
//!   accelerators (Qt) are left alone: in these catalogs `&` is mostly literal text;
//! - `printf` formats (`%s`, `%d`, `%1$s`) are kept: a translator copies them into the target, and so
//!   should the model.
//!
//! Pairs are deduplicated by source sentence (the first file in name order wins), and the split is a
//! function of the source text alone (FNV-1a 64 of its bytes, bit-mixed): stable across machines and
//! catalog versions, and a sentence never sits in two splits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use canon_models::transformer::Transformer;
use canon_nn::{SplitMix64, masked_cross_entropy};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Result, TrainError, io_err};

/// Special tokens, in id order: padding, decoder start, end of sentence.
pub const PAD: &str = "<pad>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";

fn d_dir() -> String {
    "/usr/share/locale".into()
}
fn d_lang() -> String {
    "de".into()
}
fn d_vocab() -> usize {
    8000
}
fn d_frac() -> f64 {
    0.05
}

/// The `[data]` table of `configs/transformer-mt.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslationDataConfig {
    /// The locale root: catalogs are read from `<locale_dir>/<language>/LC_MESSAGES/*.mo`.
    #[serde(default = "d_dir")]
    pub locale_dir: String,
    #[serde(default = "d_lang")]
    pub language: String,
    /// Catalogs whose file name starts with one of these are skipped (e.g. `iso_`: name lists).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Shared BPE vocabulary (source and target).
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_frac")]
    pub valid_fraction: f64,
    #[serde(default = "d_frac")]
    pub test_fraction: f64,
}

impl TranslationDataConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (k, v) in [
            ("valid_fraction", self.valid_fraction),
            ("test_fraction", self.test_fraction),
        ] {
            if !(v > 0.0 && v < 0.5) {
                return Err(format!("data.{k} must be in (0, 0.5), found {v}"));
            }
        }
        if self.vocab_size <= 256 + 3 {
            return Err(format!(
                "data.vocab_size must exceed the 256 byte symbols and 3 specials, found {}",
                self.vocab_size
            ));
        }
        if self.language.is_empty() || self.language.contains('/') {
            return Err(format!(
                "data.language must be a locale name, found '{}'",
                self.language
            ));
        }
        Ok(())
    }

    pub fn catalog_dir(&self) -> PathBuf {
        Path::new(&self.locale_dir)
            .join(&self.language)
            .join("LC_MESSAGES")
    }
}

// ------------------------------------------------------------------------------------ .mo parsing

fn mo_err(file: &str, offset: usize, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("{file}: byte {offset}: {msg}"))
}

/// One catalog entry as stored: msgid (with context and plural parts) and msgstr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoEntry {
    pub msgid: Vec<u8>,
    pub msgstr: Vec<u8>,
}

/// Parses the entries of an `.mo` file (`file` names it in errors).
pub fn parse_mo(bytes: &[u8], file: &str) -> Result<Vec<MoEntry>> {
    let word = |at: usize, le: bool| -> Result<u32> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                mo_err(
                    file,
                    at,
                    format!("file ends inside a header word ({} bytes)", bytes.len()),
                )
            })?;
        Ok(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let le = match word(0, true)? {
        0x950412de => true,
        0xde120495 => false,
        m => {
            return Err(mo_err(
                file,
                0,
                format!("not a gettext .mo file: magic {m:#010x}, expected 0x950412de"),
            ));
        }
    };
    let major = word(4, le)? >> 16;
    if major > 1 {
        return Err(mo_err(
            file,
            4,
            format!("unsupported major revision {major}"),
        ));
    }
    let n = word(8, le)? as usize;
    let (orig, trans) = (word(12, le)? as usize, word(16, le)? as usize);
    let string = |table: usize, i: usize| -> Result<Vec<u8>> {
        let at = table + 8 * i;
        let (len, off) = (word(at, le)? as usize, word(at + 4, le)? as usize);
        bytes
            .get(off..off.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                mo_err(
                    file,
                    at,
                    format!(
                        "string {i} at offset {off} with length {len} runs past the end ({} bytes)",
                        bytes.len()
                    ),
                )
            })
    };
    if n.saturating_mul(8).saturating_add(orig.max(trans)) > bytes.len() {
        return Err(mo_err(
            file,
            8,
            format!(
                "{n} strings do not fit: tables at {orig} and {trans} in a file of {} bytes",
                bytes.len()
            ),
        ));
    }
    (0..n)
        .map(|i| {
            Ok(MoEntry {
                msgid: string(orig, i)?,
                msgstr: string(trans, i)?,
            })
        })
        .collect()
}

/// Decodes catalog bytes in the header's charset.
fn decode(bytes: &[u8], charset: &str, file: &str) -> Result<String> {
    match charset {
        "utf-8" | "utf8" | "ascii" | "us-ascii" => String::from_utf8(bytes.to_vec())
            .map_err(|e| mo_err(file, 0, format!("a string is not valid {charset}: {e}"))),
        // ISO-8859-15 differs from -1 in eight rarely used code points (€, Š, …); read as -1.
        "iso-8859-1" | "iso8859-1" | "latin1" | "iso-8859-15" => {
            Ok(bytes.iter().map(|&b| b as char).collect())
        }
        other => Err(mo_err(
            file,
            0,
            format!("unsupported charset '{other}' (expected UTF-8 or ISO-8859-1)"),
        )),
    }
}

fn charset_of(header: &str) -> String {
    header
        .lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("content-type:")
                .and_then(|v| v.split("charset=").nth(1).map(|c| c.trim().to_string()))
        })
        .unwrap_or_else(|| "utf-8".into())
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Removes a GTK mnemonic `_` (see the module header) when both sides hold exactly one.
fn strip_mnemonics(src: &str, tgt: &str) -> (String, String) {
    let one = |s: &str| -> Option<usize> {
        let mut it = s.match_indices('_');
        let (i, _) = it.next()?;
        if it.next().is_some() {
            return None;
        }
        s[i + 1..]
            .chars()
            .next()
            .filter(|c| c.is_alphabetic())
            .map(|_| i)
    };
    match (one(src), one(tgt)) {
        (Some(a), Some(b)) => (
            format!("{}{}", &src[..a], &src[a + 1..]),
            format!("{}{}", &tgt[..b], &tgt[b + 1..]),
        ),
        _ => (src.to_string(), tgt.to_string()),
    }
}

/// The (English, German) pairs of one catalog, cleaned as the module header says.
pub fn catalog_pairs(bytes: &[u8], file: &str) -> Result<Vec<(String, String)>> {
    let entries = parse_mo(bytes, file)?;
    let charset = entries
        .iter()
        .find(|e| e.msgid.is_empty())
        .map(|h| charset_of(&String::from_utf8_lossy(&h.msgstr)))
        .unwrap_or_else(|| "utf-8".into());
    let mut out = Vec::new();
    for e in entries {
        if e.msgid.is_empty() || e.msgstr.is_empty() {
            continue;
        }
        // msgctxt \x04 msgid; singular \0 plural; translations \0-separated.
        let id = e.msgid.split(|&b| b == 0).next().unwrap_or(&[]);
        let id = match id.iter().position(|&b| b == 4) {
            Some(p) => &id[p + 1..],
            None => id,
        };
        let tr = e.msgstr.split(|&b| b == 0).next().unwrap_or(&[]);
        let (src, tgt) = (
            squash(&decode(id, &charset, file)?),
            squash(&decode(tr, &charset, file)?),
        );
        if src.is_empty() || tgt.is_empty() {
            continue;
        }
        out.push(strip_mnemonics(&src, &tgt));
    }
    Ok(out)
}

/// FNV-1a, 64 bits (stable across platforms and releases, unlike `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
    Test,
}

/// MurmurHash3's 64-bit finalizer: FNV-1a's high bits barely change between strings that differ
/// only at their end ("sentence 1", "sentence 2"), so they are mixed before use.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Which split a source sentence belongs to: its mixed hash in `[0, 1)` below `test` → test,
/// below `test + valid` → valid.
pub fn split_of(src: &str, valid: f64, test: f64) -> Split {
    let u = (fmix64(fnv1a64(src.as_bytes())) >> 11) as f64 / (1u64 << 53) as f64;
    if u < test {
        Split::Test
    } else if u < test + valid {
        Split::Valid
    } else {
        Split::Train
    }
}

/// Sentence pairs by split, and where they came from.
#[derive(Debug, Clone, Default)]
pub struct PairCorpus {
    pub train: Vec<(String, String)>,
    pub valid: Vec<(String, String)>,
    pub test: Vec<(String, String)>,
    /// Catalog file names read, in order, with the pairs each contributed after deduplication.
    pub catalogs: Vec<(String, usize)>,
}

impl PairCorpus {
    pub fn len(&self) -> usize {
        self.train.len() + self.valid.len() + self.test.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads every `*.mo` catalog of `cfg.catalog_dir()` in file-name order (skipping `cfg.exclude`).
pub fn load_pairs(cfg: &TranslationDataConfig) -> Result<PairCorpus> {
    let dir = cfg.catalog_dir();
    let rd = std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mo"))
        .filter(|p| {
            let name = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
            !cfg.exclude.iter().any(|x| name.starts_with(x.as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no .mo catalogs (after excluding {:?})",
            dir.display(),
            cfg.exclude
        )));
    }
    let mut seen = HashSet::new();
    let mut out = PairCorpus::default();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| io_err(&f, e))?;
        let name = f.display().to_string();
        let mut n = 0;
        for (src, tgt) in catalog_pairs(&bytes, &name)? {
            if !seen.insert(src.clone()) {
                continue;
            }
            n += 1;
            match split_of(&src, cfg.valid_fraction, cfg.test_fraction) {
                Split::Train => out.train.push((src, tgt)),
                Split::Valid => out.valid.push((src, tgt)),
                Split::Test => out.test.push((src, tgt)),
            }
        }
        let short = f
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.catalogs.push((short, n));
    }
    if out.train.is_empty() || out.valid.is_empty() || out.test.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: {} pairs leave an empty split (train {}, valid {}, test {})",
            dir.display(),
            out.len(),
            out.train.len(),
            out.valid.len(),
            out.test.len()
        )));
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------ tokenizer

fn tok_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Tokenizer(e.to_string())
}

/// A byte-level BPE vocabulary shared by both languages, trained on both sides of `pairs`;
/// ids 0, 1, 2 are `<pad>`, `<s>`, `</s>`.
pub fn train_shared_bpe(pairs: &[(String, String)], vocab_size: usize) -> Result<Tokenizer> {
    let texts = pairs.iter().flat_map(|(s, t)| [s, t]);
    let t = crate::data::train_byte_bpe(texts, vocab_size, &[PAD, BOS, EOS])?;
    check_specials(&t)?;
    Ok(t)
}

/// The special ids `(pad, bos, eos)` of a translation tokenizer.
pub fn check_specials(t: &Tokenizer) -> Result<(u32, u32, u32)> {
    let id = |s: &str| {
        t.token_to_id(s)
            .ok_or_else(|| TrainError::Tokenizer(format!("the tokenizer has no '{s}' token")))
    };
    Ok((id(PAD)?, id(BOS)?, id(EOS)?))
}

// ------------------------------------------------------------------------------------ batches

/// One encoded pair: `src = x + [eos]`, `tgt = y + [eos]` (the decoder reads `[bos] + y`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
}

/// Encodes pairs, dropping those longer than `max_len` tokens on either side (returns how many).
pub fn encode_pairs(
    tok: &Tokenizer,
    pairs: &[(String, String)],
    max_len: usize,
) -> Result<(Vec<Encoded>, usize)> {
    let (_, _, eos) = check_specials(tok)?;
    let mut out = Vec::with_capacity(pairs.len());
    let mut dropped = 0;
    for (s, t) in pairs {
        let mut src = tok
            .encode(s.as_str(), false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec();
        let mut tgt = tok
            .encode(t.as_str(), false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec();
        src.push(eos);
        tgt.push(eos);
        if src.len() > max_len || tgt.len() > max_len {
            dropped += 1;
            continue;
        }
        out.push(Encoded { src, tgt });
    }
    Ok((out, dropped))
}

/// A padded batch: `src, src_mask: [b, s]`, `tgt_in: [b, t]` (`[bos] + y`, padded), and the labels
/// `y + [eos]` flattened over `[b·t]` with `IGNORE_INDEX` at padding (T5's batch type).
pub type Batch = crate::t5_train::Seq2SeqBatch;

pub fn make_batch(items: &[&Encoded], pad: u32, bos: u32) -> Result<Batch> {
    let b = items.len();
    let s = items.iter().map(|e| e.src.len()).max().unwrap_or(0);
    let t = items.iter().map(|e| e.tgt.len()).max().unwrap_or(0);
    if b == 0 || s == 0 || t == 0 {
        return Err(TrainError::Data("an empty batch".into()));
    }
    let srcs: Vec<&[u32]> = items.iter().map(|e| e.src.as_slice()).collect();
    let tgts: Vec<&[u32]> = items.iter().map(|e| e.tgt.as_slice()).collect();
    crate::t5_train::seq2seq_batch(&srcs, &tgts, pad, bos)
}

/// Pairs sorted by length, so that a batch of neighbours carries little padding.
#[derive(Debug, Clone)]
pub struct LengthBuckets {
    pub items: Vec<Encoded>,
}

impl LengthBuckets {
    pub fn new(mut items: Vec<Encoded>) -> Self {
        items.sort_by_key(|e| (e.src.len().max(e.tgt.len()), e.src.len(), e.tgt.len()));
        Self { items }
    }

    /// `batch` neighbours from a random start (a different grouping each draw).
    pub fn sample(&self, rng: &mut SplitMix64, batch: usize) -> Vec<&Encoded> {
        let n = self.items.len();
        let b = batch.min(n);
        let start = rng.below(n - b + 1);
        self.items[start..start + b].iter().collect()
    }

    /// Consecutive batches covering every pair once (evaluation).
    pub fn chunks(&self, batch: usize) -> impl Iterator<Item = Vec<&Encoded>> {
        self.items
            .chunks(batch.max(1))
            .map(|c| c.iter().collect::<Vec<_>>())
    }
}

/// The loss of a batch: the label-smoothed cross-entropy the gradient comes from, and the plain
/// cross-entropy (nats per target token) that is reported. Dropout applies when the model's noise
/// is seeded (`Transformer::set_noise`).
pub fn batch_loss(
    model: &Transformer,
    batch: &Batch,
    label_smoothing: f64,
) -> Result<(Tensor, f64, usize)> {
    let logits = model.forward_train(&batch.src, &batch.src_mask, &batch.tgt_in)?;
    let (b, t, v) = logits.dims3()?;
    let flat = logits.reshape((b * t, v))?; // [b·t, V]
    let (smoothed, n) = masked_cross_entropy(&flat, &batch.labels, label_smoothing)?;
    let ce = if label_smoothing == 0.0 {
        smoothed.to_scalar::<f32>()? as f64
    } else {
        let (l, _) = masked_cross_entropy(&flat.detach(), &batch.labels, 0.0)?;
        l.to_scalar::<f32>()? as f64
    };
    Ok((smoothed, ce, n))
}

#[cfg(test)]
#[path = "translation_tests.rs"]
mod tests;
