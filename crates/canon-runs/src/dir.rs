//! [`RunDir`]: one run folder, read and written through `canon_fs` (every write atomic).

use std::path::{Path, PathBuf};

use canon_models::family::{RUN_CHECKPOINT_FILE, RUN_MODEL_FILE, RUN_TOKENIZER_FILE};
use canon_train::trainer::RunFiles;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, Result, bail, err};

/// The resolved configuration of a run.
pub const CONFIG_FILE: &str = "config.toml";
/// The training log, one JSON object per step.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// A run folder: `config.toml` (the resolved configuration), `model.json` (the architecture, with
/// the tokenizer's vocabulary size), `tokenizer.json`, `checkpoint.safetensors`, `metrics.jsonl`
/// and `loss.png`, plus whatever a family adds (ERNIE's `vocab.json`, `transe.safetensors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file of the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the folder (and its parents).
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path)
            .with_context(|| format!("cannot create {}", self.path.display()))
    }

    pub fn config_path(&self) -> PathBuf {
        self.join(CONFIG_FILE)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.join(RUN_CHECKPOINT_FILE)
    }

    /// Whether the folder holds a run already (a checkpoint).
    pub fn has_checkpoint(&self) -> bool {
        self.checkpoint_path().exists()
    }

    /// The files the engine writes (checkpoint, metrics, plot).
    pub fn engine_files(&self) -> RunFiles {
        RunFiles::in_dir(&self.path)
    }

    /// Writes `text` to a file of the folder atomically.
    pub fn write_text(&self, name: &str, text: &str) -> Result<()> {
        write_atomic(&self.join(name), text)
    }

    /// `config.toml` as a raw TOML value (a resumed run reads its configuration back this way).
    pub fn read_config_value(&self) -> Result<toml::Value> {
        crate::RunConfig::read_value(&self.config_path())
    }

    /// Writes `config.toml` (any serializable configuration: a raw value or a typed one).
    pub fn write_config<T: Serialize + ?Sized>(&self, cfg: &T) -> Result<()> {
        self.write_text(CONFIG_FILE, &toml::to_string_pretty(cfg)?)
    }

    /// Writes `model.json`.
    pub fn write_model_json<T: Serialize + ?Sized>(&self, cfg: &T) -> Result<()> {
        self.write_text(RUN_MODEL_FILE, &serde_json::to_string_pretty(cfg)?)
    }

    /// Writes `model.json` as `cfg`'s fields plus `"family": family`.
    pub fn write_model_json_tagged<T: Serialize>(&self, family: &str, cfg: &T) -> Result<()> {
        let mut v = serde_json::to_value(cfg)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("family".into(), family.into());
        }
        self.write_model_json(&v)
    }

    /// `model.json` as a JSON value; a folder without one is "not a run folder".
    pub fn read_model_value(&self) -> Result<serde_json::Value> {
        let p = self.join(RUN_MODEL_FILE);
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("{} is not a run folder", self.path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))
    }

    /// `model.json` written by [`RunDir::write_model_json_tagged`]: its family must be `family`;
    /// `what` names the config in errors ("T5").
    pub fn read_model_json_tagged<T: DeserializeOwned>(
        &self,
        family: &str,
        what: &str,
    ) -> Result<T> {
        let p = self.join(RUN_MODEL_FILE);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let mut v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", p.display()))?;
        match v.as_object_mut().and_then(|o| o.remove("family")) {
            Some(f) if f == family => {}
            other => bail!(
                "{}: expected family \"{family}\", found {other:?}",
                p.display()
            ),
        }
        serde_json::from_value(v).with_context(|| format!("{}: invalid {what} config", p.display()))
    }

    /// `model.json` read as `T` whatever its `family` says; `not_a` completes "PATH: not ..." in
    /// errors ("an ERNIE model").
    pub fn read_model_json_untagged<T: DeserializeOwned>(&self, not_a: &str) -> Result<T> {
        let p = self.join(RUN_MODEL_FILE);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let mut v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", p.display()))?;
        if let Some(o) = v.as_object_mut() {
            o.remove("family");
        }
        serde_json::from_value(v).with_context(|| format!("{}: not {not_a}", p.display()))
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.join(RUN_TOKENIZER_FILE)
    }

    /// Reads `tokenizer.json`.
    pub fn read_tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        read_tokenizer(&self.tokenizer_path())
    }

    /// Writes `tokenizer.json` atomically.
    pub fn write_tokenizer(&self, tok: &tokenizers::Tokenizer) -> Result<()> {
        let path = self.tokenizer_path();
        let text = tok
            .to_string(false)
            .map_err(|e| err!("cannot write {}: {e}", path.display()))?;
        write_atomic(&path, &text)
    }
}

/// Reads a `tokenizer.json`.
pub fn read_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| err!("cannot read {}: {e}", path.display()))
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    canon_fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
