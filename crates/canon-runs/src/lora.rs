//! LoRA (paper 13) and QLoRA (paper 27) fine-tuning runs (`canon finetune --method lora|qlora`):
//! the settings a run folder keeps (`finetune.json`, which a resume must match) and the setup of
//! a run: the base loaded (QLoRA: re-quantized to NF4), adapters attached, records loaded and
//! split, and the engine's `SftObjective` and `TrainConfig`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use canon_models::{ModelSpec, WeightMode};
use canon_train::sft::lora::{LoraSpec, SftObjective, attach, requantize_nf4};
use canon_train::sft::{load_examples, split_held_out};
use canon_train::{OptimizerConfig, Schedule, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::{Context, Result, bail};

/// Adapters over a frozen base in the file's format, or over the base re-quantized to NF4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Lora,
    Qlora,
}

/// The settings of a run, written to `finetune.json`; a resume reads them back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub method: Method,
    pub model: String,
    pub data: PathBuf,
    pub eval_data: Option<PathBuf>,
    pub val_fraction: f64,
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub lr: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_len: usize,
    pub grad_clip: f64,
    pub seed: u64,
    #[serde(default)]
    pub dropout: f64,
    /// `--method lora` with the base dequantized to f32 at load (`--f32`); runs written before
    /// this field existed had an f32 base.
    #[serde(default = "yes")]
    pub f32_base: bool,
}

fn yes() -> bool {
    true
}

pub const SETTINGS_FILE: &str = "finetune.json";

/// Reads the settings of the run in `dir`.
pub fn read_settings(dir: &Path) -> Result<RunSettings> {
    let p = dir.join(SETTINGS_FILE);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "--resume {}: cannot read {} (not a `canon finetune` run folder)",
            dir.display(),
            p.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid run settings", p.display()))
}

/// The options of one invocation (they may change between a run and its resume).
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    pub max_steps: u64,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub checkpoint_every: u64,
    pub checkpointing: bool,
}

/// What the engine needs, and what the setup has to say.
pub struct Prepared {
    pub obj: SftObjective,
    pub cfg: TrainConfig,
    /// The base model's file (recorded in the adapter's config).
    pub base_name: String,
    /// One line per stage (re-quantization, adapters, records).
    pub notes: Vec<String>,
}

/// Checks `settings` and `o`, loads the base, attaches the adapters and loads the records.
pub fn prepare(
    settings: &RunSettings,
    o: &RunOptions,
    progress: &dyn canon_assets::FetchProgress,
) -> Result<Prepared> {
    if settings.batch_size == 0 || settings.grad_accum == 0 {
        bail!("--batch-size and --grad-accum must be positive");
    }
    if o.eval_every == 0 || o.checkpoint_every == 0 {
        bail!("--eval-every and --checkpoint-every must be positive");
    }
    if !(settings.lr > 0.0 && settings.lr.is_finite()) {
        bail!("--lr must be positive, found {}", settings.lr);
    }
    let mut notes = Vec::new();
    // The base model.
    let t0 = Instant::now();
    let spec = ModelSpec::parse(&settings.model)?;
    let mode = match settings.method {
        Method::Lora if settings.f32_base => WeightMode::DequantizeF32,
        Method::Lora | Method::Qlora => WeightMode::KeepQuantized,
    };
    let mut lm = canon_models::load_causal_lm(&spec, mode, progress)
        .with_context(|| format!("cannot load model '{}'", settings.model))?;
    let base_name = lm.path.display().to_string();
    if settings.method == Method::Qlora {
        let bytes = requantize_nf4(lm.model.as_mut())?;
        notes.push(format!(
            "QLoRA: {} linear layers re-quantized to NF4 with double quantization ({:.1} MB)",
            lm.model.linear_names().len(),
            bytes as f64 / 1e6
        ));
    }
    let lora_spec = LoraSpec {
        rank: settings.rank,
        alpha: settings.alpha,
        targets: settings.targets.clone(),
        seed: settings.seed,
        dropout: settings.dropout,
    };
    let set = attach(lm.model.as_mut(), &lora_spec)?;
    if o.checkpointing {
        if settings.dropout > 0.0 {
            bail!(
                "--checkpointing cannot replay LoRA dropout: expected --dropout 0, found {}",
                settings.dropout
            );
        }
        lm.model.set_checkpointing(true)?;
    }
    notes.push(format!(
        "{} on {} ({:.1} s to load): {} adapted layers ({}), rank {}, α {}, {} trainable parameters",
        match settings.method {
            Method::Lora => "LoRA",
            Method::Qlora => "QLoRA",
        },
        lm.name,
        t0.elapsed().as_secs_f64(),
        set.modules.len(),
        settings.targets.join(","),
        settings.rank,
        settings.alpha,
        set.num_params()
    ));

    // The data.
    let tmpl = lm.chat_template.as_ref();
    let (records, dropped) = load_examples(&settings.data, &lm.tokenizer, tmpl, settings.max_len)?;
    let (train, eval) = match &settings.eval_data {
        Some(p) => (
            records,
            load_examples(p, &lm.tokenizer, tmpl, settings.max_len)?.0,
        ),
        None => split_held_out(records, settings.val_fraction)?,
    };
    let targets: usize = train.iter().map(|e| e.targets()).sum();
    notes.push(format!(
        "{} training records ({} target tokens), {} held-out{}",
        train.len(),
        targets,
        eval.len(),
        if dropped > 0 {
            format!("; {dropped} records dropped (no target within --max-len)")
        } else {
            String::new()
        }
    ));
    let pad = lm.tokenizer.pad_id.or(lm.tokenizer.eos_id).unwrap_or(0);
    let obj = SftObjective {
        model: lm.model,
        lora: set,
        train,
        eval,
        batch_size: settings.batch_size,
        pad,
        eval_batches: o.eval_batches,
    };
    let cfg = TrainConfig {
        batch_size: settings.batch_size,
        block_size: settings.max_len,
        grad_accum: settings.grad_accum,
        max_steps: o.max_steps,
        lr: settings.lr,
        // QLoRA's recipe: constant rate after a 3 % warmup, no weight decay, clipped gradients.
        schedule: Schedule::Constant {
            warmup: (o.max_steps * 3 / 100).max(1),
        },
        optimizer: OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        grad_clip: Some(settings.grad_clip),
        eval_every: o.eval_every,
        eval_batches: o.eval_batches.max(1),
        log_every: 1,
        checkpoint_every: o.checkpoint_every,
        seed: settings.seed,
        z_loss: 0.0,
        moe_aux_weight: 0.0,
    };
    Ok(Prepared {
        obj,
        cfg,
        base_name,
        notes,
    })
}
