//! `canon eval rag`: retrieval (recall@k, MRR of the source page) and answers (exact match,
//! contains, citation correctness) over a question file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use canon_rag::eval::{Outcome, Summary, read_questions, score, summarize};
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
    /// Print the summaries as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn bar(ctx: &Ctx, len: usize, what: &str) -> indicatif::ProgressBar {
    if ctx.quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
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
    let mut methods = Vec::new();
    for m in &a.methods {
        match m.as_str() {
            "hybrid" | "dense" | "bm25" => methods.push(Method::Flat(m.parse::<Mode>()?)),
            "graph-local" => methods.push(Method::GraphLocal),
            "graph-global" => methods.push(Method::GraphGlobal),
            o => bail!(
                "expected methods among hybrid, dense, bm25, graph-local, graph-global, found '{o}'"
            ),
        }
    }
    let need_dense = a.score_options.is_some()
        || methods
            .iter()
            .any(|m| matches!(m, Method::Flat(Mode::Dense | Mode::Hybrid)));
    let r = super::ask::open_retriever(&a.index, need_dense, ctx)?;
    let graph = if methods
        .iter()
        .any(|m| matches!(m, Method::GraphLocal | Method::GraphGlobal))
    {
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
    for m in &methods {
        let name = m.name();
        let pb = bar(ctx, qs.len(), &name);
        let mut outs: Vec<Outcome> = Vec::new();
        let mut ms = Vec::new();
        let mut ems = Vec::new();
        let (mut ann_found, mut ann_total) = (0usize, 0usize);
        let mut opt_stats = (0usize, 0usize, 0usize, 0usize, 0usize);
        for q in &qs {
            pb.inc(1);
            let t0 = Instant::now();
            let hits = match m {
                Method::Flat(mode) => {
                    let v = if *mode == Mode::Bm25 {
                        None
                    } else {
                        r.embed(&q.question)?
                    };
                    ems.push(t0.elapsed().as_secs_f64() * 1e3);
                    let t1 = Instant::now();
                    let h = r.index.search(&q.question, v.as_deref(), *mode, a.k)?;
                    ms.push(t1.elapsed().as_secs_f64() * 1e3);
                    if let (Some(qv), Mode::Dense, Some(_)) = (&v, mode, &r.index.hnsw) {
                        let exact: Vec<usize> = r
                            .index
                            .dense(qv, a.k, true)
                            .into_iter()
                            .map(|x| x.0)
                            .collect();
                        ann_found += h.iter().filter(|x| exact.contains(&x.id)).count();
                        ann_total += exact.len();
                    }
                    h
                }
                Method::GraphLocal | Method::GraphGlobal => {
                    let g = graph.as_ref().context("graph not loaded")?;
                    super::graph::graph_hits(
                        g,
                        &r.index,
                        &q.question,
                        matches!(m, Method::GraphGlobal),
                        a.k,
                    )
                }
            };
            if !matches!(m, Method::Flat(_)) {
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
                ems.push(0.0);
            }
            let pages: Vec<String> = hits.iter().map(|h| h.chunk.page.clone()).collect();
            if let (Some(nd), Some(llm)) = (a.score_options, ans.as_ref()) {
                let mut cands = vec![q.answer.clone()];
                let pool: Vec<&str> = qs
                    .iter()
                    .filter(|o| {
                        o.kind == q.kind && o.answer != q.answer && !q.aliases.contains(&o.answer)
                    })
                    .map(|o| o.answer.as_str())
                    .collect();
                let qi = qs.iter().position(|o| o.id == q.id).unwrap_or(0);
                for j in 0..pool.len() {
                    if cands.len() > nd {
                        break;
                    }
                    let c = pool[(qi * 7 + j * 13) % pool.len()];
                    if !cands.iter().any(|x| x == c) {
                        cands.push(c.to_string());
                    }
                }
                let top = &hits[..hits.len().min(a.answer_k)];
                let prior = super::ask::dense_log_prior(&r, &q.question, top)?;
                let sc = super::ask::candidate_scores(llm, &q.question, top, &prior, &cands)?;
                let best = |v: &[f64]| {
                    v.iter()
                        .enumerate()
                        .max_by(|x, y| x.1.total_cmp(y.1))
                        .map(|x| x.0)
                };
                opt_stats.0 += 1;
                opt_stats.1 += (best(&sc.sequence) == Some(0)) as usize;
                opt_stats.2 += (best(&sc.token) == Some(0)) as usize;
                opt_stats.3 += (best(&sc.no_retrieval) == Some(0)) as usize;
                opt_stats.4 += (sc.sequence[0] > sc.no_retrieval[0]) as usize;
            }
            let o = match ans.as_mut().filter(|_| a.answer) {
                Some(llm) => {
                    let top = &hits[..hits.len().min(a.answer_k)];
                    let out = llm.answer(&q.question, top)?;
                    let cited: Vec<&str> = out.citations.iter().map(|p| p.text.as_str()).collect();
                    score(q, &pages, Some(&out.answer), &cited)
                }
                None => score(q, &pages, None, &[]),
            };
            let line = json!({"method": name, "question": q.id, "kind": q.kind, "outcome": o, "pages": pages})
                .to_string();
            if a.answer && !ctx.quiet && !std::io::stderr().is_terminal() {
                eprintln!("{line}");
            }
            lines.push_str(&line);
            lines.push('\n');
            outs.push(o);
        }
        pb.finish_and_clear();
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
        let mut s = summarize(&name, &outs, &ms);
        s.p50_embed_ms = canon_rag::eval::median(&ems);
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

enum Method {
    Flat(Mode),
    GraphLocal,
    GraphGlobal,
}

impl Method {
    fn name(&self) -> String {
        match self {
            Method::Flat(Mode::Hybrid) => "hybrid".into(),
            Method::Flat(Mode::Dense) => "dense".into(),
            Method::Flat(Mode::Bm25) => "bm25".into(),
            Method::GraphLocal => "graph-local".into(),
            Method::GraphGlobal => "graph-global".into(),
        }
    }
}
