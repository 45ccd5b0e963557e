//! A scaling ladder: one model family, one recipe, several sizes, each trained for a fixed number
//! of tokens per parameter; then a larger target run whose loss is predicted before it is trained.
//!
//! The configuration is a normal run configuration (`[model]`, `[data]`, `[train]`) plus a
//! `[scale]` table: `tokens_per_param`, `warmup_fraction`, the rungs (each a table of overrides
//! merged into `[model]`, e.g. `{ n_layer = 2, d_model = 32, d_ff = 128 }`) and the target.
//!
//! For a rung with N parameters (all trainable parameters, embeddings included), the run trains
//! `steps = ceil(tokens_per_param · N / (batch · block · accumulation))` steps, so it sees
//! `D = steps · batch · block · accumulation` tokens, and its compute is `C = 6 · N · D` FLOPs
//! (forward + backward; attention's sequence-length term is left out, as in Kaplan et al.). The
//! warmup is `warmup_fraction` of the steps, and the schedule decays to its end, so every rung is
//! the same recipe at its own length.
//!
//! Every rung is a run folder that `canon train --resume` and `canon generate` accept
//! (`config.toml`, `model.json`, `tokenizer.json`, `checkpoint.safetensors`, `metrics.jsonl`,
//! `loss.png`) plus `result.json`, written when the rung is done. A sweep skips rungs with a
//! `result.json` and resumes a rung with a checkpoint, so an interrupted sweep continues where it
//! stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use canon_models::family::{RUN_MODEL_FILE, RUN_TOKENIZER_FILE};
use canon_models::{ModelConfig, VarStore};
use canon_train::trainer::RunFiles;
use canon_train::{
    DataConfig, Engine, LmObjective, Outcome, RunConfig, Schedule, StepReport, TokenData,
    TrainConfig, Trainer,
};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Result, ScaleError, io_err, write_atomic};

fn d_warm() -> f64 {
    0.05
}
fn d_frac() -> f64 {
    0.1
}
fn d_boot() -> usize {
    1000
}
fn d_final_eval() -> usize {
    64
}

/// The `[scale]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSpec {
    /// Training tokens per parameter, the same for every rung and the target.
    pub tokens_per_param: f64,
    /// Warmup as a fraction of each run's steps.
    #[serde(default = "d_warm")]
    pub warmup_fraction: f64,
    /// Held-out batches for each run's final loss (more than during training, for a less noisy
    /// point).
    #[serde(default = "d_final_eval")]
    pub final_eval_batches: usize,
    /// The guard: every fitted rung must use at most this fraction of the target's compute.
    #[serde(default = "d_frac")]
    pub max_fit_fraction: f64,
    /// Bootstrap resamples for the prediction interval.
    #[serde(default = "d_boot")]
    pub bootstrap: usize,
    /// `[model]` overrides of each rung, smallest first.
    pub rungs: Vec<toml::Table>,
    /// `[model]` overrides of the run to predict.
    pub target: toml::Table,
    /// A pass/fail task whose capability law is measured along the ladder (its problems are then
    /// the ladder's training data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<crate::capability::CapabilitySpec>,
}

/// A ladder configuration: `[scale]` plus the shared `[model]`, `[data]` and `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LadderConfig {
    pub scale: ScaleSpec,
    pub model: toml::Table,
    pub data: DataConfig,
    pub train: TrainConfig,
}

/// One planned run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RungPlan {
    /// `rung-0`, `rung-1`, …, `target`.
    pub name: String,
    pub config: RunConfig,
    pub params: usize,
    pub steps: u64,
    pub tokens: u64,
    /// 6 · N · D FLOPs.
    pub compute: f64,
}

/// What a finished run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RungResult {
    pub name: String,
    pub params: usize,
    pub steps: u64,
    pub tokens: u64,
    pub compute: f64,
    /// Held-out loss (nats/token) over `final_eval_batches` batches of fixed windows.
    pub final_loss: f64,
    /// Training loss of the last step.
    pub last_train_loss: f64,
    /// Wall-clock seconds of training (all sessions of a resumed run).
    pub seconds: f64,
    /// The capability on the held-out problems of `[scale.capability]`, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<crate::capability::Capability>,
}

fn cfg_err(file: &str, message: impl Into<String>) -> ScaleError {
    ScaleError::Config {
        file: file.into(),
        message: message.into(),
    }
}

impl LadderConfig {
    /// Parses and validates a ladder configuration (`file` names it in errors).
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let cfg: LadderConfig = toml::from_str(text).map_err(|e| cfg_err(file, e.to_string()))?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<()> {
        let s = &self.scale;
        if !(s.tokens_per_param > 0.0 && s.tokens_per_param.is_finite()) {
            return Err(cfg_err(
                file,
                format!(
                    "scale.tokens_per_param must be positive, found {}",
                    s.tokens_per_param
                ),
            ));
        }
        if !(0.0..0.5).contains(&s.warmup_fraction) {
            return Err(cfg_err(
                file,
                format!(
                    "scale.warmup_fraction must be in [0, 0.5), found {}",
                    s.warmup_fraction
                ),
            ));
        }
        if !(s.max_fit_fraction > 0.0 && s.max_fit_fraction <= 1.0) {
            return Err(cfg_err(
                file,
                format!(
                    "scale.max_fit_fraction must be in (0, 1], found {}",
                    s.max_fit_fraction
                ),
            ));
        }
        if s.rungs.len() < 3 {
            return Err(cfg_err(
                file,
                format!(
                    "scale.rungs: a fit of a·C^b + c needs at least 3 rungs, found {}",
                    s.rungs.len()
                ),
            ));
        }
        if s.final_eval_batches == 0 {
            return Err(cfg_err(file, "scale.final_eval_batches must be positive"));
        }
        if let Some(c) = &s.capability {
            c.validate().map_err(|m| cfg_err(file, m))?;
        }
        self.data.validate().map_err(|m| cfg_err(file, m))?;
        self.train.validate().map_err(|m| cfg_err(file, m))?;
        // Every rung must make a valid model config.
        for (i, r) in s.rungs.iter().chain(std::iter::once(&s.target)).enumerate() {
            let m = self.model_config(r).map_err(|e| {
                cfg_err(
                    file,
                    format!(
                        "{}: {e}",
                        if i < s.rungs.len() {
                            format!("scale.rungs[{i}]")
                        } else {
                            "scale.target".into()
                        }
                    ),
                )
            })?;
            if let Some(c) = &s.capability
                && c.longest_chars() > m.max_seq_len()
            {
                return Err(cfg_err(
                    file,
                    format!(
                        "scale.capability: an evaluation sequence may reach {} characters, beyond model.max_seq_len ({}); lower scale.capability.context",
                        c.longest_chars(),
                        m.max_seq_len()
                    ),
                ));
            }
            if self.train.block_size > m.max_seq_len() {
                return Err(cfg_err(
                    file,
                    format!(
                        "train.block_size ({}) exceeds model.max_seq_len ({})",
                        self.train.block_size,
                        m.max_seq_len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[model]` with `overrides` merged in.
    pub fn model_config(
        &self,
        overrides: &toml::Table,
    ) -> std::result::Result<ModelConfig, String> {
        let mut m = self.model.clone();
        for (k, v) in overrides {
            m.insert(k.clone(), v.clone());
        }
        toml::Value::Table(m)
            .try_into::<ModelConfig>()
            .map_err(|e| e.to_string())
    }

    /// Tokens one optimizer step consumes.
    pub fn tokens_per_step(&self) -> u64 {
        (self.train.batch_size * self.train.block_size * self.train.grad_accum) as u64
    }

    /// The run of `overrides` for a vocabulary of `vocab` tokens.
    pub fn plan_one(&self, name: &str, overrides: &toml::Table, vocab: usize) -> Result<RungPlan> {
        let mut model = self.model_config(overrides).map_err(|m| cfg_err(name, m))?;
        model.set_vocab_size(vocab);
        let params = param_count(&model)?;
        let per_step = self.tokens_per_step();
        let want = self.scale.tokens_per_param * params as f64;
        let steps = ((want / per_step as f64).ceil() as u64).max(1);
        let tokens = steps * per_step;
        let mut train = self.train.clone();
        train.max_steps = steps;
        let warmup = (self.scale.warmup_fraction * steps as f64).round() as u64;
        train.schedule = match train.schedule {
            Schedule::Constant { .. } => Schedule::Constant { warmup },
            Schedule::Cosine { min_lr_ratio, .. } => Schedule::Cosine {
                warmup,
                min_lr_ratio,
            },
            Schedule::Linear { .. } => Schedule::Linear { warmup },
            Schedule::InverseSqrt { .. } => Schedule::InverseSqrt {
                warmup: warmup.max(1),
            },
        };
        // Evaluate a handful of times per run whatever its length; checkpoint often enough that
        // an interruption loses little.
        train.eval_every = (steps / 4).max(1);
        train.checkpoint_every = (steps / 4).max(1);
        train.log_every = (steps / 50).max(1);
        Ok(RungPlan {
            name: name.to_string(),
            config: RunConfig {
                model,
                data: self.data.clone(),
                train,
            },
            params,
            steps,
            tokens,
            compute: 6.0 * params as f64 * tokens as f64,
        })
    }

    /// Every rung, smallest first, then the target.
    pub fn plan(&self, vocab: usize) -> Result<(Vec<RungPlan>, RungPlan)> {
        let rungs = self
            .scale
            .rungs
            .iter()
            .enumerate()
            .map(|(i, r)| self.plan_one(&format!("rung-{i}"), r, vocab))
            .collect::<Result<Vec<_>>>()?;
        let target = self.plan_one("target", &self.scale.target, vocab)?;
        Ok((rungs, target))
    }
}

/// Trainable parameters of a model config (built once on random weights).
pub fn param_count(model: &ModelConfig) -> Result<usize> {
    let store = VarStore::new_random(0, model.init_policy());
    let _m = model.build(&store)?;
    Ok(Engine::params_of(&store)
        .iter()
        .map(|p| p.var.elem_count())
        .sum())
}

/// Trains one planned run in `dir` (or resumes it, or returns its saved result).
/// `on_step` sees every step; `stop` interrupts with a checkpoint (`Ok(None)`). With a `task`,
/// the run's capability on its held-out problems is measured and saved in `result.json`.
#[allow(clippy::too_many_arguments)]
pub fn train_rung(
    plan: &RungPlan,
    tok: &Tokenizer,
    data: &TokenData,
    final_eval_batches: usize,
    task: Option<&crate::capability::Task>,
    dir: &Path,
    stop: &AtomicBool,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Option<RungResult>> {
    let result_path = dir.join("result.json");
    if let Some(r) = read_result(&result_path)? {
        return Ok(Some(r));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let files = RunFiles::in_dir(dir);
    let cfg = &plan.config;
    let config_text =
        toml::to_string_pretty(cfg).map_err(|e| cfg_err(&plan.name, e.to_string()))?;
    let model_json =
        serde_json::to_string_pretty(&cfg.model).map_err(|e| cfg_err(&plan.name, e.to_string()))?;
    write_atomic(&dir.join("config.toml"), config_text.as_bytes())?;
    write_atomic(&dir.join(RUN_MODEL_FILE), model_json.as_bytes())?;
    let tok_path = dir.join(RUN_TOKENIZER_FILE);
    tok.save(&tok_path, false)
        .map_err(|e| io_err(&tok_path, e))?;

    let mut trainer = Trainer::new(&cfg.model, cfg.train.clone())?;
    if files.checkpoint.is_file() {
        trainer.resume(&files.checkpoint)?;
    }
    let outcome = trainer.run(data, plan.steps, stop, &files, on_step)?;
    if outcome == Outcome::Interrupted {
        return Ok(None);
    }
    let mut fin = cfg.train.clone();
    fin.eval_batches = final_eval_batches;
    let obj = LmObjective::new(&*trainer.model, data, &fin);
    let final_loss = obj.eval_loss(cfg.train.block_size)?;
    let capability = match task {
        Some(t) => Some(crate::capability::evaluate(t, &*trainer.model, tok)?),
        None => None,
    };
    let lines = canon_train::metrics::read_lines(&files.metrics)?;
    let last = lines.last();
    let r = RungResult {
        name: plan.name.clone(),
        params: plan.params,
        steps: plan.steps,
        tokens: plan.tokens,
        compute: plan.compute,
        final_loss,
        last_train_loss: last.map_or(f64::NAN, |l| l.loss),
        seconds: last.and_then(|l| l.elapsed_s).unwrap_or(0.0),
        capability,
    };
    let json = serde_json::to_string_pretty(&r).map_err(|e| io_err(&result_path, e))?;
    write_atomic(&result_path, json.as_bytes())?;
    Ok(Some(r))
}

/// A finished run's `result.json`, if present.
pub fn read_result(path: &Path) -> Result<Option<RungResult>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| io_err(path, format!("not a run result: {e}")))
}

/// The folder of a planned run under the sweep's folder.
pub fn rung_dir(out: &Path, plan: &RungPlan) -> PathBuf {
    out.join(&plan.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[scale]
tokens_per_param = 20.0
warmup_fraction = 0.1
rungs = [
  { n_layer = 1, d_model = 16, d_ff = 64 },
  { n_layer = 2, d_model = 16, d_ff = 64 },
  { n_layer = 2, d_model = 32, d_ff = 128 },
]
target = { n_layer = 3, d_model = 64, d_ff = 256 }

[model]
family = "gpt"
n_layer = 1
n_head = 2
d_model = 16
d_ff = 64
max_seq_len = 32
block = "pre_ln"
norm = "layer_norm"
positions = "learned"
ffn = "mlp"
activation = "gelu"
bias = false
tie_embeddings = true
final_norm = true

[data]
corpus = "python-stdlib"
tokenizer = "char"

[train]
batch_size = 4
block_size = 32
max_steps = 1
lr = 3e-3
[train.schedule]
kind = "cosine"
warmup = 0
min_lr_ratio = 0.1
"#;

    #[test]
    fn ladder_configs_scale_as_specified() {
        let cfg = LadderConfig::parse(CFG, "test").unwrap();
        let (rungs, target) = cfg.plan(100).unwrap();
        assert_eq!(rungs.len(), 3);
        let per_step = 4 * 32;
        let mut last_c = 0.0;
        for p in rungs.iter().chain(std::iter::once(&target)) {
            // The overrides reached the model; everything else is the shared recipe.
            let canon_models::ModelConfig::Gpt(g) = &p.config.model else {
                panic!("gpt expected")
            };
            assert_eq!(g.vocab_size, 100);
            assert_eq!(g.n_head, 2);
            // Fixed tokens per parameter (up to rounding to whole steps).
            let want = 20.0 * p.params as f64;
            assert!(p.tokens as f64 >= want && (p.tokens as f64) < want + per_step as f64);
            assert_eq!(p.tokens, p.steps * per_step as u64);
            assert_eq!(p.config.train.max_steps, p.steps);
            assert_eq!(p.compute, 6.0 * p.params as f64 * p.tokens as f64);
            match p.config.train.schedule {
                Schedule::Cosine {
                    warmup,
                    min_lr_ratio,
                } => {
                    assert_eq!(warmup, (0.1 * p.steps as f64).round() as u64);
                    assert_eq!(min_lr_ratio, 0.1);
                }
                s => panic!("schedule changed: {s:?}"),
            }
            assert_eq!(p.config.train.lr, 3e-3);
            assert!(p.compute > last_c, "compute grows along the ladder");
            last_c = p.compute;
        }
        let canon_models::ModelConfig::Gpt(g) = &target.config.model else {
            panic!("gpt expected")
        };
        assert_eq!((g.n_layer, g.d_model, g.d_ff), (3, 64, 256));
        // The parameter count is the model's: 1 layer, d = 16, ff = 64, tied, no bias:
        // embeddings 100·16 + positions 32·16; per block 2 LN (γ, β) + 4·16² + 2·16·64;
        // final LN.
        let n0 = 100 * 16 + 32 * 16 + (2 * 2 * 16 + 4 * 16 * 16 + 2 * 16 * 64) + 2 * 16;
        assert_eq!(rungs[0].params, n0);
    }

    #[test]
    fn bad_ladders_are_refused_with_a_reason() {
        let two = CFG.replace("  { n_layer = 2, d_model = 32, d_ff = 128 },\n", "");
        let e = LadderConfig::parse(&two, "x.toml").unwrap_err().to_string();
        assert!(e.contains("at least 3 rungs"), "{e}");
        let bad = CFG.replace("tokens_per_param = 20.0", "tokens_per_param = -1.0");
        let e = LadderConfig::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("tokens_per_param"), "{e}");
        let typo = CFG.replace("target = { n_layer = 3,", "target = { n_layers = 3,");
        let e = LadderConfig::parse(&typo, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("scale.target"), "{e}");
        // A capability prompt longer than the model's context is refused when read.
        let cap = CFG.replace(
            "\n[model]",
            "\n[scale.capability]\ntask = \"addition\"\nmax_operand = 49\ncontext = 3\n\n[model]",
        );
        let e = LadderConfig::parse(&cap, "x.toml").unwrap_err().to_string();
        assert!(e.contains("35 characters") && e.contains("(32)"), "{e}");
        let ok = cap.replace("context = 3", "context = 2");
        assert!(LadderConfig::parse(&ok, "x.toml").is_ok());
    }
}
