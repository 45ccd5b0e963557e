//! Planning training runs with small ones.
//!
//! - `fit`: the GPT-4 report's predictable scaling (OpenAI, 2023): `L(C) = a·C^b + c` and the
//!   capability law `−E[log pass] = α·C^(−k)` by bounded Levenberg–Marquardt, with Jacobian and
//!   bootstrap intervals and a guard that predictions come from smaller runs.
//! - `ladder`: a ladder of model sizes trained with one recipe at a fixed number of tokens per
//!   parameter, each rung a normal run folder (resumable rung by rung), and the prediction of a
//!   larger target run made and saved before that run is trained.
//! - `capability`: the capability law measured on a pass/fail task (answer-only addition): the
//!   exact per-problem pass rate read off the model's probabilities, `−E[log pass rate]`.
//! - `report`: the scaling plot and the error-versus-ladder-points table.
//! - `data`: Phi-1's data pipeline (Gunasekar et al., 2023): a deduplicated code corpus with a
//!   licence manifest, heuristic quality labels, a classifier on embeddings, filtering and
//!   decontamination against evaluation problems.

pub mod capability;
pub mod data;
pub mod fit;
pub mod ladder;
pub mod opts;
pub mod report;

pub use fit::{Fit, Law, PowerLaw, Prediction, fit, predict_from_smaller};

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("fit: {0}")]
    Fit(String),
    #[error("config {file}: {message}")]
    Config { file: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Train(#[from] canon_train::TrainError),
    #[error(transparent)]
    Model(#[from] canon_models::ModelError),
    #[error("plot: {0}")]
    Plot(#[from] canon_plot::PlotError),
    #[error("data: {0}")]
    Data(String),
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Lines(#[from] canon_fs::lines::LineError),
}

pub type Result<T> = std::result::Result<T, ScaleError>;

pub(crate) fn io_err(path: &std::path::Path, e: impl std::fmt::Display) -> ScaleError {
    ScaleError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    canon_fs::write_atomic(path, bytes).map_err(|e| io_err(path, e))
}
