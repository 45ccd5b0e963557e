//! `canon graph summarize`: description summaries and community reports written by a model.

use std::time::Instant;

use canon_infer::{Engine, EngineConfig};
use canon_rag::graph::{KnowledgeGraph, Llm, approx_tokens};
use canon_rag::graph_llm::{self, BatchLlm, CachedBatch, EngineLlm, Serial};
use canon_rag::index::Index;
use canon_rag::opts::GraphSummarizeArgs;
use serde_json::json;

use super::graph::RemoteLlm;
use crate::{Ctx, model_gen};

/// Counts a text's tokens.
type Counter = dyn Fn(&str) -> usize;

pub fn run(a: GraphSummarizeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let stages = a.check()?;
    let ix = Index::open(&a.index, None)?;
    let mut g = KnowledgeGraph::load(&a.index, &ix.chunks)?;
    let t0 = Instant::now();
    let mut remote;
    let mut serial;
    let mut local;
    let (llm, count): (&mut dyn BatchLlm, Box<Counter>) = match &a.url {
        Some(u) => {
            remote = RemoteLlm::new(u, &a.remote_model)?;
            serial = Serial(&mut remote as &mut dyn Llm);
            (&mut serial, Box::new(approx_tokens))
        }
        None => {
            let lm = model_gen::load_lm(&a.model, ctx)?;
            let template = lm.chat_template.clone();
            let cfg = EngineConfig {
                slots: a.parallel,
                queue_limit: a.parallel.max(64),
                ..EngineConfig::default()
            };
            local = EngineLlm::new(Engine::start(lm, cfg)?, template, &a.model);
            let tok = local.engine.tokenizer().clone();
            (
                &mut local,
                Box::new(move |s: &str| tok.encode(s, false).map_or(s.len(), |t| t.len())),
            )
        }
    };
    let mut cache = CachedBatch::new(llm, &a.index.join("llm-cache"))?;
    let mut out =
        json!({"graph": a.index.join(canon_rag::graph::GRAPH_FILE).display().to_string()});
    if stages.descriptions {
        let pb = crate::progress::rate(ctx.quiet, 0, "summaries");
        let st = graph_llm::summarize_descriptions(
            &mut g,
            &mut cache,
            a.parallel,
            a.limit,
            4000,
            &mut |d, n| {
                pb.set_length(n as u64);
                pb.set_position(d as u64);
            },
        );
        pb.finish_and_clear();
        out["descriptions"] = json!(st);
        // Entity vectors embed the descriptions: embed the summarised ones again.
        if g.entity_embedding.is_some() && g.entity_vectors().is_none() {
            let enc = model_gen::load_encoder(&ix.meta.model, ctx)?;
            let pb = crate::progress::rate(ctx.quiet, g.entities.len(), "embed entities/s");
            canon_rag::graph_answer::embed_entities(
                &mut g,
                &ix.meta.model,
                &enc,
                32,
                &mut |d, _| pb.set_position(d as u64),
            )?;
            pb.finish_and_clear();
        }
        g.save(&a.index)?;
    }
    if stages.reports {
        let pb = crate::progress::rate(ctx.quiet, 0, "reports");
        let st = graph_llm::write_reports(
            &mut g,
            &mut cache,
            a.parallel,
            a.limit,
            a.context,
            a.report_tokens,
            &*count,
            &mut |d, n| {
                pb.set_length(n as u64);
                pb.set_position(d as u64);
            },
        );
        pb.finish_and_clear();
        out["reports"] = json!(st);
        g.save(&a.index)?;
    }
    let llm_reports = g.reports.iter().filter(|r| r.llm.is_some()).count();
    out["model_reports"] = json!(format!("{llm_reports} of {}", g.reports.len()));
    out["cache_hits"] = json!(cache.hits);
    out["calls_made"] = json!(cache.misses);
    out["seconds"] = json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    println!("{out}");
    Ok(())
}
