//! `canon finetune --method gpt1-heads`: GPT-1 supervised fine-tuning (paper 2, §3.2–3.3) of a run that
//! `canon train --config configs/gpt1.toml` pretrained, on a task built from the Python standard
//! library of this machine, held out by file:
//! - `classify`: which module group (default `email/`+`http/` vs `json/`+`xml/`) a snippet comes
//!   from; inputs `[s] snippet [e]`;
//! - `similarity`: whether two snippets come from the same group; both orders `[s] a [d] b [e]`,
//!   states added;
//! - `choice`: which of `--choices` endings continues a snippet's first half; one
//!   `[s] context [d] ending [e]` per candidate, softmax across them.
//!
//! The loss is `L2 + 0.5·L1`, trained on the shared engine: `--out` receives `metrics.jsonl` (every
//! step and the held-out accuracy), `loss.png`, the fine-tuned weights with the optimizer state
//! (`finetuned.safetensors`, also the Ctrl-C checkpoint; `--resume` continues) and `task.json`. The settings and the task's examples are `canon_runs::heads`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use canon_models::family::RUN_TOKENIZER_FILE;
use canon_runs::heads::FinetuneArgs;
use canon_train::finetune::{FINETUNED_FILE, FinetuneReport, Finetuner, TaskRun, task_files};
use canon_train::trainer::Outcome;

use crate::Ctx;

/// A flag that Ctrl-C raises (the engine then checkpoints and stops).
pub fn ctrl_c_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

pub fn run(a: FinetuneArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
    a.check()?;
    let (cfg, kind) = (a.config(), a.kind());
    let mut ft = if a.resume {
        let ft = Finetuner::load(&a.out, cfg)
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
        if ft.kind != kind {
            bail!(
                "--resume: {} holds a {:?} task, not {kind:?}",
                a.out.display(),
                ft.kind
            );
        }
        ft
    } else {
        Finetuner::from_run(&a.pretrained, kind, cfg)
            .with_context(|| format!("cannot load the pretrained run {}", a.pretrained.display()))?
    };
    let tok_path = a.pretrained.join(RUN_TOKENIZER_FILE);
    let tok = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", tok_path.display()))?;

    let stdlib = crate::cmd::train::python_stdlib_dir()?;
    let data = a.task_data(&stdlib, &tok)?;
    let (train, test, baseline) = (data.train.as_slice(), data.test.as_slice(), data.baseline);
    say(a.task_note(&stdlib, &data));
    say(format!(
        "{} parameters (3 task tokens and W_y added), λ = {}, {} threads",
        ft.params.iter().map(|p| p.var.elem_count()).sum::<usize>(),
        a.lambda,
        ctx.threads
    ));

    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let files = task_files(&a.out, FINETUNED_FILE);
    let stop = ctrl_c_flag()?;
    let quiet = ctx.quiet;
    let run = TaskRun {
        files: Some(&files),
        stop: &stop,
        block_size: ft.base.max_seq_len,
    };
    let (outcome, acc) = ft.run_on_engine(train, test, run, &mut |r| {
        let r = FinetuneReport::of(r);
        if !quiet && (r.step.is_multiple_of(10) || r.eval_accuracy.is_some()) {
            eprintln!(
                "canon: step {} loss {:.4} (clf {:.4}, lm {:.4}){}",
                r.step,
                r.loss,
                r.clf_loss,
                r.lm_loss,
                r.eval_accuracy.map_or(String::new(), |x| format!(
                    " held-out accuracy {:.1} %",
                    100.0 * x
                ))
            );
        }
    })?;
    ft.save(&a.out)
        .with_context(|| format!("cannot save the fine-tuned model in {}", a.out.display()))?;
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
        "held-out accuracy {:.1} % on {} examples (majority-class baseline {:.1} %); metrics, \
         loss.png and fine-tuned weights in {}",
        100.0 * acc,
        test.len(),
        100.0 * baseline,
        a.out.display()
    );
    Ok(())
}
