//! The runs of `canon data filter` and `canon data synth` (settings in `canon_scale::data::opts`)
//! with their inputs from the machine and the model loader: the Python roots of the corpus,
//! HumanEval's problems as the decontamination set, the sentence encoder (loaded at the first
//! batch), the judge and the generating model.

use canon_models::LoadedLm;
use canon_scale::ScaleError;
use canon_scale::data::corpus::Origin;
use canon_scale::data::judge::{Judge, LmJudge};
use canon_scale::data::opts::{FilterArgs, SynthArgs};
use canon_scale::data::pipeline::{self, Benchmark, FilterEvent};
use canon_scale::data::synth::SynthOpts;

use crate::{Loader, Result, python_stdlib_dir};

/// HumanEval's problems as (task id, prompt + canonical solution): the decontamination set.
pub fn humaneval_pairs(
    progress: &dyn canon_assets::FetchProgress,
) -> canon_eval::Result<Vec<(String, String)>> {
    let problems = canon_eval::humaneval::load_default(progress)?;
    let text = |p: &canon_eval::humaneval::Problem| format!("{}{}", p.prompt, p.canonical_solution);
    Ok(problems
        .iter()
        .map(|p| (p.task_id.clone(), text(p)))
        .collect())
}

/// Runs the filter pipeline (its report as JSON); `on` sees its notes and progress.
// The pipeline's callbacks return canon_scale's error, whose training and model variants are
// large; they run once per batch, so the size does not matter here.
#[allow(clippy::result_large_err)]
pub fn filter(
    a: &FilterArgs,
    loader: &Loader,
    on: &mut dyn FnMut(FilterEvent),
) -> Result<serde_json::Value> {
    let o = a.opts()?;
    let roots = [
        (python_stdlib_dir()?, Origin::Stdlib),
        (
            pipeline::site_packages_dir(&a.site_packages)?,
            Origin::SitePackages,
        ),
    ];
    let mut humaneval = || -> canon_scale::Result<Vec<(String, String)>> {
        humaneval_pairs(loader.progress()).map_err(|e| {
            ScaleError::Msg(format!(
                "cannot load HumanEval for decontamination (use --no-decontaminate to skip): {e}"
            ))
        })
    };
    let benchmark: Option<Benchmark<'_>> = if a.no_decontaminate {
        None
    } else {
        Some(&mut humaneval)
    };
    let mut enc = None;
    let mut embed = |texts: &[String]| -> canon_scale::Result<Vec<Vec<f32>>> {
        if enc.is_none() {
            let e = loader
                .encoder(&a.embed_model)
                .map_err(|e| ScaleError::Msg(crate::chain(&e)))?;
            enc = Some(e);
        }
        let Some(e) = &enc else { return Ok(Vec::new()) };
        (e.embedder.embed(texts, 16)).map_err(|e| ScaleError::Msg(e.to_string()))
    };
    let mut judge = match &a.judge {
        Some(m) => Some(LmJudge::new(loader.lm(m)?, a.judge_chars)?),
        None => None,
    };
    let judge_dyn = judge.as_mut().map(|j| j as &mut dyn Judge);
    Ok(pipeline::run_filter(
        &o, &roots, benchmark, &mut embed, judge_dyn, on,
    )?)
}

/// What `canon_scale::data::synth::run` generates from.
pub struct SynthInputs {
    /// The checked options (--out created).
    pub opts: SynthOpts,
    /// The decontamination set: (task id, prompt + canonical solution).
    pub benchmark: Vec<(String, String)>,
    /// The generating model.
    pub lm: LoadedLm,
}

/// The synthesis run's inputs: its options, HumanEval as the decontamination set, the model.
pub fn synth_inputs(a: &SynthArgs, loader: &Loader) -> Result<SynthInputs> {
    let o = a.opts()?;
    let benchmark = humaneval_pairs(loader.progress()).map_err(|e| crate::RunError::Context {
        msg: "cannot load HumanEval for decontamination".into(),
        source: Box::new(e),
    })?;
    let lm = loader.lm(&a.model)?;
    Ok(SynthInputs {
        opts: o,
        benchmark,
        lm,
    })
}

/// The HumanEval sandbox with `python` and a per-program `timeout` in seconds (the rest its
/// defaults: standard library only); `msg` heads the error when it cannot be set up.
#[allow(clippy::result_large_err)]
fn sandbox(python: &std::path::Path, timeout: f64, msg: &str) -> Result<canon_eval::Sandbox> {
    canon_eval::Sandbox::new(canon_eval::SandboxConfig {
        python: python.to_path_buf(),
        timeout: std::time::Duration::from_secs_f64(timeout),
        ..Default::default()
    })
    .map_err(|e| crate::RunError::Context {
        msg: msg.into(),
        source: Box::new(e),
    })
}

/// `canon data synth`: generates with the model, runs the exercises' tests in the sandbox (unless
/// `--no-verify`), writes the folder's files and returns the report. `on_item` sees each
/// generated item's index.
#[allow(clippy::result_large_err)]
pub fn synth(
    a: &SynthArgs,
    inputs: SynthInputs,
    on_item: &mut dyn FnMut(usize),
) -> Result<serde_json::Value> {
    let SynthInputs {
        opts,
        benchmark,
        lm,
    } = inputs;
    if !opts.verify {
        return Ok(canon_scale::data::synth::run(
            &opts, lm, &benchmark, on_item, None,
        )?);
    }
    let sandbox = sandbox(
        &a.python,
        a.timeout,
        "cannot set up the sandbox (--no-verify keeps exercises without running them)",
    )?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut run = |programs: &[String]| -> canon_scale::Result<Vec<canon_eval::Outcome>> {
        sandbox
            .run_many(programs, jobs, &|_| {})
            .map_err(|e| ScaleError::Msg(format!("sandbox: {e}")))
    };
    let mut report = canon_scale::data::synth::run(&opts, lm, &benchmark, on_item, Some(&mut run))?;
    report["python"] = serde_json::json!(sandbox.interpreter().display().to_string());
    report["timeout_s"] = serde_json::json!(a.timeout);
    Ok(report)
}

/// `canon data exercises`: the held-out exercise set of a filter folder (see
/// `canon_scale::data::exercises`), its programs run in the HumanEval sandbox on `jobs` threads;
/// writes exercises.jsonl, exercises-candidates.jsonl and exercises-report.json into the folder
/// and returns the report. `on_run(done, total)` after each program.
#[allow(clippy::result_large_err)]
pub fn exercises(
    a: &canon_scale::data::opts::ExercisesArgs,
    on_run: &(dyn Fn(usize, usize) + Sync),
) -> Result<serde_json::Value> {
    use canon_scale::data::exercises;
    a.check()?;
    let sandbox = sandbox(&a.python, a.timeout, "cannot set up the sandbox")?;
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let stdlib = python_stdlib_dir()?;
    let site = pipeline::site_packages_dir(&a.site_packages)?;
    let root_of = |o: Origin| -> canon_scale::Result<std::path::PathBuf> {
        Ok(match o {
            Origin::Stdlib => stdlib.clone(),
            Origin::SitePackages => site.clone(),
        })
    };
    let mut run = |programs: &[String]| -> canon_scale::Result<Vec<canon_eval::Outcome>> {
        let done = std::sync::atomic::AtomicUsize::new(0);
        let n = programs.len();
        sandbox
            .run_many(programs, jobs, &|_| {
                on_run(
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                    n,
                )
            })
            .map_err(|e| ScaleError::Msg(format!("sandbox: {e}")))
    };
    let built = exercises::build(
        &a.data,
        &root_of,
        a.held_out_only,
        a.max_prompt_chars,
        a.max,
        a.seed,
        &mut run,
    )?;
    pipeline::write_jsonl(&a.data.join("exercises.jsonl"), &built.exercises)?;
    pipeline::write_jsonl(
        &a.data.join("exercises-candidates.jsonl"),
        &built.candidates,
    )?;
    let mut report = built.report;
    report["python"] = serde_json::json!(sandbox.interpreter().display().to_string());
    report["timeout_s"] = serde_json::json!(a.timeout);
    pipeline::write_text(
        &a.data.join("exercises-report.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}
