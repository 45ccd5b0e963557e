//! `canon graph summarize`: description summaries and community reports written by a model
//! (`canon_rag::index_graph::summarize`).

use canon_rag::opts::GraphSummarizeArgs;

use crate::{Ctx, model_gen};

pub fn run(a: GraphSummarizeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut load = |m: &str| model_gen::load_lm(m, ctx).map_err(Into::into);
    let mut load_encoder = |m: &str| model_gen::load_encoder(m, ctx).map_err(Into::into);
    let mut bars = crate::progress::Stages::new(ctx.quiet);
    let out =
        canon_rag::index_graph::summarize(&a, &mut load, &mut load_encoder, &mut |s, d, n| {
            bars.on(s.label(), d, n)
        })?;
    drop(bars);
    println!("{out}");
    Ok(())
}
