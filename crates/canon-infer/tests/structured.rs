//! Structured output through the engine on a tiny random-weight model: whatever the model would
//! say, a constrained sequence spells a sentence of its grammar (a JSON schema, a regular
//! expression, a Lark grammar), and a grammar that cannot compile is an error, not a panic.

use canon_infer::{
    Engine, EngineConfig, FinishReason, Grammar, GrammarCompiler, GrammarError, Request,
    SamplingConfig,
};
use canon_models::WeightMode;
use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};
use serde_json::{Value, json};

fn engine() -> (tempfile::TempDir, Engine) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tiny.gguf");
    write_tiny_llama(
        &p,
        &TinyLlama {
            context_length: 256,
            ..Default::default()
        },
    )
    .unwrap();
    let lm = canon_models::load::load_gguf_lm(&p, WeightMode::KeepQuantized).unwrap();
    let e = Engine::start(
        lm,
        EngineConfig {
            slots: 4,
            ctx_size: 0,
            prefill_chunk: 256,
            queue_limit: 64,
        },
    )
    .unwrap();
    (d, e)
}

fn sampling(seed: u64) -> SamplingConfig {
    SamplingConfig {
        temperature: 1.0,
        top_k: None,
        top_p: None,
        min_p: None,
        repeat_penalty: 1.0,
        repeat_last_n: 0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed,
    }
}

/// Runs `grammar` for several seeds; returns the texts.
fn run(e: &Engine, c: &GrammarCompiler, grammar: &Grammar, max: usize) -> Vec<String> {
    let reqs = (0..6u64)
        .map(|seed| {
            let mut r = Request::new(vec![3 + seed as u32, 40, 41], max);
            r.sampling = sampling(seed);
            r.constraint = Some(Box::new(c.compile(grammar).unwrap()));
            r
        })
        .collect();
    let out = e.generate_batch(reqs).unwrap();
    out.into_iter()
        .map(|c| {
            assert_eq!(
                c.finish_reason,
                FinishReason::Stop,
                "the grammar did not finish within {max} tokens: {:?}",
                c.text
            );
            c.text
        })
        .collect()
}

#[test]
fn a_json_schema_is_always_obeyed() {
    let (_d, e) = engine();
    let c = GrammarCompiler::new(e.tokenizer()).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "size": {"enum": ["small", "large"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 99}
        },
        "required": ["ok", "size", "n"],
        "additionalProperties": false
    });
    for text in run(&e, &c, &Grammar::JsonSchema(schema), 120) {
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|err| {
            panic!("not JSON ({err}): {text:?}");
        });
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 3, "{text}");
        assert!(o["ok"].is_boolean(), "{text}");
        assert!(["small", "large"].contains(&o["size"].as_str().unwrap()));
        let n = o["n"].as_i64().unwrap();
        assert!((0..=99).contains(&n), "{text}");
    }
    e.shutdown();
}

#[test]
fn a_regex_and_a_lark_grammar_are_obeyed() {
    let (_d, e) = engine();
    let c = GrammarCompiler::new(e.tokenizer()).unwrap();
    let re = regex_lite_check;
    for text in run(&e, &c, &Grammar::Regex("[0-9]{3}-(yes|no)".into()), 40) {
        assert!(re(&text), "{text:?} does not match [0-9]{{3}}-(yes|no)");
    }
    let lark = r#"start: "Action: " tool "[" ARG "]"
tool: "search" | "lookup"
ARG: /[a-z]{1,8}/
"#;
    for text in run(&e, &c, &Grammar::Lark(lark.into()), 40) {
        let rest = text
            .strip_prefix("Action: ")
            .unwrap_or_else(|| panic!("{text:?}"));
        let (tool, arg) = rest.split_once('[').unwrap();
        assert!(tool == "search" || tool == "lookup", "{text:?}");
        let arg = arg.strip_suffix(']').unwrap();
        assert!(
            (1..=8).contains(&arg.len()) && arg.bytes().all(|b| b.is_ascii_lowercase()),
            "{text:?}"
        );
    }
    e.shutdown();
}

fn regex_lite_check(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 6
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'-'
        && (&s[4..] == "yes" || &s[4..] == "no")
}

#[test]
fn a_json_object_grammar_gives_an_object() {
    let (_d, e) = engine();
    let c = GrammarCompiler::new(e.tokenizer()).unwrap();
    // Any object may be long: accept "length" here, but what was produced must be a prefix of
    // valid JSON starting with '{'.
    let mut r = Request::new(vec![5, 6, 7], 60);
    r.sampling = sampling(1);
    r.constraint = Some(Box::new(c.compile(&Grammar::JsonObject).unwrap()));
    let out = e.generate_batch(vec![r]).unwrap().remove(0);
    assert!(out.text.starts_with('{'), "{:?}", out.text);
    if out.finish_reason == FinishReason::Stop {
        let v: Value = serde_json::from_str(&out.text).unwrap();
        assert!(v.is_object());
    }
    e.shutdown();
}

#[test]
fn bad_grammars_are_errors() {
    let (_d, e) = engine();
    let c = GrammarCompiler::new(e.tokenizer()).unwrap();
    for g in [
        Grammar::JsonSchema(json!(5)),
        Grammar::JsonSchema(json!({"type": "no-such-type"})),
        Grammar::Lark("start: undefined_rule".into()),
        Grammar::Regex("(unclosed".into()),
    ] {
        match c.compile(&g) {
            Err(GrammarError::Invalid(m)) => assert!(!m.is_empty()),
            Err(other) => panic!("{g:?}: unexpected error {other}"),
            Ok(_) => panic!("{g:?} compiled"),
        }
    }
    e.shutdown();
}
