//! TransE (Bordes et al., 2013, "Translating Embeddings for Modeling Multi-relational Data"): the
//! knowledge embeddings ERNIE (paper 6) takes as frozen entity inputs.
//!
//! A relation is a translation: for a true triple `(h, r, t)`, `e_h + r ≈ e_t`. The dissimilarity is
//! `d(h, r, t) = ‖e_h + r − e_t‖_p` with `p` = 1 or 2, and the loss over a batch of true triples and
//! their corrupted copies (head or tail replaced, with equal probability, by a uniformly drawn
//! different entity) is the margin ranking loss
//!   L = mean_i [γ + d(h_i, r_i, t_i) − d(h'_i, r_i, t'_i)]₊          (Bordes et al., eq. 1)
//! (the paper sums; the mean only rescales the learning rate). Algorithm 1: relations and entities
//! start uniform in ±6/√k, relations are normalised once, and every entity vector is projected onto
//! the unit sphere before each minibatch (this keeps the loss from being lowered by inflating norms).
//! Updates go through our optimizers (`optim`: SGD as in the paper, or AdamW).
//!
//! Shapes: entities `[n_entities, k]`, relations `[n_relations, k]`.
//!
//! The parts: `config` (the `[transe]` table), `train` (the engine objective, training and a run
//! in a folder); this module holds the two tables, the distance, the loss, corruption, link
//! prediction and the saved table.

mod config;
mod train;

pub use config::{Norm, TransEConfig};
pub use train::{TransEObjective, TransEReport};

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, Device, Tensor, Var};
use canon_nn::SplitMix64;

use crate::ernie_data::Triple;
use crate::{Result, TrainError, io_err};

pub struct TransE {
    pub entities: Var,
    pub relations: Var,
    pub norm: Norm,
    pub margin: f64,
}

fn uniform(n: usize, bound: f64, rng: &mut SplitMix64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

/// Rows scaled to unit L2 norm (zero rows stay zero).
fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&n)?)
}

impl TransE {
    /// Bordes et al.'s initialisation: uniform in ±6/√k, relations normalised, entities normalised.
    pub fn new(
        n_entities: usize,
        n_relations: usize,
        cfg: &TransEConfig,
        seed: u64,
    ) -> Result<Self> {
        let k = cfg.dim;
        let b = 6.0 / (k as f64).sqrt();
        let mut rng = SplitMix64::new(seed);
        let dev = &Device::Cpu;
        let e = Tensor::from_vec(uniform(n_entities * k, b, &mut rng), (n_entities, k), dev)?;
        let r = Tensor::from_vec(uniform(n_relations * k, b, &mut rng), (n_relations, k), dev)?;
        Ok(Self {
            entities: Var::from_tensor(&unit_rows(&e)?)?,
            relations: Var::from_tensor(&unit_rows(&r)?)?,
            norm: cfg.norm,
            margin: cfg.margin,
        })
    }

    /// Projects every entity vector onto the unit sphere (Algorithm 1, line 5).
    pub fn normalize_entities(&self) -> Result<()> {
        Ok(self.entities.set(&unit_rows(self.entities.as_tensor())?)?)
    }

    /// `d(h, r, t) = ‖e_h + r − e_t‖_p` for each triple: `[n]`.
    pub fn distance(&self, triples: &[Triple]) -> Result<Tensor> {
        let dev = &Device::Cpu;
        let col = |f: fn(&Triple) -> u32| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                triples.iter().map(f).collect::<Vec<u32>>(),
                triples.len(),
                dev,
            )?)
        };
        let e = self.entities.as_tensor();
        let h = e.index_select(&col(|t| t.h)?, 0)?;
        let t = e.index_select(&col(|t| t.t)?, 0)?;
        let r = self.relations.as_tensor().index_select(&col(|t| t.r)?, 0)?;
        let diff = ((h + r)? - t)?; // [n, k]
        Ok(match self.norm {
            Norm::L1 => diff.abs()?.sum(D::Minus1)?,
            // A tiny floor keeps the square root differentiable at zero.
            Norm::L2 => (diff.sqr()?.sum(D::Minus1)? + 1e-12)?.sqrt()?,
        })
    }

    /// Margin ranking loss of true triples against their corrupted copies (same order).
    pub fn loss(&self, pos: &[Triple], neg: &[Triple]) -> Result<Tensor> {
        if pos.len() != neg.len() || pos.is_empty() {
            return Err(TrainError::Data(format!(
                "transe: {} true and {} corrupted triples; expected equal, non-zero counts",
                pos.len(),
                neg.len()
            )));
        }
        let d = (self.distance(pos)? - self.distance(neg)?)?;
        Ok((d + self.margin)?.relu()?.mean_all()?)
    }

    /// One corrupted copy of each triple: head or tail (each with probability ½) replaced by a
    /// uniformly drawn different entity.
    pub fn corrupt(triples: &[Triple], n_entities: usize, rng: &mut SplitMix64) -> Vec<Triple> {
        triples
            .iter()
            .map(|tr| {
                let mut c = *tr;
                let head = rng.next_f64() < 0.5;
                let old = if head { tr.h } else { tr.t };
                let mut e = rng.below(n_entities.max(2) - 1) as u32;
                if e >= old {
                    e += 1;
                }
                if head {
                    c.h = e;
                } else {
                    c.t = e;
                }
                c
            })
            .collect()
    }

    /// Raw rank (1 = best) of the true tail of each triple among all entities as tails, and the
    /// same for heads: returns (mean rank, hits@10) over both.
    pub fn link_prediction(&self, triples: &[Triple]) -> Result<(f64, f64)> {
        let e = self.entities.as_tensor().detach();
        let n = e.dim(0)?;
        let (mut rank_sum, mut hits, mut count) = (0f64, 0usize, 0usize);
        for tr in triples {
            let r = self.relations.as_tensor().get(tr.r as usize)?.detach();
            let h = e.get(tr.h as usize)?;
            let t = e.get(tr.t as usize)?;
            // Tails: ‖(h + r) − e_j‖ for all j; heads: ‖e_j + r − t‖.
            for target in [(h + &r)?.unsqueeze(0)?, (t - &r)?.unsqueeze(0)?] {
                let diff = e.broadcast_sub(&target)?;
                let d: Vec<f32> = match self.norm {
                    Norm::L1 => diff.abs()?.sum(D::Minus1)?,
                    Norm::L2 => diff.sqr()?.sum(D::Minus1)?,
                }
                .to_vec1()?;
                let truth = (if count % 2 == 0 { tr.t } else { tr.h }) as usize;
                let rank = 1 + (0..n).filter(|&j| d[j] < d[truth]).count();
                rank_sum += rank as f64;
                hits += usize::from(rank <= 10);
                count += 1;
            }
        }
        let c = count.max(1) as f64;
        Ok((rank_sum / c, hits as f64 / c))
    }

    /// The entity table, detached (ERNIE's frozen inputs).
    pub fn entity_table(&self) -> Tensor {
        self.entities.as_tensor().detach()
    }

    /// Writes entities and relations to a safetensors file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut m = HashMap::new();
        m.insert("entities".to_string(), self.entities.as_tensor().detach());
        m.insert("relations".to_string(), self.relations.as_tensor().detach());
        let bytes = safetensors::serialize(&m, None).map_err(|e| io_err(path, e))?;
        canon_fs::write_atomic(path, &bytes).map_err(|e| io_err(path, e))
    }

    /// Reads the entity table written by [`TransE::save`], checking its shape.
    pub fn load_entities(path: &Path, n_entities: usize, dim: usize) -> Result<Tensor> {
        let m = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| io_err(path, e))?;
        let e = m
            .get("entities")
            .ok_or_else(|| TrainError::Data(format!("{}: no 'entities' tensor", path.display())))?;
        if e.dims() != [n_entities, dim] {
            return Err(TrainError::Data(format!(
                "{}: entity table has shape {:?}, expected [{n_entities}, {dim}] (the knowledge graph changed?)",
                path.display(),
                e.dims()
            )));
        }
        Ok(e.clone())
    }
}

#[cfg(test)]
mod tests;
