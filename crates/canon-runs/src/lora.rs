//! LoRA (paper 13) and QLoRA (paper 27) fine-tuning runs (`canon finetune --method lora|qlora`):
//! the settings a run folder keeps (`finetune.json`, which a resume must match) and the setup of
//! a run: the base loaded (QLoRA: re-quantized to NF4), adapters attached, records loaded and
//! split, and the engine's `SftObjective` and `TrainConfig`; and the run itself ([`Job`],
//! [`run_job`]): the settings written or read back, the engine resumed or started, the PEFT adapter
//! written at every checkpoint and at the end, progress reported through [`Event`]s.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use canon_models::{ModelSpec, WeightMode};
use canon_train::sft::lora::{LoraSpec, SftObjective, attach, parse_targets, requantize_nf4};
use canon_train::sft::{load_examples, split_held_out};
use canon_train::trainer::RunFiles;
use canon_train::{Engine, OptimizerConfig, Outcome, Schedule, StepReport, TrainConfig};
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

impl RunSettings {
    /// The checks of a new run's settings that need no file (the others run in [`prepare`]).
    pub fn check(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("--rank 0: a LoRA rank must be at least 1");
        }
        Ok(())
    }
}

/// `--targets` as given, or the method's default: q,v for LoRA, all for QLoRA (as the papers).
pub fn targets_or_default(method: Method, given: Option<&str>) -> Result<Vec<String>> {
    Ok(parse_targets(given.unwrap_or(match method {
        Method::Lora => "q,v",
        Method::Qlora => "all",
    }))?)
}

/// A new run's folder must not hold a run already.
pub fn check_new_dir(dir: &Path) -> Result<()> {
    if dir.join(SETTINGS_FILE).exists() {
        bail!(
            "--out {}: the folder holds a run already (continue it with --resume {0}, or choose \
             another folder)",
            dir.display()
        );
    }
    Ok(())
}

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

/// One invocation: a new run (settings checked, folder free) or the resume of one.
#[derive(Debug, Clone)]
pub struct Job {
    pub dir: PathBuf,
    pub settings: RunSettings,
    pub resuming: bool,
    pub opts: RunOptions,
    /// Time the training step by phase (`canon_nn::profile`), the first step left out.
    pub timings: bool,
}

impl Job {
    /// A new run in `dir` with `settings`.
    pub fn new(dir: PathBuf, settings: RunSettings, opts: RunOptions) -> Result<Job> {
        settings.check()?;
        Ok(Job {
            dir,
            settings,
            resuming: false,
            opts,
            timings: false,
        })
    }

    /// The resume of the run in `dir`; `f32_base` is whether `--f32` was given, which a run over
    /// the quantized base cannot take.
    pub fn resume(dir: PathBuf, f32_base: bool, opts: RunOptions) -> Result<Job> {
        let settings = read_settings(&dir)?;
        if f32_base && !settings.f32_base {
            bail!(
                "--f32: the run in {} trains over the quantized base; resume it without --f32 (a \
                 resumed run must keep its base's arithmetic)",
                dir.display()
            );
        }
        Ok(Job {
            dir,
            settings,
            resuming: true,
            opts,
            timings: false,
        })
    }
}

/// What a run reports while it goes.
pub enum Event<'a> {
    /// One line of setup (re-quantization, adapters, records, the resumed step).
    Note(String),
    /// Training starts at `step` of `max_steps`; from here a raised stop flag ends the run with a
    /// checkpoint.
    Start { step: u64, max_steps: u64 },
    /// A step's report, with the last held-out loss so far.
    Step(&'a StepReport, Option<f64>),
}

/// The time of the training step by phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    /// The steps timed, `first..=last` (the run's first step, which packs the weights, left out).
    pub first: u64,
    pub last: u64,
    /// `canon_nn::profile::table`.
    pub table: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub outcome: Outcome,
    /// The step reached, and the step the run started from.
    pub step: u64,
    pub start_step: u64,
    pub first_loss: Option<f64>,
    pub last_loss: f64,
    pub last_eval: Option<f64>,
    pub seconds: f64,
    /// With [`Job::timings`]: `None` when no step after the first ran.
    pub timings: Option<Timings>,
}

/// A run that had nothing to train (the adapter written again), or one that trained.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    /// The run was complete at `max_steps` already: the adapter was written again from its last
    /// checkpoint (a run killed between the two writes ends here).
    Complete,
    Trained(Summary),
}

/// Runs `job`: prepares the objective, resumes from the checkpoint or creates the folder and
/// writes `finetune.json`, trains to `opts.max_steps` (or until `stop` is raised), and writes the
/// PEFT adapter whenever the engine checkpoints and at the end.
pub fn run_job(
    job: &Job,
    progress: &dyn canon_assets::FetchProgress,
    stop: &AtomicBool,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<JobEnd> {
    let (dir, max_steps) = (&job.dir, job.opts.max_steps);
    let Prepared {
        mut obj,
        cfg,
        base_name,
        notes,
    } = prepare(&job.settings, &job.opts, progress)?;
    for n in notes {
        on(Event::Note(n));
    }
    let mut engine = Engine::new(obj.lora.params(), cfg)?;
    let files = RunFiles::in_dir(dir);
    if job.resuming {
        engine
            .resume(&mut obj, &files.checkpoint)
            .with_context(|| format!("cannot resume from {}", files.checkpoint.display()))?;
        on(Event::Note(format!("resuming at step {}", engine.step)));
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(SETTINGS_FILE);
        canon_fs::write_atomic(
            &path,
            serde_json::to_string_pretty(&job.settings)?.as_bytes(),
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if engine.step > max_steps || (engine.step == max_steps && !job.resuming) {
        bail!(
            "the run is at step {} already; give a larger --max-steps",
            engine.step
        );
    }
    on(Event::Start {
        step: engine.step,
        max_steps,
    });
    // The adapters' variables, shared with the objective: the PEFT files are written whenever the
    // engine checkpoints.
    let adapters = obj.lora.clone();
    let write_adapter = |why: &str| -> Result<()> {
        canon_models::peft::write_adapter(dir, &adapters.to_adapter()?, &base_name)
            .with_context(|| format!("cannot write the adapter ({why})"))
    };
    if engine.step == max_steps {
        write_adapter("end of run")?;
        return Ok(JobEnd::Complete);
    }
    let mut first_loss = None;
    let mut last = (f64::NAN, None::<f64>);
    let mut io_error = None;
    let start = Instant::now();
    let start_step = engine.step;
    let checkpoint_every = job.opts.checkpoint_every;
    canon_nn::profile::reset();
    canon_nn::profile::enable(job.timings);
    let timed_from = start_step + 1;
    let outcome = engine.run(&mut obj, max_steps, stop, &files, &mut |r: &StepReport| {
        if r.step == timed_from {
            // The first step packs the quantized weights and grows the buffers: left out.
            canon_nn::profile::reset();
        }
        first_loss.get_or_insert(r.loss);
        last = (r.loss, r.eval_loss.or(last.1));
        on(Event::Step(r, last.1));
        if (r.step.is_multiple_of(checkpoint_every) || r.step == max_steps)
            && io_error.is_none()
            && let Err(e) = write_adapter("checkpoint")
        {
            io_error = Some(e);
        }
    });
    canon_nn::profile::enable(false);
    let outcome = outcome?;
    if let Some(e) = io_error {
        return Err(e);
    }
    write_adapter("end of run")?;
    let timed = engine.step.saturating_sub(timed_from);
    let timings = (job.timings && timed > 0).then(|| Timings {
        first: timed_from + 1,
        last: engine.step,
        table: canon_nn::profile::table(timed),
    });
    Ok(JobEnd::Trained(Summary {
        outcome,
        step: engine.step,
        start_step,
        first_loss,
        last_loss: last.0,
        last_eval: last.1,
        seconds: start.elapsed().as_secs_f64(),
        timings,
    }))
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod job_tests {
    use super::*;

    fn settings() -> RunSettings {
        RunSettings {
            method: Method::Lora,
            model: "smollm2".into(),
            data: "d.jsonl".into(),
            eval_data: None,
            val_fraction: 0.1,
            rank: 8,
            alpha: 16.0,
            targets: targets_or_default(Method::Lora, None).unwrap(),
            lr: 5e-4,
            batch_size: 4,
            grad_accum: 1,
            max_len: 256,
            grad_clip: 0.3,
            seed: 1,
            dropout: 0.0,
            f32_base: false,
        }
    }

    fn opts() -> RunOptions {
        RunOptions {
            max_steps: 10,
            eval_every: 5,
            eval_batches: 1,
            checkpoint_every: 5,
            checkpointing: false,
        }
    }

    #[test]
    fn default_targets_follow_the_method() {
        assert_eq!(
            targets_or_default(Method::Lora, None).unwrap(),
            ["q_proj", "v_proj"]
        );
        assert_eq!(targets_or_default(Method::Qlora, None).unwrap().len(), 7);
        assert_eq!(
            targets_or_default(Method::Qlora, Some("o")).unwrap(),
            ["o_proj"]
        );
        let e = targets_or_default(Method::Lora, Some("x")).unwrap_err();
        assert!(e.to_string().contains("unknown module 'x'"), "{e}");
    }

    #[test]
    fn a_new_run_needs_a_rank_and_a_free_folder() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_new_dir(d.path()).is_ok());
        let mut s = settings();
        s.rank = 0;
        let e = Job::new(d.path().into(), s, opts()).unwrap_err();
        assert_eq!(e.to_string(), "--rank 0: a LoRA rank must be at least 1");
        let job = Job::new(d.path().into(), settings(), opts()).unwrap();
        assert!(!job.resuming);
        std::fs::write(d.path().join(SETTINGS_FILE), "{}").unwrap();
        let e = check_new_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("holds a run already"), "{e}");
    }

    #[test]
    fn a_resume_keeps_the_base_arithmetic() {
        let d = tempfile::tempdir().unwrap();
        let e = Job::resume(d.path().into(), false, opts()).unwrap_err();
        assert!(
            e.to_string().contains("not a `canon finetune` run folder"),
            "{e}"
        );
        let text = serde_json::to_string(&settings()).unwrap();
        std::fs::write(d.path().join(SETTINGS_FILE), text).unwrap();
        let e = Job::resume(d.path().into(), true, opts()).unwrap_err();
        assert!(
            e.to_string().contains("trains over the quantized base"),
            "{e}"
        );
        let job = Job::resume(d.path().into(), false, opts()).unwrap();
        assert!(job.resuming);
        assert_eq!(job.settings, settings());
    }
}
