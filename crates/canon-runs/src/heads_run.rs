//! The runs of `canon finetune --method gpt1-heads` and `--method classifier` (settings in
//! [`crate::heads`]): the model loaded (or the run resumed), the task built, training on the
//! engine with its metrics and Ctrl-C checkpoint in `--out`, and the held-out accuracy. Progress
//! lines go to `say`; the result line is returned.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use canon_assets::FetchProgress;
use canon_models::family::RUN_TOKENIZER_FILE;
use canon_train::bert_finetune::{BertFinetuneReport, BertFinetuner};
use canon_train::bert_pretrain::open_pretrained;
use canon_train::finetune::{FINETUNED_FILE, FinetuneReport, Finetuner, TaskRun, task_files};
use canon_train::trainer::Outcome;

use crate::heads::{FinetuneArgs, FinetuneBertArgs};
use crate::{Context, Result, bail, err, model_dir, python_stdlib_dir};

/// The classifier's weights, optimizer state, step and data order in `--out` (the Ctrl-C
/// checkpoint; `--resume` continues from it).
const CHECKPOINT_FILE: &str = "classifier.safetensors";

/// A step's progress line (every 10th step and each held-out evaluation), if one is due.
fn step_line(step: u64, losses: &str, eval: Option<f64>) -> Option<String> {
    (step.is_multiple_of(10) || eval.is_some()).then(|| {
        format!(
            "step {step} loss {losses}{}",
            eval.map_or(String::new(), |x| format!(
                " held-out accuracy {:.1} %",
                100.0 * x
            ))
        )
    })
}

/// The line of a run that Ctrl-C stopped.
fn interrupted(step: u64, out: &std::path::Path) -> String {
    format!(
        "interrupted: checkpoint at step {step} in {}; continue with the same command and --resume",
        out.display()
    )
}

fn create_out(out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))
}

/// GPT-1's supervised fine-tuning of a pretrained run (`L2 + λ·L1`).
pub fn run_gpt1(
    a: &FinetuneArgs,
    threads: usize,
    stop: &dyn Fn() -> Result<Arc<AtomicBool>>,
    say: &dyn Fn(String),
) -> Result<String> {
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
        .map_err(|e| err!("cannot read {}: {e}", tok_path.display()))?;
    let stdlib = python_stdlib_dir()?;
    let data = a.task_data(&stdlib, &tok)?;
    let (train, test, baseline) = (data.train.as_slice(), data.test.as_slice(), data.baseline);
    say(a.task_note(&stdlib, &data));
    say(format!(
        "{} parameters (3 task tokens and W_y added), λ = {}, {threads} threads",
        ft.params.iter().map(|p| p.var.elem_count()).sum::<usize>(),
        a.lambda,
    ));
    create_out(&a.out)?;
    let files = task_files(&a.out, FINETUNED_FILE);
    let stop = stop()?;
    let run = TaskRun {
        files: Some(&files),
        stop: &stop,
        block_size: ft.base.max_seq_len,
    };
    let (outcome, acc) = ft.run_on_engine(train, test, run, &mut |r| {
        let r = FinetuneReport::of(r);
        let losses = format!("{:.4} (clf {:.4}, lm {:.4})", r.loss, r.clf_loss, r.lm_loss);
        if let Some(l) = step_line(r.step, &losses, r.eval_accuracy) {
            say(l);
        }
    })?;
    ft.save(&a.out)
        .with_context(|| format!("cannot save the fine-tuned model in {}", a.out.display()))?;
    if outcome == Outcome::Interrupted {
        return Ok(interrupted(ft.step, &a.out));
    }
    let acc = match acc {
        Some(x) => x,
        None => ft.accuracy(test)?,
    };
    Ok(format!(
        "held-out accuracy {:.1} % on {} examples (majority-class baseline {:.1} %); metrics, \
         loss.png and fine-tuned weights in {}",
        100.0 * acc,
        test.len(),
        100.0 * baseline,
        a.out.display()
    ))
}

/// BERT sequence classification from a pretrained BERT (or `--from-scratch`).
pub fn run_bert(
    a: &FinetuneBertArgs,
    progress: &dyn FetchProgress,
    threads: usize,
    stop: &dyn Fn() -> Result<Arc<AtomicBool>>,
    say: &dyn Fn(String),
) -> Result<String> {
    a.check()?;
    let dir = model_dir(&a.model, progress)?;
    let p = open_pretrained(&dir)
        .with_context(|| format!("cannot load the pretrained model {}", dir.display()))?;
    let stdlib = python_stdlib_dir()?;
    let data = a.task_data(&stdlib, &p.tokenizer)?;
    let (train, test, baseline) = (data.train.as_slice(), data.test.as_slice(), data.baseline);
    say(a.task_note(&data));
    let mut ft = BertFinetuner::new(&p, 2, a.config(), a.from_scratch)?;
    say(format!(
        "{}: {} layers, width {}; {} pretrained tensors copied ({}), {} parameters, {threads} threads",
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
    ));
    create_out(&a.out)?;
    let files = task_files(&a.out, CHECKPOINT_FILE);
    if a.resume {
        ft.resume(&files.checkpoint)
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
    }
    let stop = stop()?;
    let t0 = std::time::Instant::now();
    let run = TaskRun {
        files: Some(&files),
        stop: &stop,
        block_size: a.max_len,
    };
    let (outcome, acc) = ft.run_on_engine(train, test, run, &mut |r| {
        let r = BertFinetuneReport::of(r);
        if let Some(l) = step_line(r.step, &format!("{:.4}", r.loss), r.eval_accuracy) {
            say(l);
        }
    })?;
    if outcome == Outcome::Interrupted {
        return Ok(interrupted(ft.step, &a.out));
    }
    let acc = match acc {
        Some(x) => x,
        None => ft.accuracy(test)?,
    };
    Ok(format!(
        "held-out accuracy {:.1} % on {} snippets (majority-class baseline {:.1} %); {:.0} s; metrics in {}",
        100.0 * acc,
        test.len(),
        100.0 * baseline,
        t0.elapsed().as_secs_f64(),
        files.metrics.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_every_tenth_step_and_at_evaluations() {
        assert_eq!(step_line(3, "1.0", None), None);
        assert_eq!(
            step_line(10, "1.0", None).as_deref(),
            Some("step 10 loss 1.0")
        );
        assert_eq!(
            step_line(3, "1.0", Some(0.5)).as_deref(),
            Some("step 3 loss 1.0 held-out accuracy 50.0 %")
        );
    }
}
