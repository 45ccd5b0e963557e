//! `canon train`: train a model family from scratch on text present on this machine, or resume a run.
//!
//! A run folder holds `config.toml` (the resolved configuration), `model.json`, `tokenizer.json`,
//! `checkpoint.safetensors`, `metrics.jsonl` and `loss.png`; `canon generate --model DIR` loads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use canon_models::family::{RUN_MODEL_FILE, RUN_TOKENIZER_FILE};
use canon_train::data::{self, Corpus};
use canon_train::trainer::RunFiles;
use canon_train::{
    Engine, LmObjective, Objective, Outcome, Param, RunConfig, StepReport, TokenData, TrainConfig,
    Trainer,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::write_atomic;
use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon train --config configs/gpt2.toml --out runs/gpt2
  canon train --config configs/nanogpt-bench.toml --max-steps 50 --threads 2 --out /tmp/bench
  canon train --resume runs/gpt2 --max-steps 4000
  canon generate --model runs/gpt2 --prompt \"def \" --max-tokens 200")]
pub struct TrainArgs {
    /// A run configuration (TOML with [model], [data] and [train] tables).
    #[arg(long, conflicts_with = "resume", required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// The run folder to create.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Total optimizer steps (overrides train.max_steps; the schedule spans this many).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop (with a checkpoint) after this many steps without changing the schedule.
    #[arg(long, value_name = "STEP")]
    pub stop_at: Option<u64>,
    /// Seed for initialisation and data order (overrides train.seed; new runs only).
    #[arg(long, conflicts_with = "resume")]
    pub seed: Option<u64>,
}

/// Where the Python standard library lives: `$CANON_PYTHON_STDLIB`, else what `python3` reports,
/// else the newest `/usr/lib/python3.*`.
pub(crate) fn python_stdlib_dir() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CANON_PYTHON_STDLIB") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(out) = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.is_dir() {
            return Ok(p);
        }
    }
    let mut cands: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("python3.") && p.join("os.py").is_file())
                })
                .collect()
        })
        .unwrap_or_default();
    cands.sort();
    cands
        .pop()
        .context("cannot find the Python standard library: set CANON_PYTHON_STDLIB to its folder")
}

fn load_corpus(cfg: &RunConfig) -> anyhow::Result<Corpus> {
    let d = &cfg.data;
    Ok(match d.corpus.as_str() {
        "python-stdlib" => data::python_stdlib(&python_stdlib_dir()?, d.max_bytes)?,
        "python-docs" => data::python_docs(&python_stdlib_dir()?, d.max_bytes)?,
        p => data::text_path(Path::new(p), d.max_bytes)
            .with_context(|| format!("data.corpus = '{p}'"))?,
    })
}

/// The families `canon_models::ModelConfig` trains as causal language models.
const CAUSAL_FAMILIES: [&str; 3] = ["gpt", "llama", "transformer_xl"];
/// The families trained through their own objective (`new_family_setup`).
const OBJECTIVE_FAMILIES: &[&str] = &["ernie", "transformer", "t5", "bert", "distilbert"];

fn read_config(path: &Path) -> anyhow::Result<toml::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let cfg: toml::Value =
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
    Ok(cfg)
}

/// `[model] family` of a config.
fn family_of(cfg: &toml::Value, path: &Path) -> anyhow::Result<String> {
    cfg.get("model")
        .and_then(|m| m.get("family"))
        .and_then(|f| f.as_str())
        .map(str::to_string)
        .with_context(|| {
            format!(
                "{}: expected a [model] table with family = \"...\" (one of {}, {})",
                path.display(),
                CAUSAL_FAMILIES.join(", "),
                OBJECTIVE_FAMILIES.join(", ")
            )
        })
}

/// Sets `[train] key = value`, creating the table if needed.
fn set_train_key(cfg: &mut toml::Value, key: &str, value: toml::Value) -> anyhow::Result<()> {
    let table = cfg
        .as_table_mut()
        .context("a config must be a TOML table")?
        .entry("train")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    table
        .as_table_mut()
        .context("[train] must be a table")?
        .insert(key.to_string(), value);
    Ok(())
}

/// Families trained through their own objective (issue 5's encoders and sequence-to-sequence
/// models): each returns its trainable parameters, its `[train]` settings and its objective.
type FamilySetup = (Vec<Param>, TrainConfig, Box<dyn Objective>);

fn new_family_setup(
    family: &str,
    cfg: &toml::Value,
    config_path: &Path,
    dir: &Path,
    resuming: bool,
    ctx: &Ctx,
) -> anyhow::Result<FamilySetup> {
    match family {
        "ernie" => super::train_ernie::setup(cfg, config_path, dir, resuming, ctx),
        "transformer" => super::train_transformer::setup(cfg, config_path, dir, resuming, ctx),
        "t5" => super::train_t5::setup(cfg, config_path, dir, resuming, ctx),
        "bert" => super::train_bert::setup(cfg, config_path, dir, resuming, ctx),
        "distilbert" => super::train_distilbert::setup(cfg, config_path, dir, resuming, ctx),
        f => bail!(
            "{}: unknown model family '{f}'; expected one of {}, {}",
            config_path.display(),
            CAUSAL_FAMILIES.join(", "),
            OBJECTIVE_FAMILIES.join(", ")
        ),
    }
}

fn validate(cfg: &RunConfig, file: &Path) -> anyhow::Result<()> {
    let f = file.display();
    cfg.data
        .validate()
        .map_err(|m| anyhow::anyhow!("{f}: {m}"))?;
    cfg.train
        .validate()
        .map_err(|m| anyhow::anyhow!("{f}: {m}"))?;
    if cfg.train.block_size > cfg.model.max_seq_len() {
        bail!(
            "{f}: train.block_size ({}) exceeds model.max_seq_len ({})",
            cfg.train.block_size,
            cfg.model.max_seq_len()
        );
    }
    Ok(())
}

pub fn run(a: TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (dir, config_path, mut value, resuming) = match (&a.resume, &a.config, &a.out) {
        (Some(dir), _, _) => {
            let path = dir.join("config.toml");
            let cfg = read_config(&path)
                .with_context(|| format!("{} is not a run folder", dir.display()))?;
            (dir.clone(), path, cfg, true)
        }
        (None, Some(config), Some(out)) => {
            let cfg = read_config(config)?;
            if out.join("checkpoint.safetensors").exists() {
                bail!(
                    "{} already holds a run; continue it with --resume {} or choose another --out",
                    out.display(),
                    out.display()
                );
            }
            (out.clone(), config.clone(), cfg, false)
        }
        _ => bail!("give --config FILE --out DIR, or --resume DIR"),
    };
    if let Some(n) = a.max_steps {
        set_train_key(&mut value, "max_steps", toml::Value::Integer(n as i64))?;
    }
    if let Some(s) = a.seed {
        set_train_key(&mut value, "seed", toml::Value::Integer(s as i64))?;
    }
    let family = family_of(&value, &config_path)?;
    if CAUSAL_FAMILIES.contains(&family.as_str()) {
        let cfg: RunConfig = value
            .try_into()
            .with_context(|| format!("invalid config {}", config_path.display()))?;
        return run_causal(cfg, &dir, resuming, &a, ctx);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (params, train_cfg, mut obj) =
        new_family_setup(&family, &value, &config_path, &dir, resuming, ctx)?;
    write_atomic(&dir.join("config.toml"), &toml::to_string_pretty(&value)?)?;
    let mut engine = Engine::new(params, train_cfg)?;
    drive(&mut engine, &mut *obj, &dir, resuming, &a, ctx)
}

fn run_causal(
    mut cfg: RunConfig,
    dir: &Path,
    resuming: bool,
    a: &TrainArgs,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    validate(&cfg, &dir.join("config.toml"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
    let corpus = load_corpus(&cfg)?;
    say(format!(
        "corpus {}: {} documents, {:.1} MB",
        corpus.name,
        corpus.docs.len(),
        corpus.bytes() as f64 / 1e6
    ));
    let tok_path = dir.join(RUN_TOKENIZER_FILE);
    let tok = if resuming {
        tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", tok_path.display()))?
    } else {
        let t = data::train_tokenizer(cfg.data.tokenizer, &corpus.docs, cfg.data.vocab_size)?;
        t.save(&tok_path, false)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tok_path.display()))?;
        t
    };
    let data = TokenData::encode(&tok, &corpus.docs, cfg.data.val_fraction)?;
    say(format!(
        "tokens: {} train, {} held out, vocabulary {}",
        data.train.len(),
        data.val.len(),
        data.vocab_size
    ));
    cfg.model.set_vocab_size(data.vocab_size);
    write_atomic(&dir.join("config.toml"), &toml::to_string_pretty(&cfg)?)?;
    write_atomic(
        &dir.join(RUN_MODEL_FILE),
        &serde_json::to_string_pretty(&cfg.model)?,
    )?;

    let mut trainer = Trainer::new(&cfg.model, cfg.train.clone())?;
    let mut obj = LmObjective::new(&*trainer.model, &data, &cfg.train);
    obj.check()?;
    drive(&mut trainer.engine, &mut obj, dir, resuming, a, ctx)
}

/// Resumes if asked, then trains with a progress bar until the step limit or Ctrl-C, and prints a
/// summary.
fn drive(
    engine: &mut Engine,
    obj: &mut dyn Objective,
    dir: &Path,
    resuming: bool,
    a: &TrainArgs,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
    let files = RunFiles::in_dir(dir);
    if resuming {
        engine.resume(obj, &files.checkpoint)?;
        say(format!("resumed at step {}", engine.step));
    }
    say(format!(
        "{} parameters, {} threads",
        engine.num_params(),
        ctx.threads
    ));

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let max_steps = engine.cfg.max_steps;
    let stop_at = a.stop_at.unwrap_or(max_steps).min(max_steps);
    let bar = if ctx.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(stop_at)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(engine.step);
    let mut last_eval = None;
    let mut last_metrics: Vec<(String, f64)> = Vec::new();
    let mut tps = Vec::new();
    let mut last: Option<StepReport> = None;
    let outcome = engine.run(obj, stop_at, &stop, &files, &mut |r| {
        if r.eval_loss.is_some() {
            last_eval = r.eval_loss;
            last_metrics = r.eval.clone();
        }
        tps.push(r.tokens_per_s);
        bar.set_position(r.step);
        bar.set_message(format!(
            "loss {:.3}{} {:.0} tok/s",
            r.loss,
            last_eval.map_or(String::new(), |e| format!(" eval {e:.3}")),
            r.tokens_per_s
        ));
        last = Some(r.clone());
    })?;
    bar.finish_and_clear();
    tps.sort_by(|a, b| a.total_cmp(b));
    let median = tps.get(tps.len() / 2).copied().unwrap_or(0.0);
    match outcome {
        Outcome::Interrupted => say(format!(
            "interrupted: checkpoint at step {} in {}; continue with canon train --resume {}",
            engine.step,
            dir.display(),
            dir.display()
        )),
        Outcome::Finished => say(format!(
            "done: step {}, train loss {}, eval loss {}{}, median {:.0} tokens/s; run folder {}",
            engine.step,
            last.as_ref()
                .map_or("-".into(), |r| format!("{:.4}", r.loss)),
            last_eval.map_or("-".into(), |e| format!("{e:.4}")),
            last_metrics
                .iter()
                .map(|(k, v)| format!(", {k} {v:.4}"))
                .collect::<String>(),
            median,
            dir.display()
        )),
    }
    Ok(())
}
