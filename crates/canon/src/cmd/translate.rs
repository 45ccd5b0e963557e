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
use canon_models::Seq2SeqLm;
use canon_models::VarStore;
use canon_models::family::{
    CHECKPOINT_PARAM_PREFIX, RUN_CHECKPOINT_FILE, RUN_MODEL_FILE, RUN_TOKENIZER_FILE,
};
use canon_models::source::Detached;
use canon_models::t5::T5;
use canon_models::transformer::{Transformer, TransformerConfig};
use canon_train::t5_train::tasks::EN_DE_PREFIX;
use canon_train::translation::TranslationDataConfig;
use canon_train::translation::load_pairs;
use clap::Args;
use tokenizers::Tokenizer;

use super::train_t5::{en_de_catalogs, read_model_json};
use super::train_transformer::{read_mt_config, translate_encoded};
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

/// A trained sequence-to-sequence run: a Transformer (paper 1) or a T5 (paper 8) run folder.
pub struct MtRun {
    pub model: Box<dyn Seq2SeqLm>,
    pub tok: Tokenizer,
    pub family: &'static str,
    pad: u32,
    eos: u32,
    max_len: usize,
    /// Text put before every source (T5's task prefix; empty for the Transformer).
    pub prefix: String,
}

pub fn load_run(dir: &Path) -> anyhow::Result<MtRun> {
    let mpath = dir.join(RUN_MODEL_FILE);
    let text = std::fs::read_to_string(&mpath)
        .with_context(|| format!("{} is not a run folder", dir.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", mpath.display()))?;
    let ckpt = dir.join(RUN_CHECKPOINT_FILE);
    let (model, family, pad, eos, max_len, prefix): (Box<dyn Seq2SeqLm>, _, _, _, _, _) = match v
        .get("family")
        .and_then(|f| f.as_str())
    {
        Some("t5") => {
            let cfg = read_model_json(dir)?;
            let store =
                VarStore::from_safetensors(&ckpt, CHECKPOINT_PARAM_PREFIX, cfg.init_policy())?;
            let (pad, eos, max) = (cfg.pad_id, cfg.eos_id, cfg.max_seq_len);
            let m = T5::load(cfg, &Detached(&store))?;
            (Box::new(m), "t5", pad, eos, max, EN_DE_PREFIX.to_string())
        }
        Some("transformer") | None => {
            let cfg: TransformerConfig = serde_json::from_value(v).with_context(|| {
                format!(
                    "{}: not a Transformer (family = \"transformer\") model",
                    mpath.display()
                )
            })?;
            let store =
                VarStore::from_safetensors(&ckpt, CHECKPOINT_PARAM_PREFIX, cfg.init_policy())?;
            let (pad, eos, max) = (cfg.pad_id, cfg.eos_id, cfg.max_seq_len);
            let m = Transformer::load(cfg, &Detached(&store))?;
            (Box::new(m), "transformer", pad, eos, max, String::new())
        }
        Some(other) => bail!(
            "{}: family \"{other}\" is not a sequence-to-sequence model; expected \"transformer\" or \"t5\"",
            mpath.display()
        ),
    };
    let tpath = dir.join(RUN_TOKENIZER_FILE);
    let tok = Tokenizer::from_file(&tpath)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", tpath.display()))?;
    Ok(MtRun {
        model,
        tok,
        family,
        pad,
        eos,
        max_len,
        prefix,
    })
}

impl MtRun {
    /// Source ids: the prefix and the text (whitespace squashed as the training data was) +
    /// `</s>`, cut to the position table.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let clean = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let full = format!("{}{clean}", self.prefix);
        let mut ids = self
            .tok
            .encode(full.as_str(), false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize the input: {e}"))?
            .get_ids()
            .to_vec();
        ids.truncate(self.max_len - 1);
        ids.push(self.eos);
        Ok(ids)
    }

    pub fn translate(&self, texts: &[String], opts: &DecodeOptions) -> anyhow::Result<Vec<String>> {
        let srcs = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        translate_encoded(self.model.as_ref(), self.pad, &self.tok, &srcs, opts)
    }

    /// The catalogs and split the run's test sentences come from.
    fn test_data(&self, dir: &Path) -> anyhow::Result<TranslationDataConfig> {
        let cpath = dir.join("config.toml");
        let text = std::fs::read_to_string(&cpath)
            .with_context(|| format!("cannot read {}", cpath.display()))?;
        let value: toml::Value =
            toml::from_str(&text).with_context(|| format!("invalid config {}", cpath.display()))?;
        if self.family == "t5" {
            let locale = value
                .get("t5")
                .and_then(|t| t.get("locale_dir"))
                .and_then(|l| l.as_str())
                .unwrap_or("/usr/share/locale");
            return Ok(en_de_catalogs(locale));
        }
        Ok(read_mt_config(&value, &cpath)?.data)
    }
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
