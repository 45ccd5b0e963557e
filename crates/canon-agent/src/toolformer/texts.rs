//! Toolformer's corpus: arithmetic and date texts from the package database, and the few-shot
//! prompts that annotate them.

use serde::{Deserialize, Serialize};

use super::first_number;

/// One text of the arithmetic corpus: the number at its end is computed from numbers before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Text {
    pub id: String,
    pub split: String,
    pub text: String,
    /// The text up to the computed number (for held-out evaluation).
    pub prefix: String,
    pub answer: String,
    /// The expression that computes the answer (the call's arguments; empty for `Calendar()`).
    pub expression: String,
    /// The tool whose call the text needs: `Calculator` or `Calendar`.
    #[serde(default = "calculator_name")]
    pub tool: String,
    /// The text's "today" (`YYYY-MM-DD`), what `Calendar()` returns for it.
    #[serde(default)]
    pub date: Option<String>,
}

fn calculator_name() -> String {
    "Calculator".into()
}

impl Text {
    /// What follows the answer in the text (`" kB."`, `"."`, ...).
    pub fn suffix(&self) -> &str {
        self.text
            .get(self.prefix.len() + 1 + self.answer.len()..)
            .unwrap_or("")
    }
    /// The text's date, when it has one.
    pub fn today(&self) -> Option<chrono::NaiveDate> {
        self.date
            .as_deref()
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    }
    /// Whether a continuation of `prefix` states the answer: the first number for a numeric
    /// answer, else the continuation's start.
    pub fn states_answer(&self, continuation: &str) -> bool {
        let numeric = self
            .answer
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
        if numeric {
            first_number(continuation).as_deref() == Some(self.answer.as_str())
        } else {
            continuation.trim_start().starts_with(&self.answer)
        }
    }
}

/// Arithmetic-in-text sentences from the package database's installed sizes: sums, differences,
/// ratios (2 decimals) and means of packages' sizes. Split by the first package named (one in
/// `test_every` to test). `n` texts at most, in a seeded order.
pub fn arithmetic_texts(status: &str, n: usize, seed: u64, test_every: u64) -> Vec<Text> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let mut sizes: Vec<(String, i128)> = Vec::new();
    for block in status.split("\n\n") {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        if let (Some(p), Some(sz)) = (field("Package:"), field("Installed-Size:"))
            && let Ok(v) = sz.parse::<i128>()
            && v > 0
        {
            sizes.push((p, v));
        }
    }
    sizes.sort();
    sizes.dedup_by(|a, b| a.0 == b.0);
    let mut out = Vec::new();
    if sizes.len() < 3 {
        return out;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tries = 0;
    while out.len() < n && tries < n * 20 {
        tries += 1;
        let pick = |rng: &mut rand::rngs::StdRng| sizes[rng.random_range(0..sizes.len())].clone();
        let (a, sa) = pick(&mut rng);
        let (b, sb) = pick(&mut rng);
        if a == b {
            continue;
        }
        let kind = rng.random_range(0..4u8);
        let (prefix, answer, expression) = match kind {
            0 => (
                format!(
                    "The packages {a} and {b} take {sa} kB and {sb} kB once installed, so together they take"
                ),
                (sa + sb).to_string(),
                format!("{sa} + {sb}"),
            ),
            1 if sa > sb => (
                format!("Installed, {a} takes {sa} kB and {b} takes {sb} kB, so {a} is larger by"),
                (sa - sb).to_string(),
                format!("{sa} - {sb}"),
            ),
            2 if sa > sb => {
                let e = format!("{sa} / {sb}");
                let Ok(r) = crate::tools::evaluate(&e) else {
                    continue;
                };
                (
                    format!(
                        "{a} takes {sa} kB and {b} takes {sb} kB, so {a} is larger by a factor of"
                    ),
                    r.decimal(2),
                    e,
                )
            }
            3 => {
                let (c, sc) = pick(&mut rng);
                if c == a || c == b {
                    continue;
                }
                let e = format!("({sa} + {sb} + {sc}) / 3");
                let Ok(r) = crate::tools::evaluate(&e) else {
                    continue;
                };
                (
                    format!(
                        "The packages {a}, {b} and {c} take {sa}, {sb} and {sc} kB, so on average each takes"
                    ),
                    r.decimal(2),
                    e,
                )
            }
            _ => continue,
        };
        let unit = if kind == 2 { "." } else { " kB." };
        out.push(Text {
            id: format!("t{}", out.len()),
            split: crate::react_data::split_of(&a, test_every).into(),
            text: format!("{prefix} {answer}{unit}"),
            prefix,
            answer,
            expression,
            tool: calculator_name(),
            date: None,
        });
    }
    out.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 1));
    out
}

/// Texts whose continuation needs the date (the paper's Calendar API): each has its own "today"
/// (a seeded date in 2000–2029) and names a package from the package database; the continuation
/// is that day's date, weekday, year or month. `Calendar()` returns the date as
/// `Thursday, March 9, 2023`. Split by the package named (one in `test_every` to test).
pub fn calendar_texts(status: &str, n: usize, seed: u64, test_every: u64) -> Vec<Text> {
    use rand::{Rng, SeedableRng};
    let mut names: Vec<String> = status
        .split("\n\n")
        .filter_map(|b| {
            b.lines()
                .find_map(|l| l.strip_prefix("Package:").map(|v| v.trim().to_string()))
        })
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    if names.is_empty() {
        return out;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xca1e);
    let Some(base) = chrono::NaiveDate::from_ymd_opt(2000, 1, 1) else {
        return out;
    };
    for i in 0..n {
        let a = &names[rng.random_range(0..names.len())];
        let d = base + chrono::Duration::days(rng.random_range(0..10_957i64));
        let long = crate::tools::long_date(d);
        let (prefix, answer, suffix) = match rng.random_range(0..5u8) {
            0 => (
                format!("The package {a} was upgraded today,"),
                long,
                ".".to_string(),
            ),
            1 => (
                "Today is".to_string(),
                long,
                format!(", and {a} needs an update."),
            ),
            2 => (
                format!("I am writing this note about {a} on a"),
                d.format("%A").to_string(),
                ".".to_string(),
            ),
            3 => (
                format!("The package {a} was installed this year, in"),
                d.format("%Y").to_string(),
                ".".to_string(),
            ),
            _ => (
                format!("The changelog of {a} got a new entry this month, in"),
                d.format("%B").to_string(),
                ".".to_string(),
            ),
        };
        out.push(Text {
            id: format!("d{i}"),
            split: crate::react_data::split_of(a, test_every).into(),
            text: format!("{prefix} {answer}{suffix}"),
            prefix,
            answer,
            expression: String::new(),
            tool: "Calendar".into(),
            date: Some(d.format("%Y-%m-%d").to_string()),
        });
    }
    out
}

/// The few-shot annotation prompt `P(x)` for the text's tool: [`calculator_prompt`] or
/// [`calendar_prompt`].
pub fn annotation_prompt(tool: &str, demos: &[&Text], x: &str) -> String {
    if tool.eq_ignore_ascii_case("calendar") {
        calendar_prompt(demos, x)
    } else {
        calculator_prompt(demos, x)
    }
}

/// The few-shot annotation prompt `P(x)` for the calendar; demonstrations are train texts with
/// `[Calendar()]` inserted before the date (`demos`: at most 3 are used).
pub fn calendar_prompt(demos: &[&Text], x: &str) -> String {
    let mut s = String::from(
        "Add calls to a Calendar where the text needs today's date. \
Write [Calendar()] just before the part of the text that the date tells.\n\n",
    );
    for d in demos.iter().take(3) {
        s.push_str(&format!(
            "Input:\n{}\nOutput:\n{} [Calendar()] {}{}\n\n",
            d.text,
            d.prefix,
            d.answer,
            d.suffix()
        ));
    }
    s.push_str(&format!("Input:\n{x}\nOutput:\n"));
    s
}

/// The few-shot annotation prompt `P(x)` for the calculator; demonstrations are train texts with
/// their call inserted (`demos`: at most 3 are used).
pub fn calculator_prompt(demos: &[&Text], x: &str) -> String {
    let mut s = String::from(
        "Add calls to a Calculator where a number in the text is computed from numbers before it. \
Write [Calculator(expression)] just before the computed number, with the expression that gives it.\n\n",
    );
    for d in demos.iter().take(3) {
        s.push_str(&format!(
            "Input:\n{}\nOutput:\n{} [Calculator({})] {}{}\n\n",
            d.text,
            d.prefix,
            d.expression,
            d.answer,
            d.suffix()
        ));
    }
    s.push_str(&format!("Input:\n{x}\nOutput:\n"));
    s
}
