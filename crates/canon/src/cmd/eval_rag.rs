//! `canon eval rag`: retrieval (recall@k, MRR of the source page) and answers (exact match,
//! contains, citation correctness) over a question file.

use std::io::IsTerminal;

use canon_rag::eval::{Summary, read_questions, summarize};
use canon_rag::eval_answer::{EvalSettings, Method, evaluate_method};
use canon_rag::opts::EvalRagArgs;
use canon_rag::render;
use serde_json::json;

use crate::Ctx;

pub fn run(a: EvalRagArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let methods = a.check()?;
    let text = canon_fs::lines::read_text(&a.questions)?;
    let mut qs = read_questions(&text, &a.questions.display().to_string())?;
    if let Some(l) = a.limit {
        qs.truncate(l);
    }
    let need_dense = a.score_options.is_some() || methods.iter().any(Method::needs_embedding);
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
            println!(
                "{}",
                render::option_scoring(&name, opt_stats, a.score_options)
            );
        }
        let mut s = summarize(&name, &ev.outcomes, &ev.search_ms);
        s.p50_embed_ms = canon_rag::eval::median(&ev.embed_ms);
        sums.push(s);
    }
    if let Some(p) = &a.out {
        super::write_atomic(p, &lines)?;
    }
    print!("{}", render::summaries(&sums, a.json));
    Ok(())
}
