use super::extract::import_binds;
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
