//! `canon align w2s`: weak-to-strong generalization on gettext tasks (`canon_align::w2s`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  canon align w2s --out runs/w2s --per-class 600 --seeds 5")]
pub struct W2sArgs {
    /// Output folder (w2s.json, w2s.png).
    #[arg(long, value_name = "DIR", default_value = "runs/w2s")]
    pub out: PathBuf,
    /// Folder of the gettext catalogs.
    #[arg(long, default_value = "/usr/share/locale")]
    pub locale_dir: PathBuf,
    /// Texts per class and task (at most).
    #[arg(long, default_value_t = 600)]
    pub per_class: usize,
    /// Random splits averaged per task.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// The strong model's encoder: an alias (minilm) or an HF-style BERT folder.
    #[arg(long, default_value = "minilm")]
    pub encoder: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

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
