//! `/v1/search` and `/v1/ask` on the tiny model over a small BM25 index (no embedding model:
//! dense and hybrid search are refused with a clear error, BM25 works end to end).

mod common;

use std::sync::Arc;

use canon_rag::answer::{AnswerError, Retriever};
use canon_rag::chunk::Chunk;
use canon_rag::graph::{ExtractStats, Extraction, build_graph};
use canon_rag::index::{FORMAT, Meta, VERSION, write_index_with};
use serde_json::json;

fn index(dir: &std::path::Path) -> Arc<Retriever> {
    Arc::new(open_index(dir, false))
}

/// The small index, with a GraphRAG graph built from hand-written extractions when `graph`.
fn open_index(dir: &std::path::Path, graph: bool) -> Retriever {
    let texts = [
        (
            "tar",
            "OPTIONS",
            "-C, --directory=DIR  change to directory DIR before extracting",
        ),
        (
            "gzip",
            "DESCRIPTION",
            "gzip reduces the size of the named files",
        ),
        ("ls", "NAME", "ls lists directory contents"),
    ];
    let chunks: Vec<Chunk> = texts
        .iter()
        .enumerate()
        .map(|(i, (page, section, text))| Chunk {
            path: format!("/man/{page}.1"),
            page: page.to_string(),
            section: section.to_string(),
            line_start: 10 * i + 1,
            line_end: 10 * i + 2,
            text: text.to_string(),
        })
        .collect();
    let dim = 4;
    let vectors: Vec<f32> = (0..chunks.len() * dim).map(|i| (i % 3) as f32).collect();
    let meta = Meta {
        format: FORMAT.into(),
        version: VERSION,
        model: "minilm".into(),
        dim,
        chunks: chunks.len(),
        man_rendered: false,
        roots: vec!["/man".into()],
        files: Vec::new(),
        stats: Default::default(),
    };
    let ix = dir.join("ix");
    write_index_with(&ix, &meta, &chunks, &vectors, false).unwrap();
    let no_encoder = |_: &str| -> Result<canon_models::LoadedEncoder, AnswerError> {
        unreachable!("BM25 needs no encoder")
    };
    if graph {
        let ent = |n: &str, t: &str, d: &str| (n.to_string(), t.to_string(), d.to_string());
        let rel = |a: &str, b: &str, d: &str| (a.to_string(), b.to_string(), d.to_string(), 2.0);
        let units = vec![
            (
                0,
                Extraction {
                    entities: vec![
                        ent("TAR", "COMMAND", "tar archives files"),
                        ent("DIRECTORY", "CONCEPT", "a folder of files"),
                    ],
                    relations: vec![rel("TAR", "DIRECTORY", "tar -C changes to a directory")],
                },
            ),
            (
                1,
                Extraction {
                    entities: vec![
                        ent("GZIP", "COMMAND", "gzip compresses files"),
                        ent("COMPRESSION", "TOPIC", "making files smaller"),
                    ],
                    relations: vec![rel("GZIP", "COMPRESSION", "gzip compresses")],
                },
            ),
            (
                2,
                Extraction {
                    entities: vec![
                        ent("LS", "COMMAND", "ls lists directory contents"),
                        ent("DIRECTORY", "CONCEPT", "a folder of files"),
                    ],
                    relations: vec![rel("LS", "DIRECTORY", "ls lists a directory")],
                },
            ),
        ];
        let g = build_graph("test", 3, &units, ExtractStats::default(), 10, 400, 2);
        g.save(&ix).unwrap();
    }
    let r = Retriever::open(&ix, false, no_encoder).unwrap();
    r.with_graph().unwrap()
}

#[test]
fn search_and_ask_over_an_index() {
    let d = tempfile::tempdir().unwrap();
    let s = common::start_full(2, 8, None, 512, None, Some(index(d.path())));

    let (st, v) = s.post(
        "/v1/search",
        &json!({"query": "extract into another directory", "k": 2, "mode": "bm25"}),
    );
    assert_eq!(st, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert!(!data.is_empty() && data.len() <= 2, "{v}");
    assert_eq!(data[0]["page"], "tar", "{v}");
    assert_eq!(data[0]["lines"], json!([1, 2]));

    let (st, v) = s.post(
        "/v1/ask",
        &json!({"question": "How do I extract into another directory?", "k": 3, "mode": "bm25", "max_tokens": 8}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "canon.answer");
    let passages = v["passages"].as_array().unwrap();
    assert!(!passages.is_empty(), "{v}");
    assert_eq!(passages[0]["n"], 1);
    assert_eq!(passages[0]["page"], "tar");
    // Whatever the tiny model writes, every citation is one of the numbered passages.
    for c in v["citations"].as_array().unwrap() {
        assert!(passages.contains(c), "{c} not among {passages:?}");
    }
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(u["completion_tokens"].as_u64().unwrap() <= 8);

    // Bad requests: one 400 each, with a message naming what was expected.
    for (path, body, want) in [
        ("/v1/search", json!({"query": "   "}), "non-empty"),
        (
            "/v1/search",
            json!({"query": "tar", "k": 0}),
            "between 1 and",
        ),
        (
            "/v1/search",
            json!({"query": "tar", "mode": "fuzzy"}),
            "hybrid, dense or bm25",
        ),
        (
            "/v1/search",
            json!({"query": "tar", "mode": "dense"}),
            "query embedding",
        ),
        ("/v1/search", json!({"q": "tar"}), "JSON request body"),
        ("/v1/ask", json!({"question": ""}), "non-empty"),
        (
            "/v1/ask",
            json!({"question": "tar?", "max_tokens": 100000}),
            "max_tokens",
        ),
    ] {
        let (st, v) = s.post(path, &body);
        assert_eq!(st, 400, "{path} {body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{path} {body}: {msg}");
    }
}

#[test]
fn a_server_without_an_index_says_how_to_get_one() {
    let s = common::start(1, 4, None);
    let (st, v) = s.post("/v1/ask", &json!({"question": "tar?"}));
    assert_eq!(st, 404, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--index"),
        "{v}"
    );
}

#[test]
fn graphrag_local_and_global_over_http() {
    let d = tempfile::tempdir().unwrap();
    let s = common::start_full(
        4,
        16,
        None,
        512,
        None,
        Some(Arc::new(open_index(d.path(), true))),
    );

    let (st, v) = s.post(
        "/v1/ask",
        &json!({"question": "Which command lists a directory?", "graph": "local", "k": 3, "max_tokens": 8}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["graph"], "local", "{v}");
    let names: Vec<&str> = v["entities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(names.contains(&"DIRECTORY"), "{v}");
    let passages = v["passages"].as_array().unwrap();
    assert!(!passages.is_empty(), "{v}");
    for c in v["citations"].as_array().unwrap() {
        assert!(passages.contains(c), "{c} not among {passages:?}");
    }

    let (st, v) = s.post(
        "/v1/ask",
        &json!({"question": "What do the pages say about a directory and compression?", "graph": "global", "k": 4, "max_tokens": 8}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["graph"], "global", "{v}");
    let batches = v["map_batches"].as_u64().unwrap();
    assert!(batches >= 1, "{v}");
    assert_eq!(v["map_outputs"].as_array().unwrap().len() as u64, batches);
    // Citations number the kept key points.
    let points = v["points"].as_array().unwrap().len();
    for c in v["citations"].as_array().unwrap() {
        let n = c.as_u64().unwrap() as usize;
        assert!(n >= 1 && n <= points, "{v}");
    }
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    // Every level-0 report, whatever the question's words.
    let (st, v) = s.post(
        "/v1/ask",
        &json!({"question": "zzz?", "graph": "global", "all_reports": true, "max_tokens": 8}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["map_batches"].as_u64().unwrap() >= 1, "{v}");
    let (st, v) = s.post(
        "/v1/ask",
        &json!({"question": "zzz?", "graph": "global", "max_tokens": 8}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sharing a word"),
        "{v}"
    );
    let (st, v) = s.post(
        "/v1/ask",
        &json!({"question": "tar?", "graph": "local", "all_reports": true}),
    );
    assert_eq!(st, 400, "{v}");

    let (st, v) = s.post("/v1/ask", &json!({"question": "tar?", "graph": "wide"}));
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"local\" or \"global\""),
        "{v}"
    );
}

#[test]
fn graph_questions_need_a_graph() {
    let d = tempfile::tempdir().unwrap();
    let s = common::start_full(1, 4, None, 512, None, Some(index(d.path())));
    let (st, v) = s.post("/v1/ask", &json!({"question": "tar?", "graph": "local"}));
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("canon graph build"),
        "{v}"
    );
}
