//! `canon agent webgpt`: WebGPT's browsing task on the encyclopedia (`canon_agent::webgpt`):
//! oracle demonstrations for behaviour cloning, and the evaluation of a model that browses. The
//! settings, files and report are `canon_agent::opts::webgpt`.

use canon_agent::browse_run::EngineCommandLm;
pub use canon_agent::opts::webgpt::WebgptArgs;
use canon_agent::webgpt;

pub fn run(a: WebgptArgs, ctx: &crate::Ctx) -> anyhow::Result<()> {
    let t = a.task()?;
    if a.oracle {
        print!("{}", a.write_oracle(&t)?);
        return Ok(());
    }
    let model = a.model.as_deref().unwrap_or_default();
    let engine = canon_infer::Engine::start(
        crate::model_gen::load_lm(model, ctx)?,
        canon_infer::EngineConfig {
            slots: a.n_max().min(16),
            ..Default::default()
        },
    )?;
    let mut lm = EngineCommandLm::new(&engine)?;
    let bar = "webgpt [{bar:30}] {pos}/{len} questions ({eta})";
    let pb = crate::progress::bar(false, t.questions.len() as u64, bar);
    let mut outcomes = Vec::new();
    for q in &t.questions {
        outcomes.push(webgpt::evaluate_one(
            &t.site,
            q,
            a.eval_config(&t),
            &mut lm,
            &engine,
        )?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    engine.shutdown();
    print!(
        "{}",
        a.write_results(model, ctx.lora.as_deref(), t.style, &outcomes)?
    );
    Ok(())
}
