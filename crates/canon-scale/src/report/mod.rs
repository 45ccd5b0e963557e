//! The sweep: train the ladder, fit, predict the target and save the prediction before the target
//! is trained, train the target, then report the error, how the error shrinks with more ladder
//! points, and the scaling plot.
//!
//! Files in the sweep folder: `tokenizer.json` (shared by every run), `plan.json`, one run folder
//! per rung and `target/`, `prediction.json` (written before `target/` is created),
//! `report.json`, `report.md` and `scaling.png`.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use canon_train::{StepReport, TokenData, data};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::fit::{Law, Prediction, fit, predict_from_smaller};
use crate::ladder::{LadderConfig, RungPlan, RungResult, rung_dir, train_rung};
use crate::{Result, ScaleError, io_err, write_atomic};

mod plot;
pub use plot::{plot, plot_capability};

/// What a sweep reports as it goes.
pub trait Progress {
    /// A run starts (or resumes): its plan, its index and the number of runs.
    fn run_start(&mut self, plan: &RungPlan, index: usize, total: usize);
    fn step(&mut self, r: &StepReport);
    fn run_done(&mut self, r: &RungResult);
    fn note(&mut self, line: &str);
}

/// The prediction saved before the target is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPrediction {
    pub fitted_rungs: Vec<String>,
    pub law: crate::fit::Fit,
    pub prediction: Prediction,
    /// Target compute / largest fitted compute.
    pub compute_ratio: f64,
    /// The capability law's prediction of the target's `−E[log pass rate]`, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<CapabilityPrediction>,
}

/// The capability law `−E[log pass rate] = α·C^(−k)` fitted on the ladder and its prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityPrediction {
    pub law: crate::fit::Fit,
    pub prediction: Prediction,
}

/// The capability prediction against the measured target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityReport {
    pub measured: f64,
    pub relative_error: f64,
    pub inside_delta_interval: Option<bool>,
    pub inside_bootstrap_interval: Option<bool>,
    /// Predictions from the smallest k runs, k = 3 … all.
    pub by_points: Vec<ErrorRow>,
    /// Predictions from the largest k runs, k = 3 … all but one (the smallest runs left out).
    #[serde(default)]
    pub by_largest: Vec<ErrorRow>,
}

/// The error of a prediction made from `rungs` runs (the smallest ones in `by_points`, the
/// largest ones in `by_largest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRow {
    pub rungs: usize,
    pub compute_ratio: f64,
    pub predicted: f64,
    pub interval: Option<(f64, f64)>,
    pub relative_error: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub rungs: Vec<RungResult>,
    pub target: RungResult,
    pub prediction: SavedPrediction,
    pub relative_error: f64,
    pub inside_delta_interval: Option<bool>,
    pub inside_bootstrap_interval: Option<bool>,
    /// Predictions from the smallest k runs, k = 3 … all.
    pub by_points: Vec<ErrorRow>,
    /// Predictions from the largest k runs, k = 3 … all but one (the smallest runs left out).
    #[serde(default)]
    pub by_largest: Vec<ErrorRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<CapabilityReport>,
}

/// How a sweep ended.
#[derive(Debug)]
pub enum SweepOutcome {
    Done(Box<SweepReport>),
    Interrupted,
}

fn load_or_train_tokenizer(cfg: &LadderConfig, docs: &[String], out: &Path) -> Result<Tokenizer> {
    let p = out.join("tokenizer.json");
    if p.is_file() {
        return Tokenizer::from_file(&p).map_err(|e| io_err(&p, e));
    }
    let t = data::train_tokenizer(cfg.data.tokenizer, docs, cfg.data.vocab_size)?;
    let text = t.to_string(false).map_err(|e| io_err(&p, e))?;
    crate::write_atomic(&p, text.as_bytes())?;
    Ok(t)
}

fn to_json<T: Serialize>(v: &T, path: &Path) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| io_err(path, e))?;
    write_atomic(path, s.as_bytes())
}

/// Runs (or continues) the sweep in `out` on the documents `docs`.
pub fn run_sweep(
    cfg: &LadderConfig,
    docs: &[String],
    out: &Path,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
) -> Result<SweepOutcome> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let tok = load_or_train_tokenizer(cfg, docs, out)?;
    let data = TokenData::encode(&tok, docs, cfg.data.val_fraction)?;
    progress.note(&format!(
        "tokens: {} train, {} held out, vocabulary {}",
        data.train.len(),
        data.val.len(),
        data.vocab_size
    ));
    let task = cfg
        .scale
        .capability
        .as_ref()
        .map(|c| c.task())
        .transpose()?;
    let (plans, target) = cfg.plan(data.vocab_size)?;
    let mut all = plans.clone();
    all.push(target.clone());
    to_json(&all, &out.join("plan.json"))?;
    let total = all.len();
    let mut results = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        progress.run_start(p, i, total);
        let dir = rung_dir(out, p);
        match train_rung(
            p,
            &tok,
            &data,
            cfg.scale.final_eval_batches,
            task.as_ref(),
            &dir,
            stop,
            &mut |r| progress.step(r),
        )? {
            Some(r) => {
                progress.run_done(&r);
                results.push(r);
            }
            None => return Ok(SweepOutcome::Interrupted),
        }
    }
    // The prediction, made and saved before the target run exists.
    let pred_path = out.join("prediction.json");
    let saved: SavedPrediction = if pred_path.is_file() {
        let text = std::fs::read_to_string(&pred_path).map_err(|e| io_err(&pred_path, e))?;
        serde_json::from_str(&text).map_err(|e| io_err(&pred_path, e))?
    } else {
        if rung_dir(out, &target).exists() {
            return Err(ScaleError::Data(format!(
                "{} exists but {} does not: the prediction would no longer be made before the \
                 target run; remove the target folder to predict again",
                rung_dir(out, &target).display(),
                pred_path.display()
            )));
        }
        let pts: Vec<(f64, f64)> = results.iter().map(|r| (r.compute, r.final_loss)).collect();
        let (law, prediction) = predict_from_smaller(
            &pts,
            Law::PowerPlusConstant,
            target.compute,
            cfg.scale.max_fit_fraction,
            cfg.scale.bootstrap,
            0x5ca1e,
        )?;
        let largest = pts.iter().map(|p| p.0).fold(0.0, f64::max);
        let capability = match capability_points(&results)? {
            Some(cp) => {
                let (law, prediction) = predict_from_smaller(
                    &cp,
                    Law::Power,
                    target.compute,
                    cfg.scale.max_fit_fraction,
                    cfg.scale.bootstrap,
                    0xca9,
                )?;
                Some(CapabilityPrediction { law, prediction })
            }
            None => None,
        };
        let s = SavedPrediction {
            fitted_rungs: results.iter().map(|r| r.name.clone()).collect(),
            law,
            prediction,
            compute_ratio: target.compute / largest,
            capability,
        };
        to_json(&s, &pred_path)?;
        s
    };
    progress.note(&format!(
        "predicted final loss of the target ({:.3e} FLOPs, {:.1}× the largest rung): {:.4}",
        target.compute, saved.compute_ratio, saved.prediction.value
    ));
    if let Some(c) = &saved.capability {
        progress.note(&format!(
            "predicted −E[log pass rate] of the target: {:.4}",
            c.prediction.value
        ));
    }
    progress.run_start(&target, total - 1, total);
    let tdir = rung_dir(out, &target);
    let Some(tres) = train_rung(
        &target,
        &tok,
        &data,
        cfg.scale.final_eval_batches,
        task.as_ref(),
        &tdir,
        stop,
        &mut |r| progress.step(r),
    )?
    else {
        return Ok(SweepOutcome::Interrupted);
    };
    progress.run_done(&tres);
    let report = analyse(results, tres, saved)?;
    to_json(&report, &out.join("report.json"))?;
    write_atomic(&out.join("report.md"), markdown(&report).as_bytes())?;
    plot(&report, &out.join("scaling.png"))?;
    if report.capability.is_some() {
        plot_capability(&report, &out.join("capability.png"))?;
    }
    Ok(SweepOutcome::Done(Box::new(report)))
}

/// The ladder's `(compute, −E[log pass rate])` points: `None` when no run measured a capability,
/// an error when only some did.
pub fn capability_points(rungs: &[RungResult]) -> Result<Option<Vec<(f64, f64)>>> {
    let have = rungs.iter().filter(|r| r.capability.is_some()).count();
    if have == 0 {
        return Ok(None);
    }
    if have < rungs.len() {
        return Err(ScaleError::Data(format!(
            "{have} of {} ladder runs measured the capability; remove the other runs' result.json to measure it on every run",
            rungs.len()
        )));
    }
    Ok(Some(
        rungs
            .iter()
            .filter_map(|r| {
                r.capability
                    .as_ref()
                    .map(|c| (r.compute, c.neg_mean_log_pass_rate))
            })
            .collect(),
    ))
}

/// Re-reads a finished sweep's runs (for re-plotting without training).
pub fn read_sweep(out: &Path) -> Result<SweepReport> {
    let p = out.join("report.json");
    let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
    serde_json::from_str(&text).map_err(|e| io_err(&p, e))
}

/// The error of the saved prediction and of predictions from fewer rungs.
pub fn analyse(
    rungs: Vec<RungResult>,
    target: RungResult,
    prediction: SavedPrediction,
) -> Result<SweepReport> {
    let measured = target.final_loss;
    let rel = |p: f64| (p - measured).abs() / measured;
    let inside = |iv: Option<(f64, f64)>| iv.map(|(lo, hi)| lo <= measured && measured <= hi);
    let pts: Vec<(f64, f64)> = rungs.iter().map(|r| (r.compute, r.final_loss)).collect();
    let (by_points, by_largest) =
        error_rows(&pts, Law::PowerPlusConstant, target.compute, measured)?;
    let capability = match (&prediction.capability, &target.capability) {
        (Some(cp), Some(tc)) => {
            let measured = tc.neg_mean_log_pass_rate;
            let rel = |p: f64| (p - measured).abs() / measured;
            let inside =
                |iv: Option<(f64, f64)>| iv.map(|(lo, hi)| lo <= measured && measured <= hi);
            let (by_points, by_largest) = match capability_points(&rungs)? {
                Some(cpts) => error_rows(&cpts, Law::Power, target.compute, measured)?,
                None => (Vec::new(), Vec::new()),
            };
            Some(CapabilityReport {
                measured,
                relative_error: rel(cp.prediction.value),
                inside_delta_interval: inside(cp.prediction.delta_interval),
                inside_bootstrap_interval: inside(cp.prediction.bootstrap_interval),
                by_points,
                by_largest,
            })
        }
        _ => None,
    };
    Ok(SweepReport {
        capability,
        relative_error: rel(prediction.prediction.value),
        inside_delta_interval: inside(prediction.prediction.delta_interval),
        inside_bootstrap_interval: inside(prediction.prediction.bootstrap_interval),
        rungs,
        target,
        prediction,
        by_points,
        by_largest,
    })
}

/// Predictions of the target at `target_compute` from subsets of the ladder `pts` (smallest
/// first), against `measured`: from the smallest k points, k = 3 … all, and from the largest k,
/// k = 3 … all but one. With as many points as the law has parameters there is no residual to
/// estimate the noise from (and a bootstrap of so few runs rarely draws distinct ones), so only
/// the Jacobian interval, where the fit gives one.
fn error_rows(
    pts: &[(f64, f64)],
    law: Law,
    target_compute: f64,
    measured: f64,
) -> Result<(Vec<ErrorRow>, Vec<ErrorRow>)> {
    let row = |sub: &[(f64, f64)]| -> Result<ErrorRow> {
        let f = fit(sub, law)?;
        let v = f.predict(target_compute);
        Ok(ErrorRow {
            rungs: sub.len(),
            compute_ratio: target_compute / sub[sub.len() - 1].0,
            predicted: v,
            interval: f.delta_interval(target_compute),
            relative_error: (v - measured).abs() / measured,
        })
    };
    let n = pts.len();
    let smallest = (3..=n).map(|k| row(&pts[..k])).collect::<Result<_>>()?;
    let largest = (3..n).map(|k| row(&pts[n - k..])).collect::<Result<_>>()?;
    Ok((smallest, largest))
}

fn fmt_iv(iv: Option<(f64, f64)>) -> String {
    iv.map_or("-".into(), |(lo, hi)| format!("[{lo:.4}, {hi:.4}]"))
}

/// The predictions from subsets of the ladder as a Markdown table: the smallest k runs, then
/// (when there are any) the largest k.
fn subset_tables(smallest: &[ErrorRow], largest: &[ErrorRow]) -> String {
    let mut s = String::from(
        "\n| fitted runs | target / largest fitted compute | predicted | 95% interval | relative error |\n|---|---:|---:|---|---:|\n",
    );
    let rows = smallest
        .iter()
        .map(|e| ("smallest", e))
        .chain(largest.iter().map(|e| ("largest", e)));
    for (which, e) in rows {
        s += &format!(
            "| {} {} | {:.0}× | {:.4} | {} | {:.2}% |\n",
            which,
            e.rungs,
            e.compute_ratio,
            e.predicted,
            fmt_iv(e.interval),
            100.0 * e.relative_error
        );
    }
    s
}

/// The report as Markdown tables.
pub fn markdown(r: &SweepReport) -> String {
    let mut s = String::from(
        "| run | parameters | tokens | compute (FLOPs) | final held-out loss | seconds |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for x in r.rungs.iter().chain(std::iter::once(&r.target)) {
        s += &format!(
            "| {} | {} | {} | {:.3e} | {:.4} | {:.0} |\n",
            x.name, x.params, x.tokens, x.compute, x.final_loss, x.seconds
        );
    }
    let p = &r.prediction;
    let l = &p.law.params;
    s += &format!(
        "\nFit on {} runs: L(C) = {:.4e} · C^{:.4} + {:.4}",
        p.fitted_rungs.len(),
        l.a,
        l.b,
        l.c
    );
    if let Some(se) = p.law.std_err {
        s += &format!(" (standard errors: b ± {:.4}, c ± {:.4})", se[1], se[2]);
    }
    s += &format!(
        "\n\nTarget ({:.1}× the largest fitted compute): predicted {:.4}, 95% interval {} (Jacobian) / {} (bootstrap, {} fits); measured {:.4}; relative error {:.2}%.\n",
        p.compute_ratio,
        p.prediction.value,
        fmt_iv(p.prediction.delta_interval),
        fmt_iv(p.prediction.bootstrap_interval),
        p.prediction.bootstrap_fits,
        r.target.final_loss,
        100.0 * r.relative_error
    );
    s += &subset_tables(&r.by_points, &r.by_largest);
    if let (Some(cr), Some(cp)) = (&r.capability, &r.prediction.capability) {
        s += "\nCapability (held-out answer-only additions; pass rate = P(answer) under sampling, greedy = greedy decoding exact):\n\n| run | compute (FLOPs) | −E[log pass rate] | mean pass rate | greedy pass rate |\n|---|---:|---:|---:|---:|\n";
        for x in r.rungs.iter().chain(std::iter::once(&r.target)) {
            if let Some(c) = &x.capability {
                s += &format!(
                    "| {} | {:.3e} | {:.4} | {:.4} | {:.3} |\n",
                    x.name,
                    x.compute,
                    c.neg_mean_log_pass_rate,
                    c.mean_pass_rate,
                    c.greedy_pass_rate
                );
            }
        }
        let l = &cp.law.params;
        s += &format!(
            "\nFit on {} runs: −E[log pass rate] = {:.4e} · C^{:.4}; target predicted {:.4}, 95% interval {} (Jacobian) / {} (bootstrap); measured {:.4}; relative error {:.2}%.\n",
            r.rungs.len(),
            l.a,
            l.b,
            cp.prediction.value,
            fmt_iv(cp.prediction.delta_interval),
            fmt_iv(cp.prediction.bootstrap_interval),
            cr.measured,
            100.0 * cr.relative_error
        );
        s += &subset_tables(&cr.by_points, &cr.by_largest);
    }
    s
}

#[cfg(test)]
mod tests;
