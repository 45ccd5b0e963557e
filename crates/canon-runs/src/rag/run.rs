//! One RAG training run: settings, the evaluation before, the engine, the trained models and the
//! evaluation after.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    ADAPTER_DIR, AnswerEval, QUERY_ENCODER_DIR, RagSettings, SETTINGS_FILE, evaluate_answers,
    prepare, write_json,
};
use crate::{Context, Result, bail};

/// One invocation of `canon finetune --method rag`.
#[derive(Debug, Clone)]
pub struct RagJob {
    pub dir: PathBuf,
    pub settings: RagSettings,
    /// Continue the run in `dir` from its checkpoint.
    pub resuming: bool,
    pub max_steps: u64,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    /// Held-out questions of the before/after answer evaluation (0 = all).
    pub eval_limit: usize,
    /// Held-out questions whose marginal NLL the engine logs at every evaluation (0 = all).
    pub eval_questions: usize,
    /// Most answer tokens decoded.
    pub max_tokens: usize,
}

/// What a run reports while it goes.
pub enum RagEvent<'a> {
    Note(String),
    /// An answer evaluation of `n` questions starts (`"before"` or `"after"` training).
    EvalStart {
        when: &'static str,
        n: usize,
    },
    EvalQuestion(usize),
    Evaluated {
        when: &'static str,
        eval: &'a AnswerEval,
    },
    Start {
        step: u64,
        max_steps: u64,
    },
    Step(&'a canon_train::StepReport),
}

/// How a run ended: the held-out figures before and after, and the outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RagSummary {
    pub before: AnswerEval,
    pub after: Option<AnswerEval>,
    pub steps: u64,
    pub interrupted: bool,
}

fn write_rows(path: &Path, e: &AnswerEval) -> Result<()> {
    let mut s = String::new();
    for r in &e.rows {
        s.push_str(&r.to_string());
        s.push('\n');
    }
    canon_fs::write_atomic(path, s.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `job`: the held-out evaluation before training (a new run), training on the engine
/// (metrics.jsonl, loss.png, checkpoints and Ctrl-C through `stop`), then the trained query
/// encoder (`query-encoder/`), the adapter (`adapter/`) and the evaluation after training
/// (`summary.json`, `answers-before.jsonl`, `answers-after.jsonl`).
pub fn run(
    job: &RagJob,
    progress: &dyn canon_assets::FetchProgress,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(RagEvent<'_>),
) -> Result<RagSummary> {
    use canon_train::trainer::{Outcome, RunFiles};
    let dir = &job.dir;
    let settings_path = dir.join(SETTINGS_FILE);
    if !job.resuming && settings_path.exists() {
        bail!(
            "--out {}: the folder holds a run already (continue it with --resume, or choose another folder)",
            dir.display()
        );
    }
    if job.max_steps == 0 || job.eval_every == 0 || job.checkpoint_every == 0 {
        bail!("--max-steps, --eval-every and --checkpoint-every must be positive");
    }
    let mut obj = prepare(&job.settings, job.max_tokens, job.eval_questions, progress)?;
    on(RagEvent::Note(format!(
        "index {} ({} passages), k {}, {} training and {} held-out questions; generator {} with {} adapted layers (rank {}), query encoder {} ({})",
        job.settings.index.display(),
        obj.index.chunks.len(),
        job.settings.k,
        obj.train.len(),
        obj.eval.len(),
        obj.ans.lm.lm.name,
        obj.lora.modules.len(),
        job.settings.rank,
        obj.query.enc.name,
        if job.settings.query_lr > 0.0 {
            format!("trained at lr {}", job.settings.query_lr)
        } else {
            "frozen".into()
        }
    )));
    let cfg = canon_train::TrainConfig {
        batch_size: job.settings.batch_size,
        block_size: obj.ans.lm.lm.model.max_seq_len(),
        grad_accum: 1,
        max_steps: job.max_steps,
        lr: job.settings.lr,
        schedule: canon_train::Schedule::Constant {
            warmup: (job.max_steps * 3 / 100).max(1),
        },
        optimizer: canon_train::OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        grad_clip: Some(1.0),
        eval_every: job.eval_every,
        eval_batches: 1,
        log_every: 1,
        checkpoint_every: job.checkpoint_every,
        seed: job.settings.seed,
        z_loss: 0.0,
        moe_aux_weight: 0.0,
    };
    let mut engine = canon_train::Engine::new(obj.params(), cfg)?;
    let files = RunFiles::in_dir(dir);
    let before_path = dir.join("before.json");
    let before = if job.resuming {
        engine
            .resume(&mut obj, &files.checkpoint)
            .with_context(|| format!("cannot resume from {}", files.checkpoint.display()))?;
        on(RagEvent::Note(format!("resuming at step {}", engine.step)));
        let text = std::fs::read_to_string(&before_path)
            .with_context(|| format!("cannot read {}", before_path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        AnswerEval {
            questions: v["questions"].as_u64().unwrap_or(0) as usize,
            recall_at_1: f("recall_at_1"),
            recall_at_k: f("recall_at_k"),
            exact: f("exact"),
            contains: f("contains"),
            nll: f("nll"),
            rows: Vec::new(),
        }
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_json(&settings_path, &job.settings)?;
        let n = match job.eval_limit {
            0 => obj.eval.len(),
            m => m.min(obj.eval.len()),
        };
        on(RagEvent::EvalStart { when: "before", n });
        let e = evaluate_answers(&mut obj, n, &mut |i| on(RagEvent::EvalQuestion(i)))?;
        on(RagEvent::Evaluated {
            when: "before",
            eval: &e,
        });
        write_json(&before_path, &e)?;
        write_rows(&dir.join("answers-before.jsonl"), &e)?;
        e
    };
    // Parameter groups: set again after a resume (the checkpoint holds no learning rates).
    engine.opt.lr_scales = Some(obj.lr_scales());
    if engine.step >= job.max_steps {
        bail!(
            "the run is at step {} already; give a larger --max-steps",
            engine.step
        );
    }
    on(RagEvent::Start {
        step: engine.step,
        max_steps: job.max_steps,
    });
    let outcome = engine.run(&mut obj, job.max_steps, stop, &files, &mut |r| {
        on(RagEvent::Step(r))
    })?;
    let interrupted = outcome == Outcome::Interrupted;
    // The trained models, written whole or not at all.
    obj.query
        .save(&dir.join(QUERY_ENCODER_DIR), job.settings.scale)?;
    let base = obj.ans.lm.lm.path.display().to_string();
    canon_models::peft::write_adapter(&dir.join(ADAPTER_DIR), &obj.lora.to_adapter()?, &base)
        .context("cannot write the adapter")?;
    let after = if interrupted {
        None
    } else {
        let n = before.questions;
        on(RagEvent::EvalStart { when: "after", n });
        let e = evaluate_answers(&mut obj, n, &mut |i| on(RagEvent::EvalQuestion(i)))?;
        on(RagEvent::Evaluated {
            when: "after",
            eval: &e,
        });
        write_rows(&dir.join("answers-after.jsonl"), &e)?;
        Some(e)
    };
    let summary = RagSummary {
        before,
        after,
        steps: engine.step,
        interrupted,
    };
    write_json(&dir.join("summary.json"), &summary)?;
    Ok(summary)
}
