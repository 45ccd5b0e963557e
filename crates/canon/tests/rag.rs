//! `canon search`, `canon ask`, `canon graph build` and `canon eval rag` on an index written by
//! the library with made-up vectors (no model needed: BM25 and graph methods only), and the bad
//! inputs each command must refuse with one `error:` line.

use std::path::Path;
use std::process::{Command, Output};

use canon_rag::chunk::Chunk;
use canon_rag::index::{FORMAT, FileEntry, Meta, VERSION, write_index};
use canon_rag::reader::ReadStats;

fn canon(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .current_dir(dir)
        .env("CANON_HOME", dir.join("home"))
        .output()
        .expect("run canon")
}

/// The real asset cache (where the models the other tests fetched are).
fn asset_home() -> String {
    std::env::var("CANON_HOME")
        .unwrap_or_else(|_| format!("{}/.cache/canon", std::env::var("HOME").unwrap_or_default()))
}

/// `canon` in `dir` with the real asset cache.
fn canon_with_assets(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .current_dir(dir)
        .env("CANON_HOME", asset_home())
        .output()
        .expect("run canon")
}

fn assert_clean_error(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure; stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {e}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}

fn chunk(page: &str, section: &str, text: &str) -> Chunk {
    Chunk {
        path: format!("/m/{page}.gz"),
        page: page.into(),
        section: section.into(),
        line_start: 1,
        line_end: text.lines().count(),
        text: text.into(),
    }
}

fn make_index(dir: &Path) -> std::path::PathBuf {
    let chunks = vec![
        chunk("tar(1)", "NAME", "tar - an archiving utility"),
        chunk(
            "tar(1)",
            "OPTIONS",
            "-C, --directory=DIR\nchange to directory DIR before extracting archives\nSee also gzip(1).",
        ),
        chunk("ls(1)", "NAME", "ls - list directory contents"),
        chunk(
            "ls(1)",
            "OPTIONS",
            "-t\nsort by time, newest first; see --time\nSee also dir(1).",
        ),
        chunk(
            "gzip(1)",
            "NAME",
            "gzip, gunzip, zcat - compress or expand files",
        ),
        chunk(
            "gzip(1)",
            "OPTIONS",
            "-d, --decompress\ndecompress compressed archives\nSee also tar(1).",
        ),
    ];
    let dim = 4;
    let vectors: Vec<f32> = (0..chunks.len() * dim)
        .map(|i| if i % (dim + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    let files = vec![FileEntry {
        path: "/m".into(),
        size: 1,
        mtime: 1,
        chunk_start: 0,
        chunk_end: chunks.len(),
    }];
    let meta = Meta {
        format: FORMAT.into(),
        version: VERSION,
        model: "minilm".into(),
        dim,
        chunks: chunks.len(),
        man_rendered: false,
        roots: vec![],
        files,
        stats: ReadStats::default(),
    };
    let out = dir.join("t.idx");
    write_index(&out, &meta, &chunks, &vectors).unwrap();
    out
}

#[test]
fn bm25_graph_and_eval_on_a_small_index() {
    let d = tempfile::tempdir().unwrap();
    let idx = make_index(d.path());
    let ix = idx.to_str().unwrap();
    let o = canon(
        &[
            "search",
            "--index",
            ix,
            "--mode",
            "bm25",
            "--json",
            "--k",
            "2",
            "decompress archives",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["page"], "gzip(1)");

    let o = canon(&["graph", "summarize", "--index", ix], d.path());
    assert_clean_error(&o, &["canon graph build"]);
    let o = canon(
        &[
            "graph",
            "build",
            "--index",
            ix,
            "--max-cluster-size",
            "3",
            "--no-entity-embeddings",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Built without entity embeddings, local search by embedding says how to get them.
    let o = canon(
        &[
            "ask",
            "--index",
            ix,
            "--graph",
            "local",
            "which option changes directory?",
        ],
        d.path(),
    );
    assert_clean_error(&o, &["--entity-match bm25", "canon graph build"]);
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(idx.join("graph.json")).unwrap()).unwrap();
    let names: Vec<&str> = g["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"TAR --DIRECTORY") && names.contains(&"GZIP"),
        "{names:?}"
    );
    assert!(!g["reports"].as_array().unwrap().is_empty());

    // Summaries and reports: a bad --what is one error line; a server that does not answer
    // fails each call, counted, and leaves the graph's extractive reports in place.
    let o = canon(
        &["graph", "summarize", "--index", ix, "--what", "pictures"],
        d.path(),
    );
    assert_clean_error(&o, &["--what", "pictures"]);
    let o = canon(
        &[
            "graph",
            "summarize",
            "--index",
            ix,
            "--url",
            "http://127.0.0.1:9",
            "--what",
            "reports",
            "--limit",
            "2",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(v["reports"]["calls"], 2, "{v}");
    assert_eq!(v["reports"]["failed"], 2, "{v}");
    assert!(
        v["model_reports"].as_str().unwrap().starts_with("0 of "),
        "{v}"
    );

    let q = d.path().join("q.jsonl");
    std::fs::write(
        &q,
        "{\"id\":\"a\",\"question\":\"Which option of tar: change to directory DIR before extracting archives?\",\"answer\":\"--directory\",\"aliases\":[\"-C\"],\"page\":\"tar(1)\"}\n\
         {\"id\":\"b\",\"question\":\"Which command would you use to compress or expand files?\",\"answer\":\"gzip\",\"page\":\"gzip(1)\"}\n",
    )
    .unwrap();
    let o = canon(
        &[
            "eval",
            "rag",
            "--index",
            ix,
            "--questions",
            q.to_str().unwrap(),
            "--methods",
            "bm25,graph-local-bm25,graph-global",
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sums: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sums.len(), 3);
    assert_eq!(sums[0]["method"], "bm25");
    assert_eq!(sums[0]["recall_at_1"], 1.0);
    assert!(
        sums[1]["recall_at_10"].as_f64().unwrap() >= 0.5,
        "{}",
        sums[1]
    );
}

/// Off a terminal (standard error piped) a progress bar prints plain lines: one per 10 % of the
/// work once `CANON_PROGRESS_SECS` has passed, and the completed count once; `--quiet` none.
#[test]
fn progress_off_a_terminal_is_plain_lines_and_quiet_silences_them() {
    let d = tempfile::tempdir().unwrap();
    let idx = make_index(d.path());
    let q = d.path().join("q.jsonl");
    std::fs::write(
        &q,
        "{\"id\":\"a\",\"question\":\"tar change to directory\",\"answer\":\"-C\",\"page\":\"tar(1)\"}\n\
         {\"id\":\"b\",\"question\":\"compress files\",\"answer\":\"gzip\",\"page\":\"gzip(1)\"}\n",
    )
    .unwrap();
    let run = |quiet: bool, secs: &str| {
        let mut args = vec!["eval", "rag", "--index", idx.to_str().unwrap()];
        args.extend(["--questions", q.to_str().unwrap(), "--methods", "bm25"]);
        if quiet {
            args.insert(0, "--quiet");
        }
        let o = Command::new(env!("CARGO_BIN_EXE_canon"))
            .args(&args)
            .current_dir(d.path())
            .env("CANON_HOME", d.path().join("home"))
            .env("CANON_PROGRESS_SECS", secs)
            .output()
            .expect("run canon");
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{e}");
        e.lines()
            .filter(|l| l.starts_with("eval rag"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let lines = run(false, "0");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("eval rag bm25: 1/2 (50%) "),
        "{lines:?}"
    );
    assert!(lines[0].contains(" elapsed, ~"), "{lines:?}");
    assert!(
        lines[1].starts_with("eval rag bm25: 2/2 (100%) "),
        "{lines:?}"
    );
    assert!(lines[1].ends_with(" elapsed"), "{lines:?}");
    let lines = run(false, "3600");
    assert_eq!(lines.len(), 1, "only the end within the hour: {lines:?}");
    assert!(
        lines[0].starts_with("eval rag bm25: 2/2 (100%) "),
        "{lines:?}"
    );
    assert!(run(true, "0").is_empty(), "--quiet prints no progress");
}

#[test]
fn bad_inputs_are_one_error_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let o = canon(&["ask", "--index", "nope.idx", "what?"], p);
    assert_clean_error(&o, &["index folder", "nope.idx"]);
    let o = canon(&["ask", "--index", "nope.idx", "--all-reports", "what?"], p);
    assert_clean_error(&o, &["--all-reports", "--graph global"]);
    let o = canon(&["ask", "--index", "nope.idx", "  "], p);
    assert_clean_error(&o, &["non-empty question"]);
    let idx = make_index(p);
    let ix = idx.to_str().unwrap();
    let o = canon(&["ask", "--index", ix, "--graph", "local", "what?"], p);
    assert_clean_error(&o, &["graph build"]);
    let o = canon(
        &[
            "ask", "--index", ix, "--graph", "local", "--rag", "token", "q",
        ],
        p,
    );
    assert_clean_error(&o, &["at most one of"]);
    let o = canon(&["search", "--index", ix, "--mode", "sideways", "x"], p);
    assert_clean_error(&o, &["hybrid, dense or bm25"]);
    let q = p.join("q.jsonl");
    std::fs::write(&q, "{\"id\": 3}\n").unwrap();
    let o = canon(
        &[
            "eval",
            "rag",
            "--index",
            ix,
            "--questions",
            q.to_str().unwrap(),
        ],
        p,
    );
    assert_clean_error(&o, &["line 1"]);
    // A corrupt index and one of another format version: refused, and left as it was.
    std::fs::write(idx.join("meta.json"), "{not json").unwrap();
    let o = canon(&["search", "--index", ix, "--mode", "bm25", "x"], p);
    assert_clean_error(&o, &["unreadable JSON"]);
    let idx2 = make_index(&p.join("b"));
    let mp = idx2.join("meta.json");
    let m = std::fs::read_to_string(&mp)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 99");
    std::fs::write(&mp, &m).unwrap();
    let o = canon(&["graph", "build", "--index", idx2.to_str().unwrap()], p);
    assert_clean_error(&o, &["version 99"]);
    assert_eq!(std::fs::read_to_string(&mp).unwrap(), m);
    assert!(!idx2.join("graph.json").exists());
}

/// Slow tier (real MiniLM and SmolLM2 from the cache): index two small Markdown pages, ask a
/// question, and check the JSON answer's passages and citations point into the index.
#[test]
#[ignore = "slow: embeds with MiniLM and generates with SmolLM2"]
fn ask_end_to_end_with_real_models() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let docs = p.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("tar.md"),
        "# tar\n\n## Options\n\n-C, --directory=DIR\nchange to directory DIR before extracting.\n",
    )
    .unwrap();
    std::fs::write(
        docs.join("ls.md"),
        "# ls\n\n## Options\n\n-t\nsort by modification time, newest first.\n",
    )
    .unwrap();
    let run = |args: &[&str]| canon_with_assets(args, p);
    let o = run(&[
        "--quiet", "index", "build", "--docs", "docs", "--out", "d.idx",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[
        "--quiet",
        "ask",
        "--index",
        "d.idx",
        "--k",
        "2",
        "--max-tokens",
        "40",
        "--json",
        "Which tar option changes to a directory before extracting?",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let chunks = v["chunks"].as_array().unwrap();
    assert_eq!(chunks[0]["page"], "tar", "{v}");
    assert_eq!(chunks[0]["n"], 1);
    assert!(!v["answer"].as_str().unwrap().is_empty());
    for c in v["citations"].as_array().unwrap() {
        let n = c["n"].as_u64().unwrap() as usize;
        assert!((1..=chunks.len()).contains(&n));
    }

    // The same question through `canon serve --index`: the same passages, an answer citing them.
    let mut server = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args([
            "serve",
            "--index",
            "d.idx",
            "--port",
            "0",
            "--parallel",
            "2",
        ])
        .current_dir(p)
        .env("CANON_HOME", asset_home())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let body = serde_json::json!({
        "question": "Which tar option changes to a directory before extracting?",
        "k": 2,
        "max_tokens": 40,
    })
    .to_string();
    let post = |body: &str| -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        write!(
            s,
            "POST /v1/ask HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut r = String::new();
        s.read_to_string(&mut r).ok()?;
        Some(r)
    };
    let t0 = std::time::Instant::now();
    let reply = loop {
        // 503 while the models load.
        if let Some(r) = post(&body)
            && (r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
        {
            break r;
        }
        assert!(
            t0.elapsed().as_secs() < 180,
            "canon serve never answered /v1/ask"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let _ = server.kill();
    let _ = server.wait();
    let json = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
    let served: serde_json::Value = serde_json::from_str(json).unwrap();
    let pages = |a: &serde_json::Value| -> Vec<String> {
        a.as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{} {} {}", c["page"], c["section"], c["lines"]))
            .collect()
    };
    assert_eq!(pages(&served["passages"]), pages(&v["chunks"]), "{served}");
    assert!(!served["answer"].as_str().unwrap().is_empty(), "{served}");
    for c in served["citations"].as_array().unwrap() {
        assert!(served["passages"].as_array().unwrap().contains(c));
    }
}

/// `graph build --extractor llm --limit 1`: the first text unit goes to the model (here a server
/// that does not answer: a failed unit, counted), the rest to the fast extractor, and the graph
/// names both.
#[test]
fn graph_build_sends_the_first_units_to_the_llm_and_the_rest_to_the_fast_extractor() {
    let d = tempfile::tempdir().unwrap();
    let idx = make_index(d.path());
    let ix = idx.to_str().unwrap();
    let o = canon(
        &[
            "graph",
            "build",
            "--index",
            ix,
            "--extractor",
            "llm",
            "--url",
            "http://127.0.0.1:9",
            "--limit",
            "1",
            "--gleanings",
            "0",
            "--no-entity-embeddings",
        ],
        d.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // The first JSON line (off a terminal a progress bar's plain lines may come before it).
    let first = err.lines().find(|l| l.starts_with('{')).unwrap();
    let llm: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(llm["llm"], "remote:http://127.0.0.1:9:default", "{llm}");
    assert_eq!(llm["stats"]["calls"], 1, "{llm}");
    assert_eq!(llm["stats"]["failed_units"], 1, "{llm}");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(idx.join("graph.json")).unwrap()).unwrap();
    assert_eq!(
        g["extractor"],
        "remote:http://127.0.0.1:9:default (first 1 units), fast (rest)"
    );
    assert!(!g["entities"].as_array().unwrap().is_empty());
    let o = canon(
        &["graph", "build", "--index", ix, "--extractor", "regex"],
        d.path(),
    );
    assert_clean_error(&o, &["--extractor fast or llm", "regex"]);
}

/// `--model minilm:q8_0`: the index records the tagged name, searches embed the query the same
/// way, and an unknown tag is one error line.
#[test]
fn an_index_built_on_8_bit_weights_records_them_and_searches_with_them() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let docs = p.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for (name, text) in [
        (
            "tar.md",
            "# tar\n\n## Options\n\n-C, --directory=DIR\nchange to directory DIR before extracting.\n",
        ),
        (
            "ls.md",
            "# ls\n\n## Options\n\n-t\nsort by modification time, newest first.\n",
        ),
        (
            "gzip.md",
            "# gzip\n\n## Description\n\ngzip reduces the size of the named files.\n",
        ),
    ] {
        std::fs::write(docs.join(name), text).unwrap();
    }
    let run = |args: &[&str]| canon_with_assets(args, p);
    let o = run(&[
        "--quiet",
        "index",
        "build",
        "--docs",
        "docs",
        "--out",
        "q.idx",
        "--model",
        "minilm:q8_0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("q.idx/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["model"], "minilm:q8_0");
    let o = run(&[
        "--quiet",
        "search",
        "--index",
        "q.idx",
        "--mode",
        "dense",
        "--k",
        "1",
        "--json",
        "how do I shrink files",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hit: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(hit["page"], "gzip", "{hit}");
    let o = run(&[
        "index",
        "build",
        "--docs",
        "docs",
        "--out",
        "bad.idx",
        "--model",
        "minilm:q4",
    ]);
    assert_clean_error(&o, &["':q8_0'", "':q4'"]);
    assert!(!p.join("bad.idx").exists());
}
