//! `canon ask`: retrieve passages, answer from them with `[n]` citations naming page and section.
//! The settings and their checks are `canon_rag::opts::AskArgs`, the printed text
//! `canon_rag::render`.

use std::time::Instant;

use canon_rag::answer::{self, Answerer, Retriever};
use canon_rag::index::Mode;
use canon_rag::opts::{AskArgs, AskWay};
use canon_rag::render;
use serde_json::json;

use crate::{Ctx, model_gen};

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
        && let Some(s) = answer::prior_scale_of(q)?
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
    let lm = model_gen::load_lm(model, ctx)?;
    Ok(Answerer::new(lm, context, max_tokens)?)
}

pub fn run(a: AskArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (mode, way) = a.check()?;
    match way {
        AskWay::Graph(g) => return super::graph::ask(&a, &g, ctx),
        AskWay::Candidates => return score_candidates(&a, mode, ctx),
        AskWay::Rag(r) => return rag_decode(&a, &r, mode, ctx),
        AskWay::Prompt => {}
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
    let timings = json!({"load_ms": load_ms, "search_ms": search_ms, "prefill_ms": out.prefill_ms, "decode_ms": out.decode_ms});
    print!(
        "{}",
        render::answer(&out, a.json, json!({ "timings": timings }))
    );
    Ok(())
}

/// `canon ask --candidate ...`: RAG-Sequence / RAG-Token scores of the candidates, scored by the
/// few-shot continuation scorer.
fn score_candidates(a: &AskArgs, mode: Mode, ctx: &Ctx) -> anyhow::Result<()> {
    let r = open_retriever(&a.index, true, a.query_encoder.as_deref(), ctx)?;
    let hits = r.search(&a.question, mode, a.k)?;
    if hits.is_empty() {
        anyhow::bail!("expected retrieved passages, found none");
    }
    let prior = answer::dense_log_prior(&r, &a.question, &hits)?;
    let ans = load_answerer(&a.model, a.context, a.max_tokens, ctx)?;
    let score = &canon_agent::fewshot::continuation_logprobs;
    let sc = answer::rag_candidate_scores(&ans, &a.question, &hits, &prior, &a.candidates, score)?;
    let rows = answer::candidate_rows(&a.candidates, &sc);
    let passages = answer::passages_json(&hits, &prior, false);
    print!(
        "{}",
        render::candidates(&a.question, &rows, &passages, a.json)
    );
    Ok(())
}

/// `canon ask --rag token|sequence-thorough|sequence-fast`: paper 9's decoders with the real model.
fn rag_decode(a: &AskArgs, how: &str, mode: Mode, ctx: &Ctx) -> anyhow::Result<()> {
    let decoding: answer::RagDecoding = how.parse()?;
    let ans = load_answerer(&a.model, a.context, a.max_tokens, ctx)?;
    let r = open_retriever(&a.index, true, a.query_encoder.as_deref(), ctx)?;
    let (hits, prior, prompts) = answer::passage_prompts(&r, &a.question, mode, a.k, &ans)?;
    let t0 = Instant::now();
    let out = answer::rag_decode(&ans, &prior, prompts, decoding, a.beams)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let passages = answer::passages_json(&hits, &prior, true);
    print!(
        "{}",
        render::rag_decoded(&a.question, how, &out, &passages, ms, a.json)
    );
    Ok(())
}
