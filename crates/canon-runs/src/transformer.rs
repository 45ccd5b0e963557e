//! Paper 1's Transformer (`family = "transformer"`): English→German from the gettext catalogs.
//!
//! The config has `[model]` (a `TransformerConfig`), `[data]` (a `TranslationDataConfig`: which
//! catalogs, vocabulary, split fractions), `[train]` (the shared `TrainConfig`; `block_size` is the
//! longest source or target kept, in tokens) and an optional `[translation]` table (label smoothing,
//! the BLEU check during evaluation). The run folder gets `tokenizer.json` (shared BPE) and
//! `model.json` (the model config with the tokenizer's vocabulary size and special ids).

use std::path::Path;

use canon_infer::seq2seq::{DecodeOptions, translate_ids};
use canon_models::source::Detached;
use canon_models::transformer::{Transformer, TransformerConfig};
use canon_models::{Seq2SeqLm, VarStore};
use canon_nn::SplitMix64;
use canon_train::TrainConfig;
use canon_train::engine::{BatchLoss, Engine, Objective};
use canon_train::translation::{
    Batch, Encoded, LengthBuckets, TranslationDataConfig, batch_loss, check_specials, encode_pairs,
    load_pairs, make_batch, train_shared_bpe,
};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Context, FamilySetup, Report, Result, RunDir, bail, chain, err};

fn d_ls() -> f64 {
    0.1
}
fn d_bleu() -> usize {
    100
}

/// The `[translation]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtOptions {
    /// ε_ls of the label-smoothed cross-entropy (the paper: 0.1).
    #[serde(default = "d_ls")]
    pub label_smoothing: f64,
    /// Validation sentences translated (greedy) for `eval_bleu` at each evaluation; 0 = none.
    #[serde(default = "d_bleu")]
    pub eval_bleu_sentences: usize,
}

impl Default for MtOptions {
    fn default() -> Self {
        Self {
            label_smoothing: d_ls(),
            eval_bleu_sentences: d_bleu(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtRunConfig {
    pub model: TransformerConfig,
    pub data: TranslationDataConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub translation: MtOptions,
}

/// Reads and checks the whole config (`path` names it in errors).
pub fn parse(config: &toml::Value, path: &Path) -> Result<MtRunConfig> {
    let f = path.display();
    let cfg: MtRunConfig = config
        .clone()
        .try_into()
        .with_context(|| format!("invalid config {f}"))?;
    cfg.data.validate().map_err(|m| err!("{f}: {m}"))?;
    cfg.train.validate().map_err(|m| err!("{f}: {m}"))?;
    let ls = cfg.translation.label_smoothing;
    if !(0.0..1.0).contains(&ls) {
        bail!("{f}: translation.label_smoothing must be in [0, 1), found {ls}");
    }
    if cfg.train.block_size > cfg.model.max_seq_len {
        bail!(
            "{f}: train.block_size ({}) exceeds model.max_seq_len ({})",
            cfg.train.block_size,
            cfg.model.max_seq_len
        );
    }
    Ok(cfg)
}

/// The training objective: label-smoothed cross-entropy on length-bucketed batches; evaluation is
/// the plain cross-entropy on the validation split plus greedy BLEU on some of its sentences.
pub struct MtObjective {
    pub model: Transformer,
    /// The trained variables, for a detached inference copy of the model when BLEU is measured.
    store: VarStore,
    train: LengthBuckets,
    valid: Vec<Batch>,
    bleu_src: Vec<Vec<u32>>,
    bleu_ref: Vec<String>,
    tok: Tokenizer,
    batch_size: usize,
    label_smoothing: f64,
}

impl MtObjective {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Transformer,
        store: VarStore,
        tok: Tokenizer,
        train: Vec<Encoded>,
        valid: Vec<Encoded>,
        valid_refs: Vec<String>,
        batch_size: usize,
        eval_batches: usize,
        opts: &MtOptions,
    ) -> Result<Self> {
        if train.is_empty() || valid.is_empty() {
            bail!("translation: the training and validation splits must not be empty");
        }
        let (pad, bos) = (model.config.pad_id, model.config.bos_id);
        // Every validation pair up to eval_batches·batch_size, spread over the length order.
        let vb = LengthBuckets::new(valid.clone());
        let all: Vec<Vec<&Encoded>> = vb.chunks(batch_size).collect();
        let stride = all.len().div_ceil(eval_batches.max(1)).max(1);
        let valid_batches = all
            .iter()
            .step_by(stride)
            .map(|c| make_batch(c, pad, bos))
            .collect::<canon_train::Result<Vec<_>>>()?;
        let n = opts.eval_bleu_sentences.min(valid.len());
        let step = valid.len().checked_div(n).unwrap_or(1);
        let picks: Vec<usize> = (0..n).map(|i| i * step.max(1)).collect();
        Ok(Self {
            train: LengthBuckets::new(train),
            valid: valid_batches,
            bleu_src: picks.iter().map(|&i| valid[i].src.clone()).collect(),
            bleu_ref: picks.iter().map(|&i| valid_refs[i].clone()).collect(),
            model,
            store,
            tok,
            batch_size,
            label_smoothing: opts.label_smoothing,
        })
    }
}

/// Translates encoded sources into text.
pub fn translate_encoded(
    model: &dyn Seq2SeqLm,
    pad: u32,
    tok: &Tokenizer,
    srcs: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<Vec<String>> {
    let hyps = translate_ids(model, srcs, pad, opts)?;
    hyps.iter()
        .map(|h| {
            tok.decode(&h.tokens, true)
                .map(|s| s.trim().to_string())
                .map_err(|e| err!("cannot decode a translation: {e}"))
        })
        .collect()
}

impl Objective for MtObjective {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> canon_train::Result<BatchLoss> {
        let items = self.train.sample(rng, self.batch_size);
        let batch = make_batch(&items, self.model.config.pad_id, self.model.config.bos_id)?;
        self.model.set_noise(Some(rng.next_u64()));
        let out = batch_loss(&self.model, &batch, self.label_smoothing);
        self.model.set_noise(None);
        let (total, ce, _) = out?;
        let smoothed = total.to_scalar::<f32>()? as f64;
        Ok(BatchLoss {
            total,
            loss: ce,
            tokens: batch.tokens,
            extra: vec![("smoothed_loss".into(), smoothed)],
        })
    }

    fn evaluate(&mut self) -> canon_train::Result<Vec<(String, f64)>> {
        let (mut sum, mut n) = (0.0, 0usize);
        for b in &self.valid {
            let (_, ce, k) = batch_loss(&self.model, b, 0.0)?;
            sum += ce * k as f64;
            n += k;
        }
        let mut out = vec![("eval_loss".to_string(), sum / n.max(1) as f64)];
        if !self.bleu_src.is_empty() {
            let opts = DecodeOptions {
                beam_size: 1,
                ..DecodeOptions::default()
            };
            // Greedy decoding through detached weights (no autograd graph over the steps).
            let model = Transformer::load(self.model.config.clone(), &Detached(&self.store))?;
            let hyps = translate_encoded(
                &model,
                self.model.config.pad_id,
                &self.tok,
                &self.bleu_src,
                &opts,
            )
            .map_err(|e| canon_train::TrainError::Data(chain(&e)))?;
            let b = canon_eval::bleu::corpus_bleu(&hyps, &self.bleu_ref)
                .map_err(canon_train::TrainError::Data)?;
            out.push(("eval_bleu".into(), b.score));
        }
        Ok(out)
    }
}

/// Builds everything `canon train` needs for a Transformer run (see the module header).
pub fn setup(
    mut cfg: MtRunConfig,
    file: &Path,
    dir: &RunDir,
    resuming: bool,
    report: Report,
) -> Result<FamilySetup> {
    let say = |s: String| report.say(s);
    let corpus = load_pairs(&cfg.data)?;
    say(format!(
        "{} catalogs in {}: {} sentence pairs (train {}, valid {}, test {})",
        corpus.catalogs.len(),
        cfg.data.catalog_dir().display(),
        corpus.len(),
        corpus.train.len(),
        corpus.valid.len(),
        corpus.test.len()
    ));
    let tok = if resuming {
        dir.read_tokenizer()?
    } else {
        let t = train_shared_bpe(&corpus.train, cfg.data.vocab_size)?;
        dir.write_tokenizer(&t)?;
        t
    };
    let (pad, bos, eos) = check_specials(&tok)?;
    cfg.model.vocab_size = tok.get_vocab_size(true);
    (cfg.model.pad_id, cfg.model.bos_id, cfg.model.eos_id) = (pad, bos, eos);
    cfg.model
        .validate()
        .map_err(|m| err!("{}: {m}", file.display()))?;
    let max_len = cfg.train.block_size;
    let (train, dropped) = encode_pairs(&tok, &corpus.train, max_len)?;
    let (valid_all, _) = encode_pairs(&tok, &corpus.valid, usize::MAX)?;
    // Validation keeps only what fits, with its reference text aligned.
    let (valid, valid_refs): (Vec<Encoded>, Vec<String>) = valid_all
        .into_iter()
        .zip(corpus.valid.iter().map(|p| p.1.clone()))
        .filter(|(e, _)| e.src.len() <= max_len && e.tgt.len() <= max_len)
        .unzip();
    say(format!(
        "shared BPE vocabulary {}; {} training pairs ({} longer than {max_len} tokens dropped)",
        cfg.model.vocab_size,
        train.len(),
        dropped
    ));
    dir.write_model_json(&cfg.model)?;
    let store = VarStore::new_random(cfg.train.seed, cfg.model.init_policy());
    let model = Transformer::load(cfg.model.clone(), &store)?;
    let params = Engine::params_of(&store);
    let obj = MtObjective::new(
        model,
        store,
        tok,
        train,
        valid,
        valid_refs,
        cfg.train.batch_size,
        cfg.train.eval_batches,
        &cfg.translation,
    )?;
    Ok((params, cfg.train, Box::new(obj)))
}
