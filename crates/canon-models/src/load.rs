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
            "--model '{s}' is neither an existing file or folder nor a known alias (expected a .gguf file, an HF-style folder, a `canon train` run folder, or one of: {})",
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

/// The tag after an embedding model's name that runs it on 8-bit weights (`minilm:q8_0`).
pub const Q8_TAG: &str = "q8_0";

/// An embedding model named on the command line: what [`ModelSpec::parse`] takes, optionally
/// followed by `:q8_0` to run its linear layers on 8-bit weights ([`crate::Encoder::use_q8_weights`]).
/// A name that is an existing path is taken whole. The loaded encoder's `name` carries the tag.
pub fn load_encoder_named(name: &str, progress: &dyn FetchProgress) -> Result<LoadedEncoder> {
    let (base, q8) = split_encoder_tag(name)?;
    let mut enc = load_encoder(&ModelSpec::parse(base)?, progress)?;
    if q8 {
        enc.embedder.encoder.use_q8_weights()?;
        enc.name = format!("{}:{Q8_TAG}", enc.name);
    }
    Ok(enc)
}

/// `name` without its `:q8_0` tag, and whether it had one.
pub fn split_encoder_tag(name: &str) -> Result<(&str, bool)> {
    if Path::new(name).exists() {
        return Ok((name, false));
    }
    match name.rsplit_once(':') {
        Some((base, tag)) if tag.eq_ignore_ascii_case(Q8_TAG) && !base.is_empty() => {
            Ok((base, true))
        }
        Some((base, tag)) if !base.is_empty() && !tag.contains(['/', '\\']) => {
            Err(ModelError::Input(format!(
                "expected an embedding model name optionally followed by ':{Q8_TAG}' (8-bit weights), found ':{tag}' after '{base}'"
            )))
        }
        _ => Ok((name, false)),
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

#[cfg(test)]
mod tag_tests {
    use super::split_encoder_tag;

    #[test]
    fn the_q8_tag_splits_off_and_other_tags_are_refused() {
        assert_eq!(split_encoder_tag("minilm").unwrap(), ("minilm", false));
        assert_eq!(split_encoder_tag("minilm:q8_0").unwrap(), ("minilm", true));
        assert_eq!(
            split_encoder_tag("models/bert:Q8_0").unwrap(),
            ("models/bert", true)
        );
        let err = split_encoder_tag("minilm:q4").unwrap_err().to_string();
        assert!(err.contains("':q8_0'") && err.contains("':q4'"), "{err}");
        // Not a tag: a colon inside a folder name, or nothing before it.
        assert_eq!(split_encoder_tag("a:b/c").unwrap(), ("a:b/c", false));
        assert_eq!(split_encoder_tag(":q8_0").unwrap(), (":q8_0", false));
        // An existing path is taken whole, colon and all.
        let dir = std::env::temp_dir().join(format!("canon-tag-{}:q8_0", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let name = dir.to_string_lossy().into_owned();
        assert_eq!(split_encoder_tag(&name).unwrap(), (name.as_str(), false));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
