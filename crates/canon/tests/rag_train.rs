//! `canon finetune --method rag` (paper 9's end-to-end training) on a tiny generator written by
//! the test and an index of MiniLM vectors: the run's files, that training lowers the answers'
//! marginal NLL on the questions it trains on, that the trained query encoder loads in `canon
//! ask --query-encoder`, and the bad inputs refused with one `error:` line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use canon_models::ModelSpec;
use canon_rag::chunk::Chunk;
use canon_rag::index::{FORMAT, FileEntry, Meta, VERSION, write_index};
use canon_rag::reader::ReadStats;
use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

/// Runs canon in `dir` with the user's asset cache (the tests need MiniLM).
fn canon(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run canon")
}

fn assert_clean_error(o: &Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure; stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {e}");
    assert!(
        lines[0].contains(needle),
        "error line lacks '{needle}': {}",
        lines[0]
    );
}

fn chunk(page: &str, section: &str, text: &str) -> Chunk {
    Chunk {
        path: format!("/m/{page}.gz"),
        page: page.into(),
        section: section.into(),
        line_start: 1,
        line_end: 1,
        text: text.into(),
    }
}

/// An index of six short passages embedded with MiniLM (the cached asset, fetched if missing).
fn make_index(dir: &Path) -> PathBuf {
    let chunks = vec![
        chunk("tar(1)", "NAME", "tar - an archiving utility"),
        chunk("ls(1)", "NAME", "ls - list directory contents"),
        chunk("gzip(1)", "NAME", "gzip - compress or expand files"),
        chunk("rm(1)", "NAME", "rm - remove files or directories"),
        chunk("cat(1)", "NAME", "cat - concatenate files and print"),
        chunk("du(1)", "NAME", "du - estimate file space usage"),
    ];
    let enc = canon_models::load_encoder(&ModelSpec::Alias("minilm".into()), &canon_assets::Quiet)
        .expect("load minilm");
    let texts: Vec<String> = chunks.iter().map(Chunk::indexed_text).collect();
    let mut vectors = Vec::new();
    for mut v in enc.embedder.embed(&texts, 8).unwrap() {
        canon_rag::dense::normalize(&mut v);
        vectors.extend(v);
    }
    let meta = Meta {
        format: FORMAT.into(),
        version: VERSION,
        model: "minilm".into(),
        dim: enc.embedder.dim(),
        chunks: chunks.len(),
        man_rendered: false,
        roots: vec![],
        files: vec![FileEntry {
            path: "/m".into(),
            size: 1,
            mtime: 1,
            chunk_start: 0,
            chunk_end: chunks.len(),
        }],
        stats: ReadStats::default(),
    };
    let out = dir.join("t.idx");
    write_index(&out, &meta, &chunks, &vectors).unwrap();
    out
}

fn questions(dir: &Path) -> PathBuf {
    let p = dir.join("q.jsonl");
    let qs = [
        ("a", "Which command lists a directory?", "ls", "ls(1)"),
        ("b", "Which command compresses files?", "gzip", "gzip(1)"),
        ("c", "Which command removes files?", "rm", "rm(1)"),
    ];
    let text: String = qs
        .iter()
        .map(|(id, q, a, p)| {
            format!(
                "{}\n",
                serde_json::json!({"id": id, "question": q, "answer": a, "page": p})
            )
        })
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn rag_end_to_end_training_writes_its_run_and_lowers_the_marginal_nll() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let idx = make_index(h);
    let q = questions(h);
    let gguf = h.join("tiny.gguf");
    write_tiny_llama(
        &gguf,
        &TinyLlama {
            context_length: 512,
            ..TinyLlama::default()
        },
    )
    .unwrap();
    let out = h.join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (idx_s, q_s, g_s, out_s) = (s(&idx), s(&q), s(&gguf), s(&out));
    let o = canon(
        &[
            "--threads",
            "2",
            "finetune",
            "--method",
            "rag",
            "--index",
            &idx_s,
            "--data",
            &q_s,
            "--eval-data",
            &q_s,
            "--model",
            &g_s,
            "--out",
            &out_s,
            "--k",
            "2",
            "--max-steps",
            "8",
            "--eval-every",
            "4",
            "--lr",
            "1e-2",
            "--query-lr",
            "1e-4",
            "--batch-size",
            "3",
            "--max-tokens",
            "4",
            "--rank",
            "4",
            "--targets",
            "all",
        ],
        h,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "rag.json",
        "metrics.jsonl",
        "summary.json",
        "answers-before.jsonl",
        "answers-after.jsonl",
        "query-encoder/model.safetensors",
        "query-encoder/config.json",
        "query-encoder/rag-prior.json",
        "adapter/adapter_config.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(m.lines().count(), 8);
    assert!(m.contains("eval_recall_at_k"));
    let sum: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let before = sum["before"]["nll"].as_f64().unwrap();
    let after = sum["after"]["nll"].as_f64().unwrap();
    assert_eq!(sum["before"]["questions"], 3);
    assert!(before.is_finite() && after.is_finite());
    assert!(
        after < before - 0.5,
        "training on the questions should lower their marginal NLL: {before} -> {after}"
    );
    // The trained encoder answers `canon ask --query-encoder` with its own prior scale.
    let o = canon(
        &[
            "ask",
            "--index",
            &idx_s,
            "--model",
            &g_s,
            "--query-encoder",
            &s(&out.join("query-encoder")),
            "--lora",
            &s(&out.join("adapter")),
            "--k",
            "2",
            "--rag",
            "token",
            "--max-tokens",
            "4",
            "--json",
            "Which command removes files?",
        ],
        h,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same folder again is refused; resume is the way on.
    let o = canon(
        &[
            "finetune",
            "--method",
            "rag",
            "--index",
            &idx_s,
            "--data",
            &q_s,
            "--eval-data",
            &q_s,
            "--model",
            &g_s,
            "--out",
            &out_s,
        ],
        h,
    );
    assert_clean_error(&o, "holds a run already");
}

#[test]
fn rag_training_refuses_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let q = h.join("q.jsonl");
    std::fs::write(
        &q,
        "{\"id\": \"a\", \"question\": \"x?\", \"answer\": \"y\", \"page\": \"p\"}\n",
    )
    .unwrap();
    let q_s = q.to_str().unwrap();
    let out = h.join("run");
    let out_s = out.to_str().unwrap();
    let o = canon(
        &[
            "finetune",
            "--method",
            "rag",
            "--data",
            q_s,
            "--eval-data",
            q_s,
            "--out",
            out_s,
        ],
        h,
    );
    assert_clean_error(&o, "--index is required");
    let missing = h.join("nope.idx");
    let o = canon(
        &[
            "finetune",
            "--method",
            "rag",
            "--index",
            missing.to_str().unwrap(),
            "--data",
            q_s,
            "--eval-data",
            q_s,
            "--out",
            out_s,
        ],
        h,
    );
    assert_clean_error(&o, "nope.idx");
    let o = canon(
        &[
            "finetune",
            "--method",
            "rag",
            "--index",
            missing.to_str().unwrap(),
            "--data",
            q_s,
            "--eval-data",
            q_s,
            "--out",
            out_s,
            "--rag-loss",
            "both",
        ],
        h,
    );
    assert!(!o.status.success());
    let o = canon(
        &["finetune", "--method", "rag", "--out", out_s, "--resume"],
        h,
    );
    assert_clean_error(&o, "--resume");
    assert!(
        !out.join("rag.json").exists(),
        "a refused run must not write its folder"
    );
}
