//! The saved reward model (`reward_model.json`): the head and what it was trained on.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FILE, RewardHead, task};
use crate::{AgentError, Result};

/// The saved reward model: the head and what it was trained on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardModel {
    /// The model whose frozen features the head reads.
    pub model: String,
    pub features: String,
    pub head: RewardHead,
    pub train_pairs: usize,
    pub heldout_pairs: usize,
    /// Pairwise accuracies (`None` without pairs).
    pub train_accuracy: Option<f64>,
    pub heldout_accuracy: Option<f64>,
    /// Held-out pairs of two sampled answers (the choice best-of-n makes).
    pub heldout_sample_pairs: usize,
    pub heldout_sample_accuracy: Option<f64>,
}

impl RewardModel {
    /// Reads `dir/reward_model.json`; a missing or malformed file is one error naming it.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            task(format!(
                "expected a reward model at {} (written by `canon agent webgpt --train-reward-model`), found none: {e}",
                path.display()
            ))
        })?;
        let rm: RewardModel = serde_json::from_str(&text).map_err(|e| {
            task(format!(
                "expected a reward model in {}, found something else: {e}",
                path.display()
            ))
        })?;
        let h = &rm.head;
        if h.w.is_empty() || h.mean.len() != h.w.len() || h.scale.len() != h.w.len() {
            return Err(task(format!(
                "expected a head with equally long mean, scale and w in {}, found {}, {} and {}",
                path.display(),
                h.mean.len(),
                h.scale.len(),
                h.w.len()
            )));
        }
        Ok(rm)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| task(e.to_string()))?;
        std::fs::write(&path, text).map_err(|error| AgentError::Io {
            path: path.display().to_string(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_bad_reward_model_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = RewardModel::load(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("expected a reward model at "), "{e}");
        assert!(e.contains("reward_model.json"), "{e}");
        std::fs::write(dir.path().join(FILE), "{\"model\": 3}").unwrap();
        let e = RewardModel::load(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("expected a reward model in "), "{e}");
        let ok = RewardModel {
            model: "m".into(),
            features: "f".into(),
            head: RewardHead {
                mean: vec![0.0, 0.0],
                scale: vec![1.0],
                w: vec![1.0, 2.0],
            },
            train_pairs: 1,
            heldout_pairs: 0,
            train_accuracy: Some(1.0),
            heldout_accuracy: None,
            heldout_sample_pairs: 0,
            heldout_sample_accuracy: None,
        };
        ok.save(dir.path()).unwrap();
        let e = RewardModel::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("equally long mean, scale and w"), "{e}");
    }
}
