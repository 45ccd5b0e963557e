//! Phi-1's comparison at CPU scale: the same small code model, the same recipe and the same number
//! of training tokens on different data (unfiltered, filtered, filtered + synthetic), evaluated by
//! held-out loss on evaluation sets no arm trains on.
//!
//! All arms share one tokenizer (characters of every arm and evaluation text), so losses are
//! comparable in nats per character. Each arm is a normal run folder (`config.toml`, `model.json`,
//! `tokenizer.json`, checkpoint, metrics) plus `result.json`; finished arms are skipped when the
//! comparison is run again, interrupted ones resume.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use canon_models::ModelConfig;
use canon_models::family::{RUN_MODEL_FILE, RUN_TOKENIZER_FILE};
use canon_train::trainer::RunFiles;
use canon_train::{
    DataConfig, LmObjective, Outcome, RunConfig, StepReport, TokenData, TrainConfig, Trainer, data,
};
use serde::{Deserialize, Serialize};

use crate::{Result, ScaleError, io_err, write_atomic};

/// `[model]` and `[train]` of the comparison (`train.max_steps` fixes the tokens of every arm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// Held-out batches for each final loss.
    #[serde(default = "d_eval")]
    pub final_eval_batches: usize,
}

fn d_eval() -> usize {
    64
}

impl CompareConfig {
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let c: CompareConfig = toml::from_str(text).map_err(|e| ScaleError::Config {
            file: file.into(),
            message: e.to_string(),
        })?;
        c.train.validate().map_err(|m| ScaleError::Config {
            file: file.into(),
            message: m,
        })?;
        if c.train.block_size > c.model.max_seq_len() {
            return Err(ScaleError::Config {
                file: file.into(),
                message: format!(
                    "train.block_size ({}) exceeds model.max_seq_len ({})",
                    c.train.block_size,
                    c.model.max_seq_len()
                ),
            });
        }
        Ok(c)
    }
}

/// Training data of one arm.
pub struct Arm {
    pub name: String,
    pub docs: Vec<String>,
}

/// An evaluation set.
pub struct EvalSet {
    pub name: String,
    pub docs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    pub name: String,
    pub train_docs: usize,
    /// Characters (tokens) in the arm's training text.
    pub train_tokens: usize,
    /// Tokens the run trained on (steps · batch · block · accumulation).
    pub tokens_seen: u64,
    /// (evaluation set, held-out loss in nats/token).
    pub eval: Vec<(String, f64)>,
    pub seconds: f64,
    /// The training seed (model initialisation and batch order) of this run.
    #[serde(default)]
    pub seed: u64,
}

fn encode_all(tok: &tokenizers::Tokenizer, docs: &[String]) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for d in docs {
        let e = tok
            .encode(d.as_str(), false)
            .map_err(|e| ScaleError::Data(format!("tokenizer: {e}")))?;
        ids.extend_from_slice(e.get_ids());
    }
    Ok(ids)
}

/// The run folder of `arm` trained with the `i`-th of the seeds: `out/<arm>` for the first (the
/// config's own seed, so a one-seed comparison extends to more without retraining), then
/// `out/<arm>-seed<S>`.
pub fn arm_dir(out: &Path, arm: &str, i: usize, seed: u64) -> std::path::PathBuf {
    if i == 0 {
        out.join(arm)
    } else {
        out.join(format!("{arm}-seed{seed}"))
    }
}

/// Trains every arm with each of `seeds` seeds (`train.seed`, `train.seed + 1`, …; or reads a
/// finished run's result) and evaluates it on every set. Results come seed by seed, arms in order.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    cfg: &CompareConfig,
    arms: &[Arm],
    evals: &[EvalSet],
    out: &Path,
    seeds: usize,
    stop: &AtomicBool,
    on_arm: &mut dyn FnMut(&str, u64),
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Option<Vec<ArmResult>>> {
    if evals.is_empty() || evals.iter().any(|e| e.docs.is_empty()) {
        return Err(ScaleError::Data(
            "every evaluation set needs documents".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let mut everything: Vec<String> = arms.iter().flat_map(|a| a.docs.iter().cloned()).collect();
    everything.extend(evals.iter().flat_map(|e| e.docs.iter().cloned()));
    let tok = data::train_tokenizer(data::TokenizerKind::Char, &everything, 0)?;
    let vocab = tok.get_vocab_size(true);
    let eval_ids: Vec<Vec<u32>> = evals
        .iter()
        .map(|e| encode_all(&tok, &e.docs))
        .collect::<Result<_>>()?;
    let mut model = cfg.model.clone();
    model.set_vocab_size(vocab);
    if seeds == 0 {
        return Err(ScaleError::Data(
            "the comparison needs at least one seed".into(),
        ));
    }
    let mut results = Vec::new();
    for (i, arm) in (0..seeds).flat_map(|i| arms.iter().map(move |a| (i, a))) {
        let seed = cfg.train.seed + i as u64;
        let dir = arm_dir(out, &arm.name, i, seed);
        let rpath = dir.join("result.json");
        if rpath.is_file() {
            let t = std::fs::read_to_string(&rpath).map_err(|e| io_err(&rpath, e))?;
            results.push(serde_json::from_str(&t).map_err(|e| io_err(&rpath, e))?);
            continue;
        }
        if arm.docs.is_empty() {
            return Err(ScaleError::Data(format!(
                "arm {} has no documents",
                arm.name
            )));
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let train_ids = encode_all(&tok, &arm.docs)?;
        let td = TokenData {
            train: train_ids,
            val: eval_ids[0].clone(),
            vocab_size: vocab,
        };
        let run = RunConfig {
            model: model.clone(),
            data: DataConfig {
                corpus: dir.display().to_string(),
                tokenizer: data::TokenizerKind::Char,
                vocab_size: vocab,
                max_bytes: td.train.len().max(1),
                val_fraction: 0.05,
            },
            train: TrainConfig {
                seed,
                ..cfg.train.clone()
            },
        };
        let text = toml::to_string_pretty(&run).map_err(|e| io_err(&dir, e))?;
        write_atomic(&dir.join("config.toml"), text.as_bytes())?;
        let mj = serde_json::to_string_pretty(&run.model).map_err(|e| io_err(&dir, e))?;
        write_atomic(&dir.join(RUN_MODEL_FILE), mj.as_bytes())?;
        let tp = dir.join(RUN_TOKENIZER_FILE);
        tok.save(&tp, false).map_err(|e| io_err(&tp, e))?;
        let files = RunFiles::in_dir(&dir);
        let mut trainer = Trainer::new(&run.model, run.train.clone())?;
        if files.checkpoint.is_file() {
            trainer.resume(&files.checkpoint)?;
        }
        let label = if seeds > 1 {
            format!("{} (seed {seed})", arm.name)
        } else {
            arm.name.clone()
        };
        on_arm(&label, run.train.max_steps);
        if trainer.run(&td, run.train.max_steps, stop, &files, on_step)? == Outcome::Interrupted {
            return Ok(None);
        }
        let mut fin = run.train.clone();
        fin.eval_batches = cfg.final_eval_batches;
        let mut eval = Vec::new();
        for (e, ids) in evals.iter().zip(&eval_ids) {
            let d = TokenData {
                train: ids.clone(),
                val: ids.clone(),
                vocab_size: vocab,
            };
            d.check(run.train.block_size).map_err(|_| {
                ScaleError::Data(format!(
                    "evaluation set {} has fewer than {} tokens",
                    e.name,
                    run.train.block_size + 2
                ))
            })?;
            let obj = LmObjective::new(&*trainer.model, &d, &fin);
            eval.push((e.name.clone(), obj.eval_loss(run.train.block_size)?));
        }
        let lines = canon_train::metrics::read_lines(&files.metrics)?;
        let r = ArmResult {
            name: arm.name.clone(),
            train_docs: arm.docs.len(),
            train_tokens: td.train.len(),
            tokens_seen: lines.last().and_then(|l| l.tokens).unwrap_or(0),
            eval,
            seconds: lines.last().and_then(|l| l.elapsed_s).unwrap_or(0.0),
            seed,
        };
        let j = serde_json::to_string_pretty(&r).map_err(|e| io_err(&rpath, e))?;
        write_atomic(&rpath, j.as_bytes())?;
        results.push(r);
    }
    Ok(Some(results))
}
