//! `canon eval rag`: retrieval (recall@k, MRR of the source page) and answers (exact match,
//! contains, citation correctness) over a question file.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::bail;
use canon_rag::eval::{Summary, read_questions, summarize};
use canon_rag::eval_answer::{EvalSettings, Method, evaluate_method};
use canon_rag::index::Mode;
use clap::Args;
use serde_json::json;

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon eval rag --index man.idx --questions goldens/rag/man-devset.jsonl
  canon eval rag --index man.idx --questions q.jsonl --methods hybrid,bm25 --answer --model smollm2 --limit 40 --out runs/rag-eval.jsonl

Questions are JSON lines {id, question, answer, aliases?, page, section?, kind?}; `page` names
the source page as the index does (tar(1)). Retrieval metrics are computed for every method,
answers only with --answer. Methods: hybrid, dense, bm25, graph-local, graph-global (the graph
methods need `canon graph build` on the index).")]
pub struct EvalRagArgs {
    /// The index folder.
    #[arg(long)]
    pub index: PathBuf,
    /// Question file (JSON lines).
    #[arg(long, value_name = "FILE.jsonl")]
    pub questions: PathBuf,
    /// Methods, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "hybrid,dense,bm25")]
    pub methods: Vec<String>,
    /// Retrieval depth scored (recall@1/5/10 and MRR need 10).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Also generate answers (with --model) from the top --answer-k passages.
    #[arg(long)]
    pub answer: bool,
    /// Generating model for --answer.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Passages in the answer prompt.
    #[arg(long, default_value_t = 3)]
    pub answer_k: usize,
    /// Most answer tokens.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// Also score the reference answer against N distractors (other questions' answers of the
    /// same kind) under RAG-Sequence, RAG-Token and without retrieval, over the top --answer-k
    /// passages: accuracy of each and how often retrieval raises the answer's log-probability.
    #[arg(long, value_name = "N")]
    pub score_options: Option<usize>,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write one JSON line per question and method.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A query encoder folder instead of the index's model (e.g. from `canon finetune --method rag`).
    #[arg(long, value_name = "DIR")]
    pub query_encoder: Option<PathBuf>,
    /// Print the summaries as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalRagArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.k == 0 || a.answer_k == 0 {
        bail!("expected --k and --answer-k of at least 1");
    }
    let text = canon_fs::lines::read_text(&a.questions)?;
    let mut qs = read_questions(&text, &a.questions.display().to_string())?;
    if let Some(l) = a.limit {
        qs.truncate(l);
    }
    let methods = a
        .methods
        .iter()
        .map(|m| m.parse::<Method>())
        .collect::<Result<Vec<_>, _>>()?;
    let need_dense = a.score_options.is_some()
        || methods
            .iter()
            .any(|m| matches!(m, Method::Flat(Mode::Dense | Mode::Hybrid)));
    let r = super::ask::open_retriever(&a.index, need_dense, a.query_encoder.as_deref(), ctx)?;
    let graph = if methods.iter().any(Method::is_graph) {
        Some(super::graph::load_graph(&r.index)?)
    } else {
        None
    };
    let mut ans = if a.answer || a.score_options.is_some() {
        Some(super::ask::load_answerer(
            &a.model,
            None,
            a.max_tokens,
            ctx,
        )?)
    } else {
        None
    };
    let mut lines = String::new();
    let mut sums: Vec<Summary> = Vec::new();
    let settings = EvalSettings {
        k: a.k,
        answer_k: a.answer_k,
        answer: a.answer,
        score_options: a.score_options,
        score: &canon_agent::fewshot::continuation_logprobs,
    };
    let echo = a.answer && !ctx.quiet && !std::io::stderr().is_terminal();
    for m in &methods {
        let name = m.name();
        let pb = crate::progress::rate(ctx.quiet, qs.len(), &name);
        let ev = evaluate_method(
            *m,
            &qs,
            &r,
            graph.as_ref(),
            ans.as_mut(),
            &settings,
            &mut |_| pb.inc(1),
            &mut |line| {
                if echo {
                    eprintln!("{line}");
                }
                lines.push_str(line);
                lines.push('\n');
            },
        )?;
        pb.finish_and_clear();
        let (ann_found, ann_total, opt_stats) = (ev.ann_found, ev.ann_total, ev.options);
        if ann_total > 0 && !ctx.quiet {
            eprintln!(
                "{}",
                json!({"method": name, "hnsw_recall_vs_exact": ann_found as f64 / ann_total as f64, "k": a.k})
            );
        }
        if opt_stats.0 > 0 {
            let n = opt_stats.0 as f64;
            println!(
                "{}",
                json!({"method": name, "option_scoring": {"questions": opt_stats.0, "candidates": a.score_options.map(|d| d + 1),
                    "rag_sequence_accuracy": opt_stats.1 as f64 / n, "rag_token_accuracy": opt_stats.2 as f64 / n,
                    "no_retrieval_accuracy": opt_stats.3 as f64 / n, "retrieval_raises_answer_logprob": opt_stats.4 as f64 / n}})
            );
        }
        let mut s = summarize(&name, &ev.outcomes, &ev.search_ms);
        s.p50_embed_ms = canon_rag::eval::median(&ev.embed_ms);
        sums.push(s);
    }
    if let Some(p) = &a.out {
        super::write_atomic(p, &lines)?;
    }
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}", v * 100.0));
    if a.json {
        for s in &sums {
            println!("{}", json!(s));
        }
    } else {
        println!(
            "| method | questions | recall@1 | recall@5 | recall@10 | MRR | exact % | contains % | cites % | citation correct % | p50 search ms | p50 query embed ms |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for s in &sums {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {} | {} | {} | {} | {:.2} | {:.1} |",
                s.method,
                s.questions,
                s.recall_at_1 * 100.0,
                s.recall_at_5 * 100.0,
                s.recall_at_10 * 100.0,
                s.mrr,
                pct(s.exact_match),
                pct(s.contains),
                pct(s.cite_rate),
                pct(s.citation_correct),
                s.p50_ms,
                s.p50_embed_ms
            );
        }
    }
    Ok(())
}
