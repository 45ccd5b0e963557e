//! Answering with sources: a prompt of numbered passages, the citations `[n]` an answer makes,
//! and the passages those citations name.

use serde::Serialize;

use crate::index::Hit;
use crate::{RagError, Result};

/// The instruction that opens the prompt.
pub const INSTRUCTION: &str = "Answer the question using only the numbered passages below. \
Cite the passages you use with their numbers in brackets, like [1]. \
If the passages do not contain the answer, say that you do not know.";

/// A passage as it was put into the prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passage {
    /// 1-based number used in the prompt.
    pub n: usize,
    pub id: usize,
    pub score: f64,
    pub page: String,
    pub section: String,
    pub path: String,
    pub lines: [usize; 2],
    pub text: String,
}

impl Passage {
    /// `ls(1), OPTIONS`.
    pub fn source(&self) -> String {
        if self.section.is_empty() {
            self.page.clone()
        } else {
            format!("{}, {}", self.page, self.section)
        }
    }
}

/// The prompt and the passages it holds.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    pub passages: Vec<Passage>,
    /// Retrieved passages left out because they did not fit the budget.
    pub dropped: usize,
}

fn header(p: &Passage) -> String {
    format!("[{}] {}\n", p.n, p.source())
}

fn tail(question: &str) -> String {
    format!(
        "\nQuestion: {question}\nAnswer in one or two sentences and cite the passage numbers, like [1]."
    )
}

/// Builds the user message: instruction, numbered passages (best first) and the question, using
/// at most `budget` tokens by `count`. Passages that do not fit whole are cut at a line
/// boundary (the first one) or dropped (the rest). Fails when the instruction and the question
/// alone exceed the budget.
pub fn build_prompt(
    question: &str,
    hits: &[Hit],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Result<Prompt> {
    build_prompt_with("", question, hits, budget, count)
}

/// Tokens of the prompt's fixed part (the instruction, a preamble's framing, the question) before
/// any preamble text or passage.
pub fn fixed_tokens(with_preamble: bool, question: &str, count: &dyn Fn(&str) -> usize) -> usize {
    let fixed = if with_preamble {
        format!("{INSTRUCTION}\n\n\n\nPassages:\n")
    } else {
        format!("{INSTRUCTION}\n\n")
    };
    count(&fixed) + count(&tail(question.trim()))
}

/// [`build_prompt`] with extra context (GraphRAG local search's entities and relationships)
/// between the instruction and the passages; it counts against the budget.
pub fn build_prompt_with(
    preamble: &str,
    question: &str,
    hits: &[Hit],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Result<Prompt> {
    let q = question.trim();
    if q.is_empty() {
        return Err(RagError::Invalid(
            "expected a non-empty question, found an empty one".into(),
        ));
    }
    let fixed = if preamble.trim().is_empty() {
        format!("{INSTRUCTION}\n\n")
    } else {
        format!("{INSTRUCTION}\n\n{}\n\nPassages:\n", preamble.trim())
    };
    let end = tail(q);
    let base = count(&fixed) + count(&end);
    if base > budget {
        return Err(RagError::Invalid(format!(
            "expected a question that fits the model's context of {budget} prompt tokens, found one of {base} tokens with the instruction"
        )));
    }
    let mut left = budget - base;
    let mut body = String::new();
    let mut passages = Vec::new();
    let mut dropped = 0;
    for h in hits {
        let mut p = Passage {
            n: passages.len() + 1,
            id: h.id,
            score: h.score,
            page: h.chunk.page.clone(),
            section: h.chunk.section.clone(),
            path: h.chunk.path.clone(),
            lines: [h.chunk.line_start, h.chunk.line_end],
            text: h.chunk.text.clone(),
        };
        let block = format!("{}{}\n\n", header(&p), p.text);
        let c = count(&block);
        if c <= left {
            left -= c;
            body.push_str(&block);
            passages.push(p);
            continue;
        }
        if passages.is_empty() {
            // Keep the best passage's first lines that fit.
            let mut kept: Vec<&str> = Vec::new();
            for l in h.chunk.text.lines() {
                kept.push(l);
                let block = format!("{}{}\n\n", header(&p), kept.join("\n"));
                if count(&block) > left {
                    kept.pop();
                    break;
                }
            }
            if !kept.is_empty() {
                p.text = kept.join("\n");
                p.lines = [h.chunk.line_start, h.chunk.line_start + kept.len() - 1];
                let block = format!("{}{}\n\n", header(&p), p.text);
                left = left.saturating_sub(count(&block));
                body.push_str(&block);
                passages.push(p);
                continue;
            }
        }
        dropped += 1;
    }
    Ok(Prompt {
        text: format!("{fixed}{body}{}", end.trim_start_matches('\n')),
        passages,
        dropped,
    })
}

/// The passage numbers an answer cites, in order of first appearance: `[2]`, `[1, 3]`, `[1][2]`;
/// numbers with no passage are ignored.
pub fn cited(answer: &str, passages: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let b = answer.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            let Some(close) = answer[i + 1..].find(']') else {
                break;
            };
            let inner = &answer[i + 1..i + 1 + close];
            let nums: Vec<Option<usize>> = inner
                .split([',', ';'])
                .map(|s| s.trim().parse::<usize>().ok())
                .collect();
            if !nums.is_empty() && nums.iter().all(Option::is_some) {
                for n in nums.into_iter().flatten() {
                    if (1..=passages).contains(&n) && !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
            i += close + 2;
        } else {
            i += 1;
        }
    }
    out
}

/// Collapses whitespace, strips surrounding punctuation and lower-cases every word except
/// option names (`-C` and `-c` differ), SQuAD-style but keeping articles.
pub fn normalize_answer(s: &str) -> String {
    s.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| {
                matches!(
                    c,
                    '.' | ',' | ';' | ':' | '"' | '\'' | '`' | '(' | ')' | '*'
                )
            })
        })
        .filter(|w| !w.is_empty())
        .map(|w| {
            if w.starts_with('-') {
                w.to_string()
            } else {
                w.to_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `text` contains `answer` as a whole token sequence after normalisation (so `-a` is not
/// found inside `--all`, nor `ls` inside `lsblk`).
pub fn contains_answer(text: &str, answer: &str) -> bool {
    let a = normalize_answer(answer);
    if a.is_empty() {
        return false;
    }
    let t = normalize_answer(&text.replace(['[', ']', '=', '/', '|'], " "));
    let tb = t.as_bytes();
    let mut from = 0;
    while let Some(pos) = t[from..].find(&a) {
        let s = from + pos;
        let e = s + a.len();
        let edge = |c: u8| !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        let left_ok = s == 0 || edge(tb[s - 1]);
        let right_ok = e == tb.len() || edge(tb[e]);
        if left_ok && right_ok {
            return true;
        }
        from = s + 1;
        while from < t.len() && !t.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Chunk;

    fn hit(id: usize, page: &str, text: &str) -> Hit {
        Hit {
            id,
            score: 1.0 / (id as f64 + 1.0),
            chunk: Chunk {
                path: format!("/m/{page}.1"),
                page: page.into(),
                section: "OPTIONS".into(),
                line_start: 10,
                line_end: 10 + text.lines().count() - 1,
                text: text.into(),
            },
        }
    }

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn prompt_numbers_passages_and_respects_budget() {
        let hits = vec![
            hit(4, "tar(1)", "-C, --directory=DIR\nchange to DIR"),
            hit(9, "ls(1)", "-a, --all\ndo not ignore entries"),
        ];
        let p = build_prompt("how to extract elsewhere?", &hits, 1000, &words).unwrap();
        assert!(p.text.contains("[1] tar(1), OPTIONS\n-C, --directory=DIR"));
        assert!(p.text.contains("[2] ls(1), OPTIONS"));
        assert!(
            p.text
                .contains("Question: how to extract elsewhere?\nAnswer in one")
        );
        assert_eq!(p.passages.len(), 2);
        assert!(words(&p.text) <= 1000);
        // A budget that holds the instruction, the question and part of one passage.
        let base = words(INSTRUCTION) + words(&tail("q"));
        let p = build_prompt("q", &hits, base + 6, &words).unwrap();
        assert!(words(&p.text) <= base + 6, "{}", p.text);
        assert_eq!(p.passages.len(), 1);
        assert_eq!(p.passages[0].text, "-C, --directory=DIR");
        assert_eq!(p.dropped, 1);
        assert!(build_prompt("  ", &hits, 1000, &words).is_err());
        let p = build_prompt_with("- TAR --DIRECTORY: option", "q", &hits, 1000, &words).unwrap();
        let (e, first) = (
            p.text.find("TAR --DIRECTORY").unwrap(),
            p.text.find("[1] ").unwrap(),
        );
        assert!(e < first, "{}", p.text);
        let e = build_prompt("q", &hits, base - 1, &words).unwrap_err();
        assert!(e.to_string().contains("fits the model's context"), "{e}");
    }

    #[test]
    fn citations_are_parsed_in_order() {
        assert_eq!(
            cited("Use -C [2]. See also [1, 2] and [3][9].", 3),
            [2, 1, 3]
        );
        assert_eq!(cited("no refs [a] [", 3), Vec::<usize>::new());
        assert_eq!(cited("[0] [4]", 3), Vec::<usize>::new());
    }

    #[test]
    fn answer_matching_respects_token_edges() {
        assert!(contains_answer("-C, --directory=DIR", "--directory"));
        assert!(contains_answer("Use `-C` here.", "-C"));
        assert!(!contains_answer("Use `-C` here.", "-c"));
        assert!(!contains_answer("--all", "-a"));
        assert!(!contains_answer("lsblk lists", "ls"));
        assert!(contains_answer("ls - list directory contents", "ls"));
        assert!(!contains_answer("anything", ""));
        assert_eq!(normalize_answer("  The `ls`  Command. "), "the ls command");
    }
}
