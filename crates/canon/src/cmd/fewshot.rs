//! `canon eval fewshot`: K-shot in-context evaluation (paper 10, GPT-3) with `canon_agent::fewshot`;
//! the settings, task selection and report are `canon_agent::opts::fewshot`.

use std::time::Instant;

use anyhow::Context;
use canon_agent::fewshot::evaluate;
pub use canon_agent::opts::fewshot::FewShotArgs;

use crate::{Ctx, model_gen};

pub fn run(a: FewShotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if let Some((out, text, line)) = a.icl_text()? {
        super::write_atomic(&out, &text)?;
        println!("{line}");
        return Ok(());
    }
    let task = a.load_task(&|| {
        canon_runs::python_stdlib_dir().map_err(|e| canon_agent::AgentError::Task(e.to_string()))
    })?;
    if let Some((out, text, line)) = a.task_file(&task) {
        super::write_atomic(&out, &text)?;
        println!("{line}");
        return Ok(());
    }
    let cfg = a.config(&task)?;
    let lm = model_gen::load_lm(a.model.as_deref().unwrap_or_default(), ctx)?;
    let t = "fewshot [{bar:40}] {pos}/{len} items ({eta} left)";
    let pb = crate::progress::bar(ctx.quiet, 0, t);
    let start = Instant::now();
    let r = evaluate(
        lm.model.as_ref(),
        &lm.tokenizer,
        &task,
        cfg,
        &mut |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
    )
    .with_context(|| format!("few-shot evaluation of {}", task.name))?;
    pb.finish_and_clear();
    print!("{}", a.report(&lm.name, &r, start.elapsed().as_secs_f64()));
    Ok(())
}
