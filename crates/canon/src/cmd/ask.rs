//! `canon ask`: retrieve passages, answer from them with `[n]` citations naming page and section.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
pub use canon_rag::answer::{Answer, Answerer, CandidateScores, Retriever, dense_log_prior};
use canon_rag::answer::{
    RagDecoding, candidate_rows, passage_prompts, passages_json, rag_candidate_scores,
};
use canon_rag::ask::Passage;
use canon_rag::index::{Hit, Mode};
use clap::Args;
use serde_json::json;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon ask --index man.idx \"how do I make tar extract into another directory?\"
  canon ask --index man.idx --k 3 --json \"which ls option sorts by modification time?\"
  canon ask --index man.idx --k 4 --candidate \"-C\" --candidate \"-x\" \"which tar option changes directory?\"
  canon ask --index man.idx --k 3 --rag sequence-thorough \"which tar option changes directory?\"
  canon ask --index man.idx --graph local \"which files does useradd read?\"
  canon ask --index man.idx --graph global \"what do these manuals say about compression?\"

The answer cites passages as [n]; the sources printed below it name page, section, file and
lines. --json prints {question, answer, citations, chunks, timings}.")]
pub struct AskArgs {
    /// The index folder (from `canon index build`).
    #[arg(long)]
    pub index: PathBuf,
    /// The question.
    pub question: String,
    /// Generating model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Passages retrieved.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Retrieval: hybrid, dense or bm25.
    #[arg(long, default_value = "hybrid")]
    pub mode: String,
    /// Most answer tokens.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Prompt budget in tokens (default: the model's context less --max-tokens, at most 2048).
    #[arg(long)]
    pub context: Option<usize>,
    /// Score these candidate answers under RAG-Sequence and RAG-Token over the top --k passages
    /// (p(z|x) = softmax of the passages' dense scores) instead of generating (repeatable).
    #[arg(long = "candidate", value_name = "TEXT", allow_hyphen_values = true)]
    pub candidates: Vec<String>,
    /// Generate with paper 9's decoders over the top --k passages instead of one prompt of
    /// numbered passages: token (RAG-Token, beam search on the per-step marginal), sequence-thorough
    /// or sequence-fast (RAG-Sequence: a beam search per passage, its hypotheses rescored).
    #[arg(long)]
    pub rag: Option<String>,
    /// Beam width of the --rag decoders (1 = greedy).
    #[arg(long, default_value_t = 1)]
    pub beams: usize,
    /// GraphRAG query over the index's graph (`canon graph build`): global or local.
    #[arg(long)]
    pub graph: Option<String>,
    /// With --graph global: map over every level-0 community report (GraphRAG's way, one model
    /// call per batch of reports) instead of the 2×k best by BM25.
    #[arg(long)]
    pub all_reports: bool,
    /// A query encoder folder to embed the question with instead of the index's model (one
    /// trained by `canon finetune --method rag`, whose retrieval prior scale it carries).
    #[arg(long, value_name = "DIR")]
    pub query_encoder: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Opens an index with its query encoder (for dense search): the one named in the index, or
/// `query_encoder` (e.g. one trained by `canon finetune --method rag`, whose prior scale it
/// records).
pub fn open_retriever(
    path: &std::path::Path,
    need_dense: bool,
    query_encoder: Option<&std::path::Path>,
    ctx: &Ctx,
) -> anyhow::Result<Retriever> {
    let mut r = Retriever::open(path, need_dense, |name| match query_encoder {
        Some(q) => model_gen::load_encoder(&q.display().to_string(), ctx),
        None => model_gen::load_encoder(name, ctx),
    })?;
    if let Some(q) = query_encoder
        && let Some(s) = canon_rag::answer::prior_scale_of(q)?
    {
        r.prior_scale = s;
    }
    Ok(r)
}

/// Loads the generating model with its prompt budget.
pub fn load_answerer(
    model: &str,
    context: Option<usize>,
    max_tokens: usize,
    ctx: &Ctx,
) -> anyhow::Result<Answerer> {
    Ok(Answerer::new(
        model_gen::load_lm(model, ctx)?,
        context,
        max_tokens,
    )?)
}

/// RAG-Sequence / RAG-Token scores of candidate answers, scored by the few-shot continuation
/// scorer.
pub fn candidate_scores(
    ans: &Answerer,
    question: &str,
    hits: &[Hit],
    log_prior: &[f64],
    candidates: &[String],
) -> anyhow::Result<CandidateScores> {
    Ok(rag_candidate_scores(
        ans,
        question,
        hits,
        log_prior,
        candidates,
        &canon_agent::fewshot::continuation_logprobs,
    )?)
}

pub fn print_answer(a: &Answer, json: bool, extra: serde_json::Value) {
    if json {
        let mut v = json!(a);
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        println!("{v}");
        return;
    }
    println!("{}", a.answer);
    println!();
    let show: Vec<&Passage> = if a.citations.is_empty() {
        println!("Sources (retrieved; the answer cites none):");
        a.chunks.iter().collect()
    } else {
        println!("Sources:");
        a.citations.iter().collect()
    };
    for p in show {
        println!(
            "[{}] {} ({}:{}-{})",
            p.n,
            p.source(),
            p.path,
            p.lines[0],
            p.lines[1]
        );
    }
}

pub fn run(a: AskArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.question.trim().is_empty() {
        bail!("expected a non-empty question, found an empty one");
    }
    if a.k == 0 {
        bail!("expected --k of at least 1, found 0");
    }
    let mode: Mode = a.mode.parse()?;
    let chosen = [a.graph.is_some(), !a.candidates.is_empty(), a.rag.is_some()];
    if chosen.iter().filter(|&&x| x).count() > 1 {
        bail!("expected at most one of --graph, --candidate and --rag, found several");
    }
    if a.all_reports && a.graph.as_deref() != Some("global") {
        bail!("expected --all-reports with --graph global, found it without");
    }
    if let Some(g) = &a.graph {
        return super::graph::ask(&a, g, ctx);
    }
    if !a.candidates.is_empty() {
        return score_candidates(&a, mode, ctx);
    }
    if let Some(r) = &a.rag {
        return rag_decode(&a, r, mode, ctx);
    }
    let t0 = Instant::now();
    let r = open_retriever(
        &a.index,
        mode != Mode::Bm25,
        a.query_encoder.as_deref(),
        ctx,
    )?;
    let mut ans = load_answerer(&a.model, a.context, a.max_tokens, ctx)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let hits = r.search(&a.question, mode, a.k)?;
    let search_ms = t1.elapsed().as_secs_f64() * 1e3;
    let out = ans.answer(&a.question, &hits)?;
    print_answer(
        &out,
        a.json,
        json!({"timings": {"load_ms": load_ms, "search_ms": search_ms, "prefill_ms": out.prefill_ms, "decode_ms": out.decode_ms}}),
    );
    Ok(())
}

fn score_candidates(a: &AskArgs, mode: Mode, ctx: &Ctx) -> anyhow::Result<()> {
    if a.candidates.iter().any(|c| c.trim().is_empty()) {
        bail!("expected non-empty --candidate answers, found an empty one");
    }
    let r = open_retriever(&a.index, true, a.query_encoder.as_deref(), ctx)?;
    let hits = r.search(&a.question, mode, a.k)?;
    if hits.is_empty() {
        bail!("expected retrieved passages, found none");
    }
    let prior = dense_log_prior(&r, &a.question, &hits)?;
    let ans = load_answerer(&a.model, a.context, a.max_tokens, ctx)?;
    let sc = candidate_scores(&ans, &a.question, &hits, &prior, &a.candidates)?;
    let rows = candidate_rows(&a.candidates, &sc);
    let passages = passages_json(&hits, &prior, false);
    if a.json {
        println!(
            "{}",
            json!({"question": a.question.trim(), "candidates": rows, "passages": passages})
        );
    } else {
        println!("| candidate | log p RAG-Sequence | log p RAG-Token | log p without retrieval |");
        println!("|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.3} | {:.3} | {:.3} |",
                r["candidate"].as_str().unwrap_or(""),
                r["rag_sequence_logprob"].as_f64().unwrap_or(f64::NAN),
                r["rag_token_logprob"].as_f64().unwrap_or(f64::NAN),
                r["no_retrieval_logprob"].as_f64().unwrap_or(f64::NAN)
            );
        }
        for p in &passages {
            println!(
                "[{}] {}, {} p(z|x) = {:.3}",
                p["n"],
                p["page"].as_str().unwrap_or(""),
                p["section"].as_str().unwrap_or(""),
                p["p_z_given_x"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

/// `canon ask --rag token|sequence-thorough|sequence-fast`: paper 9's decoders with the real model.
fn rag_decode(a: &AskArgs, how: &str, mode: Mode, ctx: &Ctx) -> anyhow::Result<()> {
    if a.beams == 0 || a.beams > 64 {
        bail!("expected --beams between 1 and 64, found {}", a.beams);
    }
    let decoding: RagDecoding = how.parse()?;
    let ans = load_answerer(&a.model, a.context, a.max_tokens, ctx)?;
    let r = open_retriever(&a.index, true, a.query_encoder.as_deref(), ctx)?;
    let (hits, prior, prompts) = passage_prompts(&r, &a.question, mode, a.k, &ans)?;
    let t0 = Instant::now();
    let out = canon_rag::answer::rag_decode(&ans, &prior, prompts, decoding, a.beams)?;
    let (answer, lp) = (out.answer, out.logprob);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let passages = passages_json(&hits, &prior, true);
    let hyps: Vec<serde_json::Value> = out
        .hypotheses
        .iter()
        .map(|(t, l)| json!({"text": t, "logprob": l}))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"question": a.question.trim(), "answer": answer, "decoding": how, "logprob": lp,
                "hypotheses": hyps, "passages": passages, "timings": {"decode_ms": ms}})
        );
    } else {
        println!("{answer}\n");
        for h in &hyps {
            println!(
                "hypothesis {:.3}: {}",
                h["logprob"].as_f64().unwrap_or(f64::NAN),
                h["text"].as_str().unwrap_or("")
            );
        }
        println!("Passages (p(z|x)):");
        for p in &passages {
            println!(
                "[{}] {}, {} {:.3}",
                p["n"],
                p["page"].as_str().unwrap_or(""),
                p["section"].as_str().unwrap_or(""),
                p["p_z_given_x"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
