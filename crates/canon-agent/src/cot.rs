//! Chain-of-thought prompting and self-consistency (paper 18): multi-step arithmetic word problems
//! with exact answers and worked rationales, the prompts (few-shot with rationales, or zero-shot
//! "Let's think step by step"), answer extraction, and the majority vote over sampled rationales.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One problem: the question, its exact answer, and a worked rationale ending in the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub question: String,
    pub answer: String,
    #[serde(default)]
    pub rationale: String,
    /// Arithmetic steps the problem takes (0 when unknown, e.g. read from a file without it).
    #[serde(default)]
    pub steps: usize,
}

const NAMES: [&str; 10] = [
    "Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun",
];
const THINGS: [&str; 8] = [
    "apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards",
];

/// The largest count the default generator lets a problem reach.
pub const DEFAULT_MAX_VALUE: i64 = 999;

/// `n` problems of `min_steps..=max_steps` steps (uniform), reproducible from `seed`. Every
/// intermediate count stays between 1 and 999 and every division is exact.
pub fn generate(n: usize, min_steps: usize, max_steps: usize, seed: u64) -> Vec<Problem> {
    generate_capped(n, min_steps, max_steps, DEFAULT_MAX_VALUE, seed)
}

/// [`generate`] with every intermediate count kept between 1 and `max_value` (at least 40; a
/// smaller cap is raised to 40). With the default cap of 999 the problems are exactly
/// [`generate`]'s; a small cap (e.g. 99) gives the easier arithmetic a tiny model can learn.
pub fn generate_capped(
    n: usize,
    min_steps: usize,
    max_steps: usize,
    max_value: i64,
    seed: u64,
) -> Vec<Problem> {
    let o = GenOptions {
        max_value: max_value.max(40),
        ..GenOptions::default()
    };
    generate_with(n, min_steps, max_steps, &o, seed).unwrap_or_default()
}

/// The four operations a problem step can take, in the generator's order.
pub const OPS: [char; 4] = ['+', '-', '*', '/'];

/// The smallest `max_value` [`generate_with`] accepts.
pub const MIN_MAX_VALUE: i64 = 5;

/// What [`generate_with`] generates: the cap on every count and the operations allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOptions {
    /// Every intermediate count stays between 1 and this (at least [`MIN_MAX_VALUE`]).
    pub max_value: i64,
    /// The operations a step may take, a subset of [`OPS`] with `-` and one of `+`/`*` at least,
    /// so that every count has a next step.
    pub ops: Vec<char>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_value: DEFAULT_MAX_VALUE,
            ops: OPS.to_vec(),
        }
    }
}

impl GenOptions {
    /// Parses an operation list such as `+,-` (commas optional; `x` is `*`).
    pub fn parse_ops(s: &str) -> Result<Vec<char>, String> {
        let mut ops = Vec::new();
        for c in s.chars().filter(|c| !c.is_whitespace() && *c != ',') {
            let c = if c == 'x' { '*' } else { c };
            if !OPS.contains(&c) {
                return Err(format!(
                    "expected operations from +, -, *, / (comma-separated), found '{c}' in '{s}'"
                ));
            }
            if !ops.contains(&c) {
                ops.push(c);
            }
        }
        ops.sort_by_key(|c| OPS.iter().position(|o| o == c));
        Ok(ops)
    }

    /// Whether the options can generate: the cap large enough, the operations valid.
    pub fn check(&self) -> Result<(), String> {
        if self.max_value < MIN_MAX_VALUE {
            return Err(format!(
                "expected a largest count of at least {MIN_MAX_VALUE}, found {}",
                self.max_value
            ));
        }
        if let Some(c) = self.ops.iter().find(|c| !OPS.contains(c)) {
            return Err(format!("expected operations from +, -, *, /, found '{c}'"));
        }
        if !self.ops.contains(&'-') || !(self.ops.contains(&'+') || self.ops.contains(&'*')) {
            return Err(format!(
                "expected operations that include - and one of + or * (so that every count has \
                 a next step), found '{}'",
                self.ops.iter().collect::<String>()
            ));
        }
        Ok(())
    }
}

/// `n` problems of `min_steps..=max_steps` steps (uniform), reproducible from `seed`, with every
/// intermediate count in `1..=o.max_value` and only the operations `o.ops`. The default options
/// give exactly [`generate`]'s problems, a cap of 40 or more with all four operations
/// [`generate_capped`]'s. Errors when the options are out of range.
pub fn generate_with(
    n: usize,
    min_steps: usize,
    max_steps: usize,
    o: &GenOptions,
    seed: u64,
) -> Result<Vec<Problem>, String> {
    o.check()?;
    let mut ops = o.ops.clone();
    ops.sort_by_key(|c| OPS.iter().position(|x| x == c));
    ops.dedup();
    let mut rng = StdRng::seed_from_u64(seed);
    let (lo, hi) = (min_steps.max(1), max_steps.max(min_steps.max(1)));
    Ok((0..n)
        .map(|_| {
            let steps = rng.random_range(lo..=hi);
            one(&mut rng, steps, o.max_value, &ops)
        })
        .collect())
}

fn one(rng: &mut StdRng, steps: usize, cap: i64, ops: &[char]) -> Problem {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let thing = THINGS[rng.random_range(0..THINGS.len())];
    // The start and the amounts added shrink with a small cap (unchanged for caps of 40 or more).
    let mut v: i64 = rng.random_range(2..=30.min(cap));
    let max_add = 20.min(cap / 2);
    // The rationale restates each sentence of the question, then works its equation: the
    // question numbers its steps with ordinal words, so the step a rationale is on names the
    // sentence it reads its amount from.
    let mut q = format!("{name} has {v} {thing}.");
    let mut r = q.clone();
    for i in 0..steps {
        let nth = ordinal(i + 1);
        // Pick an operation that keeps the count in 1..=cap and divisions exact.
        loop {
            match ops[rng.random_range(0..ops.len())] {
                '+' => {
                    let k: i64 = rng.random_range(2..=max_add);
                    if v + k > cap {
                        continue;
                    }
                    let said = format!("{nth}, {name} gets {k} more");
                    q.push_str(&format!(" {said}."));
                    r.push_str(&format!(" {said}: {v} + {k} = {}.", v + k));
                    v += k;
                }
                '-' => {
                    if v < 3 {
                        continue;
                    }
                    let k: i64 = rng.random_range(1..v);
                    let said = format!("{nth}, {name} gives away {k}");
                    q.push_str(&format!(" {said}."));
                    r.push_str(&format!(" {said}: {v} - {k} = {}.", v - k));
                    v -= k;
                }
                '*' => {
                    let k: i64 = rng.random_range(2..=4);
                    if v * k > cap {
                        continue;
                    }
                    let said = format!("{nth}, the number of {thing} is multiplied by {k}");
                    q.push_str(&format!(" {said}."));
                    r.push_str(&format!(" {said}: {v} * {k} = {}.", v * k));
                    v *= k;
                }
                _ => {
                    // '/'
                    let divisors: Vec<i64> = (2..=5).filter(|d| v % d == 0 && v / d >= 1).collect();
                    if divisors.is_empty() {
                        continue;
                    }
                    let k = divisors[rng.random_range(0..divisors.len())];
                    let said = format!(
                        "{nth}, {name} splits them equally among {k} friends and keeps one share"
                    );
                    q.push_str(&format!(" {said}."));
                    r.push_str(&format!(" {said}: {v} / {k} = {}.", v / k));
                    v /= k;
                }
            }
            break;
        }
    }
    q.push_str(&format!(" How many {thing} does {name} have now?"));
    r.push_str(&format!(" The answer is {v}."));
    Problem {
        question: q,
        answer: v.to_string(),
        rationale: r,
        steps,
    }
}

/// The ordinal word of step `n` (1-based), capitalised: `First` … `Twelfth`, `Thirteenth` …
/// `Ninety-ninth`; `Step N` beyond. Words rather than digits, so that the only digits of a problem
/// are its counts.
pub fn ordinal(n: usize) -> String {
    const FIRST: [&str; 20] = [
        "",
        "First",
        "Second",
        "Third",
        "Fourth",
        "Fifth",
        "Sixth",
        "Seventh",
        "Eighth",
        "Ninth",
        "Tenth",
        "Eleventh",
        "Twelfth",
        "Thirteenth",
        "Fourteenth",
        "Fifteenth",
        "Sixteenth",
        "Seventeenth",
        "Eighteenth",
        "Nineteenth",
    ];
    const TENS: [&str; 10] = [
        "", "", "Twenty", "Thirty", "Forty", "Fifty", "Sixty", "Seventy", "Eighty", "Ninety",
    ];
    const TENTHS: [&str; 10] = [
        "",
        "",
        "Twentieth",
        "Thirtieth",
        "Fortieth",
        "Fiftieth",
        "Sixtieth",
        "Seventieth",
        "Eightieth",
        "Ninetieth",
    ];
    match n {
        1..=19 => FIRST[n].to_string(),
        20..=99 if n.is_multiple_of(10) => TENTHS[n / 10].to_string(),
        20..=99 => format!("{}-{}", TENS[n / 10], FIRST[n % 10].to_lowercase()),
        _ => format!("Step {n}"),
    }
}

/// How the model is prompted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Worked demonstrations (rationale, then "The answer is N.").
    FewShotCot,
    /// Demonstrations that give only the answer (the paper's standard prompting baseline).
    FewShotDirect,
    /// No demonstrations; the answer begins with "Let's think step by step." (Kojima et al.).
    ZeroShotCot,
}

/// The prompt for `p` with `shots` demonstrations (ignored for zero-shot).
pub fn prompt(p: &Problem, shots: &[Problem], style: Style) -> String {
    let mut s = String::new();
    if style != Style::ZeroShotCot {
        for d in shots {
            let a = match style {
                Style::FewShotCot => d.rationale.clone(),
                _ => format!("The answer is {}.", d.answer),
            };
            s.push_str(&format!("Q: {}\nA: {a}\n\n", d.question));
        }
    }
    s.push_str(&format!("Q: {}\nA:", p.question));
    if style == Style::ZeroShotCot {
        s.push_str(" Let's think step by step.");
    }
    s
}

/// Normalises an answer: a number is written without separators, signs or trailing zeros kept
/// canonical (`1,000.50` → `1000.5`); other text is lower-cased and trimmed of punctuation.
pub fn normalise(a: &str) -> String {
    let t = a.trim().trim_end_matches(['.', ',', '!', '?']).trim();
    let num: String = t.chars().filter(|c| *c != ',' && *c != '$').collect();
    if let Ok(x) = num.parse::<f64>()
        && x.is_finite()
    {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            return format!("{}", x as i64);
        }
        return format!("{x}");
    }
    t.to_lowercase()
}

/// The final answer in a generated rationale: the number after the last "answer is", else the
/// last number in the text.
pub fn extract_answer(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    let tail = match lower.rfind("answer is") {
        Some(i) => &text[i + "answer is".len()..],
        None => text,
    };
    let numbers = numbers_in(tail);
    let pick = if lower.contains("answer is") {
        numbers.first().cloned()
    } else {
        numbers.last().cloned()
    };
    pick.map(|n| normalise(&n))
}

fn numbers_in(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let part_of_number = c.is_ascii_digit()
            || (c == '-' && cur.is_empty() && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            || ((c == '.' || c == ',')
                && !cur.is_empty()
                && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if part_of_number {
            cur.push(c);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether a predicted answer equals the reference (as numbers where both parse, else as text).
pub fn is_correct(pred: Option<&str>, gold: &str) -> bool {
    pred.is_some_and(|p| normalise(p) == normalise(gold))
}

/// The most frequent answer (ties: the one seen first); `None` when no sample had an answer.
pub fn majority(answers: &[Option<String>]) -> Option<String> {
    let mut count: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, a) in answers.iter().enumerate() {
        if let Some(a) = a {
            let e = count.entry(a.as_str()).or_insert((0, i));
            e.0 += 1;
        }
    }
    count
        .into_iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
        .map(|(a, _)| a.to_string())
}

/// Parses a problems file: one `{"question": ..., "answer": ...}` per line (`answer` may be a
/// number); blank lines skipped. Errors name the line.
pub fn parse_problems(text: &str) -> Result<Vec<Problem>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("line {}: not valid JSON: {e}", i + 1))?;
        let question = v["question"]
            .as_str()
            .ok_or_else(|| format!("line {}: expected a string \"question\"", i + 1))?;
        let answer = match &v["answer"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "line {}: expected \"answer\" as a string or a number, found {other}",
                    i + 1
                ));
            }
        };
        out.push(Problem {
            question: question.to_string(),
            answer,
            rationale: v["rationale"].as_str().unwrap_or_default().to_string(),
            steps: v["steps"].as_u64().unwrap_or(0) as usize,
        });
    }
    if out.is_empty() {
        return Err("no problems in the file".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rationales_compute_the_answer() {
        let ps = generate(200, 1, 6, 7);
        assert_eq!(ps, generate(200, 1, 6, 7), "reproducible");
        for p in &ps {
            assert!((1..=6).contains(&p.steps));
            let n: i64 = p.answer.parse().unwrap();
            assert!((1..=999).contains(&n), "{p:?}");
            // Every "a op b = c" in the rationale is right, and the last result is the answer.
            let mut last = None;
            for eq in p.rationale.split(": ").skip(1) {
                let e: Vec<&str> = eq.split_whitespace().collect();
                let (a, op, b, c): (i64, &str, i64, i64) = (
                    e[0].parse().unwrap(),
                    e[1],
                    e[2].parse().unwrap(),
                    e[4].trim_end_matches('.').parse().unwrap(),
                );
                let want = match op {
                    "+" => a + b,
                    "-" => a - b,
                    "*" => a * b,
                    "/" => {
                        assert_eq!(a % b, 0);
                        a / b
                    }
                    _ => panic!("{op}"),
                };
                assert_eq!(want, c, "{}", p.rationale);
                last = Some(c);
            }
            assert_eq!(last.unwrap(), n, "{}", p.rationale);
            assert_eq!(
                extract_answer(&p.rationale).as_deref(),
                Some(p.answer.as_str())
            );
        }
    }

    #[test]
    fn ordinal_words() {
        let got: Vec<String> = [1, 2, 3, 12, 13, 20, 21, 42, 99, 100]
            .iter()
            .map(|&n| ordinal(n))
            .collect();
        assert_eq!(
            got,
            [
                "First",
                "Second",
                "Third",
                "Twelfth",
                "Thirteenth",
                "Twentieth",
                "Twenty-first",
                "Forty-second",
                "Ninety-ninth",
                "Step 100"
            ]
        );
    }

    #[test]
    fn rationales_restate_each_sentence_of_the_question_before_its_equation() {
        for p in generate(100, 1, 8, 11) {
            // The question's sentences, without the closing one that asks for the answer.
            let q = p.question.rsplit_once(" How many ").unwrap().0;
            let said: Vec<&str> = q.split_inclusive(". ").map(|x| x.trim()).collect();
            assert_eq!(said.len(), p.steps + 1, "{}", p.question);
            // The rationale: the first sentence, then each step's sentence with ": a op b = c."
            // in place of its full stop, then the answer.
            let mut want = said[0].to_string();
            let eqs: Vec<&str> = p
                .rationale
                .split(": ")
                .skip(1)
                .map(|e| e.split_once('.').unwrap().0)
                .collect();
            assert_eq!(eqs.len(), p.steps);
            for (i, (s, e)) in said[1..].iter().zip(&eqs).enumerate() {
                assert!(s.starts_with(&format!("{}, ", ordinal(i + 1))), "{s}");
                want.push_str(&format!(" {}: {e}.", s.trim_end_matches('.')));
            }
            want.push_str(&format!(" The answer is {}.", p.answer));
            assert_eq!(p.rationale, want);
        }
    }

    #[test]
    fn the_value_cap_bounds_every_intermediate_count() {
        assert_eq!(
            generate_capped(50, 1, 6, DEFAULT_MAX_VALUE, 3),
            generate(50, 1, 6, 3),
            "the default cap is the plain generator"
        );
        for p in generate_capped(300, 1, 6, 99, 4) {
            let counts = p
                .rationale
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .map(|w| w.parse::<i64>().unwrap());
            for c in counts {
                assert!((1..=99).contains(&c), "{c} in {}", p.rationale);
            }
        }
    }

    #[test]
    fn small_caps_and_restricted_operations() {
        let o = GenOptions {
            max_value: 20,
            ops: GenOptions::parse_ops("+,-").unwrap(),
        };
        let ps = generate_with(300, 1, 6, &o, 5).unwrap();
        assert_eq!(ps, generate_with(300, 1, 6, &o, 5).unwrap(), "reproducible");
        for p in &ps {
            assert!(!p.rationale.contains(" * ") && !p.rationale.contains(" / "));
            let counts = p
                .rationale
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .map(|w| w.parse::<i64>().unwrap());
            for c in counts {
                assert!((1..=20).contains(&c), "{c} in {}", p.rationale);
            }
            assert_eq!(extract_answer(&p.rationale), Some(p.answer.clone()));
        }
        assert!(ps.iter().any(|p| p.rationale.contains(" + ")));
        assert!(ps.iter().any(|p| p.rationale.contains(" - ")));
        // The smallest cap still generates (every count has a next step).
        let tiny = GenOptions {
            max_value: MIN_MAX_VALUE,
            ops: vec!['-', '*'],
        };
        assert_eq!(generate_with(50, 6, 6, &tiny, 1).unwrap().len(), 50);
        // The defaults are the plain generator; caps of 40+ with all operations are generate_capped.
        assert_eq!(
            generate_with(40, 1, 6, &GenOptions::default(), 9).unwrap(),
            generate(40, 1, 6, 9)
        );
        let o99 = GenOptions {
            max_value: 99,
            ..GenOptions::default()
        };
        assert_eq!(
            generate_with(40, 1, 6, &o99, 9).unwrap(),
            generate_capped(40, 1, 6, 99, 9)
        );
        // Bad options are named.
        let bad = |max_value, ops: &str| {
            generate_with(
                1,
                1,
                1,
                &GenOptions {
                    max_value,
                    ops: ops.chars().collect(),
                },
                1,
            )
            .unwrap_err()
        };
        assert!(bad(4, "+-").contains("at least 5"));
        assert!(bad(20, "+").contains("include -"));
        assert!(bad(20, "-/").contains("include -"));
        assert!(GenOptions::parse_ops("+,%").unwrap_err().contains("'%'"));
        assert_eq!(
            GenOptions::parse_ops("-, +,x").unwrap(),
            vec!['+', '-', '*']
        );
    }

    #[test]
    fn answers_are_extracted_and_compared_as_numbers() {
        assert_eq!(
            extract_answer("3 + 4 = 7. The answer is 7.").as_deref(),
            Some("7")
        );
        assert_eq!(
            extract_answer("The answer is 1,250 apples, not 3").as_deref(),
            Some("1250")
        );
        assert_eq!(extract_answer("so she has 12 left").as_deref(), Some("12"));
        assert_eq!(extract_answer("It is -3.50 now.").as_deref(), Some("-3.5"));
        assert_eq!(extract_answer("no idea"), None);
        assert!(is_correct(Some("12.0"), "12"));
        assert!(is_correct(Some("Paris"), "paris."));
        assert!(!is_correct(None, "1") && !is_correct(Some("2"), "1"));
    }

    #[test]
    fn majority_vote_counts_and_breaks_ties_by_first_seen() {
        let v = |xs: &[Option<&str>]| xs.iter().map(|x| x.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(
            majority(&v(&[Some("3"), Some("5"), Some("5"), None])).as_deref(),
            Some("5")
        );
        assert_eq!(majority(&v(&[Some("4"), Some("9")])).as_deref(), Some("4"));
        assert_eq!(majority(&v(&[None, None])), None);
    }

    #[test]
    fn prompts_and_problem_files() {
        let ps = generate(3, 2, 2, 1);
        let p = prompt(&ps[2], &ps[..2], Style::FewShotCot);
        assert!(p.contains(&ps[0].rationale) && p.ends_with("\nA:"));
        let d = prompt(&ps[2], &ps[..2], Style::FewShotDirect);
        assert!(!d.contains(&ps[0].rationale) && d.contains("The answer is"));
        assert!(prompt(&ps[0], &[], Style::ZeroShotCot).ends_with("Let's think step by step."));
        let f = parse_problems(
            "{\"question\": \"q\", \"answer\": 42}\n\n{\"question\": \"r\", \"answer\": \"x\"}",
        )
        .unwrap();
        assert_eq!(f[0].answer, "42");
        assert!(
            parse_problems("{\"question\": 1}")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse_problems("").is_err());
    }
}
