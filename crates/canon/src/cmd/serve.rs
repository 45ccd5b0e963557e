//! `canon serve`: the OpenAI-compatible HTTP server (`canon-serve`) over the batched engine. The
//! settings and the run are `canon_serve::opts`; the binary supplies the model loaders under the
//! global flags.

use std::sync::Arc;

use canon_serve::opts::{Notice, ServeArgs, serve};

use crate::{Ctx, model_gen};

pub fn run(a: ServeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    // Loading happens on a blocking thread while the server answers /health with 503.
    let load_ctx = Arc::new(Ctx {
        threads: ctx.threads,
        quiet: ctx.quiet,
        f32_weights: ctx.f32_weights,
        lora: ctx.lora.clone(),
        kv_f16: ctx.kv_f16,
    });
    let c = load_ctx.clone();
    // Without --cache-type, keys and values are stored as f16 where the model has the option
    // (llama-server's default cache type; the decode step reads the f16 rows in place), f32
    // otherwise.
    let f16_by_default = ctx.kv_f16.is_none();
    let lm = Arc::new(move |m: &str| -> Result<canon_models::LoadedLm, String> {
        let mut lm = model_gen::load_lm(m, &c).map_err(|e| format!("{e:#}"))?;
        if f16_by_default {
            // A model without an f16 cache keeps f32: not an error for a default.
            let _ = lm.model.set_kv_f16(true);
        }
        Ok(lm)
    });
    let encoder = Arc::new(move |m: &str| {
        model_gen::load_encoder(m, &load_ctx).map_err(|e| format!("{e:#}"))
    });
    // The address goes to stdout (scripts read it), always; the other notices to stderr, the
    // setup and ready lines unless --quiet.
    let quiet = ctx.quiet;
    let notify = Arc::new(move |n: Notice| match n {
        Notice::Listening(_) => println!("canon: {n}"),
        Notice::ShuttingDown => eprintln!("canon: {n}"),
        Notice::Setup(_) | Notice::Ready { .. } if !quiet => eprintln!("canon: {n}"),
        _ => {}
    });
    Ok(serve(a, notify, lm, encoder)?)
}
