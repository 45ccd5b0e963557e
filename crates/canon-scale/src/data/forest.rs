//! Phi-1's quality classifier: a random forest on embeddings (Breiman, 2001).
//!
//! Each tree is a CART classification tree grown on a bootstrap sample of the training rows (drawn
//! with replacement, as many as there are rows). At every node it draws `max_features` features
//! without replacement (default `⌈√d⌉`) and takes the split `x[f] ≤ t` with the lowest weighted
//! Gini impurity of the two children, `t` halfway between consecutive distinct values. A node
//! becomes a leaf when it is pure, at `max_depth`, below `min_split` rows, or when no drawn
//! feature splits it. A leaf stores the fraction of positive rows that reached it; the forest's
//! probability is the mean of the trees' leaf fractions. Everything is drawn from one seeded
//! generator, so a seed gives the same forest.

use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::{Result, ScaleError};

/// How the forest is grown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    pub n_trees: usize,
    pub max_depth: usize,
    /// Nodes with fewer rows become leaves.
    pub min_split: usize,
    /// Features drawn per split; `None` is `⌈√d⌉`.
    pub max_features: Option<usize>,
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            n_trees: 200,
            max_depth: 12,
            min_split: 2,
            max_features: None,
            seed: 28,
        }
    }
}

/// One node of a tree, stored flat: children are indices into the tree's nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Node {
    Leaf {
        /// Fraction of positive rows that reached the leaf.
        p: f64,
    },
    Split {
        feature: usize,
        threshold: f32,
        left: usize,
        right: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    fn prob(&self, x: &[f32]) -> f64 {
        let mut i = 0;
        // A tree built by `grow` has no cycles and every index in range; the bound on the loop
        // guards a hand-edited classifier.json.
        for _ in 0..=self.nodes.len() {
            match self.nodes.get(i) {
                Some(Node::Leaf { p }) => return *p,
                Some(Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                }) => {
                    let v = x.get(*feature).copied().unwrap_or(0.0);
                    i = if v <= *threshold { *left } else { *right };
                }
                None => return 0.5,
            }
        }
        0.5
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub params: ForestParams,
    pub n_features: usize,
    pub trees: Vec<Tree>,
}

/// Gini impurity of a node with `pos` positives among `n` rows, times `n`.
fn gini_n(pos: usize, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let p = pos as f64 / n as f64;
    n as f64 * 2.0 * p * (1.0 - p)
}

struct Grower<'a> {
    xs: &'a [Vec<f32>],
    ys: &'a [u8],
    params: ForestParams,
    mtry: usize,
    rng: SplitMix64,
}

impl Grower<'_> {
    /// The best split of `rows` over `mtry` drawn features: (feature, threshold, impurity·n).
    fn best_split(&mut self, rows: &[usize]) -> Option<(usize, f32)> {
        let d = self.xs[0].len();
        let mut feats: Vec<usize> = (0..d).collect();
        for i in 0..self.mtry.min(d) {
            let j = i + self.rng.below(d - i);
            feats.swap(i, j);
        }
        let n = rows.len();
        let pos_total = rows.iter().filter(|&&r| self.ys[r] == 1).count();
        let mut best: Option<(f64, usize, f32)> = None;
        let parent = gini_n(pos_total, n);
        let mut vals: Vec<(f32, u8)> = Vec::with_capacity(n);
        for &f in &feats[..self.mtry.min(d)] {
            vals.clear();
            vals.extend(rows.iter().map(|&r| (self.xs[r][f], self.ys[r])));
            vals.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut pos_left = 0;
            for k in 1..n {
                pos_left += vals[k - 1].1 as usize;
                if vals[k].0 <= vals[k - 1].0 {
                    continue;
                }
                let imp = gini_n(pos_left, k) + gini_n(pos_total - pos_left, n - k);
                if imp < parent - 1e-12 && best.is_none_or(|b| imp < b.0) {
                    let t = vals[k - 1].0 + (vals[k].0 - vals[k - 1].0) / 2.0;
                    best = Some((imp, f, t));
                }
            }
        }
        best.map(|(_, f, t)| (f, t))
    }

    fn grow(&mut self, rows: Vec<usize>, depth: usize, nodes: &mut Vec<Node>) -> usize {
        let n = rows.len();
        let pos = rows.iter().filter(|&&r| self.ys[r] == 1).count();
        let id = nodes.len();
        let p = pos as f64 / n.max(1) as f64;
        nodes.push(Node::Leaf { p });
        if pos == 0 || pos == n || depth >= self.params.max_depth || n < self.params.min_split {
            return id;
        }
        let Some((feature, threshold)) = self.best_split(&rows) else {
            return id;
        };
        let (l, r): (Vec<usize>, Vec<usize>) = rows
            .into_iter()
            .partition(|&i| self.xs[i][feature] <= threshold);
        let left = self.grow(l, depth + 1, nodes);
        let right = self.grow(r, depth + 1, nodes);
        nodes[id] = Node::Split {
            feature,
            threshold,
            left,
            right,
        };
        id
    }
}

impl Forest {
    /// Grows the forest on `xs` (rows of equal length) and labels `ys` (0/1).
    pub fn fit(xs: &[Vec<f32>], ys: &[u8], params: ForestParams) -> Result<Self> {
        let n = xs.len();
        if n == 0 || n != ys.len() {
            return Err(ScaleError::Data(format!(
                "random forest: expected as many labels as examples (> 0), found {} examples and {} labels",
                n,
                ys.len()
            )));
        }
        let d = xs[0].len();
        if d == 0 {
            return Err(ScaleError::Data(
                "random forest: expected at least one feature, found rows of length 0".into(),
            ));
        }
        if let Some(r) = xs.iter().find(|r| r.len() != d) {
            return Err(ScaleError::Data(format!(
                "random forest: every row must have {d} features, found {}",
                r.len()
            )));
        }
        if let Some(y) = ys.iter().find(|&&y| y > 1) {
            return Err(ScaleError::Data(format!(
                "random forest: labels must be 0 or 1, found {y}"
            )));
        }
        if params.n_trees == 0 || params.max_features == Some(0) {
            return Err(ScaleError::Data(format!(
                "random forest: expected at least one tree and one feature per split, found {} trees and max_features {:?}",
                params.n_trees, params.max_features
            )));
        }
        let mtry = params
            .max_features
            .unwrap_or_else(|| (d as f64).sqrt().ceil() as usize)
            .min(d);
        let mut g = Grower {
            xs,
            ys,
            params,
            mtry,
            rng: SplitMix64::new(params.seed),
        };
        let mut trees = Vec::with_capacity(params.n_trees);
        for _ in 0..params.n_trees {
            let rows: Vec<usize> = (0..n).map(|_| g.rng.below(n)).collect();
            let mut nodes = Vec::new();
            g.grow(rows, 0, &mut nodes);
            trees.push(Tree { nodes });
        }
        Ok(Forest {
            params,
            n_features: d,
            trees,
        })
    }

    /// The mean over trees of the positive fraction in the leaf `x` reaches.
    pub fn prob(&self, x: &[f32]) -> f64 {
        let s: f64 = self.trees.iter().map(|t| t.prob(x)).sum();
        s / self.trees.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::classify::{Logistic, accuracy};

    /// XOR of the signs of the first two features, plus noise features.
    fn xor(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<u8>) {
        let mut rng = SplitMix64::new(seed);
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for _ in 0..n {
            let a = rng.normal() as f32;
            let b = rng.normal() as f32;
            ys.push(((a > 0.0) != (b > 0.0)) as u8);
            xs.push(vec![a, b, rng.normal() as f32, rng.normal() as f32]);
        }
        (xs, ys)
    }

    #[test]
    fn the_forest_separates_xor_and_logistic_regression_cannot() {
        let (xs, ys) = xor(600, 7);
        let (xt, yt) = (&xs[..400], &ys[..400]);
        let (xh, yh) = (&xs[400..], &ys[400..]);
        let params = ForestParams {
            n_trees: 50,
            max_depth: 8,
            max_features: Some(2),
            ..ForestParams::default()
        };
        let f = Forest::fit(xt, yt, params).unwrap();
        let pf: Vec<f64> = xh.iter().map(|x| f.prob(x)).collect();
        let lr = Logistic::fit(xt, yt, 1e-3, 400).unwrap();
        let pl: Vec<f64> = xh.iter().map(|x| lr.prob(x)).collect();
        let (af, al) = (accuracy(&pf, yh), accuracy(&pl, yh));
        assert!(af > 0.9, "forest held-out accuracy {af}");
        assert!(al < 0.65, "logistic held-out accuracy {al}");
        assert!(pf.iter().all(|p| (0.0..=1.0).contains(p)));
    }

    #[test]
    fn a_seed_gives_the_same_forest_and_another_seed_another() {
        let (xs, ys) = xor(200, 3);
        let p = ForestParams {
            n_trees: 10,
            ..ForestParams::default()
        };
        let a = Forest::fit(&xs, &ys, p).unwrap();
        let b = Forest::fit(&xs, &ys, p).unwrap();
        assert_eq!(a, b);
        let c = Forest::fit(&xs, &ys, ForestParams { seed: 29, ..p }).unwrap();
        assert_ne!(a, c);
        // Serialised and read back, it scores the same.
        let back: Forest = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.prob(&xs[5]), a.prob(&xs[5]));
    }

    #[test]
    fn a_pure_node_is_a_leaf_and_one_split_separates_a_threshold() {
        let xs: Vec<Vec<f32>> = (0..20).map(|i| vec![i as f32]).collect();
        let ys: Vec<u8> = (0..20).map(|i| (i >= 10) as u8).collect();
        let f = Forest::fit(
            &xs,
            &ys,
            ForestParams {
                n_trees: 1,
                ..ForestParams::default()
            },
        )
        .unwrap();
        let t = &f.trees[0];
        assert!(matches!(t.nodes[0], Node::Split { feature: 0, .. }));
        assert_eq!(t.nodes.len(), 3, "{t:?}");
        assert_eq!(f.prob(&[0.0]), 0.0);
        assert_eq!(f.prob(&[19.0]), 1.0);
    }

    #[test]
    fn bad_inputs_are_refused_naming_what_was_found() {
        let p = ForestParams::default();
        let e = Forest::fit(&[vec![1.0], vec![1.0, 2.0]], &[0, 1], p).unwrap_err();
        assert!(e.to_string().contains("1 features, found 2"), "{e}");
        let e = Forest::fit(&[vec![1.0]], &[2], p).unwrap_err();
        assert!(e.to_string().contains("found 2"), "{e}");
        let e = Forest::fit(&[], &[], p).unwrap_err();
        assert!(e.to_string().contains("0 examples"), "{e}");
    }
}
