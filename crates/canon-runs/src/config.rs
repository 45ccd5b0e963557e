//! [`RunConfig`]: a run configuration (`config.toml`), typed for every family.

use std::path::Path;

use crate::{Context, Result, bail};

/// The families `canon_models::family::ModelConfig` trains as causal language models.
pub const CAUSAL_FAMILIES: [&str; 3] = ["gpt", "llama", "transformer_xl"];
/// The families trained through their own objective ([`crate::setup`]).
pub const OBJECTIVE_FAMILIES: &[&str] = &["ernie", "transformer", "t5", "bert", "distilbert"];

/// A whole run configuration, one variant per family, each with its typed, checked sections.
#[derive(Debug, Clone)]
pub enum RunConfig {
    /// `gpt`, `llama`, `transformer_xl`: `[model]` (`ModelConfig`), `[data]`, `[train]`.
    Causal(canon_train::RunConfig),
    /// Paper 1: `[model]`, `[data]` (gettext catalogs), `[train]`, `[translation]`.
    Transformer(crate::transformer::MtRunConfig),
    /// Paper 8: `[model]`, `[data]`, `[t5]`, `[train]`.
    T5(crate::t5::T5RunConfig),
    /// Paper 3: `[model]`, `[data]`, `[train]`.
    Bert(crate::bert::BertRunConfig),
    /// Paper 7: `[model]` (teacher, layers), `[distill]`, `[data]`, `[train]`.
    DistilBert(crate::distilbert::DistilRunConfig),
    /// Paper 6: `[model]`, `[data]`, `[transe]`, `[ernie]`, `[train]`.
    Ernie(crate::ernie::ErnieRunConfig),
}

impl RunConfig {
    /// Reads and parses a TOML file (`path` names it in errors).
    pub fn read_value(path: &Path) -> Result<toml::Value> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// `[model] family` of a config.
    pub fn family_of(value: &toml::Value, path: &Path) -> Result<String> {
        value
            .get("model")
            .and_then(|m| m.get("family"))
            .and_then(|f| f.as_str())
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "{}: expected a [model] table with family = \"...\" (one of {}, {})",
                    path.display(),
                    CAUSAL_FAMILIES.join(", "),
                    OBJECTIVE_FAMILIES.join(", ")
                )
            })
    }

    /// Types and checks every section of `value` for its family (`path` names the file in errors).
    pub fn parse(value: &toml::Value, path: &Path) -> Result<RunConfig> {
        let family = Self::family_of(value, path)?;
        Ok(match family.as_str() {
            f if CAUSAL_FAMILIES.contains(&f) => {
                let cfg: canon_train::RunConfig = value
                    .clone()
                    .try_into()
                    .with_context(|| format!("invalid config {}", path.display()))?;
                RunConfig::Causal(cfg)
            }
            "transformer" => RunConfig::Transformer(crate::transformer::parse(value, path)?),
            "t5" => RunConfig::T5(crate::t5::parse(value, path)?),
            "bert" => RunConfig::Bert(crate::bert::parse(value, path)?),
            "distilbert" => RunConfig::DistilBert(crate::distilbert::parse(value, path)?),
            "ernie" => RunConfig::Ernie(crate::ernie::parse(value, path)?),
            f => bail!(
                "{}: unknown model family '{f}'; expected one of {}, {}",
                path.display(),
                CAUSAL_FAMILIES.join(", "),
                OBJECTIVE_FAMILIES.join(", ")
            ),
        })
    }

    /// The `[model] family` this configuration trains.
    pub fn family(&self) -> &str {
        match self {
            RunConfig::Causal(c) => match c.model {
                canon_models::family::ModelConfig::Gpt(_) => "gpt",
                canon_models::family::ModelConfig::Llama(_) => "llama",
                canon_models::family::ModelConfig::TransformerXl(_) => "transformer_xl",
            },
            RunConfig::Transformer(_) => "transformer",
            RunConfig::T5(_) => "t5",
            RunConfig::Bert(_) => "bert",
            RunConfig::DistilBert(_) => "distilbert",
            RunConfig::Ernie(_) => "ernie",
        }
    }

    /// The `[train]` section.
    pub fn train(&self) -> &canon_train::TrainConfig {
        match self {
            RunConfig::Causal(c) => &c.train,
            RunConfig::Transformer(c) => &c.train,
            RunConfig::T5(c) => &c.train,
            RunConfig::Bert(c) => &c.train,
            RunConfig::DistilBert(c) => &c.train,
            RunConfig::Ernie(c) => &c.train,
        }
    }

    /// Sets `[train] key = value` in a raw config (the command line's `--max-steps`, `--seed`),
    /// creating the table if needed.
    pub fn set_train_key(value: &mut toml::Value, key: &str, v: toml::Value) -> Result<()> {
        let table = value
            .as_table_mut()
            .context("a config must be a TOML table")?
            .entry("train")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table
            .as_table_mut()
            .context("[train] must be a table")?
            .insert(key.to_string(), v);
        Ok(())
    }
}

/// Parses table `key` of the config into `T`, naming the file on error; a missing table is an
/// error.
pub fn required_table<T: serde::de::DeserializeOwned>(
    config: &toml::Value,
    key: &str,
    path: &Path,
) -> Result<T> {
    let v = config
        .get(key)
        .cloned()
        .with_context(|| format!("{}: missing [{key}] table", path.display()))?;
    v.try_into()
        .with_context(|| format!("{}: invalid [{key}] table", path.display()))
}

/// Parses table `key` of the config into `T`; a missing table reads as an empty one.
pub fn optional_table<T: serde::de::DeserializeOwned>(
    config: &toml::Value,
    key: &str,
    path: &Path,
) -> Result<T> {
    let v = config
        .get(key)
        .cloned()
        .unwrap_or_else(|| toml::Value::Table(Default::default()));
    v.try_into()
        .with_context(|| format!("{}: invalid [{key}] table", path.display()))
}

/// `[model]` without its `family` key (an empty table when there is none).
pub fn model_table(cfg: &toml::Value) -> toml::Table {
    let mut m = cfg
        .get("model")
        .and_then(|m| m.as_table())
        .cloned()
        .unwrap_or_default();
    m.remove("family");
    m
}
