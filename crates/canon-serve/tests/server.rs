//! The server end to end on a tiny GGUF model written by the test, over loopback on a free port:
//! OpenAI shapes (chat, streaming, n, completions, models, health, metrics), every kind of bad
//! input answered with OpenAI's error object (the server still answers afterwards), auth, the
//! queue limit, a client that disconnects mid-stream, and 16 concurrent clients.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{client, start, start_ctx, start_with};
use serde_json::{Value, json};

fn chat_body(content: &str, extra: Value) -> Value {
    let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 0, "seed": 1});
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    b
}

/// Reads an SSE response: the JSON payloads and whether `[DONE]` ended it.
fn sse(r: reqwest::blocking::Response) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for line in BufReader::new(r).lines() {
        let line = line.unwrap();
        if let Some(d) = line.strip_prefix("data: ") {
            if d == "[DONE]" {
                done = true;
            } else {
                out.push(serde_json::from_str(d).unwrap());
            }
        }
    }
    (out, done)
}

fn assert_error(status: u16, body: &Value, want: u16, needle: &str) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains(needle)),
        "{body}"
    );
    assert!(
        e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
}

#[test]
fn openai_shapes_streaming_and_n() {
    let s = start(4, 16, None);
    // Twice: the second answer, like the streamed one below, reuses the cached prompt.
    let _ = s.post("/v1/chat/completions", &chat_body("hello", json!({})));
    let (st, v) = s.post("/v1/chat/completions", &chat_body("hello", json!({})));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    // Streamed: the same greedy text, deltas then a finish reason, usage, [DONE].
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body(
            "hello",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (chunks, done) = sse(r);
    assert!(done, "no [DONE]");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"].is_string())
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["completion_tokens"],
        usage["completion_tokens"]
    );
    // n = 3 with sampling: three choices, indices 0..3.
    let (st, v) = s.post(
        "/v1/chat/completions",
        &chat_body(
            "hi",
            json!({"n": 3, "temperature": 1.0, "logprobs": true, "top_logprobs": 2}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let ch = v["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 3);
    for (i, c) in ch.iter().enumerate() {
        assert_eq!(c["index"], i);
        let lps = c["logprobs"]["content"].as_array().unwrap();
        assert!(!lps.is_empty() && lps[0]["top_logprobs"].as_array().unwrap().len() == 2);
    }
    // Text completions: a list of prompts, echo, logprobs.
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"prompt": ["ab", "cd"], "max_tokens": 5, "temperature": 0, "echo": true, "logprobs": 1}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert!(v["choices"][1]["text"].as_str().unwrap().starts_with("cd"));
    assert_eq!(
        v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Prompts as token ids (the OpenAI API's other two forms), used as given.
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"prompt": [[5, 6, 7], [8, 9]], "max_tokens": 3, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"prompt": [5, 6, 7], "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"prompt": [5, 4000000], "max_tokens": 2}),
    );
    assert_error(st, &v, 400, "outside the vocabulary");
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"prompt": [1.5, "a"], "max_tokens": 2}),
    );
    assert_error(st, &v, 400, "a list of token ids");
    let models: Value = client()
        .get(s.url("/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    let page = client().get(s.url("/")).send().unwrap().text().unwrap();
    assert!(page.contains("/v1/chat/completions") && page.contains("Stop"));
    // No embedding model: a clear 404.
    let (st, v) = s.post("/v1/embeddings", &json!({"input": "x"}));
    assert_error(st, &v, 404, "--embedding-model");
}

#[test]
fn bad_input_gets_openai_errors_and_the_server_keeps_answering() {
    let s = start(2, 8, None);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "not valid JSON"),
        (b"[1, 2]".to_vec(), 400, "JSON object"),
        (br#"{"messages": "hi"}"#.to_vec(), 400, "invalid request"),
        (br#"{"messages": []}"#.to_vec(), 400, "messages is empty"),
        (br#"{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}"#.to_vec(), 404, "gpt-9"),
        (br#"{"messages": [{"role": "wizard", "content": "x"}]}"#.to_vec(), 400, "wizard"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "n": 100}"#.to_vec(), 400, "n must be"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}"#.to_vec(), 400, "max_tokens"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#.to_vec(), 400, "at least 1"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "temperature": 9}"#.to_vec(), 400, "temperature"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#.to_vec(), 400, "invalid request"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}"#.to_vec(), 400, "logprobs"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"schema": 7}}}"#.to_vec(), 400, "response_format.json_schema.schema"),
    ];
    for (body, want, needle) in cases {
        let (st, v) = s.post_raw("/v1/chat/completions", body.clone());
        assert_error(st, &v, want, needle);
    }
    let long = "x".repeat(400);
    let (st, v) = s.post("/v1/chat/completions", &chat_body(&long, json!({})));
    assert_error(st, &v, 400, "context");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let huge = vec![b' '; 100 << 10];
    let (st, v) = s.post_raw("/v1/chat/completions", huge);
    assert_error(st, &v, 413, "too large");
    let (st, v) = s.post_raw("/v1/nowhere", b"{}".to_vec());
    assert_error(st, &v, 404, "unknown endpoint");
    // Still serving.
    let (st, _) = s.post("/v1/chat/completions", &chat_body("ok?", json!({})));
    assert_eq!(st, 200);
    assert!(s.metric("canon_errors_total{class=\"4xx\"}") >= 16.0);
}

#[test]
fn api_key_is_required_when_set() {
    let s = start(1, 4, Some("sesame"));
    let body = chat_body("x", json!({}));
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth("sesame")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Every POST route checks the key before it reads or parses the body, even a route this
    // server does not run (no embedding model, index or tools here) or a body that is not JSON.
    for route in [
        "/v1/completions",
        "/v1/embeddings",
        "/v1/search",
        "/v1/ask",
        "/v1/tools/calculator",
    ] {
        let r = client()
            .post(s.url(route))
            .body("{not json")
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{route}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{route}");
    }
    // Health stays open (load balancers probe it).
    assert_eq!(client().get(s.url("/health")).send().unwrap().status(), 200);
}

#[test]
fn a_full_queue_is_429_and_a_vanished_client_frees_its_slot() {
    let s = start(1, 1, None);
    // A raw streaming request that occupies the only slot; read one chunk, then hang up.
    let body = chat_body(
        "x",
        json!({"stream": true, "max_tokens": 100, "temperature": 1.0}),
    )
    .to_string();
    let mut sock = TcpStream::connect(s.addr).unwrap();
    write!(
        sock,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    // While it runs: one request may wait (queue 1), the next is refused with 429.
    let waiting = {
        let url = s.url("/v1/chat/completions");
        std::thread::spawn(move || {
            client()
                .post(url)
                .json(&chat_body("y", json!({})))
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("z", json!({})))
        .send()
        .unwrap();
    let z = r.status().as_u16();
    drop(sock); // the streaming client goes away: its slot frees within a step
    let y = waiting.join().unwrap();
    // The queue holds one: at most one of the two is refused, whichever arrived second.
    assert!(
        matches!((y, z), (200, 200) | (200, 429) | (429, 200)),
        "{y} {z}"
    );
    // A server that queues nothing refuses with 429, Retry-After and OpenAI's error object.
    let full = start(1, 0, None);
    let r = client()
        .post(full.url("/v1/chat/completions"))
        .json(&chat_body("z", json!({})))
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[test]
fn sixteen_concurrent_clients_and_metrics_that_add_up() {
    let s = start(4, 64, None);
    let url = s.url("/v1/chat/completions");
    let threads: Vec<_> = (0..16)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut tokens = 0u64;
                for r in 0..3 {
                    let stream = (c + r) % 2 == 0;
                    let body = chat_body(
                        &format!("client {c} request {r}"),
                        json!({"stream": stream, "stream_options": {"include_usage": true}, "temperature": 0.8, "seed": c * 10 + r, "max_tokens": 8}),
                    );
                    let resp = client().post(&url).json(&body).send().unwrap();
                    assert_eq!(resp.status(), 200);
                    if stream {
                        let (chunks, done) = sse(resp);
                        assert!(done);
                        tokens += chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap();
                    } else {
                        let v: Value = resp.json().unwrap();
                        assert!(v["choices"][0]["message"]["content"].is_string());
                        tokens += v["usage"]["completion_tokens"].as_u64().unwrap();
                    }
                }
                tokens
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(s.metric("canon_requests_total{endpoint=\"chat\"}"), 48.0);
    assert_eq!(s.metric("canon_completion_tokens_total"), total as f64);
    assert_eq!(s.metric("canon_errors_total{class=\"4xx\"}"), 0.0);
    assert_eq!(s.metric("canon_errors_total{class=\"5xx\"}"), 0.0);
    // Each request's first token comes from its prefill, every other from a decode row; with 4
    // slots and 16 clients, decode passes carried several rows.
    let rows = s.metric("canon_engine_decode_rows_total{kind=\"rows\"}");
    let passes = s.metric("canon_engine_decode_rows_total{kind=\"passes\"}");
    assert!(
        rows >= (total - 48) as f64,
        "{rows} decode rows for {total} tokens"
    );
    assert!(
        passes > 0.0 && rows / passes > 1.0,
        "{rows} rows in {passes} passes"
    );
    assert!(s.metric("canon_engine_seconds_total{phase=\"decode_forward\"}") > 0.0);
}

fn tools_list() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add", "description": "a + b",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999},
                "b": {"type": "integer", "minimum": 0, "maximum": 999}}, "required": ["a", "b"], "additionalProperties": false}}}
    ])
}

/// A call's arguments obey its tool's schema.
fn check_call(call: &Value) {
    assert_eq!(call["type"], "function", "{call}");
    assert!(call["id"].as_str().is_some_and(|i| i.starts_with("call_")));
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    match call["function"]["name"].as_str().unwrap() {
        "get_weather" => {
            let city = args["city"].as_str().unwrap();
            assert!(city.chars().count() <= 8, "{args}");
            assert_eq!(args.as_object().unwrap().len(), 1, "{args}");
        }
        "add" => {
            for k in ["a", "b"] {
                assert!((0..=999).contains(&args[k].as_i64().unwrap()), "{args}");
            }
        }
        other => panic!("unknown tool {other}"),
    }
}

#[test]
fn structured_output_and_tool_calls_obey_their_schemas() {
    let s = start_ctx(2, 16, None, 1024);
    let schema = json!({"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["answer", "confidence"], "additionalProperties": false});
    for seed in 0..3 {
        let (st, v) = s.post(
            "/v1/chat/completions",
            &chat_body(
                "is it raining?",
                json!({"max_tokens": 60, "temperature": 1.0, "seed": seed,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}),
            ),
        );
        assert_eq!(st, 200, "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let o: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(
            ["yes", "no"].contains(&o["answer"].as_str().unwrap()),
            "{o}"
        );
        assert!(
            (0..=100).contains(&o["confidence"].as_i64().unwrap()),
            "{o}"
        );
    }
    // json_object: an object.
    let (st, v) = s.post(
        "/v1/chat/completions",
        &chat_body(
            "json please",
            json!({"max_tokens": 40, "response_format": {"type": "json_object"}}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with('{')
    );
    // Tools, required: every reply is one or more valid calls.
    for seed in 0..3 {
        let (st, v) = s.post(
            "/v1/chat/completions",
            &chat_body(
                "weather in Paris?",
                json!({"max_tokens": 120, "temperature": 1.0, "seed": seed, "tools": tools_list(), "tool_choice": "required"}),
            ),
        );
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        let calls = c["message"]["tool_calls"].as_array().unwrap();
        assert!(!calls.is_empty());
        calls.iter().for_each(check_call);
    }
    // A named function is the one called.
    let (st, v) = s.post(
        "/v1/chat/completions",
        &chat_body(
            "1 + 2?",
            json!({"max_tokens": 120, "tools": tools_list(), "tool_choice": {"type": "function", "function": {"name": "add"}}}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "add");
    check_call(call);
    // Auto: a call, or text that is not one.
    let (st, v) = s.post(
        "/v1/chat/completions",
        &chat_body(
            "hi",
            json!({"max_tokens": 30, "temperature": 1.0, "tools": tools_list()}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let m = &v["choices"][0]["message"];
    match m["tool_calls"].as_array() {
        Some(calls) => calls.iter().for_each(check_call),
        None => assert!(!m["content"].as_str().unwrap().starts_with('<'), "{m}"),
    }
    // Streamed calls: one tool_calls delta per choice, then finish_reason tool_calls.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body(
            "weather?",
            json!({"max_tokens": 120, "stream": true, "tools": tools_list(), "tool_choice": "required"}),
        ))
        .send()
        .unwrap();
    let (chunks, done) = sse(r);
    assert!(done);
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(deltas.len(), 1, "{chunks:?}");
    let call = &deltas[0][0];
    assert_eq!(call["index"], 0);
    check_call(call);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    assert!(!chunks.iter().any(|c| {
        c["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| t.contains("<tool_call>"))
    }));
    // A round trip: the call and its result in the history, then an answer.
    let (st, v) = s.post(
        "/v1/chat/completions",
        &json!({"messages": [
            {"role": "user", "content": "1 + 2?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "3"}],
            "tools": tools_list(), "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    // Bad schemas and choices are 400s naming the parameter; the server still answers.
    for (extra, param) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
        ),
        (
            json!({"tools": tools_list(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]}),
            "tools",
        ),
        (json!({"tools": "all"}), "tools"),
    ] {
        let (st, v) = s.post("/v1/chat/completions", &chat_body("x", extra.clone()));
        assert_eq!(st, 400, "{extra}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let (st, _) = s.post("/v1/chat/completions", &chat_body("x", json!({})));
    assert_eq!(st, 200);
}

#[test]
fn canon_tools_are_listed_and_run_over_http() {
    use canon_agent::tools::{Calculator, Limits, Toolbox};
    let tb = Toolbox::new(Limits::default()).with(std::sync::Arc::new(Calculator));
    let s = start_with(1, 8, None, 128, Some(std::sync::Arc::new(tb)));
    let list: Value = client()
        .get(s.url("/v1/tools"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let tools = list["data"].as_array().unwrap();
    assert_eq!(tools.len(), 1, "{list}");
    assert_eq!(tools[0]["type"], "function");
    assert_eq!(tools[0]["function"]["name"], "calculator");
    // The listed tools are valid `tools` for chat completions.
    let (st, v) = s.post(
        "/v1/chat/completions",
        &chat_body("x", json!({"tools": list["data"], "tool_choice": "none"})),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.post("/v1/tools/calculator", &json!({"expression": "1/3 + 1/6"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["content"].as_str().unwrap().starts_with("1/2"), "{v}");
    // A failing call is an observation, not an HTTP error.
    let (st, v) = s.post("/v1/tools/calculator", &json!({"expression": "1/0"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    let (st, v) = s.post("/v1/tools/nope", &json!({}));
    assert_error(st, &v, 404, "no tool named 'nope'");
    let (st, v) = s.post_raw("/v1/tools/calculator", b"[1, 2]".to_vec());
    assert_error(st, &v, 400, "JSON object");
    let (st, v) = s.post_raw("/v1/tools/calculator", b"{oops".to_vec());
    assert_error(st, &v, 400, "not valid JSON");
    assert!(s.metric("canon_tool_calls_total") >= 2.0);
    // A server started without tools says how to get them.
    let plain = start(1, 8, None);
    let r = client().get(plain.url("/v1/tools")).send().unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("--tools"));
}
