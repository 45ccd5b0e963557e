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
mod tests;
