//! Building a tokenizer from GGUF metadata (`tokenizer.ggml.*`), so that prompts tokenize exactly as
//! llama.cpp tokenizes them. Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the
//! pre-tokenizer regexes llama.cpp uses for each `tokenizer.ggml.pre` value listed in `PRE_TOKENIZERS`.
//! SentencePiece vocabularies (`"llama"`) are not supported yet: they are refused with a clear error.

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
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
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
/// fill-in-the-middle pad / repository / file-separator tokens it detects by name.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
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

    /// A `tokenizer.json` document equivalent to this vocabulary.
    pub fn to_tokenizer_json(&self) -> Result<String> {
        if self.model != "gpt2" {
            return Err(TextError::Unsupported(format!(
                "tokenizer.ggml.model = '{}'; only 'gpt2' (byte-level BPE) is supported so far",
                self.model
            )));
        }
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
        let mut vocab = serde_json::Map::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(json!(i));
        }
        let mut merges = Vec::with_capacity(self.merges.len());
        for (i, m) in self.merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                TextError::BadVocab(format!(
                    "merge {i} '{m}' is not two tokens separated by a space"
                ))
            })?;
            // Each side and their concatenation must be tokens (the tokenizers crate indexes a
            // buffer by these lengths and panics otherwise; found by fuzzing).
            for part in [a, b, &format!("{a}{b}")] {
                if !vocab.contains_key(part) {
                    return Err(TextError::BadVocab(format!(
                        "merge {i} '{m}': '{part}' is not in the vocabulary"
                    )));
                }
            }
            merges.push(json!([a, b]));
        }
        let added: Vec<Value> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| self.token_types.get(*i).is_some_and(|&t| t == 3 || t == 4))
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false,
                       "special": self.token_types[i] == 3})
            })
            .collect();
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": self.pre_tokenizer()?,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        serde_json::to_string(&doc).map_err(|e| TextError::BadVocab(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_and_pre_tokenizer_are_named_in_the_error() {
        let v = GgufVocab {
            model: "llama".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        assert!(
            v.to_tokenizer_json()
                .unwrap_err()
                .to_string()
                .contains("'llama'")
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
}
