//! The one loader: `--model` is an alias of a pinned asset (`smollm2`, `minilm`), a `.gguf` file, or an
//! HF-style folder (config.json + model.safetensors + tokenizer.json). Configuration comes only from
//! the file's own metadata; tokenizer and chat template come with the model.
//!
//! This module parses `--model` and dispatches; `gguf` loads `.gguf` files, `hf` HF-style folders.

mod gguf;
mod hf;

pub use gguf::{gguf_vocab, llama_config_from_gguf, load_gguf_lm};
pub use hf::{load_hf_encoder, load_hf_lm};

use std::path::{Path, PathBuf};

use canon_assets::FetchProgress;
use canon_quant::gguf::GgufFile;
use canon_text::{ChatTemplate, Tokenizer};

use crate::source::WeightMode;
use crate::{CausalLm, ModelError, Result, SentenceEmbedder};
use hf::{hf_tokenizer, model_type, read_json};

/// What `--model` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Alias(String),
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let p = Path::new(s);
        if p.is_dir() {
            return Ok(Self::HfDir(p.to_path_buf()));
        }
        if p.is_file() {
            return Ok(Self::Gguf(p.to_path_buf()));
        }
        if canon_assets::spec(s).is_ok() {
            return Ok(Self::Alias(s.to_string()));
        }
        let aliases: Vec<&str> = canon_assets::ASSETS.iter().map(|a| a.name).collect();
        Err(ModelError::Input(format!(
            "--model '{s}' is neither an existing file or folder nor a known alias (expected a .gguf file, an HF-style folder, or one of: {})",
            aliases.join(", ")
        )))
    }

    /// Resolves an alias to its local path, fetching the asset on first use.
    pub fn resolve(&self, progress: &dyn FetchProgress) -> Result<ModelSpec> {
        match self {
            Self::Alias(a) => {
                let p = canon_assets::ensure_main(a, progress)?;
                Ok(if p.is_dir() {
                    Self::HfDir(p)
                } else {
                    Self::Gguf(p)
                })
            }
            other => Ok(other.clone()),
        }
    }
}

/// A causal LM with everything generation needs.
pub struct LoadedLm {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub name: String,
    pub path: PathBuf,
}

/// A sentence-embedding model.
pub struct LoadedEncoder {
    pub embedder: SentenceEmbedder,
    pub name: String,
    pub path: PathBuf,
}

pub fn load_causal_lm(
    spec: &ModelSpec,
    mode: WeightMode,
    progress: &dyn FetchProgress,
) -> Result<LoadedLm> {
    match spec.resolve(progress)? {
        ModelSpec::Gguf(p) => load_gguf_lm(&p, mode),
        ModelSpec::HfDir(d) if crate::family::is_run_dir(&d) => crate::family::load_run_dir(&d),
        ModelSpec::HfDir(d) => load_hf_lm(&d),
        ModelSpec::Alias(_) => unreachable_alias(),
    }
}

pub fn load_encoder(spec: &ModelSpec, progress: &dyn FetchProgress) -> Result<LoadedEncoder> {
    match spec.resolve(progress)? {
        ModelSpec::HfDir(d) => load_hf_encoder(&d),
        ModelSpec::Gguf(p) => Err(ModelError::Architecture {
            found: format!("GGUF file {}", p.display()),
            expected: "an HF-style BERT folder (config.json, model.safetensors, tokenizer.json) for embeddings".into(),
        }),
        ModelSpec::Alias(_) => unreachable_alias(),
    }
}

/// Only the tokenizer of a model (no weights are read): GGUF metadata or `tokenizer.json`.
/// Returns the tokenizer and whether the model is an encoder (BERT folders add [CLS]/[SEP]).
pub fn load_tokenizer(spec: &ModelSpec, progress: &dyn FetchProgress) -> Result<(Tokenizer, bool)> {
    match spec.resolve(progress)? {
        ModelSpec::Gguf(p) => {
            let file = GgufFile::open(&p)?;
            Ok((Tokenizer::from_gguf(&gguf_vocab(&file)?)?, false))
        }
        ModelSpec::HfDir(d) if crate::family::is_run_dir(&d) => Ok((
            Tokenizer::from_file(&d.join(crate::family::RUN_TOKENIZER_FILE))?,
            false,
        )),
        ModelSpec::HfDir(d) => {
            let v = read_json(&d.join("config.json"))?;
            let encoder = model_type(&v) == "bert";
            let mut t = hf_tokenizer(&d)?;
            t.use_post_processor = true;
            Ok((t, encoder))
        }
        ModelSpec::Alias(_) => unreachable_alias(),
    }
}

fn unreachable_alias<T>() -> Result<T> {
    Err(ModelError::Input("internal: alias left unresolved".into()))
}
