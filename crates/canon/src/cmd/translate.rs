//! `canon translate`: English→German with a trained Transformer (paper 1) or T5 (paper 8) run: beam
//! search with the GNMT length penalty, one translation per `--text` or per line of standard input;
//! `--test-bleu` translates the run's held-out test split and reports corpus BLEU (sacreBLEU's
//! definition). A T5 run gets its task prefix (`translate English to German: ` unless `--prefix`
//! says otherwise), so any of its text-to-text tasks can be run. The settings, the test-BLEU run and its report
//! are `canon_runs::translate_opts`.

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use canon_runs::translate_opts::{TranslateArgs, test_bleu};

use crate::Ctx;

pub fn run(a: TranslateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let opts = a.decode_options()?;
    let run = a.open_run()?;
    if a.test_bleu {
        let quiet = ctx.quiet;
        let line = test_bleu(&run, &a.model, &opts, a.limit, &mut |done, total| {
            if !quiet {
                eprint!("\rcanon: translated {done}/{total}");
            }
        })?;
        if !quiet {
            eprintln!();
        }
        println!("{line}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if let Some(t) = &a.text {
        if t.trim().is_empty() {
            bail!("--text is empty");
        }
        let h = run.translate(std::slice::from_ref(t), &opts)?;
        writeln!(out, "{}", h[0])?;
        return Ok(());
    }
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.with_context(|| format!("cannot read standard input line {}", i + 1))?;
        if line.trim().is_empty() {
            writeln!(out)?;
            continue;
        }
        let h = run.translate(std::slice::from_ref(&line), &opts)?;
        writeln!(out, "{}", h[0])?;
        out.flush()?;
    }
    Ok(())
}
