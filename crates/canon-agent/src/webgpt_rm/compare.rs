//! Comparisons without a human: each question's candidate answers ranked by (accurate,
//! supported), and the pairs of different rank (see the parent module's header).

use serde::{Deserialize, Serialize};

use crate::browser::Quote;
use crate::webgpt::{Outcome, grade};

/// One comparison of two answers to the same question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub id: String,
    pub question: String,
    pub quotes: Vec<Quote>,
    pub answer_a: String,
    pub answer_b: String,
    /// "A" or "B".
    pub preferred: String,
    /// How the two answers were made and which rank each has, e.g. `oracle(2)>sample(0)`.
    pub how: String,
}

/// One question's ranked candidate answers.
#[derive(Debug, Clone)]
pub struct Candidates {
    pub id: String,
    pub question: String,
    pub answer_prompt: String,
    pub quotes: Vec<Quote>,
    /// (answer, how it was made, rank)
    pub answers: Vec<(String, &'static str, u8)>,
}

impl Candidates {
    /// Pairs (winner, loser) of strictly different rank.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for i in 0..self.answers.len() {
            for j in i + 1..self.answers.len() {
                let (ri, rj) = (self.answers[i].2, self.answers[j].2);
                if ri > rj {
                    out.push((i, j));
                } else if rj > ri {
                    out.push((j, i));
                }
            }
        }
        out
    }
}

fn rank(answer: &str, gold: &str, quotes: &[Quote]) -> u8 {
    let (a, s) = grade(answer, gold, quotes);
    a as u8 + s as u8
}

/// Each outcome's candidates: its distinct non-empty sampled answers and the three written ones
/// (see the `webgpt_rm` header); `other` is another question's gold answer for each outcome.
pub fn candidates(outcomes: &[Outcome]) -> Vec<Candidates> {
    let norm = crate::webgpt::norm;
    outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let g = norm(&o.gold);
            let holds: Vec<usize> = (0..o.quotes.len())
                .filter(|&k| norm(&o.quotes[k].text).contains(&g))
                .collect();
            let other = outcomes
                .iter()
                .cycle()
                .skip(i + 1)
                .take(outcomes.len())
                .map(|p| p.gold.clone())
                .find(|a| norm(a) != g && !g.contains(&norm(a)) && !norm(a).contains(&g));
            let mut written: Vec<(String, &'static str)> = Vec::new();
            if let Some(&k) = holds.last() {
                written.push((format!("{} [{}]", o.gold, k + 1), "oracle"));
                if let Some(other) = &other {
                    written.push((format!("{other} [{}]", k + 1), "wrong-answer"));
                }
            }
            if let Some(j) = (0..o.quotes.len()).find(|k| !holds.contains(k)) {
                written.push((format!("{} [{}]", o.gold, j + 1), "wrong-citation"));
            }
            let mut answers: Vec<(String, &'static str, u8)> = Vec::new();
            let sampled = o.answers.answers.iter().map(|a| (a.clone(), "sample"));
            for (a, how) in written.into_iter().chain(sampled) {
                if a.trim().is_empty() || answers.iter().any(|x| x.0 == a) {
                    continue;
                }
                let r = rank(&a, &o.gold, &o.quotes);
                answers.push((a, how, r));
            }
            Candidates {
                id: o.id.clone(),
                question: o.question.clone(),
                answer_prompt: o.answer_prompt.clone(),
                quotes: o.quotes.clone(),
                answers,
            }
        })
        .collect()
}

/// The comparisons of `cands` as records, the preferred side alternating between A and B.
pub fn comparisons(cands: &[Candidates]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for c in cands {
        for (w, l) in c.pairs() {
            let (aw, hw, rw) = &c.answers[w];
            let (al, hl, rl) = &c.answers[l];
            let how = format!("{hw}({rw})>{hl}({rl})");
            let flip = out.len() % 2 == 1;
            let (a, b) = if flip { (al, aw) } else { (aw, al) };
            out.push(Comparison {
                id: c.id.clone(),
                question: c.question.clone(),
                quotes: c.quotes.clone(),
                answer_a: a.clone(),
                answer_b: b.clone(),
                preferred: if flip { "B" } else { "A" }.into(),
                how,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webgpt_rm::tests::outcome;

    #[test]
    fn candidates_rank_by_accuracy_and_support() {
        let os = vec![
            outcome("Alice", &["Alice [2]", "Alice", "Bob [1]", ""]),
            outcome("Bob", &["Bob [1]"]),
        ];
        let c = candidates(&os);
        let a: Vec<(&str, &str, u8)> = c[0]
            .answers
            .iter()
            .map(|(t, h, r)| (t.as_str(), *h, *r))
            .collect();
        assert_eq!(
            a,
            vec![
                ("Alice [2]", "oracle", 2),
                ("Bob [2]", "wrong-answer", 0),
                ("Alice [1]", "wrong-citation", 1),
                ("Alice", "sample", 1),
                ("Bob [1]", "sample", 0),
            ]
        );
        let cmp = comparisons(&c[..1]);
        assert_eq!(cmp.len(), c[0].pairs().len());
        assert_eq!(cmp.len(), 4 + 2 + 2);
        assert_eq!(cmp[0].how, "oracle(2)>wrong-answer(0)");
        assert_eq!(
            (cmp[0].answer_a.as_str(), cmp[0].preferred.as_str()),
            ("Alice [2]", "A")
        );
        assert_eq!(
            (cmp[1].answer_b.as_str(), cmp[1].preferred.as_str()),
            ("Alice [2]", "B")
        );
    }
}
