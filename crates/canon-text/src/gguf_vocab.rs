//! Building a tokenizer from GGUF metadata (`tokenizer.ggml.*`), so that prompts tokenize exactly as
//! llama.cpp tokenizes them. Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the
//! pre-tokenizer regexes llama.cpp uses for each `tokenizer.ggml.pre` value listed in `PRE_TOKENIZERS`,
//! and `"llama"` (SentencePiece vocabularies with scores, as in Gemma, Llama 2 and Mistral files).
//!
//! SentencePiece: llama.cpp starts from the text's characters (spaces written `▁`, with a leading
//! `▁` when `add_space_prefix`) and repeatedly merges the adjacent pair whose concatenation is a
//! token with the highest score, leftmost first; characters that are no token become their
//! `<0xNN>` byte tokens. That is a BPE whose merge ranks are the merged tokens' scores, so the
//! vocabulary is written as a byte-fallback BPE document whose merges are every split of every
//! token into two tokens, ordered by the score of the token they make.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::{Result, TextError};

/// The `tokenizer.ggml.*` metadata, as plain data (the GGUF reader lives in canon-quant).
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`
    pub model: String,
    /// `tokenizer.ggml.pre`
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece vocabularies: higher merges first).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.add_space_prefix`; `None` means the model's default (llama.cpp: true for
    /// SentencePiece).
    pub add_space_prefix: Option<bool>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
}

/// A byte-level BPE's vocabulary (token → first id) and merges (left, right).
type BpeParts<'a> = (HashMap<&'a str, u32>, Vec<(&'a str, &'a str)>);
/// A SentencePiece vocabulary's merges (token id, byte offset of the cut), normalizer, decoder.
type SpmParts = (Vec<(usize, usize)>, Value, Value);

fn unsupported_model(other: &str) -> TextError {
    TextError::Unsupported(format!(
        "tokenizer.ggml.model = '{other}'; supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece)"
    ))
}

const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values we know, with the regexes llama.cpp applies for them (in order).
pub const PRE_TOKENIZERS: &[(&[&str], &[&str])] = &[
    (
        &["default", "gpt2", "gpt-2", "mpt", "olmo", "jais"],
        &[GPT2_REGEX],
    ),
    (
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva",
        ],
        &[r"\p{N}", GPT2_REGEX],
    ),
    (
        &["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"],
        &[LLAMA3_REGEX],
    ),
    (&["qwen2", "stablelm2", "deepseek-r1-qwen"], &[QWEN2_REGEX]),
];

/// Token texts llama.cpp also treats as end of generation: end-of-turn markers, and the
/// fill-in-the-middle pad / repository / file-separator tokens it detects by name. llama.cpp also
/// makes such a token a control token when the file marks it user-defined (Gemma 3's `</s>`), so
/// it is then special: read as plain text unless special tokens are parsed.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    "<|fim_pad|>",
    "<fim-pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

impl GgufVocab {
    /// The ids that end a generation: eos, eot, eom, and tokens with a known end text (SmolLM2:
    /// 0 `<|endoftext|>`, 2 `<|im_end|>`, 4 `<reponame>`, as llama.cpp decides).
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = [self.eos_id, self.eot_id, self.eom_id]
            .into_iter()
            .flatten()
            .collect();
        for (i, t) in self.tokens.iter().enumerate() {
            let control = self
                .token_types
                .get(i)
                .is_some_and(|&ty| ty == 3 || ty == 4);
            if control && EOG_TEXTS.contains(&t.as_str()) {
                ids.push(i as u32);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn pre_tokenizer(&self) -> Result<Value> {
        let pre = self.pre.as_deref().unwrap_or("default");
        let regexes = PRE_TOKENIZERS
            .iter()
            .find(|(names, _)| names.contains(&pre))
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                let known: Vec<&str> = PRE_TOKENIZERS
                    .iter()
                    .flat_map(|(n, _)| n.iter().copied())
                    .collect();
                TextError::Unsupported(format!(
                    "tokenizer.ggml.pre = '{pre}'; supported: {}",
                    known.join(", ")
                ))
            })?;
        let mut seq: Vec<Value> = Vec::new();
        let last = regexes.len() - 1;
        for (i, r) in regexes.iter().enumerate() {
            if i == last && *r == GPT2_REGEX {
                // The byte-level step applies the GPT-2 regex itself.
                seq.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}));
                return Ok(json!({"type": "Sequence", "pretokenizers": seq}));
            }
            seq.push(json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}));
        }
        seq.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));
        Ok(json!({"type": "Sequence", "pretokenizers": seq}))
    }

    /// Checks shared by every model type: tokens present, types and special ids consistent.
    fn check_common(&self) -> Result<()> {
        if self.tokens.is_empty() {
            return Err(TextError::BadVocab("tokenizer.ggml.tokens is empty".into()));
        }
        if !self.token_types.is_empty() && self.token_types.len() != self.tokens.len() {
            return Err(TextError::BadVocab(format!(
                "{} tokens but {} token types",
                self.tokens.len(),
                self.token_types.len()
            )));
        }
        let n = self.tokens.len() as u32;
        for (name, id) in [
            ("bos", self.bos_id),
            ("eos", self.eos_id),
            ("pad", self.pad_id),
        ] {
            if let Some(id) = id.filter(|&id| id >= n) {
                return Err(TextError::BadVocab(format!(
                    "{name} id {id} is outside the vocabulary of {n} tokens"
                )));
            }
        }
        Ok(())
    }

    /// Control (3) and user-defined (4) tokens, matched in the text before the model runs (as
    /// llama.cpp partitions the text at them); user-defined ones even when special tokens are read
    /// as plain text. In id order; one list feeds both `tokenizer.json` and the direct build.
    pub(crate) fn added(&self) -> Vec<Added<'_>> {
        self.tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| self.token_types.get(*i).is_some_and(|&t| t == 3 || t == 4))
            .map(|(id, t)| Added {
                id,
                content: t,
                special: self.token_types[id] == 3 || EOG_TEXTS.contains(&t.as_str()),
            })
            .collect()
    }

    /// [`Self::added`] as `tokenizer.json`'s `added_tokens`.
    fn added_tokens(&self) -> Vec<Value> {
        self.added()
            .into_iter()
            .map(|a| {
                json!({"id": a.id, "content": a.content, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": a.special})
            })
            .collect()
    }

    /// A `tokenizer.json` document equivalent to this vocabulary.
    pub fn to_tokenizer_json(&self) -> Result<String> {
        match self.model.as_str() {
            "gpt2" => self.bpe_json(),
            "llama" => self.spm_json(),
            other => Err(unsupported_model(other)),
        }
    }

    /// The tokenizer this vocabulary describes, built directly: the same tokenizer as parsing
    /// [`Self::to_tokenizer_json`], without writing and re-reading a document of every token and
    /// merge (for Gemma 3's 262k tokens and 515k merges that round trip peaked at ~380 MB of heap,
    /// most of it the JSON reader's buffered copy of the model section).
    pub fn to_hf_tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        match self.model.as_str() {
            "gpt2" => self.bpe_direct(),
            "llama" => self.spm_direct(),
            other => Err(unsupported_model(other)),
        }
    }

    /// The byte-level BPE's vocabulary (the first id of a token that appears twice) and its merges
    /// as pairs, checked: each side of a merge and their concatenation must be tokens (the
    /// tokenizers crate indexes a buffer by these lengths and panics otherwise; found by fuzzing).
    fn bpe_parts(&self) -> Result<BpeParts<'_>> {
        self.check_common()?;
        let mut vocab = HashMap::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            vocab.entry(t.as_str()).or_insert(i as u32);
        }
        let mut merges = Vec::with_capacity(self.merges.len());
        for (i, m) in self.merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                TextError::BadVocab(format!(
                    "merge {i} '{m}' is not two tokens separated by a space"
                ))
            })?;
            for part in [a, b, &format!("{a}{b}")] {
                if !vocab.contains_key(part) {
                    return Err(TextError::BadVocab(format!(
                        "merge {i} '{m}': '{part}' is not in the vocabulary"
                    )));
                }
            }
            merges.push((a, b));
        }
        Ok((vocab, merges))
    }

    const BPE_DECODER: &str = r#"{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}"#;

    fn bpe_json(&self) -> Result<String> {
        let (vocab, merges) = self.bpe_parts()?;
        let vocab: serde_json::Map<String, Value> = vocab
            .into_iter()
            .map(|(t, i)| (t.to_string(), json!(i)))
            .collect();
        let merges: Vec<Value> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": null,
            "pre_tokenizer": self.pre_tokenizer()?,
            "post_processor": null,
            "decoder": serde_json::from_str::<Value>(Self::BPE_DECODER).map_err(json_err)?,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        serde_json::to_string(&doc).map_err(json_err)
    }

    fn bpe_direct(&self) -> Result<tokenizers::Tokenizer> {
        let (vocab, merges) = self.bpe_parts()?;
        let vocab: tokenizers::models::bpe::Vocab =
            vocab.into_iter().map(|(t, i)| (t.to_string(), i)).collect();
        let merges = merges
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let model = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TextError::BadVocab(e.to_string()))?;
        let mut t = tokenizers::Tokenizer::new(model);
        t.with_pre_tokenizer(Some(piece::<tokenizers::PreTokenizerWrapper>(
            self.pre_tokenizer()?,
        )?));
        t.with_decoder(Some(piece::<tokenizers::DecoderWrapper>(
            serde_json::from_str(Self::BPE_DECODER).map_err(json_err)?,
        )?));
        self.add_added_tokens(&mut t)?;
        Ok(t)
    }

    /// Every split of every token into two tokens, ordered as llama.cpp's SentencePiece merge
    /// applies them: by the score of the token they make, highest first (ties: lower token id,
    /// then shorter left part).
    pub fn spm_merges(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .spm_splits()?
            .into_iter()
            .map(|(id, cut)| {
                let t = &self.tokens[id];
                (t[..cut].to_string(), t[cut..].to_string())
            })
            .collect())
    }

    /// `spm_merges` as (token id, byte offset of the cut).
    fn spm_splits(&self) -> Result<Vec<(usize, usize)>> {
        self.check_scores()?;
        let index: std::collections::HashSet<&str> =
            self.tokens.iter().map(String::as_str).collect();
        let mut found: Vec<(usize, usize)> = Vec::new();
        for (id, t) in self.tokens.iter().enumerate() {
            for (cut, _) in t.char_indices().skip(1) {
                if index.contains(&t[..cut]) && index.contains(&t[cut..]) {
                    found.push((id, cut));
                }
            }
        }
        found.sort_by(|a, b| {
            self.scores[b.0]
                .total_cmp(&self.scores[a.0])
                .then(a.0.cmp(&b.0))
                .then(a.1.cmp(&b.1))
        });
        Ok(found)
    }

    /// One finite score per token.
    fn check_scores(&self) -> Result<()> {
        if self.scores.len() != self.tokens.len() {
            return Err(TextError::BadVocab(format!(
                "{} tokens but {} scores",
                self.tokens.len(),
                self.scores.len()
            )));
        }
        if let Some(i) = self.scores.iter().position(|s| !s.is_finite()) {
            return Err(TextError::BadVocab(format!(
                "score of token {i} is {}; expected a finite number",
                self.scores[i]
            )));
        }
        Ok(())
    }

    /// The checks a SentencePiece vocabulary passes before it tokenizes anything: the common
    /// ones, the unknown id inside the vocabulary, no empty or repeated token, finite scores.
    pub(crate) fn check_spm(&self) -> Result<()> {
        if self.model != "llama" {
            return Err(unsupported_model(&self.model));
        }
        self.check_common()?;
        let n = self.tokens.len() as u32;
        if let Some(id) = self.unk_id.filter(|&id| id >= n) {
            return Err(TextError::BadVocab(format!(
                "unk id {id} is outside the vocabulary of {n} tokens"
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            if t.is_empty() || !seen.insert(t.as_str()) {
                return Err(TextError::BadVocab(format!(
                    "token {i} '{t}' is empty or appears twice in the vocabulary"
                )));
            }
        }
        drop(seen);
        self.check_scores()
    }

    /// The SentencePiece vocabulary's checks, merges (as `spm_splits`), normalizer and decoder.
    fn spm_parts(&self) -> Result<SpmParts> {
        self.check_spm()?;
        let splits = self.spm_splits()?;
        let prefix = self.add_space_prefix.unwrap_or(true);
        let mut normalizers = Vec::new();
        if prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        normalizers
            .push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        Ok((
            splits,
            json!({"type": "Sequence", "normalizers": normalizers}),
            json!({"type": "Sequence", "decoders": decoders}),
        ))
    }

    fn spm_json(&self) -> Result<String> {
        let (splits, normalizer, decoder) = self.spm_parts()?;
        let unk = self.unk_id.map(|id| self.tokens[id as usize].clone());
        // The document is written piece by piece: a JSON value tree of 262k tokens and 515k
        // merges (Gemma 3) would take ~100 MB on its own.
        let js = |v: &Value| serde_json::to_string(v).map_err(json_err);
        let mut out = String::with_capacity(48 * (self.tokens.len() + splits.len()));
        out.push_str(r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":"#);
        out.push_str(&js(&Value::Array(self.added_tokens()))?);
        out.push_str(r#","normalizer":"#);
        out.push_str(&js(&normalizer)?);
        out.push_str(r#","pre_tokenizer":null,"post_processor":null,"decoder":"#);
        out.push_str(&js(&decoder)?);
        out.push_str(r#","model":{"type":"BPE","dropout":null,"unk_token":"#);
        out.push_str(&js(&json!(unk))?);
        out.push_str(
            r#","continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":true,"byte_fallback":true,"ignore_merges":false,"vocab":{"#,
        );
        for (i, t) in self.tokens.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&js(&json!(t))?);
            out.push(':');
            out.push_str(&i.to_string());
        }
        out.push_str(r#"},"merges":["#);
        for (k, &(id, cut)) in splits.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let t = &self.tokens[id];
            out.push('[');
            out.push_str(&js(&json!(&t[..cut]))?);
            out.push(',');
            out.push_str(&js(&json!(&t[cut..]))?);
            out.push(']');
        }
        out.push_str("]}}");
        Ok(out)
    }

    fn spm_direct(&self) -> Result<tokenizers::Tokenizer> {
        let (splits, normalizer, decoder) = self.spm_parts()?;
        let vocab: tokenizers::models::bpe::Vocab = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = splits
            .into_iter()
            .map(|(id, cut)| {
                let t = &self.tokens[id];
                (t[..cut].to_string(), t[cut..].to_string())
            })
            .collect();
        let mut b = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, merges)
            .fuse_unk(true)
            .byte_fallback(true);
        if let Some(id) = self.unk_id {
            b = b.unk_token(self.tokens[id as usize].clone());
        }
        let model = b.build().map_err(|e| TextError::BadVocab(e.to_string()))?;
        let mut t = tokenizers::Tokenizer::new(model);
        t.with_normalizer(Some(piece::<tokenizers::NormalizerWrapper>(normalizer)?))
            .map_err(|e| TextError::BadVocab(e.to_string()))?;
        t.with_decoder(Some(piece::<tokenizers::DecoderWrapper>(decoder)?));
        self.add_added_tokens(&mut t)?;
        Ok(t)
    }

    /// The added tokens of [`Self::added`], registered as reading a `tokenizer.json` does (one
    /// `add_tokens` call in id order, each keeping its `special` flag).
    fn add_added_tokens(&self, t: &mut tokenizers::Tokenizer) -> Result<()> {
        let added: Vec<tokenizers::AddedToken> = self
            .added()
            .into_iter()
            .map(|a| {
                tokenizers::AddedToken::from(a.content.to_string(), a.special)
                    .single_word(false)
                    .lstrip(false)
                    .rstrip(false)
                    .normalized(false)
            })
            .collect();
        t.add_tokens(added)
            .map_err(|e| TextError::BadVocab(e.to_string()))?;
        Ok(())
    }
}

/// A token matched before the model runs: its id, its text and whether it is special.
pub(crate) struct Added<'a> {
    pub(crate) id: usize,
    pub(crate) content: &'a str,
    pub(crate) special: bool,
}

fn json_err(e: serde_json::Error) -> TextError {
    TextError::BadVocab(e.to_string())
}

/// One part of a tokenizer (normalizer, pre-tokenizer, decoder) from its `tokenizer.json` form.
fn piece<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(json_err)
}

#[cfg(test)]
#[path = "gguf_vocab_tests.rs"]
mod tests;
