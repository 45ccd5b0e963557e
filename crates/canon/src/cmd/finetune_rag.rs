//! `canon finetune --method rag`: RAG's end-to-end fine-tuning (paper 9), query encoder and
//! generator through the marginal likelihood; the run is `canon_runs::rag`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context;
use canon_runs::rag::{self, RagEvent, RagJob, RagSettings};
use clap::Args;
use indicatif::ProgressBar;

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon finetune --method rag --index runs/man.idx --data train-questions.jsonl \\
      --eval-data goldens/rag/man-devset.jsonl --out runs/rag-e2e --max-steps 60
  canon ask --index runs/man.idx --query-encoder runs/rag-e2e/query-encoder \\
      --lora runs/rag-e2e/adapter --rag token \"which option of tar changes to a directory?\"

Questions are JSON lines {id, question, answer, aliases?, page} (the format of `canon eval rag`).
Per question the top --k passages are retrieved with the query encoder being trained; p(z|x) is the
softmax of --scale times the inner products with the frozen index vectors; the generator scores
the answer after each passage (LoRA adapters); the loss is the negative RAG-Sequence (default) or
RAG-Token marginal likelihood. Before training and at the end, the first --eval-limit held-out
questions are answered by RAG-Token greedy decoding: recall@1/k of the source page, exact match and
containment go to summary.json. --out receives rag.json, metrics.jsonl, loss.png, the checkpoint
(Ctrl-C stops with one; --resume continues), query-encoder/ and adapter/.")]
pub struct FinetuneRagArgs {
    /// The `canon index` folder to retrieve from (its vectors stay frozen).
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Training questions (JSON lines).
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: Option<PathBuf>,
    /// Held-out questions (JSON lines), never trained on.
    #[arg(long, value_name = "FILE.jsonl")]
    pub eval_data: Option<PathBuf>,
    /// The generator (a GGUF file, an HF folder or an alias).
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// The query encoder to start from (default: the index's embedding model).
    #[arg(long, value_name = "MODEL")]
    pub query_encoder: Option<String>,
    /// Run folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Passages retrieved per question (the paper's k).
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Inverse temperature of the retrieval scores (the encoder's vectors are normalised).
    #[arg(long, default_value_t = 20.0)]
    pub scale: f64,
    /// The marginal trained: sequence or token.
    #[arg(long = "rag-loss", default_value = "sequence")]
    pub rag_loss: String,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Adapted projections of the generator.
    #[arg(long, default_value = "q,v")]
    pub targets: String,
    /// Learning rate of the generator's adapters.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Learning rate of the query encoder (every weight); 0 keeps it frozen.
    #[arg(long, default_value_t = 2e-5)]
    pub query_lr: f64,
    /// Questions per step.
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 60)]
    pub max_steps: u64,
    /// Held-out marginal NLL and recall every this many steps.
    #[arg(long, default_value_t = 20)]
    pub eval_every: u64,
    /// Held-out questions whose marginal NLL is logged at each evaluation (0 = all).
    #[arg(long, default_value_t = 16)]
    pub eval_questions: usize,
    /// Held-out questions answered before and after training (0 = all).
    #[arg(long, default_value_t = 40)]
    pub eval_limit: usize,
    #[arg(long, default_value_t = 20)]
    pub checkpoint_every: u64,
    /// Most answer tokens decoded in the evaluation.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: FinetuneRagArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let settings = if a.resume {
        let p = a.out.join(rag::SETTINGS_FILE);
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("--resume: cannot read {}", p.display()))?;
        serde_json::from_str::<RagSettings>(&text)
            .with_context(|| format!("{}: not the settings of a RAG run", p.display()))?
    } else {
        let need = |v: &Option<PathBuf>, flag: &str| {
            v.clone()
                .with_context(|| format!("{flag} is required for a new run"))
        };
        let index = need(&a.index, "--index")?;
        let query_encoder = match &a.query_encoder {
            Some(q) => q.clone(),
            None => {
                canon_rag::index::read_meta(&index, None)
                    .with_context(|| format!("cannot open the index {}", index.display()))?
                    .model
            }
        };
        RagSettings {
            index,
            data: need(&a.data, "--data")?,
            eval_data: need(&a.eval_data, "--eval-data")?,
            model: a.model.clone(),
            query_encoder,
            k: a.k,
            scale: a.scale,
            loss: a.rag_loss.parse()?,
            rank: a.rank,
            alpha: a.alpha,
            targets: canon_train::sft::lora::parse_targets(&a.targets)?,
            lr: a.lr,
            query_lr: a.query_lr,
            batch_size: a.batch_size,
            seed: a.seed,
        }
    };
    settings.check()?;
    let job = RagJob {
        dir: a.out.clone(),
        settings,
        resuming: a.resume,
        max_steps: a.max_steps,
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        eval_limit: a.eval_limit,
        eval_questions: a.eval_questions,
        max_tokens: a.max_tokens,
    };
    let stop = crate::cmd::finetune::ctrl_c_flag()?;
    let mut bar = ProgressBar::hidden();
    let quiet = ctx.quiet;
    let show = |when: &str, e: &rag::AnswerEval| {
        println!(
            "{when:>6}: {} held-out questions: recall@1 {:.1} %, recall@k {:.1} %, exact {:.1} %, \
             contains {:.1} %, answer NLL {:.3}",
            e.questions,
            100.0 * e.recall_at_1,
            100.0 * e.recall_at_k,
            100.0 * e.exact,
            100.0 * e.contains,
            e.nll
        )
    };
    let s = rag::run(&job, ctx.progress(), &stop, &mut |e| match e {
        RagEvent::Note(s) if !quiet => eprintln!("canon: {s}"),
        RagEvent::Note(_) => {}
        RagEvent::EvalStart { when, n } => {
            bar = crate::progress::items(quiet, n, &format!("answers {when} training"));
        }
        RagEvent::EvalQuestion(i) => bar.set_position(i as u64),
        RagEvent::Evaluated { when, eval } => {
            bar.finish_and_clear();
            show(when, eval);
        }
        RagEvent::Start { step, max_steps } => {
            bar = crate::progress::bar(
                quiet,
                max_steps,
                "{bar:30} {pos}/{len} steps {msg} [{elapsed}<{eta}]",
            );
            bar.set_position(step);
        }
        RagEvent::Step(r) => {
            bar.set_position(r.step);
            let eval = r
                .eval_loss
                .map_or(String::new(), |e| format!(" eval {e:.3}"));
            bar.set_message(format!("loss {:.3}{eval}", r.loss));
        }
    })?;
    bar.finish_and_clear();
    if s.interrupted || stop.load(Ordering::SeqCst) {
        println!(
            "interrupted at step {}: checkpoint, query-encoder/ and adapter/ in {} (continue with --resume)",
            s.steps,
            a.out.display()
        );
    } else {
        println!(
            "step {}: query-encoder/, adapter/ and summary.json in {}",
            s.steps,
            a.out.display()
        );
    }
    Ok(())
}
