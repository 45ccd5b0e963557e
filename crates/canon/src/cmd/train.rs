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
use canon_train::{Outcome, RunConfig, StepReport, TokenData, Trainer};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

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

fn read_config(path: &Path) -> anyhow::Result<RunConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let cfg: RunConfig =
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
    Ok(cfg)
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

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(a: TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (dir, mut cfg, resuming) = match (&a.resume, &a.config, &a.out) {
        (Some(dir), _, _) => {
            let cfg = read_config(&dir.join("config.toml"))
                .with_context(|| format!("{} is not a run folder", dir.display()))?;
            (dir.clone(), cfg, true)
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
            (out.clone(), cfg, false)
        }
        _ => bail!("give --config FILE --out DIR, or --resume DIR"),
    };
    if let Some(n) = a.max_steps {
        cfg.train.max_steps = n;
    }
    if let Some(s) = a.seed {
        cfg.train.seed = s;
    }
    validate(&cfg, &dir.join("config.toml"))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

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
    let files = RunFiles::in_dir(&dir);
    if resuming {
        trainer.resume(&files.checkpoint)?;
        say(format!("resumed at step {}", trainer.step));
    }
    say(format!(
        "{} parameters, {} threads",
        trainer.num_params(),
        ctx.threads
    ));

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let stop_at = a
        .stop_at
        .unwrap_or(cfg.train.max_steps)
        .min(cfg.train.max_steps);
    let bar = if ctx.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(stop_at)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.step);
    let mut last_eval = None;
    let mut tps = Vec::new();
    let mut last: Option<StepReport> = None;
    let outcome = trainer.run(&data, stop_at, &stop, &files, &mut |r| {
        if r.eval_loss.is_some() {
            last_eval = r.eval_loss;
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
            trainer.step,
            dir.display(),
            dir.display()
        )),
        Outcome::Finished => say(format!(
            "done: step {}, train loss {}, eval loss {}, median {:.0} tokens/s; run folder {}",
            trainer.step,
            last.as_ref()
                .map_or("-".into(), |r| format!("{:.4}", r.loss)),
            last_eval.map_or("-".into(), |e| format!("{e:.4}")),
            median,
            dir.display()
        )),
    }
    Ok(())
}
