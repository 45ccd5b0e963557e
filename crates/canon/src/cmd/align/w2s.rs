//! `canon align w2s`: weak-to-strong generalization on gettext tasks (`canon_align::w2s`).

use anyhow::Context;
use canon_align::opts::W2sArgs;

use crate::Ctx;

pub(super) fn run(a: W2sArgs, ctx: &Ctx) -> anyhow::Result<()> {
    canon_align::w2s::check(a.per_class, a.seeds).map_err(anyhow::Error::msg)?;
    let tasks = canon_align::w2s::gettext_tasks(&a.locale_dir, a.per_class, a.seed)?;
    let spec = canon_models::ModelSpec::parse(&a.encoder)?;
    let enc = canon_models::load_encoder(&spec, ctx.progress())
        .with_context(|| format!("cannot load the encoder {}", a.encoder))?;
    let t0 = std::time::Instant::now();
    let mut embed = |texts: &[String]| -> canon_align::Result<Vec<Vec<f32>>> {
        enc.embedder
            .embed(texts, 32)
            .map_err(|e| canon_align::TrainError::Data(e.to_string()))
    };
    let res = canon_align::w2s::run(&tasks, &mut embed, a.seeds, &a.out)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "w2s: {} tasks, mean of {} splits, {secs:.1} s (strong = linear probe on {})",
        res.len(),
        a.seeds,
        enc.name
    );
    print!("{}", canon_align::w2s::table(&res));
    println!("  plot: {}", a.out.join("w2s.png").display());
    Ok(())
}
