//! A held-out exercise set with unit tests (Phi-1 evaluates its models on exercises, not only on
//! loss): functions of the held-out files (those `canon data filter` never lets an arm train on)
//! whose docstrings carry doctest examples, turned into HumanEval-shaped problems. The prompt is
//! the function's imports, signature and docstring; the canonical solution is its body; the test
//! runs the docstring's examples with Python's own `doctest` against the candidate.
//!
//! A candidate becomes an exercise only when its tests can decide: the canonical body passes (twice,
//! so a nondeterministic example is dropped), a body that returns `None` fails, and the function
//! does not appear in what an arm trains on (exact, shared 13-gram or near duplicate; see `dedup`).
//! The programs are run by the caller (the HumanEval sandbox), so this module only reads text.

use std::collections::HashSet;

use canon_eval::Outcome;
use canon_eval::humaneval::Problem;
use serde::{Deserialize, Serialize};

use super::dedup::Decontaminator;

/// One exercise: a HumanEval problem (prompt = imports, signature and docstring; canonical
/// solution = the function's body; test = `check(candidate)` running the docstring's examples)
/// and where it came from. One line of `exercises.jsonl`, which `canon eval humaneval
/// --problems` reads as problems.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exercise {
    #[serde(flatten)]
    pub problem: Problem,
    /// `path` of the file (relative to its root) and the function's first line (1-based).
    pub source: String,
}

impl Exercise {
    /// The program the HumanEval harness runs for `completion`.
    pub fn program(&self, completion: &str) -> String {
        canon_eval::humaneval::program(&self.problem, completion)
    }

    /// The text an arm must not have trained on: the function itself.
    pub fn function_text(&self) -> String {
        let p = &self.problem.prompt;
        let head = p.find("def ").map_or("", |i| &p[i..]);
        format!("{head}{}", self.problem.canonical_solution)
    }
}

/// A completion that should fail any test that decides anything.
pub const TRIVIAL_BODY: &str = "    return None\n";

/// The names a one-line absolute import binds (`import a.b` binds `a`; `as` renames), or `None`
/// for what is not such a line (relative, starred, parenthesised or continued imports).
fn import_binds(line: &str) -> Option<Vec<String>> {
    let l = line.split('#').next()?.trim_end();
    if l.ends_with('(') || l.ends_with('\\') || l.contains('*') || l.contains(';') {
        return None;
    }
    let alias = |part: &str| -> Option<String> {
        let words: Vec<&str> = part.split_whitespace().collect();
        match words.as_slice() {
            [name] => Some(name.split('.').next()?.to_string()),
            [_, "as", alias] => Some(alias.to_string()),
            _ => None,
        }
    };
    if let Some(rest) = l.strip_prefix("import ") {
        return rest.split(',').map(alias).collect();
    }
    let rest = l.strip_prefix("from ")?;
    let (module, names) = rest.split_once(" import ")?;
    if module.trim().starts_with('.') || names.contains('(') {
        return None;
    }
    names
        .split(',')
        .map(|p| {
            let words: Vec<&str> = p.split_whitespace().collect();
            match words.as_slice() {
                [name] => Some(name.to_string()),
                [_, "as", alias] => Some(alias.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// The identifiers of `text` (ASCII letters, digits and underscores, not starting with a digit).
fn identifiers(text: &str) -> HashSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.chars().next().is_some_and(|c| !c.is_ascii_digit()))
        .collect()
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Where the docstring opening at `lines[i]` ends (the index of its closing line), if that line
/// starts a triple-quoted string.
fn docstring_end(lines: &[&str], i: usize) -> Option<usize> {
    let t = lines[i].trim_start();
    let t = t
        .strip_prefix(['r', 'R', 'u', 'U'])
        .filter(|s| s.starts_with("\"\"\"") || s.starts_with("'''"))
        .unwrap_or(t);
    let quote = if t.starts_with("\"\"\"") {
        "\"\"\""
    } else if t.starts_with("'''") {
        "'''"
    } else {
        return None;
    };
    if t[3..].contains(quote) {
        return Some(i);
    }
    (i + 1..lines.len()).find(|&j| lines[j].contains(quote))
}

/// The docstring as written in the source, from its prefix to its closing quotes: a Python
/// string literal that gives the same text Python gives the function (escapes included).
fn docstring_literal(lines: &[&str]) -> String {
    let joined = lines.join("\n");
    let t = joined.trim_start();
    let body = t.trim_start_matches(['r', 'R', 'u', 'U']);
    let quote = &body[..3];
    let end = body[3..].find(quote).map_or(body.len(), |k| k + 6);
    t[..t.len() - body.len() + end].to_string()
}

/// The test of a function whose docstring is the Python literal `doc`: `doctest` parses the
/// examples and runs them with the program's globals and the candidate under the function's
/// name; every example must give its expected output, and there must be at least one (a failure
/// names how many failed and the last line of `doctest`'s first report: the exception, or what
/// the example printed instead). The
/// examples are the test's own copy, not the candidate's `__doc__`, which a completion could
/// replace.
pub fn doctest_check(name: &str, doc: &str) -> String {
    format!(
        "def check(candidate):
    import doctest
    globs = dict(globals())
    globs[{name:?}] = candidate
    examples = {doc}
    test = doctest.DocTestParser().get_doctest(examples, globs, {name:?}, None, 0)
    runner = doctest.DocTestRunner(verbose=False)
    report = []
    runner.run(test, out=report.append)
    assert runner.tries > 0, 'no examples'
    last = report[0].strip().splitlines()[-1].strip() if report else ''
    assert runner.failures == 0, f'{{runner.failures}} of {{runner.tries}} examples failed ({{last}})'
"
    )
}

/// The candidates of one file: every top-level, undecorated, synchronous `def` whose docstring
/// holds a `>>>` example and whose body has at least one statement after the docstring. `source`
/// names the file in each candidate's `source` and `task_id`.
pub fn candidates(source: &str, text: &str) -> Vec<Exercise> {
    let lines: Vec<&str> = text.lines().collect();
    let imports: Vec<(&str, Vec<String>)> = lines
        .iter()
        .filter(|l| l.starts_with("import ") || l.starts_with("from "))
        .filter_map(|l| import_binds(l).map(|b| (*l, b)))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        i += 1;
        let line = lines[start];
        let Some(rest) = line.strip_prefix("def ") else {
            continue;
        };
        if start > 0 && lines[start - 1].starts_with('@') {
            continue;
        }
        let Some(name) = rest.split('(').next().map(str::trim) else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        // The signature ends at the first line (from `def`) whose brackets balance and that ends
        // with ':' (a comment after it allowed).
        let mut depth = 0i32;
        let mut sig_end = None;
        for (j, l) in lines.iter().enumerate().skip(start) {
            for c in l.chars() {
                match c {
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' => depth -= 1,
                    _ => {}
                }
            }
            if depth == 0 && l.split('#').next().unwrap_or("").trim_end().ends_with(':') {
                sig_end = Some(j);
                break;
            }
            if j > start + 20 {
                break;
            }
        }
        let Some(sig_end) = sig_end else { continue };
        let Some(doc_start) = (sig_end + 1..lines.len()).find(|&j| !lines[j].trim().is_empty())
        else {
            continue;
        };
        if indent_of(lines[doc_start]) == 0 {
            continue;
        }
        let Some(doc_end) = docstring_end(&lines, doc_start) else {
            continue;
        };
        // The body runs to the next non-blank line at column 0.
        let end = (doc_end + 1..lines.len())
            .find(|&j| !lines[j].trim().is_empty() && indent_of(lines[j]) == 0)
            .unwrap_or(lines.len());
        i = end.max(start + 1);
        let doc = docstring_literal(&lines[doc_start..=doc_end]);
        if !doc.contains(">>>") {
            continue;
        }
        let mut body_lines: Vec<&str> = lines[doc_end + 1..end].to_vec();
        while body_lines.last().is_some_and(|l| l.trim().is_empty()) {
            body_lines.pop();
        }
        let has_statement = body_lines.iter().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        });
        if !has_statement {
            continue;
        }
        let head: String = lines[start..=doc_end]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        let body: String = body_lines.iter().map(|l| format!("{l}\n")).collect();
        let used = identifiers(&head);
        let used_body = identifiers(&body);
        let mut prelude = String::new();
        for (l, binds) in &imports {
            if binds
                .iter()
                .any(|b| used.contains(b.as_str()) || used_body.contains(b.as_str()))
            {
                prelude += l.trim_end();
                prelude.push('\n');
            }
        }
        if !prelude.is_empty() {
            prelude.push_str("\n\n");
        }
        out.push(Exercise {
            problem: Problem {
                task_id: format!("Exercise/{source}:{name}"),
                prompt: format!("{prelude}{head}"),
                canonical_solution: body,
                test: doctest_check(name, &doc),
                entry_point: name.to_string(),
            },
            source: format!("{source}:{}", start + 1),
        });
    }
    out
}

/// Why a candidate did not become an exercise (counted in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Kept,
    /// The canonical body failed its own tests (a name from elsewhere in its module, an import
    /// the sandbox lacks, output that depends on the machine).
    CanonicalFails,
    /// The canonical body passed once and failed once.
    Nondeterministic,
    /// A body that returns `None` passes too: the tests decide nothing.
    TrivialPasses,
    /// The function is in the text an arm trains on.
    InTraining,
    /// The prompt is longer than the limit (a model's context must hold it).
    LongPrompt,
}

/// Runs a batch of programs to their outcomes, in order (the HumanEval sandbox's `run_many`).
pub type RunPrograms<'a> = &'a mut dyn FnMut(&[String]) -> crate::Result<Vec<Outcome>>;

/// Decides each candidate: a prompt over `max_prompt_chars` characters first, then
/// `in_training` (flagged by the decontaminator built from the candidates), then the runs. `run` gets one batch: for every candidate still in, its
/// canonical program twice and its trivial one once. Each verdict comes with the canonical
/// body's first failure (`failed: NameError: ...`, `timed out`), if it had one.
pub fn select(
    cands: &[Exercise],
    training: &[String],
    max_prompt_chars: usize,
    run: RunPrograms<'_>,
) -> crate::Result<Vec<(Verdict, Option<String>)>> {
    let mut verdict: Vec<Verdict> = cands
        .iter()
        .map(|c| {
            if c.problem.prompt.chars().count() > max_prompt_chars {
                Verdict::LongPrompt
            } else {
                Verdict::Kept
            }
        })
        .collect();
    let texts: Vec<String> = cands.iter().map(Exercise::function_text).collect();
    let d = Decontaminator::with_defaults(&texts);
    for t in training {
        for m in d.check_all(t) {
            if verdict[m.problem] == Verdict::Kept {
                verdict[m.problem] = Verdict::InTraining;
            }
        }
    }
    let live: Vec<usize> = (0..cands.len())
        .filter(|&i| verdict[i] == Verdict::Kept)
        .collect();
    let mut programs = Vec::with_capacity(live.len() * 3);
    for &i in &live {
        let c = &cands[i];
        programs.push(c.program(&c.problem.canonical_solution));
        programs.push(c.program(&c.problem.canonical_solution));
        programs.push(c.program(TRIVIAL_BODY));
    }
    let outcomes = run(&programs)?;
    if outcomes.len() != programs.len() {
        return Err(crate::ScaleError::Msg(format!(
            "exercises: {} programs run but {} outcomes returned",
            programs.len(),
            outcomes.len()
        )));
    }
    let mut out: Vec<(Verdict, Option<String>)> = verdict.into_iter().map(|v| (v, None)).collect();
    for (k, &i) in live.iter().enumerate() {
        let o = &outcomes[3 * k..3 * k + 3];
        out[i].0 = match (o[0].passed(), o[1].passed()) {
            (false, false) => Verdict::CanonicalFails,
            (true, false) | (false, true) => Verdict::Nondeterministic,
            (true, true) if o[2].passed() => Verdict::TrivialPasses,
            (true, true) => Verdict::Kept,
        };
        out[i].1 = o[..2]
            .iter()
            .find(|o| !o.passed())
            .map(Outcome::result_string);
    }
    Ok(out)
}

/// One candidate's line of `exercises-candidates.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateRow {
    pub task_id: String,
    pub source: String,
    pub verdict: Verdict,
    /// The canonical body's failure, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// What `build` made: the exercises (manifest order) and, for every candidate, its verdict.
pub struct Built {
    pub exercises: Vec<Exercise>,
    /// Every candidate, in manifest order.
    pub candidates: Vec<CandidateRow>,
    pub report: serde_json::Value,
}

/// The exercise set of a `canon data filter` folder: the files of `manifest.jsonl` (with
/// `held_out_only`, only the held-out ones: every tenth, as the filter split them), read again
/// from their roots (`root_of`) and checked against the manifest's SHA-256 (a file changed since
/// is skipped and counted); the candidates of every file, deduplicated by function text;
/// `select`ed against the text of every arm (`snippets.jsonl`'s training pool and
/// `synthetic.jsonl`), so that no arm has seen an exercise's function, with `run` (prompts of at
/// most `max_prompt_chars` characters); then at most
/// `max` of the kept ones (0: all), a seeded sample kept in manifest order.
pub fn build(
    data: &std::path::Path,
    root_of: &dyn Fn(super::corpus::Origin) -> crate::Result<std::path::PathBuf>,
    held_out_only: bool,
    max_prompt_chars: usize,
    max: usize,
    seed: u64,
    run: RunPrograms<'_>,
) -> crate::Result<Built> {
    use super::corpus::{ManifestEntry, sha256_hex};
    let mpath = data.join("manifest.jsonl");
    let text = std::fs::read_to_string(&mpath).map_err(|e| crate::ScaleError::Io {
        path: format!(
            "cannot read {} (run canon data filter first)",
            mpath.display()
        ),
        message: e.to_string(),
    })?;
    let mut manifest = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let m: ManifestEntry = serde_json::from_str(l).map_err(|e| crate::ScaleError::Io {
            path: format!("{} line {}: not a manifest entry", mpath.display(), i + 1),
            message: e.to_string(),
        })?;
        manifest.push(m);
    }
    let (mut read, mut changed) = (0usize, 0usize);
    let mut cands: Vec<Exercise> = Vec::new();
    let mut seen_text = HashSet::new();
    let mut seen_id = HashSet::new();
    let mut held_out = HashSet::new();
    for (i, m) in manifest.iter().enumerate() {
        let held = i.is_multiple_of(10);
        if held_out_only && !held {
            continue;
        }
        let path = root_of(m.origin)?.join(&m.path);
        let Ok(t) = std::fs::read_to_string(&path) else {
            changed += 1;
            continue;
        };
        if sha256_hex(&t) != m.sha256 {
            changed += 1;
            continue;
        }
        read += 1;
        for mut c in candidates(&m.path, &t) {
            if !seen_text.insert(super::dedup::normalise(&c.function_text())) {
                continue;
            }
            if !seen_id.insert(c.problem.task_id.clone()) {
                let line = c.source.rsplit(':').next().unwrap_or("");
                c.problem.task_id = format!("{}@{line}", c.problem.task_id);
            }
            if held {
                held_out.insert(cands.len());
            }
            cands.push(c);
        }
    }
    let (arms, _) = super::pipeline::compare_inputs(data)?;
    let mut training: Vec<String> = Vec::new();
    let mut seen_doc = HashSet::new();
    for d in arms.into_iter().flat_map(|a| a.docs) {
        if seen_doc.insert(super::corpus::sha256_hex(&d)) {
            training.push(d);
        }
    }
    let decided = select(&cands, &training, max_prompt_chars, run)?;
    let verdict: Vec<Verdict> = decided.iter().map(|d| d.0).collect();
    let mut kept: Vec<usize> = (0..cands.len())
        .filter(|&i| verdict[i] == Verdict::Kept)
        .collect();
    let passing = kept.len();
    if max > 0 && kept.len() > max {
        let mut rng = canon_nn::SplitMix64::new(seed);
        for i in (1..kept.len()).rev() {
            kept.swap(i, rng.below(i + 1));
        }
        kept.truncate(max);
        kept.sort_unstable();
    }
    let count = |v: Verdict| verdict.iter().filter(|&&x| x == v).count();
    let report = serde_json::json!({
        "files": if held_out_only { "held-out" } else { "all" },
        "manifest_files": manifest.len(),
        "files_read": read,
        "files_changed_or_missing": changed,
        "candidates": cands.len(),
        "long_prompt": count(Verdict::LongPrompt),
        "max_prompt_chars": max_prompt_chars,
        "in_training": count(Verdict::InTraining),
        "canonical_fails": count(Verdict::CanonicalFails),
        "nondeterministic": count(Verdict::Nondeterministic),
        "trivial_passes": count(Verdict::TrivialPasses),
        "passing": passing,
        "exercises": kept.len(),
        "exercises_from_held_out_files": kept.iter().filter(|i| held_out.contains(*i)).count(),
        "max": max,
        "seed": seed,
        "training_texts": training.len(),
    });
    let rows = cands
        .iter()
        .zip(decided)
        .map(|(c, (verdict, failure))| CandidateRow {
            task_id: c.problem.task_id.clone(),
            source: c.source.clone(),
            verdict,
            failure,
        })
        .collect();
    Ok(Built {
        exercises: kept.into_iter().map(|i| cands[i].clone()).collect(),
        candidates: rows,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#""""A module."""
import math
import os.path as osp
from collections import OrderedDict, deque as dq
from .sibling import helper

CONST = 3


def hyp(a, b):
    """Length of the hypotenuse.

    >>> hyp(3, 4)
    5.0
    """
    return math.sqrt(a * a + b * b)


@decorated
def skipped(x):
    """>>> skipped(1)
    1
    """
    return x


def no_examples(x):
    """Just prose."""
    return x


def multi(
    xs,  # a list
    k=2,
):
    r'''Scales.

    >>> multi([1, 2])
    [2, 4]
    '''
    # a comment
    out = dq()
    for x in xs:
        out.append(x * k)

    return list(out)

class C:
    def method(self):
        """>>> 1
        1
        """
        return 1

def only_doc(x):
    """>>> only_doc(1)"""
"#;

    #[test]
    fn candidates_are_top_level_functions_with_examples() {
        let c = candidates("m.py", FILE);
        let names: Vec<&str> = c.iter().map(|e| e.problem.entry_point.as_str()).collect();
        assert_eq!(names, ["hyp", "multi"]);
        let h = &c[0].problem;
        assert_eq!(h.task_id, "Exercise/m.py:hyp");
        assert_eq!(c[0].source, "m.py:10");
        assert_eq!(
            h.prompt,
            "import math\n\n\ndef hyp(a, b):\n    \"\"\"Length of the hypotenuse.\n\n    >>> hyp(3, 4)\n    5.0\n    \"\"\"\n"
        );
        assert_eq!(
            h.canonical_solution,
            "    return math.sqrt(a * a + b * b)\n"
        );
        assert!(h.test.contains("def check(candidate):"));
        assert!(h.test.contains(
            "    examples = \"\"\"Length of the hypotenuse.\n\n    >>> hyp(3, 4)\n    5.0\n    \"\"\"\n"
        ));
        assert!(c[1].problem.test.contains("    examples = r'''Scales.\n"));
        let m = &c[1].problem;
        // Only the import it uses, and the body through its blank line to its last statement.
        assert!(
            m.prompt
                .starts_with("from collections import OrderedDict, deque as dq\n\n\ndef multi(\n")
        );
        assert!(m.prompt.ends_with("    '''\n"));
        assert_eq!(
            m.canonical_solution,
            "    # a comment\n    out = dq()\n    for x in xs:\n        out.append(x * k)\n\n    return list(out)\n"
        );
        assert_eq!(
            c[1].function_text(),
            format!(
                "{}{}",
                &m.prompt[m.prompt.find("def ").unwrap()..],
                m.canonical_solution
            )
        );
    }

    #[test]
    fn imports_bind_the_names_python_binds() {
        assert_eq!(import_binds("import os.path"), Some(vec!["os".into()]));
        assert_eq!(
            import_binds("import a, b as c"),
            Some(vec!["a".into(), "c".into()])
        );
        assert_eq!(
            import_binds("from x.y import p, q as r  # note"),
            Some(vec!["p".into(), "r".into()])
        );
        assert_eq!(import_binds("from . import p"), None);
        assert_eq!(import_binds("from x import *"), None);
        assert_eq!(import_binds("from x import (a,"), None);
    }

    #[test]
    fn selection_needs_a_deciding_deterministic_test_and_unseen_code() {
        let mut c = candidates("m.py", FILE);
        for (i, name) in [(0, "third"), (1, "fourth")] {
            let mut e = c[i].clone();
            e.problem.entry_point = name.into();
            c.push(e);
        }
        // `multi` (index 1 and 3) appears verbatim in the training text.
        let training = vec![format!("x = 1\n{}\ny = 2\n", c[1].function_text())];
        let mut seen = Vec::new();
        let o = |p: &[bool]| -> Vec<Outcome> {
            p.iter()
                .map(|&ok| {
                    if ok {
                        Outcome::Passed
                    } else {
                        Outcome::Failed("AssertionError".into())
                    }
                })
                .collect()
        };
        let verdicts = |d: Vec<(Verdict, Option<String>)>| -> Vec<Verdict> {
            d.into_iter().map(|(v, _)| v).collect()
        };
        let d = select(&c, &training, 10_000, &mut |progs| {
            seen = progs.to_vec();
            // hyp: canonical passes twice, trivial fails; third: canonical passes once.
            Ok(o(&[true, true, false, true, false, false]))
        })
        .unwrap();
        assert_eq!(d[2].1.as_deref(), Some("failed: AssertionError"));
        assert_eq!(d[0].1, None);
        assert_eq!(
            verdicts(d),
            [
                Verdict::Kept,
                Verdict::InTraining,
                Verdict::Nondeterministic,
                Verdict::InTraining
            ]
        );
        assert_eq!(seen.len(), 6);
        assert!(seen[2].contains(TRIVIAL_BODY));
        assert!(seen[0].ends_with("check(hyp)"));
        let v = select(&c[..1], &[], 10_000, &mut |_| Ok(o(&[true, true, true]))).unwrap();
        assert_eq!(verdicts(v), [Verdict::TrivialPasses]);
        let v = select(&c[..1], &[], 10_000, &mut |_| Ok(o(&[false, false, false]))).unwrap();
        assert_eq!(verdicts(v), [Verdict::CanonicalFails]);
        assert!(select(&c[..1], &[], 10_000, &mut |_| Ok(o(&[true]))).is_err());
        // A prompt over the limit is not run.
        let long = c[0].problem.prompt.chars().count() - 1;
        let v = select(&c[..1], &[], long, &mut |p| Ok(o(&vec![true; p.len()]))).unwrap();
        assert_eq!(verdicts(v), [Verdict::LongPrompt]);
    }

    #[test]
    fn real_doctests_decide_in_the_sandbox() {
        let sb = canon_eval::Sandbox::new(canon_eval::SandboxConfig::default()).unwrap();
        let c = candidates("m.py", FILE);
        let runs = |e: &Exercise, completion: &str| sb.run(&e.program(completion)).unwrap();
        for e in &c {
            let ok = runs(e, &e.problem.canonical_solution);
            assert!(ok.passed(), "{}: {ok:?}", e.problem.entry_point);
            assert!(!runs(e, TRIVIAL_BODY).passed());
        }
        // A wrong answer fails; so does a completion that redefines the function with examples
        // of its own (the test keeps its own copy of the docstring).
        assert!(!runs(&c[0], "    return a + b\n").passed());
        let cheat =
            "    return 0\n\ndef hyp(a, b):\n    \"\"\">>> 1\n    1\n    \"\"\"\n    return 0\n";
        assert!(!runs(&c[0], cheat).passed());
        // A body that needs a name its module defined elsewhere fails on its own.
        let orphan = candidates(
            "o.py",
            "def f(x):\n    \"\"\"\n    >>> f(2)\n    6\n    \"\"\"\n    return x * CONST\n",
        );
        assert!(!runs(&orphan[0], &orphan[0].problem.canonical_solution).passed());
        let v = select(&orphan, &[], 10_000, &mut |p| {
            Ok(p.iter().map(|p| sb.run(p).unwrap()).collect())
        })
        .unwrap();
        assert_eq!(v[0].0, Verdict::CanonicalFails);
        let why = v[0].1.as_deref().unwrap();
        assert!(
            why.contains("1 of 1 examples failed (NameError: name 'CONST' is not defined)"),
            "{why}"
        );
    }
}
