//! `canon align w2s`: weak-to-strong generalization on gettext tasks (`canon_align::w2s`, and
//! `canon_align::w2s_finetune` for `--student finetune`).

use anyhow::Context;
use canon_align::opts::{Student, W2sArgs};
use canon_align::w2s_finetune::{Base, FtConfig};
use canon_models::Pooling;

use crate::Ctx;

pub(super) fn run(a: W2sArgs, ctx: &Ctx) -> anyhow::Result<()> {
    canon_align::w2s::check(a.per_class, a.seeds).map_err(anyhow::Error::msg)?;
    let cfg = FtConfig {
        lr: a.ft_lr,
        head_lr: a.head_lr,
        epochs: a.epochs,
        batch_size: a.batch_size,
        max_len: a.max_len,
        seed: a.seed,
        ..FtConfig::default()
    };
    if a.student == Student::Finetune {
        cfg.check()?;
    }
    let tasks = canon_align::w2s::gettext_tasks(&a.locale_dir, a.per_class, a.seed)?;
    let spec = canon_models::ModelSpec::parse(&a.encoder)?;
    let enc = canon_models::load_encoder(&spec, ctx.progress())
        .with_context(|| format!("cannot load the encoder {}", a.encoder))?;
    let t0 = std::time::Instant::now();
    let (res, how) = match a.student {
        Student::Probe => {
            let mut embed = |texts: &[String]| -> canon_align::Result<Vec<Vec<f32>>> {
                enc.embedder
                    .embed(texts, 32)
                    .map_err(|e| canon_align::TrainError::Data(e.to_string()))
            };
            let res = canon_align::w2s::run(&tasks, &mut embed, a.seeds, &a.out)?;
            (res, format!("linear probe on {}", enc.name))
        }
        Student::Finetune => {
            if enc.embedder.pooling != Pooling::Mean {
                anyhow::bail!(
                    "--student finetune expects a mean-pooling encoder, found {} pooling its [CLS] vector",
                    enc.name
                );
            }
            let pre = canon_train::bert_pretrain::open_pretrained(&enc.path)
                .with_context(|| format!("cannot open {} for fine-tuning", enc.path.display()))?;
            let base = Base {
                config: pre.config.clone(),
                weights: &*pre.weights,
                normalize: enc.embedder.normalize,
                pad_id: enc.embedder.pad_id,
            };
            let mut tokenize = |texts: &[String]| -> canon_align::Result<Vec<Vec<u32>>> {
                texts
                    .iter()
                    .map(|t| {
                        enc.embedder
                            .token_ids(t)
                            .map_err(|e| canon_align::TrainError::Data(e.to_string()))
                    })
                    .collect()
            };
            let mut log = |line: &str| eprintln!("{line}");
            let res = canon_align::w2s_finetune::run(
                &tasks,
                &mut tokenize,
                &base,
                &cfg,
                a.seeds,
                &a.out,
                &mut log,
            )?;
            let how = format!(
                "{} fine-tuned, all weights, {} epochs, lr {:e}, head lr {:e}, batch {}, max {} tokens",
                enc.name, a.epochs, a.ft_lr, a.head_lr, a.batch_size, a.max_len
            );
            (res, how)
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "w2s: {} tasks, mean of {} splits, {secs:.1} s (strong = {how})",
        res.len(),
        a.seeds,
    );
    print!("{}", canon_align::w2s::table(&res));
    println!("  plot: {}", a.out.join("w2s.png").display());
    Ok(())
}
