//! Class-balanced training batches and the fixed held-out subset scored during training.

use canon_nn::SplitMix64;

use super::TaskExample;
use crate::{Result, TrainError};

/// Training examples grouped by label for class-balanced batches (GPT-1's and BERT's classifier
/// fine-tuning): row `i` of a batch draws uniformly from class `i mod classes`.
pub struct ClassBalanced<'a> {
    by_class: Vec<Vec<&'a TaskExample>>,
}

impl<'a> ClassBalanced<'a> {
    /// Errors on a label outside `0..classes` or a class without examples.
    pub fn new(train: &'a [TaskExample], classes: usize) -> Result<Self> {
        let mut by_class: Vec<Vec<&TaskExample>> = vec![Vec::new(); classes];
        for e in train {
            by_class
                .get_mut(e.label as usize)
                .ok_or_else(|| TrainError::Data(format!("label {} ≥ {classes} classes", e.label)))?
                .push(e);
        }
        if let Some(c) = by_class.iter().position(Vec::is_empty) {
            return Err(TrainError::Data(format!(
                "the training split has no example of class {c}"
            )));
        }
        Ok(Self { by_class })
    }

    pub fn batch(&self, rng: &mut SplitMix64, size: usize) -> Vec<&'a TaskExample> {
        (0..size)
            .map(|i| {
                let pool = &self.by_class[i % self.by_class.len()];
                pool[rng.below(pool.len())]
            })
            .collect()
    }
}

/// Every `⌈len/eval_max⌉`-th held-out example: the fixed subset scored during training.
pub fn eval_subset(test: &[TaskExample], eval_max: usize) -> Vec<TaskExample> {
    let stride = test.len().div_ceil(eval_max.max(1)).max(1);
    test.iter().step_by(stride).cloned().collect()
}
