//! Corpus BLEU (Papineni et al., 2002) as sacreBLEU computes it by default (Post, 2018), the score
//! the Transformer paper reports (paper 1, Table 2):
//!
//! `BLEU = BP · exp(Σ_{n=1..4} ¼ log p_n)`, with `p_n` = clipped n-gram matches / hypothesis n-grams
//! summed over the corpus (a hypothesis n-gram counts at most as often as it appears in the
//! reference that holds it most), and the brevity penalty `BP = min(1, exp(1 − r/c))` for total
//! hypothesis length `c` and total closest-reference length `r` (ties: the shorter reference).
//!
//! Details that follow sacreBLEU 2.x (`BLEU()` defaults): text is tokenized with the `13a` tokenizer
//! of `mteval-v13a.pl` (below), case-sensitive; a zero match count for some order is smoothed by
//! the "exp" method (`p_n = 1 / (2^k · total_n)` for the k-th such order); with no match at all,
//! or an order with no hypothesis n-grams, BLEU is 0. Scores are on a 0–100 scale.
//! Checked against sacreBLEU in `tests/bleu_golden.rs` (goldens made by `tests/golden/bleu.py`).
//!
//! Difference: Python's `str.split` also splits on the control characters U+001C–U+001F; here
//! those stay inside tokens.

use std::collections::HashMap;

pub const MAX_ORDER: usize = 4;

/// The `13a` tokenizer: unescapes four HTML entities, then splits punctuation and symbols off
/// words (a period or comma only when not between digits, a dash after a digit).
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut s = line
        .trim_end()
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if s.contains('&') {
        s = s
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let s = format!(" {s} ");
    // Rule 1: `[{-~[-` -&(-+:-@/]` → ` c `.
    let sym =
        |c: char| matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/');
    let mut r1 = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if sym(c) {
            r1.push(' ');
            r1.push(c);
            r1.push(' ');
        } else {
            r1.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let dot = |c: char| c == '.' || c == ',';
    // Rules 2–4 are two-character patterns, replaced left to right without overlap (re.sub).
    let r2 = sub2(
        &r1,
        |a| !digit(a),
        dot,
        |a, b, o| {
            o.push(a);
            o.push(' ');
            o.push(b);
            o.push(' ');
        },
    );
    let r3 = sub2(
        &r2,
        dot,
        |b| !digit(b),
        |a, b, o| {
            o.push(' ');
            o.push(a);
            o.push(' ');
            o.push(b);
        },
    );
    let r4 = sub2(
        &r3,
        digit,
        |b| b == '-',
        |a, b, o| {
            o.push(a);
            o.push(' ');
            o.push(b);
            o.push(' ');
        },
    );
    r4.split_whitespace().map(str::to_string).collect()
}

/// `re.sub` of a pattern `(A)(B)` (one character each) over `s`.
fn sub2(
    s: &str,
    a: impl Fn(char) -> bool,
    b: impl Fn(char) -> bool,
    emit: impl Fn(char, char, &mut String),
) -> String {
    let cs: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 16);
    let mut i = 0;
    while i < cs.len() {
        if i + 1 < cs.len() && a(cs[i]) && b(cs[i + 1]) {
            emit(cs[i], cs[i + 1], &mut out);
            i += 2;
        } else {
            out.push(cs[i]);
            i += 1;
        }
    }
    out
}

/// Sufficient statistics of a corpus: lengths and per-order matches/totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BleuStats {
    pub sys_len: usize,
    pub ref_len: usize,
    pub correct: [usize; MAX_ORDER],
    pub total: [usize; MAX_ORDER],
}

/// The score with its parts (precisions in percent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bleu {
    pub score: f64,
    pub precisions: [f64; MAX_ORDER],
    pub brevity_penalty: f64,
    pub stats: BleuStats,
}

fn ngrams(toks: &[String]) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in toks.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

impl BleuStats {
    /// Adds one segment: a hypothesis and its references (already tokenized).
    pub fn add(&mut self, hyp: &[String], refs: &[Vec<String>]) {
        let h = ngrams(hyp);
        let mut r: HashMap<&[String], usize> = HashMap::new();
        let mut closest: Option<usize> = None;
        for rf in refs {
            for (g, c) in ngrams(rf) {
                let e = r.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
            let d = |l: usize| l.abs_diff(hyp.len());
            closest = Some(match closest {
                Some(c) if d(c) < d(rf.len()) || (d(c) == d(rf.len()) && c <= rf.len()) => c,
                _ => rf.len(),
            });
        }
        self.sys_len += hyp.len();
        self.ref_len += closest.unwrap_or(0);
        for (g, c) in h {
            let n = g.len() - 1;
            self.correct[n] += c.min(r.get(g).copied().unwrap_or(0));
            self.total[n] += c;
        }
    }

    pub fn score(&self) -> Bleu {
        let bp = if self.sys_len >= self.ref_len {
            1.0
        } else if self.sys_len > 0 {
            (1.0 - self.ref_len as f64 / self.sys_len as f64).exp()
        } else {
            0.0
        };
        let mut p = [0.0; MAX_ORDER];
        let zero = Bleu {
            score: 0.0,
            precisions: p,
            brevity_penalty: bp,
            stats: *self,
        };
        if self.correct.iter().all(|&c| c == 0) {
            return zero;
        }
        let mut smooth = 1.0;
        for n in 0..MAX_ORDER {
            if self.total[n] == 0 {
                // No hypothesis n-grams of this order: the log of a zero precision.
                return Bleu {
                    precisions: p,
                    ..zero
                };
            }
            p[n] = if self.correct[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * self.total[n] as f64)
            } else {
                100.0 * self.correct[n] as f64 / self.total[n] as f64
            };
        }
        let mean_log = p.iter().map(|x| x.ln()).sum::<f64>() / MAX_ORDER as f64;
        Bleu {
            score: bp * mean_log.exp(),
            precisions: p,
            brevity_penalty: bp,
            stats: *self,
        }
    }
}

/// Corpus BLEU of `hyps` against one reference each (`refs[i]` for `hyps[i]`), untokenized text.
pub fn corpus_bleu(hyps: &[String], refs: &[String]) -> Result<Bleu, String> {
    corpus_bleu_multi(hyps, &[refs.to_vec()])
}

/// Corpus BLEU with several reference streams (`ref_sets[k][i]` is reference `k` of segment `i`).
pub fn corpus_bleu_multi(hyps: &[String], ref_sets: &[Vec<String>]) -> Result<Bleu, String> {
    if ref_sets.is_empty() {
        return Err("BLEU: no reference stream".into());
    }
    for (k, r) in ref_sets.iter().enumerate() {
        if r.len() != hyps.len() {
            return Err(format!(
                "BLEU: {} hypotheses but reference stream {k} has {} segments",
                hyps.len(),
                r.len()
            ));
        }
    }
    let mut st = BleuStats::default();
    for (i, h) in hyps.iter().enumerate() {
        let refs: Vec<Vec<String>> = ref_sets.iter().map(|r| tokenize_13a(&r[i])).collect();
        st.add(&tokenize_13a(h), &refs);
    }
    Ok(st.score())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        tokenize_13a(s)
    }

    #[test]
    fn thirteen_a_splits_punctuation_but_not_numbers() {
        assert_eq!(toks("Hello, world."), ["Hello", ",", "world", "."]);
        assert_eq!(toks("3.14 and 1,000"), ["3.14", "and", "1,000"]);
        assert_eq!(
            toks("(a/b) x-y 5-6"),
            ["(", "a", "/", "b", ")", "x-y", "5", "-", "6"]
        );
        assert_eq!(
            toks("Tom&apos;s &amp; \"it's\""),
            ["Tom", "&", "apos", ";", "s", "&", "\"", "it's", "\""]
        );
        assert!(toks("   ").is_empty());
    }

    #[test]
    fn identical_text_scores_100_and_disjoint_text_0() {
        let h = vec!["the cat sat on the mat".to_string()];
        assert!((corpus_bleu(&h, &h).unwrap().score - 100.0).abs() < 1e-9);
        let r = vec!["a dog ran in a park".to_string()];
        assert_eq!(corpus_bleu(&h, &r).unwrap().score, 0.0);
        assert!(corpus_bleu(&h, &[]).is_err());
    }

    #[test]
    fn brevity_penalty_and_clipping_follow_the_definition() {
        // Hypothesis "the the the the" vs "the cat": unigram matches clipped to 1 of 4.
        let b = corpus_bleu(&["the the the the".into()], &["the cat".into()]).unwrap();
        assert_eq!(b.stats.correct[0], 1);
        assert_eq!(b.stats.total[0], 4);
        assert_eq!(b.brevity_penalty, 1.0);
        // A short hypothesis: c = 3, r = 6 → BP = e^(1 − 2).
        let b = corpus_bleu(&["the cat sat".into()], &["the cat sat on the mat".into()]).unwrap();
        assert!((b.brevity_penalty - (-1.0f64).exp()).abs() < 1e-12);
        // Orders 1–3 match fully; order 4 has no n-grams in a 3-token hypothesis → 0.
        assert_eq!(b.score, 0.0);
    }
}
