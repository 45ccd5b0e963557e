//! `canon translate`: English→German with a trained Transformer (paper 1) or T5 (paper 8) run: beam
//! search with the GNMT length penalty, one translation per `--text` or per line of standard input;
//! `--test-bleu` translates the run's held-out test split and reports corpus BLEU (sacreBLEU's
//! definition). A T5 run gets its task prefix (`translate English to German: ` unless `--prefix`
//! says otherwise), so any of its text-to-text tasks can be run.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use canon_eval::bleu::corpus_bleu;
use canon_infer::seq2seq::DecodeOptions;
use canon_runs::seq2seq::{MtRun, load_run};
use canon_train::translation::load_pairs;
use clap::Args;

use super::write_atomic;
use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon train --config configs/transformer-mt.toml --out runs/mt
  canon translate --model runs/mt --text \"File not found\"
  printf 'Permission denied\\nNo space left on device\\n' | canon translate --model runs/mt
  canon translate --model runs/mt --test-bleu
  canon translate --model runs/t5-multitask --text \"File not found\"
  canon translate --model runs/t5-multitask --prefix \"function name: \" --text \"Return the number of items.\"")]
pub struct TranslateArgs {
    /// A Transformer or T5 run folder (model.json, checkpoint.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The English text; without it, each line of standard input is translated.
    #[arg(long)]
    pub text: Option<String>,
    /// Text put before each input (T5 runs only; default \"translate English to German: \").
    #[arg(long)]
    pub prefix: Option<String>,
    /// Beam size (1 = greedy).
    #[arg(long, default_value_t = 4)]
    pub beam: usize,
    /// GNMT length penalty α (0 = none).
    #[arg(long, default_value_t = 0.6)]
    pub length_penalty: f64,
    /// Most tokens per translation (default: source length + 50).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Translate the run's held-out test split and print corpus BLEU (also written to
    /// DIR/test_bleu.json with the translations in DIR/test_translations.tsv).
    #[arg(long, conflicts_with = "text")]
    pub test_bleu: bool,
    /// With --test-bleu: only the first N test sentences.
    #[arg(long, requires = "test_bleu")]
    pub limit: Option<usize>,
}

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
    println!(
        "BLEU = {:.2} {:.1}/{:.1}/{:.1}/{:.1} (BP = {:.3}, ratio = {:.3}, hyp_len = {}, ref_len = {}) on {} test sentences, beam {}, α {} ({:.1} s, {:.1} sentences/s)",
        b.score,
        b.precisions[0],
        b.precisions[1],
        b.precisions[2],
        b.precisions[3],
        b.brevity_penalty,
        b.stats.sys_len as f64 / b.stats.ref_len.max(1) as f64,
        b.stats.sys_len,
        b.stats.ref_len,
        src.len(),
        opts.beam_size,
        opts.length_penalty,
        secs,
        src.len() as f64 / secs.max(1e-9)
    );
    let json = serde_json::json!({
        "bleu": b.score,
        "precisions": b.precisions,
        "brevity_penalty": b.brevity_penalty,
        "sys_len": b.stats.sys_len,
        "ref_len": b.stats.ref_len,
        "sentences": src.len(),
        "beam": opts.beam_size,
        "length_penalty": opts.length_penalty,
        "tokenize": "13a",
        "seconds": secs,
    });
    write_atomic(
        &dir.join("test_bleu.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    let tsv: String = src
        .iter()
        .zip(&refs)
        .zip(&hyps)
        .map(|((s, r), h)| format!("{s}\t{r}\t{h}\n"))
        .collect();
    write_atomic(&dir.join("test_translations.tsv"), &tsv)
}

pub fn run(a: TranslateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let opts = DecodeOptions {
        beam_size: a.beam,
        length_penalty: a.length_penalty,
        extra_len: 50,
        max_tokens: a.max_tokens,
    };
    opts.validate()?;
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
