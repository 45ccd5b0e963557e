//! BERT (paper 3, `[model] family = "bert"`): a WordPiece vocabulary trained on a corpus of this
//! machine, then masked LM + next-sentence prediction; or, with `init = "minilm"` (or an HF BERT
//! folder / BERT run folder), the pretrained encoder with its vocabulary, whose missing heads
//! (MiniLM has no MLM head) start fresh — the MLM decoder tied to its word embeddings.
//!
//! ```toml
//! [model]
//! family = "bert"
//! n_layer = 4          # with n_head, d_model, d_ff, max_seq_len; or: init = "minilm"
//! nsp = true           # sentence pairs + NSP head (default); false: single segments, MLM only
//! [data]
//! corpus = "python-docs"   # python-docstrings, python-stdlib (code), or a text file/folder
//! vocab_size = 8000        # WordPiece vocabulary (ignored with init)
//! [train]                  # canon_train::TrainConfig; block_size = longest example
//! ```

use std::path::Path;

use canon_models::VarStore;
use canon_models::bert_heads::{BertPretraining, BertTrainConfig, bert_init_policy, copy_into};
use canon_train::TrainConfig;
use canon_train::bert_data::{self, PairConfig, SentenceData, Specials};
use canon_train::bert_pretrain::{BertPretrain, BertRunModel, open_pretrained};
use canon_train::engine::Engine;
use canon_train::objectives::mlm::MlmConfig;
use serde::{Deserialize, Serialize};

use crate::config::required_table;
use crate::{
    Context, FamilySetup, Report, Result, RunDir, bail, err, model_dir, python_stdlib_dir,
};

fn d_true() -> bool {
    true
}
fn d_vocab() -> usize {
    8000
}
fn d_max_bytes() -> usize {
    4_000_000
}
fn d_val() -> f64 {
    0.05
}
fn d_short() -> f64 {
    0.1
}

/// The `[model]` table of the BERT family.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertModelTable {
    pub family: String,
    #[serde(default = "d_true")]
    pub nsp: bool,
    /// `minilm`, an HF BERT folder or a BERT run folder to start from.
    #[serde(default)]
    pub init: Option<String>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub d_model: Option<usize>,
    pub d_ff: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub init_std: Option<f64>,
}

/// The `[data]` table of the BERT family (and DistilBERT).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataTable {
    pub corpus: String,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_max_bytes")]
    pub max_bytes: usize,
    #[serde(default = "d_val")]
    pub val_fraction: f64,
    #[serde(default = "d_short")]
    pub short_seq_prob: f64,
}

/// Reads the corpus of `[data]` and cuts its documents into tokenized sentences.
pub fn sentence_data(
    d: &DataTable,
    tok: &tokenizers::Tokenizer,
    corpus: &canon_train::data::Corpus,
    path: &Path,
) -> Result<SentenceData> {
    if !(d.val_fraction > 0.0 && d.val_fraction < 0.5) {
        bail!(
            "{}: data.val_fraction must be in (0, 0.5), found {}",
            path.display(),
            d.val_fraction
        );
    }
    Ok(SentenceData::encode(tok, corpus, d.val_fraction)?)
}

pub fn load_corpus(d: &DataTable, path: &Path) -> Result<canon_train::data::Corpus> {
    bert_data::load_corpus(
        &d.corpus,
        || python_stdlib_dir().map_err(|e| canon_train::TrainError::Data(e.to_string())),
        d.max_bytes,
    )
    .with_context(|| format!("{}: data.corpus = '{}'", path.display(), d.corpus))
}

/// The typed sections of a BERT run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BertRunConfig {
    pub model: BertModelTable,
    pub data: DataTable,
    pub train: TrainConfig,
}

/// Types and checks a BERT config.
pub fn parse(config: &toml::Value, config_path: &Path) -> Result<BertRunConfig> {
    let model: BertModelTable = required_table(config, "model", config_path)?;
    let data: DataTable = required_table(config, "data", config_path)?;
    let train: TrainConfig = required_table(config, "train", config_path)?;
    train
        .validate()
        .map_err(|e| err!("{}: {e}", config_path.display()))?;
    if !(0.0..=1.0).contains(&data.short_seq_prob) {
        bail!(
            "{}: data.short_seq_prob must be in [0, 1], found {}",
            config_path.display(),
            data.short_seq_prob
        );
    }
    Ok(BertRunConfig { model, data, train })
}

/// Builds everything `canon train` needs for a BERT run (see the module header).
pub fn setup(
    cfg: BertRunConfig,
    config_path: &Path,
    dir: &RunDir,
    resuming: bool,
    report: Report,
) -> Result<FamilySetup> {
    let say = |s: String| report.say(s);
    let BertRunConfig {
        model: m,
        data: d,
        train,
    } = cfg;
    let corpus = load_corpus(&d, config_path)?;
    say(format!(
        "corpus {}: {} documents, {:.1} MB",
        corpus.name,
        corpus.docs.len(),
        corpus.bytes() as f64 / 1e6
    ));
    let store = VarStore::new_random(train.seed, bert_init_policy(m.init_std.unwrap_or(0.02)));
    let (cfg, tok, pretrained) = match &m.init {
        Some(spec) => {
            if m.n_layer.or(m.n_head).or(m.d_model).or(m.d_ff).is_some() {
                bail!(
                    "{}: model.init takes the architecture from the pretrained model; drop n_layer/n_head/d_model/d_ff",
                    config_path.display()
                );
            }
            let p = open_pretrained(&model_dir(spec, report.progress)?)
                .with_context(|| format!("{}: model.init = '{spec}'", config_path.display()))?;
            if m.max_seq_len.is_some() {
                bail!(
                    "{}: model.init keeps the pretrained position table; limit lengths with train.block_size",
                    config_path.display()
                );
            }
            let cfg = p.config.clone();
            say(format!(
                "starting from {spec}: {} layers, width {}, vocabulary {}{}",
                cfg.num_hidden_layers,
                cfg.hidden_size,
                cfg.vocab_size,
                if p.has_mlm_head {
                    ""
                } else {
                    " (no MLM head in the checkpoint: a fresh one, decoder tied to the word embeddings)"
                }
            ));
            (cfg, p.tokenizer.clone(), Some(p))
        }
        None => {
            let tok = if resuming {
                dir.read_tokenizer()?
            } else {
                let t = bert_data::train_wordpiece(&corpus.docs, d.vocab_size)?;
                dir.write_tokenizer(&t)?;
                t
            };
            let need = |k: &str, v: Option<usize>| {
                v.with_context(|| format!("{}: model.{k} is required", config_path.display()))
            };
            let c = BertTrainConfig {
                vocab_size: tok.get_vocab_size(true),
                n_layer: need("n_layer", m.n_layer)?,
                n_head: need("n_head", m.n_head)?,
                d_model: need("d_model", m.d_model)?,
                d_ff: m.d_ff,
                max_seq_len: need("max_seq_len", m.max_seq_len)?,
                type_vocab_size: 2,
                activation: canon_nn::Activation::Gelu,
                layer_norm_eps: 1e-12,
                init_std: m.init_std.unwrap_or(0.02),
            }
            .to_bert();
            (c, tok, None)
        }
    };
    cfg.validate()
        .map_err(|e| err!("{}: {e}", config_path.display()))?;
    if train.block_size > cfg.max_position_embeddings {
        bail!(
            "{}: train.block_size ({}) exceeds the model's {} positions",
            config_path.display(),
            train.block_size,
            cfg.max_position_embeddings
        );
    }
    let model = BertPretraining::load(cfg.clone(), &store, m.nsp)?;
    if let Some(p) = &pretrained {
        if !resuming {
            let (copied, fresh) = copy_into(&store, &*p.weights)?;
            say(format!(
                "copied {} pretrained tensors; fresh: {}",
                copied.len(),
                if fresh.is_empty() {
                    "none".to_string()
                } else {
                    fresh.join(", ")
                }
            ));
        }
        if !resuming {
            dir.write_tokenizer(&p.tokenizer)?;
        }
    }
    let sp = Specials::of(&tok)?;
    let data = sentence_data(&d, &tok, &corpus, config_path)?;
    say(format!(
        "{} training documents ({} tokens), {} held out ({} tokens); vocabulary {}",
        data.train.len(),
        SentenceData::tokens(&data.train),
        data.val.len(),
        SentenceData::tokens(&data.val),
        cfg.vocab_size
    ));
    dir.write_model_json(&BertRunModel {
        family: "bert".into(),
        config: cfg,
        nsp: m.nsp,
    })?;
    let pairs = PairConfig {
        max_len: train.block_size,
        short_seq_prob: d.short_seq_prob,
        pairs: m.nsp,
    };
    let obj = BertPretrain::new(
        model,
        data,
        sp,
        pairs,
        MlmConfig::default(),
        train.batch_size,
        train.eval_batches,
        train.seed ^ 0xE7A1,
    )?;
    let params = Engine::params_of(&store);
    say(format!(
        "{} parameters ({} tensors; the MLM decoder is the word-embedding table)",
        params.iter().map(|p| p.var.elem_count()).sum::<usize>(),
        params.len()
    ));
    if !resuming {
        let e = obj.eval_metrics()?;
        say(format!(
            "held-out before training: {}",
            e.iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok((params, train, Box::new(obj)))
}
