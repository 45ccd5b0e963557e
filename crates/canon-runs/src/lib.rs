//! Run folders and the setup of every training family.
//!
//! `canon train` reads one [`RunConfig`] (a typed section per family, chosen by `[model] family`)
//! and builds what the engine needs through [`setup`]; a [`RunDir`] reads and writes the run folder
//! (`config.toml`, `model.json`, `tokenizer.json`, `checkpoint.safetensors`, `metrics.jsonl`),
//! every write atomic. The binary only parses arguments, drives the engine and prints.
//!
//! Families: the causal language models of `canon_models::family` (`gpt`, `llama`,
//! `transformer_xl`), and `transformer` (paper 1), `t5` (paper 8), `bert` (paper 3), `distilbert`
//! (paper 7) and `ernie` (paper 6), each trained through its own `Objective`.

use std::fmt::Display;
use std::path::{Path, PathBuf};

pub mod assets_opts;
pub mod autoprompt;
pub mod autoprompt_opts;
pub mod bert;
pub mod causal;
pub mod config;
pub mod data_run;
pub mod dir;
pub mod distilbert;
pub mod ernie;
pub mod eval_opts;
pub mod flan_opts;
pub mod generate;
pub mod heads;
pub mod heads_run;
pub mod load;
pub mod lora;
pub mod lora_opts;
pub mod model_opts;
pub mod plot_opts;
#[cfg(feature = "cli")]
pub mod progress_draw;
pub mod progress_line;
pub mod quantize_opts;
pub mod rag;
pub mod seq2seq;
pub mod t5;
pub mod threads;
pub mod train_opts;
pub mod transformer;
pub mod translate_opts;

#[cfg(test)]
mod tests;

pub use config::{CAUSAL_FAMILIES, OBJECTIVE_FAMILIES, RunConfig};
pub use dir::RunDir;
pub use load::Loader;
pub use threads::default_threads;

/// Everything that can go wrong while reading a configuration or building a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A message of its own (a bad value, a missing file...).
    #[error("{0}")]
    Msg(String),
    /// A message naming what was being done, over the error that stopped it.
    #[error("{msg}")]
    Context {
        msg: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    // Boxed: the other crates' errors are large, and this one travels through every caller.
    #[error(transparent)]
    Train(Box<canon_train::TrainError>),
    #[error(transparent)]
    Model(Box<canon_models::ModelError>),
    #[error(transparent)]
    Infer(Box<canon_infer::InferError>),
    #[error(transparent)]
    Eval(Box<canon_eval::EvalError>),
    #[error(transparent)]
    Tensor(Box<candle_core::Error>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    TomlWrite(#[from] toml::ser::Error),
    #[error(transparent)]
    Asset(Box<canon_assets::AssetError>),
    #[error(transparent)]
    Agent(Box<canon_agent::AgentError>),
    #[error(transparent)]
    Scale(Box<canon_scale::ScaleError>),
}

pub type Result<T> = std::result::Result<T, RunError>;

macro_rules! boxed_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for RunError {
            fn from(e: $t) -> Self {
                RunError::$v(Box::new(e))
            }
        })*
    };
}

boxed_from!(
    canon_train::TrainError => Train,
    canon_models::ModelError => Model,
    canon_infer::InferError => Infer,
    canon_eval::EvalError => Eval,
    candle_core::Error => Tensor,
    canon_assets::AssetError => Asset,
    canon_agent::AgentError => Agent,
    canon_scale::ScaleError => Scale,
);

/// `Err(RunError::Msg(format!(...)))` from the current function.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::RunError::Msg(format!($($t)*)))
    };
}

/// A [`RunError::Msg`] from a format string.
#[macro_export]
macro_rules! err {
    ($($t:tt)*) => {
        $crate::RunError::Msg(format!($($t)*))
    };
}

/// Adds what was being done to an error (or turns a missing value into one).
pub trait Context<T> {
    fn context<C: Display>(self, c: C) -> Result<T>;
    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context<C: Display>(self, c: C) -> Result<T> {
        self.map_err(|e| RunError::Context {
            msg: c.to_string(),
            source: Box::new(e),
        })
    }
    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| RunError::Context {
            msg: f().to_string(),
            source: Box::new(e),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: Display>(self, c: C) -> Result<T> {
        self.ok_or_else(|| RunError::Msg(c.to_string()))
    }
    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| RunError::Msg(f().to_string()))
    }
}

/// The line the binary prints for an error: it and its causes, outermost first, joined by `: `.
/// A cause whose text the line already holds is left out: error types that print their source
/// inside their own message and also return it as `source()` would otherwise say it twice.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cur = Some(e);
    while let Some(cause) = cur {
        let text = cause.to_string().replace('\n', " ");
        cur = cause.source();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// An error and its causes on one line, `outer: inner: ...`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How a setup reports progress: `say` gets one line per stage (the binary prints it unless
/// `--quiet`), `progress` shows asset downloads.
#[derive(Clone, Copy)]
pub struct Report<'a> {
    pub say: &'a dyn Fn(String),
    pub progress: &'a dyn canon_assets::FetchProgress,
}

impl Report<'_> {
    pub fn say(&self, s: String) {
        (self.say)(s)
    }
}

/// What a family's setup hands the engine: the trainable parameters, the `[train]` settings and the
/// objective.
pub type FamilySetup = (
    Vec<canon_train::Param>,
    canon_train::TrainConfig,
    Box<dyn canon_train::Objective>,
);

/// Builds the engine's inputs for a family trained through its own objective (every family but the
/// causal ones, which `causal::prepare` serves). `dir` is the run folder; `resuming` reuses its
/// tokenizer and vocabulary instead of training new ones.
/// `file` names the configuration in errors. `stop` gives the flag that interrupts a training run
/// inside the setup (ERNIE's TransE) with a checkpoint.
pub fn setup(
    cfg: RunConfig,
    file: &Path,
    dir: &RunDir,
    resuming: bool,
    report: Report,
    stop: &dyn Fn() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Result<FamilySetup> {
    match cfg {
        RunConfig::Transformer(c) => transformer::setup(c, file, dir, resuming, report),
        RunConfig::T5(c) => t5::setup(c, file, dir, resuming, report),
        RunConfig::Bert(c) => bert::setup(c, file, dir, resuming, report),
        RunConfig::DistilBert(c) => distilbert::setup(c, file, dir, resuming, report),
        RunConfig::Ernie(c) => ernie::setup(c, file, dir, resuming, report, stop),
        RunConfig::Causal(_) => {
            bail!("the causal families are set up by canon_runs::causal::prepare")
        }
    }
}

/// Where the Python standard library lives: `$CANON_PYTHON_STDLIB`, else what `python3` reports,
/// else the newest `/usr/lib/python3.*`.
pub fn python_stdlib_dir() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("CANON_PYTHON_STDLIB") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(out) = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.is_dir() {
            return Ok(p);
        }
    }
    let mut cands: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("python3.") && p.join("os.py").is_file())
                })
                .collect()
        })
        .unwrap_or_default();
    cands.sort();
    cands
        .pop()
        .context("cannot find the Python standard library: set CANON_PYTHON_STDLIB to its folder")
}

/// `minilm` → the cached asset folder (fetched on first use); anything else is a path.
pub fn model_dir(spec: &str, progress: &dyn canon_assets::FetchProgress) -> Result<PathBuf> {
    if spec == "minilm" {
        return match canon_models::ModelSpec::Alias(spec.into()).resolve(progress)? {
            canon_models::ModelSpec::HfDir(d) => Ok(d),
            _ => bail!("the minilm asset is not a folder"),
        };
    }
    Ok(PathBuf::from(spec))
}

/// A text corpus: `python-stdlib`, `python-docs`, or a text file or folder.
pub fn load_text_corpus(spec: &str, max_bytes: usize) -> Result<canon_train::data::Corpus> {
    use canon_train::data;
    Ok(match spec {
        "python-stdlib" => data::python_stdlib(&python_stdlib_dir()?, max_bytes)?,
        "python-docs" => data::python_docs(&python_stdlib_dir()?, max_bytes)?,
        p => data::text_path(Path::new(p), max_bytes)
            .with_context(|| format!("data.corpus = '{p}'"))?,
    })
}
