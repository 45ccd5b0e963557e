//! The text the retrieval commands print for their results: an answer with its sources, the
//! candidate and decoder tables of `canon ask`, search hits, GraphRAG's global answer and the
//! `canon eval rag` summary table. Each is a function of a result type, returning the lines to
//! print (every line ends in a newline).

use std::fmt::Write;

use serde_json::{Value, json};

use crate::answer::{Answer, RagDecoded};
use crate::ask::Passage;
use crate::build::{DryRun, Written};
use crate::eval::Summary;
use crate::graph::{GRAPH_FILE, IndexGraph};
use crate::graph_answer::GlobalAnswer;
use crate::index::Hit;

/// An answer and the passages it cites (all retrieved ones when it cites none), or with `json`
/// one object: the answer's fields and those of `extra`.
pub fn answer(a: &Answer, json: bool, extra: Value) -> String {
    if json {
        let mut v = json!(a);
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        return format!("{v}\n");
    }
    let mut s = format!("{}\n\n", a.answer);
    let show: Vec<&Passage> = if a.citations.is_empty() {
        s.push_str("Sources (retrieved; the answer cites none):\n");
        a.chunks.iter().collect()
    } else {
        s.push_str("Sources:\n");
        a.citations.iter().collect()
    };
    for p in show {
        let _ = writeln!(
            s,
            "[{}] {} ({}:{}-{})",
            p.n,
            p.source(),
            p.path,
            p.lines[0],
            p.lines[1]
        );
    }
    s
}

/// `[n] page, section` and a number from a passage row of `answer::passages_json`.
fn passage_line(p: &Value, sep: &str) -> String {
    format!(
        "[{}] {}, {}{sep}{:.3}\n",
        p["n"],
        p["page"].as_str().unwrap_or(""),
        p["section"].as_str().unwrap_or(""),
        p["p_z_given_x"].as_f64().unwrap_or(0.0)
    )
}

/// `canon ask --candidate`: the candidates' log-probabilities under RAG-Sequence, RAG-Token and
/// without retrieval (rows of `answer::candidate_rows`), then the passages with p(z|x).
pub fn candidates(question: &str, rows: &[Value], passages: &[Value], json: bool) -> String {
    if json {
        return format!(
            "{}\n",
            json!({"question": question.trim(), "candidates": rows, "passages": passages})
        );
    }
    let mut s = String::from(
        "| candidate | log p RAG-Sequence | log p RAG-Token | log p without retrieval |\n|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {:.3} |",
            r["candidate"].as_str().unwrap_or(""),
            r["rag_sequence_logprob"].as_f64().unwrap_or(f64::NAN),
            r["rag_token_logprob"].as_f64().unwrap_or(f64::NAN),
            r["no_retrieval_logprob"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for p in passages {
        s.push_str(&passage_line(p, " p(z|x) = "));
    }
    s
}

/// `canon ask --rag HOW`: the decoded answer, its hypotheses and the passages with p(z|x).
pub fn rag_decoded(
    question: &str,
    how: &str,
    out: &RagDecoded,
    passages: &[Value],
    decode_ms: f64,
    json: bool,
) -> String {
    let hyps: Vec<Value> = out
        .hypotheses
        .iter()
        .map(|(t, l)| json!({"text": t, "logprob": l}))
        .collect();
    if json {
        return format!(
            "{}\n",
            json!({"question": question.trim(), "answer": out.answer, "decoding": how, "logprob": out.logprob,
                "hypotheses": hyps, "passages": passages, "timings": {"decode_ms": decode_ms}})
        );
    }
    let mut s = format!("{}\n\n", out.answer);
    for h in &hyps {
        let _ = writeln!(
            s,
            "hypothesis {:.3}: {}",
            h["logprob"].as_f64().unwrap_or(f64::NAN),
            h["text"].as_str().unwrap_or("")
        );
    }
    s.push_str("Passages (p(z|x)):\n");
    for p in passages {
        s.push_str(&passage_line(p, " "));
    }
    s
}

/// `canon search`: one line per hit and its first six lines of text, or one JSON object per hit.
pub fn hits(hits: &[Hit], json: bool) -> String {
    let mut s = String::new();
    for (n, h) in hits.iter().enumerate() {
        let c = &h.chunk;
        if json {
            let _ = writeln!(
                s,
                "{}",
                json!({"rank": n + 1, "id": h.id, "score": h.score, "page": c.page, "section": c.section,
                    "path": c.path, "lines": [c.line_start, c.line_end], "text": c.text})
            );
        } else {
            let _ = writeln!(
                s,
                "[{}] {} — {} ({}:{}-{}) score {:.4}",
                n + 1,
                c.page,
                c.section,
                c.path,
                c.line_start,
                c.line_end,
                h.score
            );
            for l in c.text.lines().take(6) {
                let _ = writeln!(s, "    {l}");
            }
        }
    }
    s
}

/// `canon ask --graph global`: the answer and its key points, or one JSON object.
pub fn global_answer(question: &str, g: &GlobalAnswer, json: bool) -> String {
    if json {
        return format!(
            "{}\n",
            json!({"question": question.trim(), "answer": g.answer, "graph": "global", "citations": g.citations,
                "points": g.points, "map_batches": g.map_batches, "map_outputs": g.map_outputs,
                "timings": {"map_ms": g.map_ms}})
        );
    }
    let mut s = format!("{}\n\nKey points:\n", g.answer);
    for p in &g.points {
        let _ = writeln!(
            s,
            "[{}] ({}) {} — {} {}",
            p["n"], p["score"], p["point"], p["report"], p["sources"]
        );
    }
    s
}

/// `canon eval rag`: one row per method (percentages, `-` for answer metrics not measured), or
/// one JSON line per method.
pub fn summaries(sums: &[Summary], json: bool) -> String {
    let mut s = String::new();
    if json {
        for m in sums {
            let _ = writeln!(s, "{}", json!(m));
        }
        return s;
    }
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}", v * 100.0));
    s.push_str(
        "| method | questions | recall@1 | recall@5 | recall@10 | MRR | exact % | contains % | cites % | citation correct % | p50 search ms | p50 query embed ms |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in sums {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {} | {} | {} | {} | {:.2} | {:.1} |",
            m.method,
            m.questions,
            m.recall_at_1 * 100.0,
            m.recall_at_5 * 100.0,
            m.recall_at_10 * 100.0,
            m.mrr,
            pct(m.exact_match),
            pct(m.contains),
            pct(m.cite_rate),
            pct(m.citation_correct),
            m.p50_ms,
            m.p50_embed_ms
        );
    }
    s
}

/// `canon eval rag --score-options N`: the accuracies of one method's option scoring from its
/// counts (questions, RAG-Sequence right, RAG-Token right, no-retrieval right, retrieval raised
/// the answer's log-probability).
pub fn option_scoring(
    method: &str,
    counts: (usize, usize, usize, usize, usize),
    options: Option<usize>,
) -> Value {
    let n = counts.0 as f64;
    json!({"method": method, "option_scoring": {"questions": counts.0, "candidates": options.map(|d| d + 1),
        "rag_sequence_accuracy": counts.1 as f64 / n, "rag_token_accuracy": counts.2 as f64 / n,
        "no_retrieval_accuracy": counts.3 as f64 / n, "retrieval_raises_answer_logprob": counts.4 as f64 / n}})
}

/// A written index's figures (`canon index build|update`): the build's line, then the index's.
pub fn written(out: &std::path::Path, w: &Written, threads: usize, total_s: f64) -> String {
    let build = json!({"files_read": w.files_read, "skipped": w.skipped, "chunks": w.chunks,
        "embedded": w.embedded, "unique_embedded": w.unique_embedded, "read_chunk_s": w.read_s,
        "embed_s": w.embed_s, "chunks_per_s": w.embedded as f64 / w.embed_s.max(1e-9),
        "threads": threads});
    let index = json!({"index": out.display().to_string(), "files": w.meta.files.len(),
        "chunks": w.meta.chunks, "hnsw": w.hnsw, "stats": w.meta.stats, "total_s": total_s});
    format!("{build}\n{index}\n")
}

/// `canon index build --dry-run`'s line: what a build of `files` files would index.
pub fn dry_run(files: usize, d: &DryRun, read_chunk_s: f64, threads: usize) -> String {
    let v = json!({"dry_run": true, "files": files, "stats": d.stats, "chunks": d.chunks,
        "tokens": d.tokens, "unique_chunks": d.unique_chunks, "unique_tokens": d.unique_tokens,
        "unique_bodies": d.unique_bodies, "read_chunk_s": read_chunk_s, "threads": threads});
    format!("{v}\n")
}

/// `canon graph build`'s lines for the graph saved in `index`: the LLM's calls (when one
/// extracted), then the graph's figures.
pub fn graph_built(index: &std::path::Path, built: &IndexGraph, total_s: f64) -> String {
    let mut s = String::new();
    if let Some(r) = &built.llm {
        let v = json!({"llm": r.id, "cache_hits": r.cache_hits, "calls_made": r.calls_made,
            "stats": r.stats});
        let _ = writeln!(s, "{v}");
    }
    let g = &built.graph;
    let v = json!({"graph": index.join(GRAPH_FILE).display().to_string(),
        "extractor": g.extractor, "entities": g.entities.len(),
        "relationships": g.relations.len(), "communities": g.clusters.len(),
        "levels": g.levels(), "leaf_communities": g.clusters.iter().filter(|c| c.leaf).count(),
        "entity_embeddings": g.entity_embedding.as_ref().map(|e| &e.file),
        "extract_s": built.extract_s, "total_s": total_s});
    let _ = writeln!(s, "{v}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_table_marks_missing_answer_metrics() {
        let s = Summary {
            method: "bm25".into(),
            questions: 2,
            recall_at_1: 0.5,
            recall_at_5: 1.0,
            recall_at_10: 1.0,
            mrr: 0.75,
            exact_match: None,
            contains: Some(0.5),
            cite_rate: None,
            citation_correct: None,
            p50_ms: 1.234,
            p50_embed_ms: 0.0,
        };
        let t = summaries(std::slice::from_ref(&s), false);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[2],
            "| bm25 | 2 | 50.0 | 100.0 | 100.0 | 0.750 | - | 50.0 | - | - | 1.23 | 0.0 |"
        );
        let j = summaries(&[s], true);
        assert!(j.starts_with("{\"") && j.ends_with("}\n"));
    }

    #[test]
    fn candidate_and_decoder_tables() {
        let rows = vec![
            json!({"candidate": "-C", "rag_sequence_logprob": -1.0, "rag_token_logprob": -2.5,
            "no_retrieval_logprob": -3.0}),
        ];
        let passages =
            vec![json!({"n": 1, "page": "tar(1)", "section": "OPTIONS", "p_z_given_x": 0.25})];
        let t = candidates("q", &rows, &passages, false);
        assert!(t.contains("| -C | -1.000 | -2.500 | -3.000 |\n"), "{t}");
        assert!(t.ends_with("[1] tar(1), OPTIONS p(z|x) = 0.250\n"), "{t}");
        let out = RagDecoded {
            answer: "-C".into(),
            logprob: Some(-0.5),
            hypotheses: vec![("-C".into(), -0.5)],
        };
        let d = rag_decoded("q", "token", &out, &passages, 1.0, false);
        assert_eq!(
            d,
            "-C\n\nhypothesis -0.500: -C\nPassages (p(z|x)):\n[1] tar(1), OPTIONS 0.250\n"
        );
        let j = rag_decoded("q", "token", &out, &passages, 1.0, true);
        assert!(j.contains("\"decoding\":\"token\""), "{j}");
        let o = option_scoring("bm25", (4, 2, 1, 0, 3), Some(3));
        assert_eq!(o["option_scoring"]["candidates"], 4);
        assert_eq!(o["option_scoring"]["rag_sequence_accuracy"], 0.5);
    }

    #[test]
    fn index_figures_are_one_json_object_a_line() {
        let d = DryRun {
            stats: Default::default(),
            chunks: 10,
            tokens: 200,
            unique_chunks: 8,
            unique_tokens: 150,
            unique_bodies: 7,
        };
        let line = dry_run(3, &d, 0.5, 2);
        let v: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(
            (v["dry_run"].clone(), v["files"].clone()),
            (json!(true), json!(3))
        );
        assert_eq!(v["unique_bodies"], 7);
        let meta = crate::index::Meta {
            format: "f".into(),
            version: 1,
            model: "minilm".into(),
            dim: 4,
            chunks: 10,
            man_rendered: false,
            roots: vec![],
            files: vec![],
            stats: Default::default(),
        };
        let w = Written {
            meta,
            hnsw: false,
            files_read: 3,
            skipped: 1,
            chunks: 10,
            embedded: 10,
            unique_embedded: 8,
            read_s: 0.1,
            embed_s: 2.0,
        };
        let text = written(std::path::Path::new("x.idx"), &w, 2, 3.0);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["chunks_per_s"], 5.0);
        assert_eq!(
            (lines[1]["index"].clone(), lines[1]["total_s"].clone()),
            (json!("x.idx"), json!(3.0))
        );
    }
}
