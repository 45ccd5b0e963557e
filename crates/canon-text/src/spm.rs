//! SentencePiece vocabularies with scores (GGUF `tokenizer.ggml.model = "llama"`: Gemma, Llama 2,
//! Mistral) tokenized in place, without the HF `tokenizers` crate's tables.
//!
//! The algorithm is the one `GgufVocab::to_hf_tokenizer` expresses as a byte-fallback BPE (module
//! docs of `gguf_vocab`), run directly: a text is split at the added tokens (longest match
//! leftmost), each piece between them gets `▁` for its spaces (and a leading `▁` when
//! `add_space_prefix`), starts as one symbol per character (characters that are no token become
//! their `<0xNN>` byte tokens, or the unknown token), and the adjacent pair whose concatenation is a
//! token is merged, the best first: highest score of the token it makes, then lower token id, then
//! shorter left part, then leftmost. That order is the rank order of the BPE document's merges, so
//! the ids are the same (tested against it on many strings, and against llama.cpp's ids on Gemma 3's
//! vocabulary). Decoding writes `▁` as a space, turns runs of byte tokens back into text (a run that
//! is not UTF-8 becomes one `�` per byte) and drops one leading space when `add_space_prefix`.
//!
//! Memory: the tokens as one string with offsets, one hash index of ids, the scores. For Gemma 3's
//! 262,144 tokens about 8 MB, against about 53 MB for the BPE's vocabulary, reverse vocabulary and
//! 515k merges in the `tokenizers` crate.

use std::collections::BinaryHeap;
use std::hash::BuildHasher;

use crate::gguf_vocab::GgufVocab;
use crate::{Result, TextError};

/// A SentencePiece vocabulary ready to encode and decode.
pub(crate) struct Spm {
    /// Every token's text, concatenated; token `i` is `text[offs[i]..offs[i + 1]]`.
    text: String,
    offs: Vec<u32>,
    /// Token ids by their text.
    index: hashbrown::HashTable<u32>,
    hasher: std::hash::RandomState,
    scores: Vec<f32>,
    token_types: Vec<i32>,
    /// `<0xNN>`'s id for each byte, when the vocabulary has it.
    bytes: [Option<u32>; 256],
    unk: Option<u32>,
    add_space_prefix: bool,
    /// The added tokens (user-defined and control), matched before the model runs.
    added: Option<aho_corasick::AhoCorasick>,
    /// Per pattern of `added`: its id and whether it is special.
    added_ids: Vec<(u32, bool)>,
    /// Whether each id is an added special token.
    special: Vec<bool>,
    /// The vocabulary's other metadata (ids, flags), its token lists left empty.
    meta: GgufVocab,
}

/// A symbol of the merge: a token id and its neighbours (`usize::MAX`: none); `gone` once merged
/// into its left neighbour.
#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: usize,
    next: usize,
    gone: bool,
}

/// A candidate merge: ordered by (rank key, position), smallest first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Cand {
    /// Score of the merged token, descending, as an order-preserving integer.
    score: u32,
    merged: u32,
    cut: u32,
    pos: usize,
}

/// `f32::total_cmp`'s order as an unsigned integer, reversed (higher scores first).
fn desc_key(s: f32) -> u32 {
    let b = s.to_bits() as i32;
    let ordered = (b ^ (((b >> 31) as u32) >> 1) as i32) as u32 ^ 0x8000_0000;
    !ordered
}

impl Spm {
    /// Builds the tokenizer; `vocab` is checked as `GgufVocab::to_hf_tokenizer` checks it.
    pub(crate) fn new(vocab: &GgufVocab) -> Result<Self> {
        vocab.check_spm()?;
        let n = vocab.tokens.len();
        let mut text = String::with_capacity(vocab.tokens.iter().map(String::len).sum());
        let mut offs = Vec::with_capacity(n + 1);
        offs.push(0u32);
        for t in &vocab.tokens {
            text.push_str(t);
            let end = u32::try_from(text.len()).map_err(|_| {
                TextError::BadVocab("the tokens' texts exceed 4 GiB together".into())
            })?;
            offs.push(end);
        }
        let hasher = std::hash::RandomState::new();
        let mut index = hashbrown::HashTable::with_capacity(n);
        for (i, t) in vocab.tokens.iter().enumerate() {
            let h = hasher.hash_one(t.as_str());
            // Duplicates were rejected by the checks: every token's text is new here.
            let span = |id: &u32| {
                let id = *id as usize;
                hasher.hash_one(&text[offs[id] as usize..offs[id + 1] as usize])
            };
            index.insert_unique(h, i as u32, span);
        }
        let mut bytes = [None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            let name = format!("<{:#04X}>", b as u8);
            let h = hasher.hash_one(name.as_str());
            *slot = index
                .find(h, |&id| {
                    let id = id as usize;
                    text[offs[id] as usize..offs[id + 1] as usize] == name
                })
                .copied();
        }
        let added_list = vocab.added();
        let mut special = vec![false; n];
        let mut added_ids = Vec::with_capacity(added_list.len());
        for a in &added_list {
            special[a.id] = a.special;
            added_ids.push((a.id as u32, a.special));
        }
        let added = if added_list.is_empty() {
            None
        } else {
            Some(
                aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(added_list.iter().map(|a| a.content))
                    .map_err(|e| TextError::BadVocab(format!("added tokens: {e}")))?,
            )
        };
        Ok(Self {
            text,
            offs,
            index,
            hasher,
            scores: vocab.scores.clone(),
            token_types: vocab.token_types.clone(),
            bytes,
            unk: vocab.unk_id,
            add_space_prefix: vocab.add_space_prefix.unwrap_or(true),
            added,
            added_ids,
            special,
            meta: GgufVocab {
                model: vocab.model.clone(),
                pre: vocab.pre.clone(),
                add_space_prefix: vocab.add_space_prefix,
                bos_id: vocab.bos_id,
                eos_id: vocab.eos_id,
                eot_id: vocab.eot_id,
                eom_id: vocab.eom_id,
                pad_id: vocab.pad_id,
                unk_id: vocab.unk_id,
                add_bos: vocab.add_bos,
                add_eos: vocab.add_eos,
                ..Default::default()
            },
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.offs.len() - 1
    }

    /// Token `id`'s text (`id` < len).
    fn token(&self, id: u32) -> &str {
        let id = id as usize;
        &self.text[self.offs[id] as usize..self.offs[id + 1] as usize]
    }

    pub(crate) fn id_to_token(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.len()).then(|| self.token(id))
    }

    pub(crate) fn token_to_id(&self, s: &str) -> Option<u32> {
        let h = self.hasher.hash_one(s);
        self.index.find(h, |&id| self.token(id) == s).copied()
    }

    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The ids of `text` (no BOS): added tokens matched first (special ones only when
    /// `parse_special`; a special token's text is otherwise tokenized as plain text, and a match
    /// of it does not let a shorter added token match inside it), the rest by the merge.
    pub(crate) fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = 0;
        if let Some(ac) = &self.added {
            for m in ac.find_iter(text) {
                let (id, special) = self.added_ids[m.pattern().as_usize()];
                if special && !parse_special {
                    continue;
                }
                self.encode_piece(&text[at..m.start()], &mut out);
                out.push(id);
                at = m.end();
            }
        }
        self.encode_piece(&text[at..], &mut out);
        out
    }

    /// One piece between added tokens: normalized, split into symbols, merged.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        if piece.is_empty() {
            return;
        }
        let mut s = String::with_capacity(piece.len() + 3);
        if self.add_space_prefix {
            s.push('\u{2581}');
        }
        for c in piece.chars() {
            s.push(if c == ' ' { '\u{2581}' } else { c });
        }
        // Symbols: each character's token, else its bytes' tokens, else the unknown token (runs
        // of unknown characters fused into one; a pending one is written when a character with
        // a token follows, after any byte tokens in between, as the BPE does).
        let mut syms: Vec<Sym> = Vec::with_capacity(s.len());
        let push = |syms: &mut Vec<Sym>, id: u32| {
            let i = syms.len();
            syms.push(Sym {
                id,
                prev: i.wrapping_sub(1),
                next: i + 1,
                gone: false,
            });
        };
        let mut unk_pending = false;
        let mut buf = [0u8; 4];
        for c in s.chars() {
            let cs: &str = c.encode_utf8(&mut buf);
            if let Some(id) = self.token_to_id(cs) {
                if unk_pending {
                    push(&mut syms, self.unk.unwrap_or(0));
                    unk_pending = false;
                }
                push(&mut syms, id);
                continue;
            }
            let fallback: Option<Vec<u32>> = cs.bytes().map(|b| self.bytes[b as usize]).collect();
            if let Some(ids) = fallback {
                for id in ids {
                    push(&mut syms, id);
                }
                continue;
            }
            if self.unk.is_some() {
                unk_pending = true;
            }
        }
        if unk_pending {
            push(&mut syms, self.unk.unwrap_or(0));
        }
        if let Some(last) = syms.last_mut() {
            last.next = usize::MAX;
        }
        let mut joined = String::new();
        let mut cand = |syms: &[Sym], pos: usize| -> Option<Cand> {
            let right = syms[pos].next;
            if right == usize::MAX {
                return None;
            }
            let (a, b) = (self.token(syms[pos].id), self.token(syms[right].id));
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let merged = self.token_to_id(&joined)?;
            Some(Cand {
                score: desc_key(self.scores[merged as usize]),
                merged,
                cut: a.len() as u32,
                pos,
            })
        };
        let mut heap: BinaryHeap<std::cmp::Reverse<Cand>> = (0..syms.len())
            .filter_map(|p| cand(&syms, p))
            .map(std::cmp::Reverse)
            .collect();
        while let Some(std::cmp::Reverse(top)) = heap.pop() {
            let p = top.pos;
            if syms[p].gone || syms[p].next == usize::MAX {
                continue;
            }
            // A stale candidate: the pair at `p` no longer makes this token.
            match cand(&syms, p) {
                Some(c) if c.merged == top.merged => {}
                _ => continue,
            }
            let r = syms[p].next;
            syms[p].id = top.merged;
            syms[r].gone = true;
            let after = syms[r].next;
            syms[p].next = after;
            if after != usize::MAX {
                syms[after].prev = p;
            }
            let before = syms[p].prev;
            if before != usize::MAX
                && let Some(c) = cand(&syms, before)
            {
                heap.push(std::cmp::Reverse(c));
            }
            if let Some(c) = cand(&syms, p) {
                heap.push(std::cmp::Reverse(c));
            }
        }
        out.extend(syms.iter().filter(|s| !s.gone).map(|s| s.id));
    }

    /// The text of `ids` (ids outside the vocabulary are skipped; special tokens too when
    /// `skip_special`).
    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut out = String::new();
        let mut pending: Vec<u8> = Vec::new();
        let flush = |out: &mut String, pending: &mut Vec<u8>| {
            if pending.is_empty() {
                return;
            }
            match std::str::from_utf8(pending) {
                Ok(s) => out.push_str(s),
                Err(_) => {
                    for _ in 0..pending.len() {
                        out.push('\u{FFFD}');
                    }
                }
            }
            pending.clear();
        };
        for &id in ids {
            let Some(t) = self.id_to_token(id) else {
                continue;
            };
            if skip_special && self.is_special(id) {
                continue;
            }
            // A byte token is `<0xNN>` (six bytes), after `▁` became a space.
            let byte = (t.len() == 6 && t.starts_with("<0x") && t.ends_with('>'))
                .then(|| u8::from_str_radix(&t[3..5], 16).ok())
                .flatten();
            match byte {
                Some(b) => pending.push(b),
                None => {
                    flush(&mut out, &mut pending);
                    out.extend(t.chars().map(|c| if c == '\u{2581}' { ' ' } else { c }));
                }
            }
        }
        flush(&mut out, &mut pending);
        if self.add_space_prefix && out.starts_with(' ') {
            out.remove(0);
        }
        out
    }

    /// The vocabulary back as GGUF metadata (the HF `tokenizers` form is built from it on demand).
    pub(crate) fn to_vocab(&self) -> GgufVocab {
        GgufVocab {
            tokens: (0..self.len() as u32)
                .map(|i| self.token(i).to_string())
                .collect(),
            token_types: self.token_types.clone(),
            scores: self.scores.clone(),
            ..self.meta.clone()
        }
    }

    /// Every token's bytes as text generation spells them: `▁` as a space, `<0xNN>` as its byte.
    pub(crate) fn token_bytes(&self) -> Vec<Vec<u8>> {
        (0..self.len() as u32)
            .map(|i| {
                let t = self.token(i);
                if self.token_types.get(i as usize) == Some(&6)
                    && let Some(b) = (t.len() == 6 && t.starts_with("<0x") && t.ends_with('>'))
                        .then(|| u8::from_str_radix(&t[3..5], 16).ok())
                        .flatten()
                {
                    return vec![b];
                }
                t.replace('\u{2581}', " ").into_bytes()
            })
            .collect()
    }
}
