//! Streaming detokenisation: turns generated ids into text pieces as they arrive, holding back bytes
//! that do not yet form complete UTF-8 characters (a byte-level BPE token can end in the middle of
//! one), so a terminal never shows a replacement character that later tokens would have completed.
//!
//! Each step decodes only a short window: the ids since the last emitted piece plus the piece
//! before them (for tokenizers whose decoding of a token depends on its left neighbour).

use crate::{Result, Tokenizer};

#[derive(Debug, Default, Clone)]
pub struct TokenStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TokenStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id; returns the text that became complete, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let text = tok.decode(&self.ids[self.prefix_offset..], true)?;
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') {
            let new = text.get(prefix.len()..).unwrap_or_default().to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(Some(new));
        }
        Ok(None)
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let text = tok.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(text
            .get(prefix.len()..)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
