//! The synthesis's tests: generation filters, prompts, options, and the exercise check.

use super::*;

fn default_topics() -> Vec<String> {
    TOPICS.iter().map(|t| t.to_string()).collect()
}
/// Replays fixed outputs, batch by batch, and records the batch sizes.
fn scripted<'a>(
    outs: &'a [String],
    sizes: &'a mut Vec<usize>,
) -> impl FnMut(&[GenerateRequest]) -> Result<Vec<String>> + 'a {
    let mut next = 0;
    move |reqs: &[GenerateRequest]| {
        sizes.push(reqs.len());
        let t = outs[next..next + reqs.len()].to_vec();
        next += reqs.len();
        Ok(t)
    }
}

#[test]
fn contaminated_and_duplicate_generations_are_dropped() {
    let problem = "def add(x, y):\n    \"\"\"Add two numbers x and y.\"\"\"\n    return x + y\n";
    let deco = Decontaminator::with_defaults(&[problem.to_string()]);
    let outs: Vec<String> = vec![
        "def rev(xs):\n    \"\"\"Reverse xs.\"\"\"\n    return xs[::-1]\n".into(),
        "def rev(xs):\n    \"\"\"Reverse xs.\"\"\"\n    return xs[::-1]\n".into(), // duplicate
        format!("Here is code:\n{problem}"),                                       // contaminated
        "   ".into(),                                                              // empty
        "def sq(n):\n    return n * n\n".into(),
    ];
    let mut outs = outs;
    // Past the first batch, so batches of BATCH and the remainder are exercised.
    for k in 0..BATCH {
        outs.push(format!("def f{k}():\n    return {k}\n"));
    }
    let mut sizes = Vec::new();
    let mut g = scripted(&outs, &mut sizes);
    let mut calls = 0;
    let rep = generate(
        &mut g,
        &default_topics(),
        &|s| Ok(s.to_string()),
        outs.len(),
        50,
        1,
        &deco,
        &mut |_| calls += 1,
    )
    .unwrap();
    drop(g);
    assert_eq!(sizes, vec![BATCH, 5]);
    assert_eq!(calls, 5 + BATCH);
    assert_eq!(rep.kept.len(), 2 + BATCH);
    assert_eq!(rep.duplicates, 1);
    assert_eq!(rep.contaminated, vec![(2, 0)]);
    assert_eq!(rep.empty, 1);
    assert_eq!(rep.kept[1].index, 4);
}

#[test]
fn prompts_rotate_topics_and_kinds() {
    let topics = default_topics();
    let (k0, t0, _) = prompt(&topics, 0);
    let (k1, t1, _) = prompt(&topics, 1);
    let (k2, _, p2) = prompt(&topics, TOPICS.len());
    assert_eq!(k0, SynthKind::Textbook);
    assert_ne!(t0, t1);
    assert_eq!(k1, SynthKind::Textbook);
    assert_eq!(k2, SynthKind::Exercise);
    assert!(p2.contains("assert"));
}

#[test]
fn counts_must_be_positive() {
    let mut o = SynthOpts {
        out: "out".into(),
        model: "m".into(),
        n: 1,
        max_tokens: 8,
        seed: 0,
        verify: true,
        topics: default_topics(),
    };
    assert!(o.check().is_ok());
    o.n = 0;
    let e = o.check().unwrap_err().to_string();
    assert_eq!(e, "--n and --max-tokens must be positive");
}

use super::verify::{Verdict, code_of, programs};

#[test]
fn code_is_read_from_python_fences_or_the_whole_reply() {
    let fenced = "Here it is:\n```python\ndef f(x):\n    return x\n```\nAnd tests:\n```\nassert f(1) == 1\n```\n```text\nnot code\n```\n";
    assert_eq!(
        code_of(fenced),
        "def f(x):\n    return x\nassert f(1) == 1\n"
    );
    // No fences: the reply is the code.
    assert_eq!(code_of("def f():\n    pass\n\n"), "def f():\n    pass\n");
    // A block cut off by the token limit is kept as far as it goes.
    assert_eq!(code_of("```py\ndef f():\n    ret"), "def f():\n    ret\n");
    // Fences with no Python in them: no code.
    assert_eq!(code_of("```bash\nls\n```\n"), "");
}

#[test]
fn nothing_to_run_is_a_verdict() {
    assert_eq!(programs("just prose, no code"), Err(Verdict::NoFunction));
    // Asserts that call nothing the exercise defines, or only a test function.
    assert_eq!(
        programs("def f(x):\n    return x\nassert len([1]) == 1\n"),
        Err(Verdict::NoTests)
    );
    assert_eq!(
        programs("def test_f():\n    assert 1 == 1\ntest_f()\n"),
        Err(Verdict::NoTests)
    );
    // `obj.f(` and `my_f(` are not calls of `f`.
    assert_eq!(
        programs("def f(x):\n    return x\nassert obj.f(1) and my_f(2)\n"),
        Err(Verdict::NoTests)
    );
}

#[test]
fn the_mutant_rebinds_each_tested_function_after_its_block() {
    let code = "import math\n\n@cache\ndef area(\n    r,\n):\n    \"\"\"Area.\"\"\"\n    return math.pi * r * r\n\n# helper\n@cache\ndef helper(): return 1\n\nif __name__ == \"__main__\":\n    assert area(1) > 3\n";
    let (prog, mutant) = programs(code).unwrap();
    assert!(prog.starts_with("__name__ = \"__main__\"\n"));
    assert!(prog.ends_with(code));
    // Rebound before the next decorator, not inside the signature's closing line; `helper` is
    // not tested and keeps its body.
    assert!(mutant.contains(
        "    return math.pi * r * r\n\n# helper\narea = lambda *_a, **_k: None\n@cache\ndef helper(): return 1\n"
    ));
    assert!(!mutant.contains("helper = lambda"));
    // A tested function last in the file is rebound at the end.
    let (_, m) = programs("assert g(2) == 4\ndef g(x): return x * x").unwrap();
    assert!(m.ends_with("def g(x): return x * x\ng = lambda *_a, **_k: None\n"));
}

#[test]
fn keep_verified_drops_exercises_whose_check_fails_and_keeps_textbook_passages() {
    let item = |index, kind, text: &str| SynthItem {
        index,
        kind,
        topic: "t".into(),
        text: text.into(),
    };
    let good = "def f(x):\n    return x + 1\nassert f(1) == 2\n";
    let mut items = vec![
        item(0, SynthKind::Textbook, "prose"),
        item(1, SynthKind::Exercise, good),
        item(2, SynthKind::Exercise, "no code here"),
        item(3, SynthKind::Exercise, good),
        item(4, SynthKind::Exercise, good),
    ];
    // Scripted outcomes for the three runnable exercises: (program, mutant) pairs.
    use canon_eval::Outcome;
    let script = vec![
        Outcome::Passed,
        Outcome::Failed("AssertionError".into()),
        Outcome::Failed("AssertionError".into()),
        Outcome::Failed("AssertionError".into()),
        Outcome::Passed,
        Outcome::Passed,
    ];
    let mut batches = 0;
    let mut run = |p: &[String]| {
        batches += 1;
        assert_eq!(p.len(), 6);
        Ok(script.clone())
    };
    let checks = keep_verified(&mut items, &mut run).unwrap();
    assert_eq!(batches, 1);
    let kept: Vec<usize> = items.iter().map(|k| k.index).collect();
    assert_eq!(kept, vec![0, 1]);
    let verdicts: Vec<(&str, Option<&str>)> = checks
        .iter()
        .map(|c| (c.verdict.as_str(), c.reason.as_deref()))
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("passed", None),
            ("no_function", None),
            ("failed", Some("failed: AssertionError")),
            ("trivial", None),
        ]
    );
    // A runner that loses outcomes is an error, not a shifted verdict.
    let mut short = |_: &[String]| Ok(vec![Outcome::Passed]);
    let mut again = vec![item(1, SynthKind::Exercise, good)];
    assert!(keep_verified(&mut again, &mut short).is_err());
}

/// The checks in the real sandbox: the verdicts come from running Python.
#[test]
fn exercises_run_in_the_sandbox() {
    let sb = canon_eval::Sandbox::new(canon_eval::SandboxConfig::default()).unwrap();
    let mut run = |p: &[String]| -> crate::Result<Vec<canon_eval::Outcome>> {
        sb.run_many(p, 2, &|_| {})
            .map_err(|e| crate::ScaleError::Msg(e.to_string()))
    };
    let replies = [
        // Passes, and a None body fails; the tests sit under a main guard.
        "```python\ndef is_palindrome(s):\n    \"\"\"True when s reads the same backwards.\"\"\"\n    return s == s[::-1]\n\nif __name__ == \"__main__\":\n    assert is_palindrome(\"abba\")\n    assert not is_palindrome(\"ab\")\n```",
        // A wrong expectation.
        "def double(x):\n    return 2 * x\n\nassert double(2) == 5\n",
        // Tests a do-nothing body passes.
        "def log(msg):\n    print(msg)\n\nassert log(\"hi\") is None\n",
        // A class exercise.
        "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n    def pop(self):\n        return self.items.pop()\n\ns = Stack()\ns.push(3)\nassert Stack().items == [] and s.pop() == 3\n",
        // Prose where the code should be.
        "def f(x):\n    return x\nThis function returns x.\nassert f(1) == 1\n",
    ];
    let v = super::verify::verify(&replies, &mut run).unwrap();
    assert_eq!(v[0], Verdict::Passed);
    assert_eq!(v[1], Verdict::Failed("failed: AssertionError".into()));
    assert_eq!(v[2], Verdict::Trivial);
    assert_eq!(v[3], Verdict::Passed);
    match &v[4] {
        Verdict::Failed(r) => assert!(r.starts_with("failed: SyntaxError"), "{r}"),
        other => panic!("expected a SyntaxError, got {other:?}"),
    }
}

#[test]
fn topics_come_from_a_file_one_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("topics.txt");
    std::fs::write(
        &p,
        "# basics\nrecursion\n\n  sorting a dictionary by value  \n",
    )
    .unwrap();
    let topics = read_topics(&p).unwrap();
    assert_eq!(topics, vec!["recursion", "sorting a dictionary by value"]);
    // Two topics: textbook passages on both, then exercises on both.
    let kinds: Vec<(SynthKind, &str)> = (0..4)
        .map(|i| {
            let (k, t, _) = prompt(&topics, i);
            (k, t)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (SynthKind::Textbook, "recursion"),
            (SynthKind::Textbook, "sorting a dictionary by value"),
            (SynthKind::Exercise, "recursion"),
            (SynthKind::Exercise, "sorting a dictionary by value"),
        ]
    );
    std::fs::write(&p, "# only a comment\n\n").unwrap();
    let e = read_topics(&p).unwrap_err().to_string();
    assert!(e.contains("expected one topic a line, found none"), "{e}");
    let e = read_topics(&dir.path().join("missing.txt"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cannot read --topics"), "{e}");
}
