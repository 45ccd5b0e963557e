//! Saving and loading a fine-tuned GPT-1 task model: the weights with optimizer state and step
//! (a checkpoint) and the task and base-model description beside them.

use std::path::Path;

use canon_models::gpt::GptConfig;
use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};

use super::{FinetuneConfig, Finetuner, TaskKind};
use crate::{Result, io_err};

/// The fine-tuned weights file in a `canon finetune-gpt1 --out` folder.
pub const FINETUNED_FILE: &str = "finetuned.safetensors";
/// The task and base-model description next to it.
pub const TASK_FILE: &str = "task.json";

#[derive(Debug, Serialize, Deserialize)]
struct TaskFile {
    kind: TaskKind,
    base: GptConfig,
}

impl Finetuner {
    /// Writes the fine-tuned weights (with optimizer state and step: a checkpoint) to
    /// `dir/finetuned.safetensors` and the task and model description to `dir/task.json`, each
    /// atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::checkpoint::save(
            &dir.join(FINETUNED_FILE),
            &self.params,
            &self.opt,
            crate::checkpoint::TrainState {
                step: self.step,
                rng_state: self.rng.state,
            },
            &[],
        )?;
        let meta = TaskFile {
            kind: self.kind,
            base: self.base.clone(),
        };
        let path = dir.join(TASK_FILE);
        let text = serde_json::to_string_pretty(&meta).map_err(|e| io_err(&path, e))?;
        canon_fs::write_atomic(&path, text.as_bytes()).map_err(|e| io_err(&path, e))
    }

    /// Loads what [`Finetuner::save`] wrote (weights, optimizer state and step), ready to predict
    /// or to continue.
    pub fn load(dir: &Path, cfg: FinetuneConfig) -> Result<Self> {
        let path = dir.join(TASK_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            io_err(
                &path,
                format!("{e} (not a fine-tuned folder from `canon finetune-gpt1`)"),
            )
        })?;
        let meta: TaskFile = serde_json::from_str(&text).map_err(|e| io_err(&path, e))?;
        let mut ft = Self::build(&meta.base, meta.kind, cfg, None)?;
        let (st, _) = crate::checkpoint::load(&dir.join(FINETUNED_FILE), &ft.params, &mut ft.opt)?;
        ft.step = st.step;
        ft.rng = SplitMix64 {
            state: st.rng_state,
        };
        Ok(ft)
    }
}
