//! `canon translate`: English→German with a trained Transformer (paper 1) or T5 (paper 8) run: beam
//! search with the GNMT length penalty, one translation per `--text` or per line of standard input;
//! `--test-bleu` translates the run's held-out test split and reports corpus BLEU (sacreBLEU's
//! definition). A T5 run gets its task prefix (`translate English to German: ` unless `--prefix`
//! says otherwise), so any of its text-to-text tasks can be run. The settings and the BLEU report are
//! `canon_runs::translate_opts`.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use canon_eval::bleu::corpus_bleu;
use canon_infer::seq2seq::DecodeOptions;
use canon_runs::seq2seq::{MtRun, load_run};
use canon_runs::translate_opts::{TranslateArgs, bleu_json, bleu_line};
use canon_train::translation::load_pairs;

use super::write_atomic;
use crate::Ctx;

fn test_bleu(
    run: &MtRun,
    dir: &Path,
    opts: &DecodeOptions,
    limit: Option<usize>,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let data = run.test_data(dir)?;
    let mut test = load_pairs(&data)?.test;
    if let Some(n) = limit {
        test.truncate(n);
    }
    let (src, refs): (Vec<String>, Vec<String>) = test.into_iter().unzip();
    let t0 = std::time::Instant::now();
    let mut hyps = Vec::with_capacity(src.len());
    for (i, chunk) in src.chunks(32).enumerate() {
        hyps.extend(run.translate(chunk, opts)?);
        if !ctx.quiet {
            eprint!(
                "\rcanon: translated {}/{}",
                (i * 32 + chunk.len()),
                src.len()
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let b = corpus_bleu(&hyps, &refs).map_err(anyhow::Error::msg)?;
    if !ctx.quiet {
        eprintln!();
    }
    println!("{}", bleu_line(&b, src.len(), opts, secs));
    let json = bleu_json(&b, src.len(), opts, secs);
    let text = serde_json::to_string_pretty(&json)?;
    write_atomic(&dir.join("test_bleu.json"), &text)?;
    let tsv: String = src
        .iter()
        .zip(&refs)
        .zip(&hyps)
        .map(|((s, r), h)| format!("{s}\t{r}\t{h}\n"))
        .collect();
    write_atomic(&dir.join("test_translations.tsv"), &tsv)
}

pub fn run(a: TranslateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let opts = a.decode_options()?;
    let mut run = load_run(&a.model)?;
    if let Some(p) = a.prefix {
        if run.family != "t5" && !p.is_empty() {
            bail!(
                "--prefix is for T5 runs; {} is a {} run, which takes the English text alone",
                a.model.display(),
                run.family
            );
        }
        run.prefix = p;
    }
    if a.test_bleu {
        return test_bleu(&run, &a.model, &opts, a.limit, ctx);
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
