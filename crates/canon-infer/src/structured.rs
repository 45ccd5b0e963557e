//! Structured output: grammars (any JSON object, a JSON schema, a Lark grammar, a regular
//! expression) compiled by llguidance into per-sequence [`TokenConstraint`]s, so a generated
//! sequence can only spell what the grammar accepts. The OpenAI server's `response_format` and tool
//! calls use it, and so can any caller of the engine or of `generate_ids`.
//!
//! One [`GrammarCompiler`] is built per tokenizer (it indexes every token's bytes in a trie, tens of
//! milliseconds for a 50k vocabulary); compiling a grammar and computing each step's mask are then
//! cheap enough to run on every decoding step.

use std::sync::Arc;

use canon_text::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::constrained::{Allowed, TokenConstraint};

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `{"type": "json_object"}`).
    JsonObject,
    /// A value valid against this JSON schema.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark dialect (`%json {...}` embeds a schema).
    Lark(String),
    /// A regular expression over the whole output.
    Regex(String),
}

/// A grammar that could not be compiled, or a tokenizer the compiler cannot index.
#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    #[error("cannot read the tokenizer's vocabulary for constrained decoding: {0}")]
    Vocabulary(String),
    #[error("invalid grammar: {0}")]
    Invalid(String),
}

/// The tokenizer as llguidance sees it: every token's bytes in a trie, and a way to tokenize text.
struct Env {
    trie: TokTrie,
    tok: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let text = String::from_utf8_lossy(s);
        let ids = match self.tok.hf() {
            Some(hf) => hf
                .encode_fast(text.as_ref(), false)
                .map(|enc| enc.get_ids().to_vec())
                .map_err(|e| e.to_string()),
            // SentencePiece vocabularies from GGUF: the same ids without BOS.
            None => self
                .tok
                .encode_with_special(text.as_ref())
                .map_err(|e| e.to_string()),
        };
        // Falls back to the trie's greedy tokenization (valid, maybe not canonical).
        ids.unwrap_or_else(|_| self.trie.greedy_tokenize(s))
    }
}

/// Compiles grammars for one tokenizer. Cheap to clone (shared).
#[derive(Clone)]
pub struct GrammarCompiler {
    factory: Arc<ParserFactory>,
    /// Ids that end a generation; allowed together whenever the grammar accepts the end.
    eog: Vec<u32>,
    eos: u32,
    vocab: usize,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("vocab", &self.vocab)
            .field("eog", &self.eog)
            .finish()
    }
}

impl GrammarCompiler {
    /// Indexes the tokenizer's vocabulary.
    pub fn new(tok: &Tokenizer) -> Result<Self, GrammarError> {
        let mut words = match (tok.hf(), tok.token_bytes()) {
            (_, Some(words)) => words,
            (Some(hf), None) => {
                let json = hf
                    .to_string(false)
                    .map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
                let value: Value = serde_json::from_str(&json)
                    .map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
                llguidance::token_bytes_from_tokenizer_json(&value)
                    .map_err(|e| GrammarError::Vocabulary(e.to_string()))?
            }
            (None, None) => {
                return Err(GrammarError::Vocabulary(
                    "the tokenizer exposes neither its tokens' bytes nor an HF form".into(),
                ));
            }
        };
        let vocab = tok.vocab_size().max(words.len());
        words.resize(vocab, Vec::new());
        let mut eog = tok.eog_ids.clone();
        if eog.is_empty() {
            eog.extend(tok.eos_id);
        }
        let eos = *eog.first().ok_or_else(|| {
            GrammarError::Vocabulary("the tokenizer has no end-of-text id".into())
        })?;
        // Control tokens are never spelled by a grammar: mark them special (0xFF prefix), as
        // llguidance expects, so they are only reachable as "end".
        for (id, w) in words.iter_mut().enumerate() {
            if tok.is_special(id as u32) && w.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                let mut s = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                s.extend_from_slice(w);
                *w = s;
            }
        }
        let mut info = TokRxInfo::new(vocab as u32, eos);
        info.tok_bos = tok.bos_id;
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env {
            trie,
            tok: tok.clone(),
        });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
            eog,
            eos,
            vocab,
        })
    }

    /// Checks `grammar` and returns a fresh constraint positioned at the start of the output.
    pub fn compile(&self, grammar: &Grammar) -> Result<GrammarConstraint, GrammarError> {
        let top = match grammar {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({
                "type": "object"
            }))),
            Grammar::JsonSchema(s) => {
                if !(s.is_object() || s.is_boolean()) {
                    return Err(GrammarError::Invalid(format!(
                        "a JSON schema must be an object or a boolean, found {s}"
                    )));
                }
                TopLevelGrammar::from_json_schema(compact(s.clone()))
            }
            Grammar::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Grammar::Regex(r) => TopLevelGrammar::from_regex(r),
        };
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| GrammarError::Invalid(first_line(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Invalid(first_line(&e)));
        }
        Ok(GrammarConstraint {
            matcher,
            eog: self.eog.clone(),
            eos: self.eos,
            words: self.vocab.div_ceil(64),
        })
    }
}

/// JSON as people write it (`{"a": 1, "b": [2, 3]}`), with no free whitespace: a small model given
/// the freedom of JSON's whitespace can fill its whole budget with blank lines. A schema that
/// carries its own `x-guidance` options keeps them.
pub fn compact(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut()
        && !o.contains_key("x-guidance")
    {
        o.insert(
            "x-guidance".into(),
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": "
            }),
        );
    }
    schema
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

/// A compiled grammar following one sequence.
pub struct GrammarConstraint {
    matcher: Matcher,
    eog: Vec<u32>,
    eos: u32,
    words: usize,
}

impl GrammarConstraint {
    /// Whether the output so far is a complete sentence of the grammar.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

impl TokenConstraint for GrammarConstraint {
    fn allowed(&mut self) -> Result<Allowed, String> {
        if self.matcher.is_stopped() {
            return Ok(Allowed::End);
        }
        let vob = self.matcher.compute_mask().map_err(|e| e.to_string())?;
        let mut bits = vec![0u64; self.words];
        vob.iter_set_entries(|i| {
            if let Some(w) = bits.get_mut(i / 64) {
                *w |= 1 << (i % 64);
            }
        });
        let end_ok = vob.is_allowed(self.eos as toktrie::TokenId);
        for &e in &self.eog {
            let i = e as usize;
            if let Some(w) = bits.get_mut(i / 64) {
                if end_ok {
                    *w |= 1 << (i % 64);
                } else {
                    *w &= !(1 << (i % 64));
                }
            }
        }
        if bits.iter().all(|&w| w == 0) {
            return if end_ok || self.is_accepting() {
                Ok(Allowed::End)
            } else {
                Err("the grammar allows no token here".into())
            };
        }
        Ok(Allowed::Mask(bits))
    }

    fn commit(&mut self, token: u32) -> Result<(), String> {
        self.matcher
            .consume_token(token as toktrie::TokenId)
            .map_err(|e| e.to_string())
    }
}
