//! Section-aware chunking with overlap. A chunk never crosses a section boundary, holds at most
//! `max_tokens` tokens (a single longer line is its own chunk), and repeats the last lines of the
//! previous chunk of its section worth at least `overlap` tokens. Whole lines only, so an option
//! line stays intact.

use serde::{Deserialize, Serialize};

use crate::reader::Document;

/// One retrievable passage and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub path: String,
    pub page: String,
    pub section: String,
    /// First and last line, 1-based, inclusive.
    pub line_start: usize,
    pub line_end: usize,
    pub text: String,
}

impl Chunk {
    /// The text that is embedded and indexed: page and section name the passage.
    pub fn indexed_text(&self) -> String {
        if self.section.is_empty() {
            format!("{}\n{}", self.page, self.text)
        } else {
            format!("{} {}\n{}", self.page, self.section, self.text)
        }
    }
}

/// Chunking limits.
#[derive(Debug, Clone, Copy)]
pub struct ChunkConfig {
    pub max_tokens: usize,
    pub overlap: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            max_tokens: 200,
            overlap: 32,
        }
    }
}

/// Splits `doc` into chunks; `count` gives the token count of a line (the embedding tokenizer,
/// or [`word_count`]).
pub fn chunk_document(
    doc: &Document,
    cfg: ChunkConfig,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Chunk> {
    let mut bounds: Vec<(usize, String)> = Vec::new();
    if doc.headings.first().is_none_or(|h| h.0 > 0) {
        bounds.push((0, String::new()));
    }
    bounds.extend(doc.headings.iter().cloned());
    let mut out = Vec::new();
    for (i, (start, title)) in bounds.iter().enumerate() {
        let end = bounds
            .get(i + 1)
            .map_or(doc.lines.len(), |b| b.0)
            .min(doc.lines.len());
        if *start >= end {
            continue;
        }
        let costs: Vec<usize> = doc.lines[*start..end].iter().map(|l| count(l)).collect();
        let mut a = 0; // window start, relative to the section
        while a < costs.len() {
            let mut b = a;
            let mut used = 0;
            while b < costs.len() && (b == a || used + costs[b] <= cfg.max_tokens) {
                used += costs[b];
                b += 1;
            }
            let text = doc.lines[start + a..start + b].join("\n");
            if !text.trim().is_empty() {
                out.push(Chunk {
                    path: doc.path.clone(),
                    page: doc.page.clone(),
                    section: title.clone(),
                    line_start: start + a + 1,
                    line_end: start + b,
                    text: text.trim_matches('\n').to_string(),
                });
            }
            if b >= costs.len() {
                break;
            }
            // Step back over whole lines worth at least `overlap` tokens, always moving forward.
            let mut next = b;
            let mut back = 0;
            while next > a + 1 && back < cfg.overlap {
                next -= 1;
                back += costs[next];
            }
            a = next.max(a + 1);
        }
    }
    out
}

/// Whitespace-separated words: the token count when no tokenizer is at hand.
pub fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}
