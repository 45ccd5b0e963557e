//! The quality classifier on embeddings and the filter.
//!
//! Two classifiers on sentence embeddings (MiniLM, 384 dimensions, L2-normalised): the paper's
//! random forest (`super::forest`) and logistic regression `p(educational | x) = σ(w·x + b)`,
//! trained by full-batch gradient descent with Adam on the mean cross-entropy plus `λ/2 · |w|²`,
//! classes weighted to balance them. `canon data filter` fits both, reports both held-out
//! accuracies, and filters with the one chosen (`QualityModel`).
//!
//! The filter keeps exactly the items whose probability is ≥ the threshold, in their order.

use serde::{Deserialize, Serialize};

use super::forest::{Forest, ForestParams};
use crate::{Result, ScaleError};

/// Which classifier filters the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    /// The paper's random forest on embeddings.
    Forest,
    /// L2-regularised logistic regression with balanced classes.
    Logistic,
}

impl ClassifierKind {
    pub const ALL: [ClassifierKind; 2] = [ClassifierKind::Forest, ClassifierKind::Logistic];

    pub fn name(self) -> &'static str {
        match self {
            ClassifierKind::Forest => "forest",
            ClassifierKind::Logistic => "logistic",
        }
    }

    /// What the report says about the settings.
    pub fn describe(self) -> String {
        match self {
            ClassifierKind::Forest => {
                let p = ForestParams::default();
                format!(
                    "random forest ({} CART trees, Gini, bootstrap samples, ⌈√d⌉ features per split, max depth {})",
                    p.n_trees, p.max_depth
                )
            }
            ClassifierKind::Logistic => {
                "logistic regression (L2 1e-3, balanced classes, Adam 400 epochs)".into()
            }
        }
    }
}

impl std::str::FromStr for ClassifierKind {
    type Err = ScaleError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "forest" => Ok(ClassifierKind::Forest),
            "logistic" => Ok(ClassifierKind::Logistic),
            _ => Err(ScaleError::Msg(format!(
                "classifier: expected forest or logistic, found {s:?}"
            ))),
        }
    }
}

/// A fitted quality classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QualityModel {
    Forest(Forest),
    Logistic(Logistic),
}

impl QualityModel {
    /// Fits the classifier of `kind` on rows `xs` and 0/1 labels `ys`.
    pub fn fit(kind: ClassifierKind, xs: &[Vec<f32>], ys: &[u8], seed: u64) -> Result<Self> {
        Ok(match kind {
            ClassifierKind::Forest => QualityModel::Forest(Forest::fit(
                xs,
                ys,
                ForestParams {
                    seed,
                    ..ForestParams::default()
                },
            )?),
            ClassifierKind::Logistic => QualityModel::Logistic(Logistic::fit(xs, ys, 1e-3, 400)?),
        })
    }

    pub fn prob(&self, x: &[f32]) -> f64 {
        match self {
            QualityModel::Forest(f) => f.prob(x),
            QualityModel::Logistic(l) => l.prob(x),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub w: Vec<f64>,
    pub b: f64,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Logistic {
    pub fn prob(&self, x: &[f32]) -> f64 {
        let z: f64 = self
            .w
            .iter()
            .zip(x)
            .map(|(w, &v)| w * v as f64)
            .sum::<f64>()
            + self.b;
        sigmoid(z)
    }

    /// Fits on `xs` (rows of equal length) and labels `ys` (0/1).
    pub fn fit(xs: &[Vec<f32>], ys: &[u8], l2: f64, epochs: usize) -> Result<Self> {
        let n = xs.len();
        if n == 0 || n != ys.len() {
            return Err(ScaleError::Data(format!(
                "classifier: expected as many labels as examples (> 0), found {} examples and {} labels",
                n,
                ys.len()
            )));
        }
        let d = xs[0].len();
        if let Some(r) = xs.iter().find(|r| r.len() != d) {
            return Err(ScaleError::Data(format!(
                "classifier: every embedding must have {d} dimensions, found {}",
                r.len()
            )));
        }
        let pos = ys.iter().filter(|&&y| y == 1).count();
        if pos == 0 || pos == n {
            return Err(ScaleError::Data(format!(
                "classifier: need both labels, found {pos} positive of {n}"
            )));
        }
        // Balanced class weights: each class contributes half of the loss.
        let wpos = n as f64 / (2.0 * pos as f64);
        let wneg = n as f64 / (2.0 * (n - pos) as f64);
        let mut m = Logistic {
            w: vec![0.0; d],
            b: 0.0,
        };
        let (lr, b1, b2, eps) = (0.05, 0.9, 0.999, 1e-8);
        let mut mw = vec![0.0; d + 1];
        let mut vw = vec![0.0; d + 1];
        for t in 1..=epochs {
            let mut g = vec![0.0; d + 1];
            for (x, &y) in xs.iter().zip(ys) {
                let p = m.prob(x);
                let cw = if y == 1 { wpos } else { wneg };
                let e = cw * (p - y as f64) / n as f64;
                for (gi, &xi) in g.iter_mut().zip(x) {
                    *gi += e * xi as f64;
                }
                g[d] += e;
            }
            for (gi, wi) in g.iter_mut().zip(&m.w) {
                *gi += l2 * wi;
            }
            for k in 0..=d {
                mw[k] = b1 * mw[k] + (1.0 - b1) * g[k];
                vw[k] = b2 * vw[k] + (1.0 - b2) * g[k] * g[k];
                let mh = mw[k] / (1.0 - b1.powi(t as i32));
                let vh = vw[k] / (1.0 - b2.powi(t as i32));
                let step = lr * mh / (vh.sqrt() + eps);
                if k == d {
                    m.b -= step;
                } else {
                    m.w[k] -= step;
                }
            }
        }
        Ok(m)
    }
}

/// Accuracy of probabilities against labels at threshold 0.5.
pub fn accuracy(probs: &[f64], ys: &[u8]) -> f64 {
    let predicted: Vec<bool> = probs.iter().map(|&p| p >= 0.5).collect();
    let gold: Vec<bool> = ys.iter().take(probs.len()).map(|&y| y == 1).collect();
    canon_nn::ops::accuracy(&predicted, &gold)
}

/// ROC-AUC: the probability that a random positive scores above a random negative (ties ½).
pub fn roc_auc(probs: &[f64], ys: &[u8]) -> Option<f64> {
    let pos: Vec<f64> = probs
        .iter()
        .zip(ys)
        .filter(|(_, y)| **y == 1)
        .map(|(p, _)| *p)
        .collect();
    let neg: Vec<f64> = probs
        .iter()
        .zip(ys)
        .filter(|(_, y)| **y == 0)
        .map(|(p, _)| *p)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut s = 0.0;
    for p in &pos {
        for q in &neg {
            s += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(s / (pos.len() * neg.len()) as f64)
}

/// Indices of the items kept by the filter (probability ≥ threshold), in order.
pub fn filter_indices(probs: &[f64], threshold: f64) -> Vec<usize> {
    probs
        .iter()
        .enumerate()
        .filter(|(_, p)| **p >= threshold)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_nn::SplitMix64;

    #[test]
    fn separable_data_is_learnt() {
        let mut rng = SplitMix64::new(3);
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..200 {
            let y = (i % 2) as u8;
            let c = if y == 1 { 1.0 } else { -1.0 };
            xs.push(vec![
                (c + 0.3 * rng.normal()) as f32,
                rng.normal() as f32,
                rng.normal() as f32,
            ]);
            ys.push(y);
        }
        let m = Logistic::fit(&xs[..150], &ys[..150], 1e-4, 300).unwrap();
        let p: Vec<f64> = xs[150..].iter().map(|x| m.prob(x)).collect();
        assert!(accuracy(&p, &ys[150..]) > 0.95);
        assert!(roc_auc(&p, &ys[150..]).unwrap() > 0.99);
        assert!(m.w[0] > 0.0 && m.w[0].abs() > 3.0 * m.w[1].abs());
    }

    #[test]
    fn filter_keeps_items_at_or_above_the_threshold_in_order() {
        let p = [0.9, 0.2, 0.5, 0.49, 0.7];
        assert_eq!(filter_indices(&p, 0.5), vec![0, 2, 4]);
        assert!(filter_indices(&p, 0.95).is_empty());
    }

    #[test]
    fn auc_of_a_perfect_ranking_is_one() {
        assert_eq!(roc_auc(&[0.1, 0.9, 0.4], &[0, 1, 0]), Some(1.0));
        assert_eq!(roc_auc(&[0.5, 0.5], &[0, 1]), Some(0.5));
        assert_eq!(roc_auc(&[0.5], &[1]), None);
    }

    #[test]
    fn one_class_is_an_error() {
        let e = Logistic::fit(&[vec![1.0], vec![2.0]], &[1, 1], 0.0, 10).unwrap_err();
        assert!(e.to_string().contains("both labels"));
    }
}
