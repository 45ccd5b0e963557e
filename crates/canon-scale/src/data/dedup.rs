//! Decontamination against evaluation problems (Phi-1 §5 checks n-gram overlap and embedding
//! similarity against HumanEval before claiming results).
//!
//! Code is tokenised into identifiers, numbers and single punctuation characters (whitespace and
//! comments' layout do not matter). A text is flagged against a problem (prompt + solution) when:
//! - **exact**: the whitespace-normalised texts are equal (SHA-256), or the problem occurs in it;
//! - **13-gram**: they share any run of 13 whitespace-separated words (the usual decontamination
//!   n-gram; code tokens split at every bracket and comma made 13-grams of punctuation and digits,
//!   e.g. rows of a 0/1 matrix, match unrelated code);
//! - **near**: at least `containment` (default 0.5) of the problem's 5-token shingles occur in the
//!   text (containment rather than Jaccard, so a long file holding a problem is caught).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::corpus::sha256_hex;

/// Identifiers/keywords, numbers and single punctuation characters.
pub fn code_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            cur.push(c);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whitespace-separated words.
pub fn word_tokens(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Whitespace runs collapsed to one space, ends trimmed.
pub fn normalise(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hash_gram(g: &[String]) -> u64 {
    // FNV-1a over the tokens with a separator.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in g {
        for b in t.bytes().chain(std::iter::once(0u8)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn grams(tokens: &[String], n: usize) -> HashSet<u64> {
    if tokens.len() < n {
        return if tokens.is_empty() {
            HashSet::new()
        } else {
            std::iter::once(hash_gram(tokens)).collect()
        };
    }
    tokens.windows(n).map(hash_gram).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum MatchKind {
    Exact,
    NGram,
    Near { containment: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contamination {
    /// Index of the evaluation problem.
    pub problem: usize,
    #[serde(flatten)]
    pub kind: MatchKind,
}

/// The evaluation problems, indexed for checking.
pub struct Decontaminator {
    n: usize,
    shingle: usize,
    containment: f64,
    exact: Vec<(String, String)>,
    long_grams: Vec<HashSet<u64>>,
    shingles: Vec<HashSet<u64>>,
}

impl Decontaminator {
    /// `problems`: the evaluation texts (e.g. HumanEval prompt + canonical solution).
    pub fn new(problems: &[String], n: usize, shingle: usize, containment: f64) -> Self {
        let toks: Vec<Vec<String>> = problems.iter().map(|p| code_tokens(p)).collect();
        let words: Vec<Vec<String>> = problems.iter().map(|p| word_tokens(p)).collect();
        Self {
            n,
            shingle,
            containment,
            exact: problems
                .iter()
                .map(|p| {
                    let s = normalise(p);
                    (sha256_hex(&s), s)
                })
                .collect(),
            long_grams: words
                .iter()
                .map(|t| {
                    if t.len() >= n {
                        grams(t, n)
                    } else {
                        HashSet::new()
                    }
                })
                .collect(),
            shingles: toks.iter().map(|t| grams(t, shingle)).collect(),
        }
    }

    /// Defaults: 13-grams, 5-token shingles, containment 0.5.
    pub fn with_defaults(problems: &[String]) -> Self {
        Self::new(problems, 13, 5, 0.5)
    }

    /// The first problem `text` is contaminated with, and how: an exact match before a shared
    /// long n-gram before the nearest near duplicate.
    pub fn check(&self, text: &str) -> Option<Contamination> {
        let all = self.check_all(text);
        let rank = |c: &&Contamination| match c.kind {
            MatchKind::Exact => 0,
            MatchKind::NGram => 1,
            MatchKind::Near { .. } => 2,
        };
        let first = all.iter().min_by_key(rank)?;
        if let MatchKind::Near { .. } = first.kind {
            let c = |m: &Contamination| match m.kind {
                MatchKind::Near { containment } => containment,
                _ => 0.0,
            };
            // The highest containment; the first problem among equals.
            return all
                .iter()
                .fold(None::<&Contamination>, |best, m| match best {
                    Some(b) if c(b) >= c(m) => Some(b),
                    _ => Some(m),
                })
                .cloned();
        }
        Some(first.clone())
    }

    /// Every problem `text` is contaminated with, in problem order, each with its strongest
    /// match (exact, then a shared long n-gram, then near).
    pub fn check_all(&self, text: &str) -> Vec<Contamination> {
        let norm = normalise(text);
        let h = sha256_hex(&norm);
        let words = word_tokens(text);
        let long: HashSet<u64> = if words.len() >= self.n {
            words.windows(self.n).map(hash_gram).collect()
        } else {
            HashSet::new()
        };
        let sh = grams(&code_tokens(text), self.shingle);
        let mut out = Vec::new();
        for (i, ((ph, ps), g)) in self.exact.iter().zip(&self.long_grams).enumerate() {
            let kind = if *ph == h || (!ps.is_empty() && norm.contains(ps.as_str())) {
                MatchKind::Exact
            } else if g.iter().any(|x| long.contains(x)) {
                MatchKind::NGram
            } else {
                let s = &self.shingles[i];
                if s.is_empty() {
                    continue;
                }
                let c = s.iter().filter(|x| sh.contains(x)).count() as f64 / s.len() as f64;
                if c < self.containment {
                    continue;
                }
                MatchKind::Near { containment: c }
            };
            out.push(Contamination { problem: i, kind });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBLEM: &str = r#"def has_close_elements(numbers, threshold):
    """Check if in given list of numbers, are any two numbers closer to each other than
    given threshold."""
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2:
                distance = abs(elem - elem2)
                if distance < threshold:
                    return True
    return False
"#;

    fn deco() -> Decontaminator {
        Decontaminator::with_defaults(&[
            "def add(x, y):\n    return x + y\n".to_string(),
            PROBLEM.to_string(),
        ])
    }

    #[test]
    fn exact_copy_is_caught_even_reformatted_or_embedded() {
        let d = deco();
        let c = d.check(PROBLEM).unwrap();
        assert_eq!((c.problem, c.kind), (1, MatchKind::Exact));
        let reflowed = PROBLEM.replace("    ", "\t");
        assert_eq!(d.check(&reflowed).unwrap().kind, MatchKind::Exact);
        let embedded = format!("import os\n\n{PROBLEM}\n\nprint(1)\n");
        assert_eq!(d.check(&embedded).unwrap().problem, 1);
    }

    #[test]
    fn check_all_reports_every_problem_a_text_holds() {
        let d = deco();
        let both = format!("def add(x, y):\n    return x + y\n\n{PROBLEM}");
        let all = d.check_all(&both);
        let got: Vec<(usize, MatchKind)> = all.iter().map(|c| (c.problem, c.kind)).collect();
        assert_eq!(got, [(0, MatchKind::Exact), (1, MatchKind::Exact)]);
        assert_eq!(d.check(&both).unwrap().problem, 0);
        assert!(d.check_all("print('hello')\n").is_empty());
    }

    #[test]
    fn near_duplicate_is_caught() {
        // Renamed identifiers and a reworded docstring: no exact match, few 13-grams survive.
        let near = PROBLEM
            .replace("has_close_elements", "any_close_pair")
            .replace("distance", "gap")
            .replace(
                "Check if in given list of numbers, are any two numbers closer to each other than\n    given threshold.",
                "True when two entries of the list are nearer than the threshold.",
            );
        let c = deco().check(&near).unwrap();
        assert_eq!(c.problem, 1);
        assert_ne!(c.kind, MatchKind::Exact);
    }

    #[test]
    fn heavier_rewrite_is_near_not_ngram() {
        // Every 13-token window broken by renaming; shingles still overlap.
        let near = PROBLEM
            .replace("numbers", "xs")
            .replace("elem2", "b")
            .replace("elem", "a")
            .replace("idx2", "j")
            .replace("idx", "i")
            .replace("threshold", "eps")
            .replace("distance", "d");
        let d = Decontaminator::new(&[PROBLEM.to_string()], 13, 3, 0.3);
        let c = d.check(&near).unwrap();
        assert!(
            matches!(c.kind, MatchKind::Near { .. } | MatchKind::NGram),
            "{c:?}"
        );
    }

    #[test]
    fn rows_of_numbers_are_not_a_match() {
        let problem = "def f(grid):\n    \"\"\"grid = [[0,0,1,0], [0,1,0,0], [1,1,1,1]]\"\"\"\n    return sum(map(sum, grid))\n";
        let d = Decontaminator::with_defaults(&[problem.to_string()]);
        let other = "M = Matrix([[0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]])\nassert M.rank() == 4\n";
        assert_eq!(d.check(other), None);
    }

    #[test]
    fn unrelated_code_is_not_flagged() {
        let other = r#"class Stack:
    """A last-in, first-out container."""
    def __init__(self):
        self.items = []
    def push(self, item):
        self.items.append(item)
    def pop(self):
        return self.items.pop()
"#;
        assert_eq!(deco().check(other), None);
        // Sharing a few tokens ("return x + y" style) is not a match.
        assert_eq!(deco().check("def mul(a, b):\n    return a * b\n"), None);
    }
}
