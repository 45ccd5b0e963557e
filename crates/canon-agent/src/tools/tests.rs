//! Tests of the tool seam and the built-in tools.

use super::*;

fn calc(e: &str) -> Result<String, ToolError> {
    evaluate(e).map(|r| r.exact())
}

#[test]
fn calculator_is_exact() {
    assert_eq!(calc("1/3 + 1/6").unwrap(), "1/2");
    assert_eq!(calc("0.1 + 0.2").unwrap(), "3/10");
    assert_eq!(calc("2^10 - 3*(4+5)").unwrap(), "997");
    assert_eq!(calc("-2^2").unwrap(), "-4");
    assert_eq!(calc("2^-2").unwrap(), "1/4");
    assert_eq!(calc("7 - 2 - 1").unwrap(), "4");
    assert_eq!(calc("12 / 4 / 3").unwrap(), "1");
    assert_eq!(calc("1,000 * 3").unwrap(), "3000");
    assert_eq!(evaluate("400 / 1400").unwrap().decimal(2), "0.29");
    assert_eq!(evaluate("-2/3").unwrap().decimal(3), "-0.667");
    assert_eq!(evaluate("19/2").unwrap().decimal(0), "10");
}

#[test]
fn calculator_errors_name_the_problem() {
    assert!(calc("1/0").unwrap_err().0.contains("division by zero"));
    assert!(calc("2 +").unwrap_err().0.contains("found the end"));
    assert!(calc("(1").unwrap_err().0.contains("expected ')'"));
    assert!(calc("sqrt(2)").unwrap_err().0.contains("found 's'"));
    assert!(calc("10^100").unwrap_err().0.contains("too large"));
    assert!(calc("2^(1/2)").unwrap_err().0.contains("integer exponent"));
    assert!(calc("").is_err());
}

#[test]
fn calendar_arithmetic() {
    let c = Calendar {
        today: chrono::NaiveDate::from_ymd_opt(2026, 12, 4),
    };
    assert_eq!(
        c.call(&json!({"op": "today"})).unwrap(),
        "Today is Friday, December 4, 2026."
    );
    assert_eq!(
        c.call(&json!({"op": "add_days", "date": "2024-02-28", "days": 2}))
            .unwrap(),
        "2024-03-01"
    );
    assert_eq!(
        c.call(&json!({"op": "days_between", "date": "2024-01-01", "other": "2025-01-01"}))
            .unwrap(),
        "366"
    );
    assert_eq!(
        c.call(&json!({"op": "weekday", "date": "1969-07-20"}))
            .unwrap(),
        "Sunday"
    );
    assert!(
        c.call(&json!({"op": "weekday", "date": "20-07-1969"}))
            .is_err()
    );
}

struct Slow;
impl Tool for Slow {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "slow".into(),
            description: "sleeps".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }
    }
    fn call(&self, _: &Value) -> Result<String, ToolError> {
        std::thread::sleep(Duration::from_secs(3));
        Ok("late".into())
    }
}
struct Panics;
impl Tool for Panics {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "panics".into(),
            description: "panics".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }
    }
    fn call(&self, _: &Value) -> Result<String, ToolError> {
        panic!("boom")
    }
}
struct Chatty;
impl Tool for Chatty {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "chatty".into(),
            description: "talks".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }
    }
    fn call(&self, _: &Value) -> Result<String, ToolError> {
        Ok("x".repeat(10_000))
    }
}

#[test]
fn failures_become_observations() {
    let limits = Limits {
        timeout: Duration::from_millis(200),
        max_output_chars: 50,
    };
    let tb = Toolbox::new(limits)
        .with(Arc::new(Slow))
        .with(Arc::new(Panics))
        .with(Arc::new(Chatty))
        .with(Arc::new(Calculator));
    let o = tb.call_json("slow", "{}");
    assert!(
        !o.ok && o.text.contains("did not answer within 0.2 s"),
        "{o:?}"
    );
    // the others get all the time they need: only the slow tool's outcome depends on time
    let tb = Toolbox {
        limits: Limits {
            timeout: Duration::from_secs(60),
            max_output_chars: 50,
        },
        ..tb
    };
    let o = tb.call_json("panics", "{}");
    assert!(!o.ok && o.text.contains("crashed"), "{o:?}");
    let o = tb.call_json("chatty", "{}");
    assert!(o.ok && o.truncated && o.text.chars().count() == 56, "{o:?}");
    let o = tb.call_json("nope", "{}");
    assert!(!o.ok && o.text.contains("unknown tool 'nope'"));
    let o = tb.call_json("calculator", "{\"expression\": 3}");
    assert!(
        !o.ok && o.text.contains("expected argument 'expression'"),
        "{o:?}"
    );
    let o = tb.call_json("calculator", "not json");
    assert!(!o.ok && o.text.contains("expected JSON arguments"));
    let o = tb.call_text("Calculator", "6 * 7");
    assert!(o.ok && o.text == "42", "{o:?}");
    let spec = tb.specs()[3].openai();
    assert_eq!(spec["function"]["name"], "calculator");
    assert_eq!(spec["function"]["parameters"]["required"][0], "expression");
}

#[test]
fn python_runs_in_the_sandbox() {
    let sb = canon_eval::Sandbox::new(canon_eval::SandboxConfig {
        timeout: Duration::from_secs(2),
        report_missing: false,
        ..Default::default()
    })
    .expect("the HumanEval sandbox (python3) is needed by this test");
    let tb = Toolbox::new(Limits {
        timeout: Duration::from_secs(30),
        max_output_chars: 200,
    })
    .with(Arc::new(Python {
        sandbox: Arc::new(sb),
    }));
    let o = tb.call_text("python", "print(sum(range(10)))\nprint('a\\nb')");
    assert!(o.ok && o.text == "45\na\nb", "{o:?}");
    let o = tb.call_text("python", "print('partial')\n1/0");
    assert!(
        !o.ok && o.text == "error: partial\nZeroDivisionError: division by zero",
        "{o:?}"
    );
    let o = tb.call_text("python", "while True: pass");
    assert!(!o.ok && o.text.contains("timed out"), "{o:?}");
    let o = tb.call_text(
        "python",
        "import socket; socket.create_connection(('1.1.1.1', 80), timeout=1)",
    );
    assert!(!o.ok, "no network in the sandbox: {o:?}");
}

#[test]
fn index_search_answers_passages_by_bm25() {
    use canon_rag::chunk::Chunk;
    use canon_rag::index::{FORMAT, Index, Meta, VERSION, write_index};
    let d = tempfile::tempdir().unwrap();
    let chunk = |page: &str, text: &str| Chunk {
        path: format!("/man/{page}.1"),
        page: page.into(),
        section: "NAME".into(),
        line_start: 1,
        line_end: 1,
        text: text.into(),
    };
    let chunks = vec![
        chunk("ls(1)", "ls - list directory contents"),
        chunk(
            "cat(1)",
            "cat - concatenate files and print on the standard output",
        ),
    ];
    let meta = Meta {
        format: FORMAT.into(),
        version: VERSION,
        model: "none".into(),
        dim: 1,
        chunks: 2,
        man_rendered: false,
        roots: vec![],
        files: vec![],
        stats: Default::default(),
    };
    let dir = d.path().join("ix");
    write_index(&dir, &meta, &chunks, &[1.0, 1.0]).unwrap();
    let tool = IndexSearch {
        index: Index::open(&dir, None).unwrap(),
        k: 3,
    };
    let out = tool.call(&json!({"query": "list the directory"})).unwrap();
    assert!(
        out.starts_with("[1] ls(1): ls - list directory contents"),
        "{out}"
    );
    assert!(
        tool.call(&json!({"query": "zebra"}))
            .unwrap()
            .starts_with("No passage")
    );
    assert!(tool.call(&json!({"query": "  "})).is_err());
}

#[test]
fn python_wrapper_is_valid_python_shape() {
    let w = Python::wrap("print('a\"b')\n");
    assert!(w.contains("exec(compile(\"print('a\\\"b')\\n\""), "{w}");
}
