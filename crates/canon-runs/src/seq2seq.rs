//! Trained sequence-to-sequence runs (a Transformer of paper 1 or a T5 of paper 8) loaded for
//! translation: the model, its tokenizer, the task prefix, and the test split of the catalogs it
//! was trained on.

use std::path::Path;

use canon_infer::seq2seq::DecodeOptions;
use canon_models::Seq2SeqLm;
use canon_models::VarStore;
use canon_models::family::{CHECKPOINT_PARAM_PREFIX, RUN_MODEL_FILE};
use canon_models::source::Detached;
use canon_models::t5::T5;
use canon_models::transformer::{Transformer, TransformerConfig};
use canon_train::t5_train::tasks::EN_DE_PREFIX;
use canon_train::translation::TranslationDataConfig;
use tokenizers::Tokenizer;

use crate::t5::{en_de_catalogs, read_model_json};
use crate::transformer::translate_encoded;
use crate::{Context, Result, RunDir, bail, err};

/// A trained sequence-to-sequence run: a Transformer (paper 1) or a T5 (paper 8) run folder.
pub struct MtRun {
    pub model: Box<dyn Seq2SeqLm>,
    pub tok: Tokenizer,
    pub family: &'static str,
    pub pad: u32,
    pub eos: u32,
    pub max_len: usize,
    /// Text put before every source (T5's task prefix; empty for the Transformer).
    pub prefix: String,
}

/// Loads a Transformer or T5 run folder for translation (weights detached from autograd).
pub fn load_run(dir: &Path) -> Result<MtRun> {
    let run = RunDir::new(dir);
    let mpath = run.join(RUN_MODEL_FILE);
    let v = run.read_model_value()?;
    let ckpt = run.checkpoint_path();
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
    let tok = run.read_tokenizer()?;
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
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let clean = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let full = format!("{}{clean}", self.prefix);
        let mut ids = self
            .tok
            .encode(full.as_str(), false)
            .map_err(|e| err!("cannot tokenize the input: {e}"))?
            .get_ids()
            .to_vec();
        ids.truncate(self.max_len - 1);
        ids.push(self.eos);
        Ok(ids)
    }

    pub fn translate(&self, texts: &[String], opts: &DecodeOptions) -> Result<Vec<String>> {
        let srcs = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        translate_encoded(self.model.as_ref(), self.pad, &self.tok, &srcs, opts)
    }

    /// The catalogs and split the run's test sentences come from.
    pub fn test_data(&self, dir: &Path) -> Result<TranslationDataConfig> {
        let run = RunDir::new(dir);
        let cpath = run.config_path();
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
        Ok(crate::transformer::parse(&value, &cpath)?.data)
    }
}
