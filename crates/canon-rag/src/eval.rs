//! Retrieval and answer metrics for `canon eval rag`: recall@k and MRR of the source page,
//! answer exact match and containment, citation correctness.

use serde::{Deserialize, Serialize};

use crate::ask::{contains_answer, normalize_answer};
use crate::{RagError, Result};

/// One development question: the answer and the page (and section) it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub question: String,
    /// The reference answer.
    pub answer: String,
    /// Other accepted answers (e.g. the short and long form of an option).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Source page, as chunks name it (`tar(1)`).
    pub page: String,
    #[serde(default)]
    pub section: String,
    /// How the question was made (`name`, `option`, ...).
    #[serde(default)]
    pub kind: String,
}

impl Question {
    pub fn answers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.answer.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// Reads JSON lines of [`Question`]s; blank lines are skipped.
pub fn read_questions(text: &str, what: &str) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(l).map_err(|e| {
            RagError::Invalid(format!(
                "expected a question object {{id, question, answer, page}} on line {} of {what}, found {e}",
                i + 1
            ))
        })?;
        if q.question.trim().is_empty() || q.answer.trim().is_empty() {
            return Err(RagError::Invalid(format!(
                "expected a non-empty question and answer on line {} of {what}",
                i + 1
            )));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(RagError::Invalid(format!(
            "expected at least one question in {what}, found none"
        )));
    }
    Ok(out)
}

/// The outcome of one question under one method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub id: String,
    /// 1-based rank of the first retrieved passage from the source page, if any.
    pub rank: Option<usize>,
    /// The generated answer, when answers were generated.
    pub answer: Option<String>,
    pub exact: bool,
    pub contains: bool,
    /// Whether the answer cites at least one passage.
    pub cites: bool,
    /// Whether a cited passage contains the reference answer.
    pub citation_correct: bool,
}

/// Scores one question: `pages` are the retrieved passages' pages best first; `answer` the
/// generated text, `cited_texts` the texts of the passages it cites.
pub fn score(
    q: &Question,
    pages: &[String],
    answer: Option<&str>,
    cited_texts: &[&str],
) -> Outcome {
    let rank = pages.iter().position(|p| *p == q.page).map(|r| r + 1);
    let (exact, contains) = match answer {
        Some(a) => {
            let na = normalize_answer(&strip_citations(a));
            (
                q.answers().any(|g| normalize_answer(g) == na),
                q.answers().any(|g| contains_answer(a, g)),
            )
        }
        None => (false, false),
    };
    let citation_correct = cited_texts
        .iter()
        .any(|t| q.answers().any(|g| contains_answer(t, g)));
    Outcome {
        id: q.id.clone(),
        rank,
        answer: answer.map(str::to_string),
        exact,
        contains,
        cites: !cited_texts.is_empty(),
        citation_correct,
    }
}

/// The answer without its `[n]` citation marks.
pub fn strip_citations(a: &str) -> String {
    let mut out = String::new();
    let mut rest = a;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        match rest[i + 1..].find(']') {
            Some(j)
                if rest[i + 1..i + 1 + j]
                    .split([',', ';'])
                    .all(|s| s.trim().parse::<usize>().is_ok()) =>
            {
                rest = &rest[i + 2 + j..];
            }
            _ => {
                out.push('[');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Aggregate metrics of one method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub method: String,
    pub questions: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    /// Mean reciprocal rank of the source page within the retrieved list (0 when absent).
    pub mrr: f64,
    /// Answer metrics (`None` without generated answers).
    pub exact_match: Option<f64>,
    pub contains: Option<f64>,
    /// Fraction of answers citing at least one passage.
    pub cite_rate: Option<f64>,
    /// Fraction of answers with a cited passage that contains the reference answer.
    pub citation_correct: Option<f64>,
    /// Median per-question search time after the query is embedded, ms.
    pub p50_ms: f64,
    /// Median query-embedding time, ms (0 for BM25).
    pub p50_embed_ms: f64,
}

pub fn summarize(method: &str, outs: &[Outcome], ms: &[f64]) -> Summary {
    let n = outs.len().max(1) as f64;
    let rec = |k: usize| {
        outs.iter()
            .filter(|o| o.rank.is_some_and(|r| r <= k))
            .count() as f64
            / n
    };
    let answered = outs.iter().any(|o| o.answer.is_some());
    let frac = |f: &dyn Fn(&Outcome) -> bool| {
        answered.then(|| outs.iter().filter(|o| f(o)).count() as f64 / n)
    };
    Summary {
        method: method.to_string(),
        questions: outs.len(),
        recall_at_1: rec(1),
        recall_at_5: rec(5),
        recall_at_10: rec(10),
        mrr: outs
            .iter()
            .map(|o| o.rank.map_or(0.0, |r| 1.0 / r as f64))
            .sum::<f64>()
            / n,
        exact_match: frac(&|o| o.exact),
        contains: frac(&|o| o.contains),
        cite_rate: frac(&|o| o.cites),
        citation_correct: frac(&|o| o.citation_correct),
        p50_ms: median(ms),
        p50_embed_ms: 0.0,
    }
}

/// The median (mean of the middle two for even lengths); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Question {
        Question {
            id: "q1".into(),
            question: "Which tar option changes directory?".into(),
            answer: "--directory".into(),
            aliases: vec!["-C".into()],
            page: "tar(1)".into(),
            section: "OPTIONS".into(),
            kind: "option".into(),
        }
    }

    #[test]
    fn scores_rank_answers_and_citations() {
        let pages: Vec<String> = ["ls(1)", "tar(1)", "tar(1)"].map(String::from).to_vec();
        let o = score(&q(), &pages, Some("Use -C [2]."), &["-C, --directory=DIR"]);
        assert_eq!(o.rank, Some(2));
        assert!(!o.exact && o.contains && o.cites && o.citation_correct);
        let o = score(&q(), &pages, Some("--directory [1]"), &["-a, --all"]);
        assert!(o.exact && o.cites && !o.citation_correct);
        let o = score(&q(), &pages[..1], None, &[]);
        assert_eq!(o.rank, None);
        let s = summarize(
            "x",
            &[
                score(&q(), &pages, None, &[]),
                score(&q(), &pages[..1], None, &[]),
            ],
            &[3.0, 1.0],
        );
        assert_eq!((s.recall_at_1, s.recall_at_5), (0.0, 0.5));
        assert!((s.mrr - 0.25).abs() < 1e-12);
        assert_eq!(s.exact_match, None);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(strip_citations("a [1] b [2, 3] [x]"), "a  b  [x]");
    }

    #[test]
    fn question_file_errors_are_clear() {
        assert!(read_questions("", "f").is_err());
        let e = read_questions("{\"id\":1}", "f").unwrap_err().to_string();
        assert!(e.contains("line 1 of f"), "{e}");
        let ok = read_questions(
            "{\"id\":\"a\",\"question\":\"q\",\"answer\":\"x\",\"page\":\"p(1)\"}\n\n",
            "f",
        )
        .unwrap();
        assert_eq!(ok.len(), 1);
    }
}
