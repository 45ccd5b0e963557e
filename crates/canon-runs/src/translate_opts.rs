//! `canon translate`'s settings (with the `cli` feature also its argument struct, the doc
//! comments being the `--help` text), its decoding options, the run it opens and the test-BLEU
//! run and report.

use std::path::{Path, PathBuf};

use canon_eval::bleu::{Bleu, corpus_bleu};
use canon_infer::seq2seq::DecodeOptions;
use canon_train::translation::load_pairs;
use serde_json::{Value, json};

use crate::dir::write_atomic;
use crate::seq2seq::{MtRun, load_run};
use crate::{Result, bail, err};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon train --config configs/transformer-mt.toml --out runs/mt
  canon translate --model runs/mt --text \"File not found\"
  printf 'Permission denied\\nNo space left on device\\n' | canon translate --model runs/mt
  canon translate --model runs/mt --test-bleu
  canon translate --model runs/t5-multitask --text \"File not found\"
  canon translate --model runs/t5-multitask --prefix \"function name: \" --text \"Return the number of items.\"")
)]
pub struct TranslateArgs {
    /// A Transformer or T5 run folder (model.json, checkpoint.safetensors, tokenizer.json).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub model: PathBuf,
    /// The English text; without it, each line of standard input is translated.
    #[cfg_attr(feature = "cli", arg(long))]
    pub text: Option<String>,
    /// Text put before each input (T5 runs only; default \"translate English to German: \").
    #[cfg_attr(feature = "cli", arg(long))]
    pub prefix: Option<String>,
    /// Beam size (1 = greedy).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub beam: usize,
    /// GNMT length penalty α (0 = none).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.6))]
    pub length_penalty: f64,
    /// Most tokens per translation (default: source length + 50).
    #[cfg_attr(feature = "cli", arg(long))]
    pub max_tokens: Option<usize>,
    /// Translate the run's held-out test split and print corpus BLEU (also written to
    /// DIR/test_bleu.json with the translations in DIR/test_translations.tsv).
    #[cfg_attr(feature = "cli", arg(long, conflicts_with = "text"))]
    pub test_bleu: bool,
    /// With --test-bleu: only the first N test sentences.
    #[cfg_attr(feature = "cli", arg(long, requires = "test_bleu"))]
    pub limit: Option<usize>,
}

impl TranslateArgs {
    /// Beam search's settings (checked), at most source length + 50 tokens by default.
    pub fn decode_options(&self) -> Result<DecodeOptions> {
        let opts = DecodeOptions {
            beam_size: self.beam,
            length_penalty: self.length_penalty,
            extra_len: 50,
            max_tokens: self.max_tokens,
        };
        opts.validate()?;
        Ok(opts)
    }
}

/// The corpus BLEU line `canon translate --test-bleu` prints (sacreBLEU's layout, then the
/// decoding settings and the speed).
pub fn bleu_line(b: &Bleu, sentences: usize, opts: &DecodeOptions, secs: f64) -> String {
    format!(
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
        sentences,
        opts.beam_size,
        opts.length_penalty,
        secs,
        sentences as f64 / secs.max(1e-9)
    )
}

/// `test_bleu.json`: the score, its parts and the decoding settings.
pub fn bleu_json(b: &Bleu, sentences: usize, opts: &DecodeOptions, secs: f64) -> Value {
    json!({
        "bleu": b.score,
        "precisions": b.precisions,
        "brevity_penalty": b.brevity_penalty,
        "sys_len": b.stats.sys_len,
        "ref_len": b.stats.ref_len,
        "sentences": sentences,
        "beam": opts.beam_size,
        "length_penalty": opts.length_penalty,
        "tokenize": "13a",
        "seconds": secs,
    })
}
impl TranslateArgs {
    /// The run in --model, with --prefix checked (a T5 run's task prefix; others take none).
    pub fn open_run(&self) -> Result<MtRun> {
        let mut run = load_run(&self.model)?;
        if let Some(p) = &self.prefix {
            if run.family != "t5" && !p.is_empty() {
                bail!(
                    "--prefix is for T5 runs; {} is a {} run, which takes the English text alone",
                    self.model.display(),
                    run.family
                );
            }
            run.prefix = p.clone();
        }
        Ok(run)
    }
}

/// `--test-bleu`: translates the run's held-out test split (the first `limit` pairs), writes
/// test_bleu.json and test_translations.tsv (source, reference, hypothesis) into `dir`, and gives
/// the BLEU line. `on_done(done, total)` is called after each batch of 32.
pub fn test_bleu(
    run: &MtRun,
    dir: &Path,
    opts: &DecodeOptions,
    limit: Option<usize>,
    on_done: &mut dyn FnMut(usize, usize),
) -> Result<String> {
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
        on_done(i * 32 + chunk.len(), src.len());
    }
    let secs = t0.elapsed().as_secs_f64();
    let b = corpus_bleu(&hyps, &refs).map_err(|e| err!("{e}"))?;
    let line = bleu_line(&b, src.len(), opts, secs);
    let json = bleu_json(&b, src.len(), opts, secs);
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
    write_atomic(&dir.join("test_translations.tsv"), &tsv)?;
    Ok(line)
}
