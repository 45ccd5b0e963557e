//! `canon finetune --method rag`'s settings (with the `cli` feature also its argument struct, the
//! doc comments being the `--help` text): the run's [`RagSettings`] for a new run or from the run
//! folder on `--resume`, the [`RagJob`] and the evaluation line.

use std::path::PathBuf;

use super::{AnswerEval, RagJob, RagSettings, SETTINGS_FILE};
use crate::{Context, Result};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
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
(Ctrl-C stops with one; --resume continues), query-encoder/ and adapter/.")
)]
pub struct FinetuneRagArgs {
    /// The `canon index` folder to retrieve from (its vectors stay frozen).
    #[cfg_attr(feature = "cli", arg(long))]
    pub index: Option<PathBuf>,
    /// Training questions (JSON lines).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE.jsonl"))]
    pub data: Option<PathBuf>,
    /// Held-out questions (JSON lines), never trained on.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE.jsonl"))]
    pub eval_data: Option<PathBuf>,
    /// The generator (a GGUF file, an HF folder or an alias).
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// The query encoder to start from (default: the index's embedding model).
    #[cfg_attr(feature = "cli", arg(long, value_name = "MODEL"))]
    pub query_encoder: Option<String>,
    /// Run folder.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub out: PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[cfg_attr(feature = "cli", arg(long))]
    pub resume: bool,
    /// Passages retrieved per question (the paper's k).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub k: usize,
    /// Inverse temperature of the retrieval scores (the encoder's vectors are normalised).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 20.0))]
    pub scale: f64,
    /// The marginal trained: sequence or token.
    #[cfg_attr(feature = "cli", arg(long = "rag-loss", default_value = "sequence"))]
    pub rag_loss: String,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 8))]
    pub rank: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16.0))]
    pub alpha: f64,
    /// Adapted projections of the generator.
    #[cfg_attr(feature = "cli", arg(long, default_value = "q,v"))]
    pub targets: String,
    /// Learning rate of the generator's adapters.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3e-4))]
    pub lr: f64,
    /// Learning rate of the query encoder (every weight); 0 keeps it frozen.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2e-5))]
    pub query_lr: f64,
    /// Questions per step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2))]
    pub batch_size: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 60))]
    pub max_steps: u64,
    /// Held-out marginal NLL and recall every this many steps.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 20))]
    pub eval_every: u64,
    /// Held-out questions whose marginal NLL is logged at each evaluation (0 = all).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub eval_questions: usize,
    /// Held-out questions answered before and after training (0 = all).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 40))]
    pub eval_limit: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 20))]
    pub checkpoint_every: u64,
    /// Most answer tokens decoded in the evaluation.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub max_tokens: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seed: u64,
}

impl FinetuneRagArgs {
    /// The run's settings: read from `--out` on `--resume`, else from the flags (the query
    /// encoder defaulting to the index's embedding model), checked.
    pub fn settings(&self) -> Result<RagSettings> {
        let settings = if self.resume {
            let p = self.out.join(SETTINGS_FILE);
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("--resume: cannot read {}", p.display()))?;
            serde_json::from_str::<RagSettings>(&text)
                .with_context(|| format!("{}: not the settings of a RAG run", p.display()))?
        } else {
            let need = |v: &Option<PathBuf>, flag: &str| {
                v.clone()
                    .with_context(|| format!("{flag} is required for a new run"))
            };
            let index = need(&self.index, "--index")?;
            let query_encoder = match &self.query_encoder {
                Some(q) => q.clone(),
                None => {
                    canon_rag::index::read_meta(&index, None)
                        .with_context(|| format!("cannot open the index {}", index.display()))?
                        .model
                }
            };
            RagSettings {
                index,
                data: need(&self.data, "--data")?,
                eval_data: need(&self.eval_data, "--eval-data")?,
                model: self.model.clone(),
                query_encoder,
                k: self.k,
                scale: self.scale,
                loss: self.rag_loss.parse()?,
                rank: self.rank,
                alpha: self.alpha,
                targets: canon_train::sft::lora::parse_targets(&self.targets)?,
                lr: self.lr,
                query_lr: self.query_lr,
                batch_size: self.batch_size,
                seed: self.seed,
            }
        };
        settings.check()?;
        Ok(settings)
    }

    /// The run: its settings and the loop's schedule.
    pub fn job(&self) -> Result<RagJob> {
        Ok(RagJob {
            dir: self.out.clone(),
            settings: self.settings()?,
            resuming: self.resume,
            max_steps: self.max_steps,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            eval_limit: self.eval_limit,
            eval_questions: self.eval_questions,
            max_tokens: self.max_tokens,
        })
    }
}

impl AnswerEval {
    /// One line of the before/after evaluation, `when` (`before` or `after`) right-aligned.
    pub fn line(&self, when: &str) -> String {
        format!(
            "{when:>6}: {} held-out questions: recall@1 {:.1} %, recall@k {:.1} %, exact {:.1} %, \
             contains {:.1} %, answer NLL {:.3}",
            self.questions,
            100.0 * self.recall_at_1,
            100.0 * self.recall_at_k,
            100.0 * self.exact,
            100.0 * self.contains,
            self.nll
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_line_and_missing_flags() {
        let e = AnswerEval {
            questions: 2,
            recall_at_1: 0.5,
            recall_at_k: 1.0,
            exact: 0.0,
            contains: 0.5,
            nll: 1.25,
            rows: vec![],
        };
        assert_eq!(
            e.line("after"),
            " after: 2 held-out questions: recall@1 50.0 %, recall@k 100.0 %, exact 0.0 %, \
             contains 50.0 %, answer NLL 1.250"
        );
        let a = FinetuneRagArgs {
            index: None,
            data: None,
            eval_data: None,
            model: "smollm2".into(),
            query_encoder: None,
            out: PathBuf::from("runs/x"),
            resume: false,
            k: 4,
            scale: 20.0,
            rag_loss: "sequence".into(),
            rank: 8,
            alpha: 16.0,
            targets: "q,v".into(),
            lr: 3e-4,
            query_lr: 2e-5,
            batch_size: 2,
            max_steps: 60,
            eval_every: 20,
            eval_questions: 16,
            eval_limit: 40,
            checkpoint_every: 20,
            max_tokens: 16,
            seed: 1,
        };
        let e = a.settings().unwrap_err().to_string();
        assert_eq!(e, "--index is required for a new run");
    }
}
