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
    /// as plain text.
    fn added_tokens(&self) -> Vec<Value> {
        self.tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| self.token_types.get(*i).is_some_and(|&t| t == 3 || t == 4))
            .map(|(i, t)| {
                let special = self.token_types[i] == 3 || EOG_TEXTS.contains(&t.as_str());
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": special})
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

    /// The SentencePiece vocabulary's checks, merges (as `spm_splits`), normalizer and decoder.
    fn spm_parts(&self) -> Result<SpmParts> {
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

    /// The added tokens of [`Self::added_tokens`], registered as reading a `tokenizer.json` does
    /// (one `add_tokens` call in id order, each keeping its `special` flag).
    fn add_added_tokens(&self, t: &mut tokenizers::Tokenizer) -> Result<()> {
        let added: Vec<tokenizers::AddedToken> = self
            .added_tokens()
            .iter()
            .map(|v| {
                let content = v["content"].as_str().unwrap_or_default();
                let special = v["special"].as_bool().unwrap_or(false);
                tokenizers::AddedToken::from(content.to_string(), special)
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

fn json_err(e: serde_json::Error) -> TextError {
    TextError::BadVocab(e.to_string())
}

/// One part of a tokenizer (normalizer, pre-tokenizer, decoder) from its `tokenizer.json` form.
fn piece<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(json_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tokenizer;

    #[test]
    fn unknown_model_and_pre_tokenizer_are_named_in_the_error() {
        let v = GgufVocab {
            model: "bert".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        assert!(
            v.to_tokenizer_json()
                .unwrap_err()
                .to_string()
                .contains("'bert'")
        );
        let v = GgufVocab {
            model: "gpt2".into(),
            pre: Some("martian".into()),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        let e = v.to_tokenizer_json().unwrap_err().to_string();
        assert!(e.contains("martian") && e.contains("smollm"), "{e}");
    }

    #[test]
    fn bad_merge_is_reported() {
        let v = GgufVocab {
            model: "gpt2".into(),
            tokens: vec!["a".into(), "b".into()],
            merges: vec!["ab".into()],
            ..Default::default()
        };
        assert!(
            v.to_tokenizer_json()
                .unwrap_err()
                .to_string()
                .contains("merge 0")
        );
    }

    /// A small SentencePiece vocabulary: the four specials, bytes, then pieces with scores.
    fn spm_vocab(pieces: &[(&str, f32)], add_space_prefix: bool) -> GgufVocab {
        let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut types = vec![3, 3, 3, 2];
        let mut scores = vec![0.0; 4];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        tokens.push("\n".into());
        types.push(4);
        scores.push(-1000.0);
        for (p, sc) in pieces {
            tokens.push(p.to_string());
            types.push(1);
            scores.push(*sc);
        }
        GgufVocab {
            model: "llama".into(),
            pre: Some("default".into()),
            tokens,
            token_types: types,
            scores,
            add_space_prefix: Some(add_space_prefix),
            bos_id: Some(2),
            eos_id: Some(1),
            unk_id: Some(3),
            pad_id: Some(0),
            add_bos: true,
            ..Default::default()
        }
    }

    /// llama.cpp's SentencePiece merge written directly (symbols, a queue of adjacent pairs by
    /// score then position, bytes for what is no token), to check the BPE encoding against.
    fn reference_spm(v: &GgufVocab, text: &str) -> Vec<u32> {
        let id_of = |t: &str| v.tokens.iter().position(|x| x == t).map(|i| i as u32);
        let mut out = Vec::new();
        // Split at user-defined tokens (here only "\n") the way the partition step does.
        for (k, frag) in text.split('\n').enumerate() {
            if k > 0 {
                out.push(id_of("\n").unwrap());
            }
            if frag.is_empty() {
                continue;
            }
            let mut t = String::new();
            if v.add_space_prefix.unwrap_or(true) {
                t.push(' ');
            }
            t.push_str(frag);
            let t = t.replace(' ', "\u{2581}");
            let mut syms: Vec<String> = t.chars().map(|c| c.to_string()).collect();
            loop {
                let mut best: Option<(f32, usize)> = None;
                for i in 0..syms.len().saturating_sub(1) {
                    if let Some(id) = id_of(&format!("{}{}", syms[i], syms[i + 1])) {
                        let sc = v.scores[id as usize];
                        if best.is_none_or(|(b, _)| sc > b) {
                            best = Some((sc, i));
                        }
                    }
                }
                let Some((_, i)) = best else { break };
                let right = syms.remove(i + 1);
                syms[i].push_str(&right);
            }
            for s in syms {
                match id_of(&s) {
                    Some(id) => out.push(id),
                    None => {
                        for b in s.bytes() {
                            out.push(id_of(&format!("<0x{b:02X}>")).unwrap());
                        }
                    }
                }
            }
        }
        out
    }

    const PIECES: &[(&str, f32)] = &[
        ("\u{2581}", -1.0),
        ("a", -2.0),
        ("b", -3.0),
        ("c", -4.0),
        ("ab", -5.0),
        ("bc", -1.5),
        ("abc", -6.0),
        ("\u{2581}a", -2.5),
        ("\u{2581}ab", -7.0),
        ("ca", -8.0),
        ("cab", -0.5),
        ("\u{2581}\u{2581}", -9.0),
        ("é", -3.5),
        ("\u{2581}é", -4.5),
    ];

    #[test]
    fn spm_merges_follow_scores_and_bytes_fill_in() {
        let v = spm_vocab(PIECES, false);
        let t = Tokenizer::from_gguf(&v).unwrap();
        let id = |s: &str| v.tokens.iter().position(|x| x == s).unwrap() as u32;
        // "bcab": bc (-1.5) first, then ab (-5); "bca" and "bcab" are no tokens.
        assert_eq!(
            t.encode("bcab", false).unwrap(),
            vec![2, id("bc"), id("ab")]
        );
        // "abc": bc first, then a + bc makes the token abc.
        assert_eq!(t.encode("abc", false).unwrap(), vec![2, id("abc")]);
        // A space is ▁; with no prefix the first word has none.
        assert_eq!(
            t.encode("ab ab", false).unwrap(),
            vec![2, id("ab"), id("\u{2581}ab")]
        );
        // 'z' and '😀' are no tokens: their UTF-8 bytes.
        assert_eq!(
            t.encode("z😀", false).unwrap(),
            vec![
                2,
                id("<0x7A>"),
                id("<0xF0>"),
                id("<0x9F>"),
                id("<0x98>"),
                id("<0x80>")
            ]
        );
        assert_eq!(
            t.decode(&t.encode("z😀 ab", false).unwrap(), true).unwrap(),
            "z😀 ab"
        );
        let v = spm_vocab(PIECES, true);
        let t = Tokenizer::from_gguf(&v).unwrap();
        assert_eq!(t.encode("ab", false).unwrap(), vec![2, id("\u{2581}ab")]);
        assert_eq!(
            t.decode(&t.encode("ab  c", false).unwrap(), true).unwrap(),
            "ab  c"
        );
    }

    #[test]
    fn spm_encoding_equals_the_direct_merge_on_many_strings() {
        let alphabet = ['a', 'b', 'c', ' ', 'é', 'z', '\n'];
        for prefix in [false, true] {
            let v = spm_vocab(PIECES, prefix);
            let t = Tokenizer::from_gguf(&v).unwrap();
            let mut state = 0x2545_f491_4f6c_dd1d_u64;
            for _ in 0..3000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let len = (state % 12) as usize;
                let text: String = (0..len)
                    .map(|k| alphabet[((state >> (5 * k + 8)) % alphabet.len() as u64) as usize])
                    .collect();
                let mut want = vec![2];
                want.extend(reference_spm(&v, &text));
                assert_eq!(
                    t.encode(&text, false).unwrap(),
                    want,
                    "{text:?} prefix {prefix}"
                );
                // Decoding drops one leading space, the first prefix (llama.cpp does the same);
                // the prefixes after user-defined tokens stay.
                if !prefix || !text.contains('\n') {
                    assert_eq!(
                        t.decode(&want, true).unwrap(),
                        text,
                        "{text:?} prefix {prefix}"
                    );
                }
            }
        }
    }

    #[test]
    fn spm_bad_scores_are_reported() {
        let mut v = spm_vocab(PIECES, false);
        v.scores.pop();
        let e = v.to_tokenizer_json().unwrap_err().to_string();
        assert!(e.contains("scores"), "{e}");
        let mut v = spm_vocab(PIECES, false);
        v.scores[270] = f32::NAN;
        let e = v.to_tokenizer_json().unwrap_err().to_string();
        assert!(e.contains("token 270") && e.contains("finite"), "{e}");
        let mut v = spm_vocab(PIECES, false);
        v.tokens[271] = "a".into();
        let e = v.to_tokenizer_json().unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }

    /// A small byte-level BPE vocabulary with a control token and a user-defined one.
    fn bpe_vocab() -> GgufVocab {
        let mut tokens: Vec<String> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .map(String::from)
            .collect();
        tokens.sort();
        let merges = ["\u{120} t", "h e", "\u{120}t he", "a b", "ab c"];
        for m in merges {
            let (a, b) = m.split_once(' ').unwrap();
            tokens.push(format!("{a}{b}"));
        }
        let mut types = vec![1; tokens.len()];
        tokens.push("<|im_end|>".into());
        types.push(3);
        tokens.push("<|user|>".into());
        types.push(4);
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            token_types: types,
            eos_id: Some(tokens.len() as u32 - 2),
            tokens,
            merges: merges.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The tokenizer built directly is the one the `tokenizer.json` round trip gives: the same ids
    /// with and without special tokens read, the same text back, the same special ids.
    #[test]
    fn direct_build_equals_the_json_round_trip() {
        let mut spm_u = spm_vocab(PIECES, true);
        spm_u.tokens.push("<start_of_turn>".into());
        spm_u.token_types.push(3);
        spm_u.scores.push(0.0);
        let vocabs = [spm_vocab(PIECES, false), spm_u, bpe_vocab()];
        let alphabet = [
            "a",
            "b",
            "c",
            " ",
            "\u{e9}",
            "z",
            "\n",
            "the",
            " the",
            "abc",
            "<|im_end|>",
            "<|user|>",
            "<start_of_turn>",
            "<eos>",
            "\u{1f600}",
            "1",
        ];
        for v in &vocabs {
            let direct = Tokenizer::from_gguf(v).unwrap();
            let mut parsed =
                Tokenizer::from_json_bytes(v.to_tokenizer_json().unwrap().as_bytes()).unwrap();
            parsed.add_bos = v.add_bos;
            parsed.bos_id = v.bos_id;
            assert_eq!(direct.vocab_size(), parsed.vocab_size(), "{}", v.model);
            for id in 0..v.tokens.len() as u32 {
                assert_eq!(direct.is_special(id), parsed.is_special(id), "{id}");
            }
            // The plain-text path with the twin always used (what `encode(_, false)` did before
            // it looked for special texts first).
            let mut twin = parsed.hf().clone();
            twin.set_encode_special_tokens(true);
            let mut state = 0x9e37_79b9_7f4a_7c15_u64;
            for _ in 0..2000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let len = (state % 9) as usize;
                let text: String = (0..len)
                    .map(|k| alphabet[((state >> (6 * k + 4)) % alphabet.len() as u64) as usize])
                    .collect();
                for special in [false, true] {
                    let a = direct.encode(&text, special).unwrap();
                    let b = parsed.encode(&text, special).unwrap();
                    assert_eq!(a, b, "{} {text:?} special {special}", v.model);
                    if !special {
                        let mut want: Vec<u32> =
                            v.bos_id.filter(|_| v.add_bos).into_iter().collect();
                        want.extend(twin.encode_fast(text.as_str(), false).unwrap().get_ids());
                        assert_eq!(a, want, "{} {text:?} (twin)", v.model);
                    }
                    assert_eq!(
                        direct.decode(&a, false).unwrap(),
                        parsed.decode(&b, false).unwrap(),
                        "{} {text:?}",
                        v.model
                    );
                }
            }
        }
    }
}
