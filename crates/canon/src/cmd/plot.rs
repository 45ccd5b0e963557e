//! `canon plot`: one metric of one or more runs on one figure (a change against its baseline), or
//! any two keys of a JSON-lines table, to PNG or SVG.

use anyhow::Context;
pub use canon_runs::plot_opts::PlotArgs;

use crate::Ctx;

pub fn run(a: PlotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let command = footnote_command();
    let (fig, what) = a.figure()?;
    let report = fig
        .footnote(&command)
        .save(&a.out)
        .with_context(|| format!("cannot write the figure {}", a.out.display()))?;
    if !ctx.quiet {
        eprint!("wrote {} from {what}", a.out.display());
        if report.skipped > 0 {
            eprint!(
                " ({} points not drawn: not finite or ≤ 0 on a log axis)",
                report.skipped
            );
        }
        eprintln!();
    }
    Ok(())
}

/// "canon plot ARGS…" as typed, for the figure's footnote.
fn footnote_command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("canon {}", args.join(" "))
}
