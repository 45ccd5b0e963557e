//! Running a synthetic exercise's own tests. An exercise is a Python function with a docstring and
//! assert statements (the prompt asks for that); a generating model often writes asserts that
//! fail, tests that call nothing, or prose where code belongs. Before an exercise joins the
//! training text its code runs in the HumanEval sandbox, and it is kept only when
//!
//! - it defines a function or class at the top level and has an `assert` that calls one of them;
//! - the program (the fenced code blocks, or the whole reply when there are none, run with
//!   `__name__ == "__main__"` so guarded tests run too) ends without an exception;
//! - the same program with every tested function replaced by one that returns `None` (rebound
//!   right after its definition) fails: tests a do-nothing body passes decide nothing.

use canon_eval::Outcome;

use crate::data::exercises::RunPrograms;

/// What running an exercise's tests found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its tests pass and a `None` body fails them.
    Passed,
    /// No top-level `def` or `class` in its code.
    NoFunction,
    /// No `assert` that calls a function or class it defines.
    NoTests,
    /// The program raised (the exception, e.g. `AssertionError`, `SyntaxError: ...`) or timed out.
    Failed(String),
    /// A `None` body passes the tests too.
    Trivial,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Passed)
    }

    /// The report's key for this verdict.
    pub fn key(&self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::NoFunction => "no_function",
            Verdict::NoTests => "no_tests",
            Verdict::Failed(_) => "failed",
            Verdict::Trivial => "trivial",
        }
    }
}

/// The Python code of a reply: its fenced blocks (untagged or tagged python/py/python3) joined,
/// or the whole reply when it has none. A block cut off by the token limit is kept as far as it
/// goes.
pub fn code_of(reply: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut cur: Option<(bool, String)> = None;
    for line in reply.lines() {
        let t = line.trim_start();
        if let Some(tag) = t.strip_prefix("```") {
            match cur.take() {
                Some((keep, text)) => {
                    if keep {
                        blocks.push(text);
                    }
                }
                None => {
                    let tag = tag.trim().to_ascii_lowercase();
                    let keep = matches!(tag.as_str(), "" | "python" | "py" | "python3");
                    cur = Some((keep, String::new()));
                }
            }
            continue;
        }
        if let Some((_, text)) = cur.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((true, text)) = cur {
        blocks.push(text);
    }
    if blocks.is_empty() && !reply.contains("```") {
        return format!("{}\n", reply.trim_end());
    }
    blocks.concat()
}

/// A top-level `def`/`async def`/`class` line's name.
fn defined_name(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("def ")
        .or_else(|| line.strip_prefix("async def "))
        .or_else(|| line.strip_prefix("class "))?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// Whether `text` calls `name`: `name(` not preceded by an identifier character or a dot.
fn calls(text: &str, name: &str) -> bool {
    let pat = format!("{name}(");
    text.match_indices(&pat).any(|(i, _)| {
        text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'))
    })
}

/// A line that starts a new top-level statement (and so ends the block above it): not indented,
/// not blank, not a comment, not a closing bracket of a multi-line signature or call.
fn top_level(line: &str) -> bool {
    line.chars()
        .next()
        .is_some_and(|c| !c.is_whitespace() && !matches!(c, '#' | ')' | ']' | '}'))
}

/// The programs an exercise's check runs: its code, and its code with every tested function or
/// class rebound to a `None`-returning function right after its definition. `Err` is the
/// verdict when there is nothing to run.
pub fn programs(reply: &str) -> Result<(String, String), Verdict> {
    let code = code_of(reply);
    let lines: Vec<&str> = code.lines().collect();
    let defined: Vec<&str> = lines.iter().filter_map(|l| defined_name(l)).collect();
    if defined.is_empty() {
        return Err(Verdict::NoFunction);
    }
    let asserts: Vec<&str> = lines
        .iter()
        .map(|l| l.trim_start())
        .filter(|l| l.starts_with("assert ") || l.starts_with("assert("))
        .collect();
    let tested: Vec<&str> = defined
        .iter()
        .copied()
        .filter(|n| !n.starts_with("test") && asserts.iter().any(|a| calls(a, n)))
        .collect();
    if tested.is_empty() {
        return Err(Verdict::NoTests);
    }
    let head = "__name__ = \"__main__\"\n";
    let program = format!("{head}{code}");
    let mut mutant = String::from(head);
    let mut pending: Option<&str> = None;
    for l in &lines {
        if let Some(name) = pending
            && top_level(l)
        {
            mutant.push_str(&format!("{name} = lambda *_a, **_k: None\n"));
            pending = None;
        }
        mutant.push_str(l);
        mutant.push('\n');
        if let Some(n) = defined_name(l)
            && tested.contains(&n)
        {
            pending = Some(n);
        }
    }
    if let Some(name) = pending {
        mutant.push_str(&format!("{name} = lambda *_a, **_k: None\n"));
    }
    Ok((program, mutant))
}

/// Runs every reply's check in one batch (its program and its mutant, in order) and returns
/// each reply's verdict.
pub fn verify(replies: &[&str], run: RunPrograms<'_>) -> crate::Result<Vec<Verdict>> {
    let planned: Vec<Result<(String, String), Verdict>> =
        replies.iter().map(|r| programs(r)).collect();
    let mut batch = Vec::new();
    for (p, m) in planned.iter().flatten() {
        batch.push(p.clone());
        batch.push(m.clone());
    }
    let outcomes = if batch.is_empty() {
        Vec::new()
    } else {
        run(&batch)?
    };
    if outcomes.len() != batch.len() {
        return Err(crate::ScaleError::Msg(format!(
            "sandbox returned {} outcomes for {} programs",
            outcomes.len(),
            batch.len()
        )));
    }
    // One (program, mutant) pair of outcomes per runnable reply, in order (lengths checked).
    let mut pairs = outcomes.chunks_exact(2);
    Ok(planned
        .into_iter()
        .map(|p| {
            if let Err(v) = p {
                return v;
            }
            // Only a runnable reply takes a pair.
            let Some([prog, mutant]) = pairs.next() else {
                return Verdict::Failed("no outcome from the sandbox".into());
            };
            let broken = |o: &Outcome| {
                let r = o.result_string();
                r.starts_with("failed: SyntaxError") || r.starts_with("failed: IndentationError")
            };
            if !prog.passed() {
                Verdict::Failed(prog.result_string())
            } else if broken(mutant) {
                // The rebinding landed inside a statement this line-based reading did not
                // see (a string at column 0 in a body): the check decides nothing.
                Verdict::Failed(format!(
                    "the None-body check did not compile ({})",
                    mutant.result_string()
                ))
            } else if mutant.passed() {
                Verdict::Trivial
            } else {
                Verdict::Passed
            }
        })
        .collect())
}
