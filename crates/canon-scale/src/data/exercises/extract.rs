//! Candidates from a Python file's text: top-level functions with doctest examples, their
//! imports, and the doctest-running test of each.

use std::collections::HashSet;

use canon_eval::humaneval::Problem;

use super::Exercise;

/// The names a one-line absolute import binds (`import a.b` binds `a`; `as` renames), or `None`
/// for what is not such a line (relative, starred, parenthesised or continued imports).
pub(super) fn import_binds(line: &str) -> Option<Vec<String>> {
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
