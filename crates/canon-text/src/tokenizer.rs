//! `Tokenizer`: one type for every source (tokenizer.json, GGUF metadata) with the model-level facts
//! generation needs: whether to prepend BOS, which ids end a generation, the special token texts.

use std::path::Path;
use std::sync::Arc;

use crate::spm::Spm;
use crate::{GgufVocab, Result, TextError};

#[derive(Clone)]
pub struct Tokenizer {
    /// The HF tokenizer (`tokenizer.json`, byte-level BPE vocabularies from GGUF); for a
    /// SentencePiece GGUF vocabulary only a stand-in never used to encode (`spm` is).
    inner: tokenizers::Tokenizer,
    /// SentencePiece vocabularies from GGUF, tokenized without the HF tables (`crate::spm`).
    spm: Option<Arc<Spm>>,
    /// `with_truncation`'s length for `spm`.
    spm_truncation: Option<usize>,
    /// Plain-text twin of `inner` that never matches special tokens in the input, built on first
    /// use (a copy of the vocabulary tables: ~140 MB for a 262k-token vocabulary), and only for a
    /// text that holds a special token's text: any other text encodes the same through `inner`.
    literal: std::sync::OnceLock<tokenizers::Tokenizer>,
    /// Whether an input holds a special token's text.
    special_texts: SpecialTexts,
    pub add_bos: bool,
    /// Let the tokenizer's own post-processor add special tokens (HF folders); GGUF tokenizers
    /// prepend BOS themselves according to `add_bos`.
    pub use_post_processor: bool,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// Ids that end a generation.
    pub eog_ids: Vec<u32>,
    special_ids: std::collections::HashSet<u32>,
}

/// How to tell whether a text holds a special token's text.
#[derive(Clone)]
enum SpecialTexts {
    /// The tokenizer has no special tokens.
    None,
    /// Their literal contents, matched in the raw text.
    Matcher(aho_corasick::AhoCorasick),
    /// Not decidable on the raw text: assume it does.
    Unknown,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("add_bos", &self.add_bos)
            .field("eog_ids", &self.eog_ids)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> TextError {
    TextError::Tokenizer(e.to_string())
}

impl Tokenizer {
    fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        let decoder = inner.get_added_tokens_decoder();
        let specials: Vec<&tokenizers::AddedToken> =
            decoder.values().filter(|t| t.special).collect();
        let special_ids = decoder
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        // A special token matched after normalization (`normalized: true`) can hide in a text that
        // does not hold its literal content, and an empty or unbuildable pattern set proves
        // nothing: then every plain-text encoding goes to the twin, as it always did.
        let special_texts = if specials.is_empty() {
            SpecialTexts::None
        } else if specials
            .iter()
            .any(|t| t.normalized || t.content.is_empty())
        {
            SpecialTexts::Unknown
        } else {
            aho_corasick::AhoCorasick::new(specials.iter().map(|t| t.content.as_str()))
                .map_or(SpecialTexts::Unknown, SpecialTexts::Matcher)
        };
        Self {
            special_ids,
            special_texts,
            inner,
            spm: None,
            spm_truncation: None,
            literal: std::sync::OnceLock::new(),
            add_bos: false,
            use_post_processor: false,
            bos_id: None,
            eos_id: None,
            pad_id: None,
            eog_ids: Vec::new(),
        }
    }

    /// Loads a `tokenizer.json`. Its own post-processor (e.g. BERT's [CLS]/[SEP]) applies when
    /// `encode_with_special` is used.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TextError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse_json(&bytes, &path.display().to_string())
    }

    /// Parses a `tokenizer.json` held in memory.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse_json(bytes, "tokenizer.json")
    }

    fn parse_json(bytes: &[u8], label: &str) -> Result<Self> {
        let load = |message: String| TextError::Load {
            path: label.to_string(),
            message,
        };
        // The tokenizers crate panics on some JSON syntax errors inside its sections (it expects
        // the file to be well-formed): check the syntax first, and turn any panic left into an
        // error too.
        // A full parse: skipping values checks neither their strings' UTF-8 nor their numbers'
        // range, and either made the crate panic (both found by fuzzing).
        let text = std::str::from_utf8(bytes).map_err(|e| load(format!("not UTF-8 text: {e}")))?;
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| load(format!("not valid JSON: {e}")))?;
        Self::parse_checked(text, label)
    }

    /// `parse_json` after the syntax check (documents Canon writes itself skip it: they are
    /// well-formed by construction, and the check's value tree costs ~100 MB on a 262k-token
    /// vocabulary).
    fn parse_checked(text: &str, label: &str) -> Result<Self> {
        let load = |message: String| TextError::Load {
            path: label.to_string(),
            message,
        };
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
            .map_err(|_| load("the tokenizer library rejected this file".into()))?;
        let mut inner = parsed.map_err(|e| load(e.to_string()))?;
        // Padding and truncation stored in the file (MiniLM's pads to 128) are decided by the
        // caller here: batches are padded dynamically, truncation set with `with_truncation`.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(tok_err)?;
        Ok(Self::from_inner(inner))
    }

    /// Builds the tokenizer a GGUF file describes: SentencePiece vocabularies (`llama`) natively
    /// (`crate::spm`: the same ids as the HF form, a sixth of its memory), byte-level BPE through
    /// the HF `tokenizers` crate.
    pub fn from_gguf(vocab: &GgufVocab) -> Result<Self> {
        if vocab.model == "llama" {
            let spm = Spm::new(vocab)?;
            let mut t = Self::from_inner(tokenizers::Tokenizer::new(
                tokenizers::models::bpe::BPE::default(),
            ));
            t.special_ids = (0..spm.len() as u32)
                .filter(|&i| spm.is_special(i))
                .collect();
            t.special_texts = SpecialTexts::None;
            t.spm = Some(Arc::new(spm));
            t.add_bos = vocab.add_bos;
            t.bos_id = vocab.bos_id;
            t.eos_id = vocab.eos_id;
            t.pad_id = vocab.pad_id;
            t.eog_ids = vocab.eog_ids();
            return Ok(t);
        }
        Self::from_gguf_hf(vocab)
    }

    /// [`Self::from_gguf`] through the HF `tokenizers` crate for every supported vocabulary
    /// (the reference the native SentencePiece tokenizer is tested against).
    pub fn from_gguf_hf(vocab: &GgufVocab) -> Result<Self> {
        let inner = std::panic::catch_unwind(|| vocab.to_hf_tokenizer()).map_err(|_| {
            TextError::Load {
                path: "GGUF metadata".into(),
                message: "the tokenizer library rejected this vocabulary".into(),
            }
        })??;
        let mut t = Self::from_inner(inner);
        t.add_bos = vocab.add_bos;
        t.bos_id = vocab.bos_id;
        t.eos_id = vocab.eos_id;
        t.pad_id = vocab.pad_id;
        t.eog_ids = vocab.eog_ids();
        Ok(t)
    }

    pub fn vocab_size(&self) -> usize {
        match &self.spm {
            Some(s) => s.len(),
            None => self.inner.get_vocab_size(true),
        }
    }

    /// The plain-text twin, built from `inner` on first use.
    fn literal_tokenizer(&self) -> &tokenizers::Tokenizer {
        self.literal.get_or_init(|| {
            let mut l = self.inner.clone();
            l.set_encode_special_tokens(true);
            l
        })
    }

    /// Tokenizes `text` for a causal LM: BOS first when the model asks for it; special-token texts
    /// (`<|im_start|>`) become their ids when `parse_special`, else they are tokenized as plain text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        if let Some(spm) = &self.spm {
            let mut ids = Vec::with_capacity(text.len() / 3 + 2);
            if self.add_bos {
                ids.extend(self.bos_id);
            }
            ids.extend(spm.encode(text, parse_special));
            return Ok(ids);
        }
        let holds_special = match &self.special_texts {
            SpecialTexts::None => false,
            SpecialTexts::Matcher(m) => m.is_match(text),
            SpecialTexts::Unknown => true,
        };
        let t = if parse_special || !holds_special {
            &self.inner
        } else {
            self.literal_tokenizer()
        };
        let enc = t
            .encode_fast(text, self.use_post_processor)
            .map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Tokenizes with the tokenizer's own post-processor (e.g. `[CLS] … [SEP]` for BERT).
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(spm) = &self.spm {
            let mut ids = spm.encode(text, true);
            if let Some(n) = self.spm_truncation {
                ids.truncate(n);
            }
            return Ok(ids);
        }
        let enc = self.inner.encode_fast(text, true).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text; special tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(spm) = &self.spm {
            return Ok(spm.decode(ids, skip_special));
        }
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The token's own string in the vocabulary (e.g. `Ġthe`), if the id exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.spm {
            Some(s) => s.id_to_token(id).map(str::to_string),
            None => self.inner.id_to_token(id),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.spm {
            Some(s) => s.token_to_id(token),
            None => self.inner.token_to_id(token),
        }
    }

    /// The text one token stands for on its own (byte-level pieces decoded; may be part of a
    /// multi-byte character).
    pub fn piece(&self, id: u32) -> Result<String> {
        self.decode(&[id], false)
    }

    /// Whether `id` is an added special token (control token).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// A copy that truncates `encode_with_special` output to `max_len` tokens, special tokens
    /// included (the right end is cut, the closing special token kept).
    pub fn with_truncation(&self, max_len: usize) -> Result<Self> {
        if self.spm.is_some() {
            let mut t = self.clone();
            t.spm_truncation = Some(max_len);
            return Ok(t);
        }
        // The plain-text twin stays untruncated, as it was before the twin became lazy.
        self.literal_tokenizer();
        let mut t = self.clone();
        t.inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(tok_err)?;
        Ok(t)
    }

    /// Turns off the BPE model's memo of already-merged words (on by default: it speeds up
    /// encoding text with repeated words).
    ///
    /// The `tokenizers` crate (0.23.2) keeps that memo in a per-thread map keyed by the model's
    /// instance and never removes an instance's entry when the model is dropped, so a process that
    /// builds very many tokenizers (a fuzzer: one per input) grows without bound. With the memo
    /// off, what remains per dropped model is an empty map entry (about 100 bytes). A process
    /// that loads a model once is not affected.
    pub fn disable_encode_cache(&mut self) {
        for t in std::iter::once(&mut self.inner).chain(self.literal.get_mut()) {
            let mut model = t.get_model().clone();
            model.resize_cache(0);
            t.with_model(model);
        }
    }

    /// Access to the underlying HF tokenizer (padding, truncation, batches); `None` for a
    /// SentencePiece vocabulary from GGUF, which is tokenized natively (see
    /// [`Self::token_bytes`] and [`Self::to_gguf_vocab`]).
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        self.spm.is_none().then_some(&self.inner)
    }

    /// Every token's bytes as generated text spells them (`▁` a space, `<0xNN>` its byte), for
    /// a SentencePiece vocabulary from GGUF; `None` for the HF-backed tokenizers.
    pub fn token_bytes(&self) -> Option<Vec<Vec<u8>>> {
        self.spm.as_ref().map(|s| s.token_bytes())
    }

    /// The GGUF vocabulary a native SentencePiece tokenizer was built from (`None` otherwise).
    pub fn to_gguf_vocab(&self) -> Option<GgufVocab> {
        self.spm.as_ref().map(|s| s.to_vocab())
    }
}
