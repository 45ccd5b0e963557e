//! `canon finetune --method classifier`: BERT sequence classification (paper 3, §4) from a pretrained BERT — a
//! run of `canon train --config configs/bert.toml`, `minilm`, or an HF BERT folder — on the
//! standard-library module-group task GPT-1's fine-tuning uses (which group a source snippet comes
//! from, held out by file). `--from-scratch` trains the same architecture without the pretrained
//! weights (the baseline pre-training should beat). The settings and the task's examples are
//! `canon_runs::heads`.

use anyhow::Context;
use canon_runs::heads::FinetuneBertArgs;
use canon_train::bert_finetune::{BertFinetuneReport, BertFinetuner};
use canon_train::bert_pretrain::open_pretrained;
use canon_train::finetune::{TaskRun, task_files};
use canon_train::trainer::Outcome;

use crate::Ctx;
use crate::cmd::finetune::ctrl_c_flag;

/// The classifier's weights, optimizer state, step and data order in `--out` (the Ctrl-C
/// checkpoint; `--resume` continues from it).
const CHECKPOINT_FILE: &str = "classifier.safetensors";

pub fn run(a: FinetuneBertArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
    a.check()?;
    let dir = super::train_bert::model_dir(&a.model, ctx)?;
    let p = open_pretrained(&dir)
        .with_context(|| format!("cannot load the pretrained model {}", dir.display()))?;
    let stdlib = crate::cmd::train::python_stdlib_dir()?;
    let data = a.task_data(&stdlib, &p.tokenizer)?;
    let (train, test, baseline) = (data.train.as_slice(), data.test.as_slice(), data.baseline);
    say(a.task_note(&data));
    let cfg = a.config();
    let mut ft = BertFinetuner::new(&p, 2, cfg, a.from_scratch)?;
    say(format!(
        "{}: {} layers, width {}; {} pretrained tensors copied ({}), {} parameters, {} threads",
        dir.display(),
        p.config.num_hidden_layers,
        p.config.hidden_size,
        ft.copied.len(),
        if a.from_scratch {
            "--from-scratch"
        } else {
            "the classifier is new"
        },
        ft.params.iter().map(|p| p.var.elem_count()).sum::<usize>(),
        ctx.threads
    ));
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let files = task_files(&a.out, CHECKPOINT_FILE);
    if a.resume {
        ft.resume(&files.checkpoint)
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
    }
    let stop = ctrl_c_flag()?;
    let quiet = ctx.quiet;
    let t0 = std::time::Instant::now();
    let run = TaskRun {
        files: Some(&files),
        stop: &stop,
        block_size: a.max_len,
    };
    let (outcome, acc) = ft.run_on_engine(train, test, run, &mut |r| {
        let r = BertFinetuneReport::of(r);
        if !quiet && (r.step.is_multiple_of(10) || r.eval_accuracy.is_some()) {
            eprintln!(
                "canon: step {} loss {:.4}{}",
                r.step,
                r.loss,
                r.eval_accuracy.map_or(String::new(), |x| format!(
                    " held-out accuracy {:.1} %",
                    100.0 * x
                ))
            );
        }
    })?;
    if outcome == Outcome::Interrupted {
        println!(
            "interrupted: checkpoint at step {} in {}; continue with the same command and --resume",
            ft.step,
            a.out.display()
        );
        return Ok(());
    }
    let acc = match acc {
        Some(x) => x,
        None => ft.accuracy(test)?,
    };
    println!(
        "held-out accuracy {:.1} % on {} snippets (majority-class baseline {:.1} %); {:.0} s; metrics in {}",
        100.0 * acc,
        test.len(),
        100.0 * baseline,
        t0.elapsed().as_secs_f64(),
        files.metrics.display()
    );
    Ok(())
}
