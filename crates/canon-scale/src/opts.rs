//! `canon scale`'s settings (with the `cli` feature also its argument struct, the doc comments
//! being the `--help` text): the ladder configuration and corpus they name, the printed plan,
//! and the redrawing of a finished sweep.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use canon_train::DataConfig;
use canon_train::data::{self, Corpus};

use crate::ladder::{LadderConfig, RungPlan};
use crate::{Result, ScaleError, report, write_atomic};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon scale --config configs/scale.toml --out runs/scale
  canon scale --config configs/scale.toml --out runs/scale     # again: continues where it stopped
  canon scale --out runs/scale --replot                        # redraw scaling.png from report.json
  canon scale --config configs/scale.toml --out runs/scale --plan   # print the runs, train nothing

Files in --out: one run folder per rung (rung-0 ... and target/, each a normal `canon train` run
folder plus result.json), prediction.json (written before target/ is trained), report.md,
report.json and scaling.png (with [scale.capability], also capability.png: the capability law
measured on held-out addition problems).")
)]
pub struct ScaleArgs {
    /// A ladder configuration: [model], [data], [train] and a [scale] table.
    #[cfg_attr(feature = "cli", arg(long, required_unless_present = "replot"))]
    pub config: Option<PathBuf>,
    /// The sweep folder (created, or continued).
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: PathBuf,
    /// Print the planned runs (parameters, tokens, compute) and stop.
    #[cfg_attr(feature = "cli", arg(long))]
    pub plan: bool,
    /// Redraw the plot and report of a finished sweep without training.
    #[cfg_attr(feature = "cli", arg(long, conflicts_with = "plan"))]
    pub replot: bool,
}

/// Gives Python's standard library folder, or the message saying why it cannot.
pub type Stdlib = dyn Fn() -> std::result::Result<PathBuf, String>;

impl ScaleArgs {
    /// The ladder configuration read from --config.
    pub fn ladder(&self) -> Result<LadderConfig> {
        let Some(path) = self.config.as_ref() else {
            return Err(ScaleError::Msg(
                "give --config FILE (a ladder configuration)".into(),
            ));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScaleError::Msg(format!("cannot read config {}: {e}", path.display())))?;
        LadderConfig::parse(&text, &path.display().to_string())
    }

    /// `--replot`: recomputes the analysis of the sweep in --out from its saved runs and
    /// prediction, rewrites report.json, report.md and the plots; gives the Markdown report.
    pub fn replot(&self) -> Result<String> {
        let out = &self.out;
        let old = report::read_sweep(out).map_err(|e| {
            ScaleError::Msg(format!("{} holds no finished sweep: {e}", out.display()))
        })?;
        let r = report::analyse(old.rungs, old.target, old.prediction)?;
        let json = serde_json::to_string_pretty(&r).map_err(|e| ScaleError::Msg(e.to_string()))?;
        write_atomic(&out.join("report.json"), json.as_bytes())?;
        report::plot(&r, &out.join("scaling.png"))?;
        if r.capability.is_some() {
            report::plot_capability(&r, &out.join("capability.png"))?;
        }
        let md = report::markdown(&r);
        write_atomic(&out.join("report.md"), md.as_bytes())?;
        Ok(md)
    }
}

/// The ladder's training corpus: with `[scale.capability]` the task's training problems, else
/// `data.corpus` (`stdlib` gives Python's standard library folder, or why it cannot).
pub fn corpus(cfg: &LadderConfig, stdlib: &Stdlib) -> Result<Corpus> {
    Ok(match &cfg.scale.capability {
        Some(c) => Corpus {
            name: format!(
                "{} (0..={} operands, training problems)",
                c.task, c.max_operand
            ),
            docs: c.task()?.train_docs(),
        },
        None => load_docs(&cfg.data, stdlib)?,
    })
}

/// The documents `data.corpus` names: python-stdlib, python-docs or a text file or folder.
pub fn load_docs(d: &DataConfig, stdlib: &Stdlib) -> Result<Corpus> {
    let stdlib = || stdlib().map_err(ScaleError::Msg);
    Ok(match d.corpus.as_str() {
        "python-stdlib" => data::python_stdlib(&stdlib()?, d.max_bytes)?,
        "python-docs" => data::python_docs(&stdlib()?, d.max_bytes)?,
        p => data::text_path(Path::new(p), d.max_bytes)
            .map_err(|e| ScaleError::Msg(format!("data.corpus = '{p}': {e}")))?,
    })
}

/// `--plan`: the runs (parameters, steps, tokens, compute) as a Markdown table and the ladder's
/// compute span.
pub fn plan_table(rungs: &[RungPlan], target: &RungPlan) -> String {
    let mut s =
        "| run | parameters | steps | tokens | compute (FLOPs) |\n|---|---:|---:|---:|---:|\n"
            .to_string();
    for p in rungs.iter().chain(std::iter::once(target)) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3e} |",
            p.name, p.params, p.steps, p.tokens, p.compute
        );
    }
    let largest = rungs.last().map_or(1.0, |p| p.compute);
    let smallest = rungs.first().map_or(1.0, |p| p.compute);
    let _ = writeln!(
        s,
        "\nladder spans {:.0}× compute; the target is {:.1}× the largest rung",
        largest / smallest,
        target.compute / largest
    );
    s
}
