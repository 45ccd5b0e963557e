//! LoRA (paper 13) and QLoRA (paper 27) training on a loaded causal LM.
//!
//! `attach` puts an adapter `ΔW = (α/r)·B A` on every linear layer whose module name ends in one
//! of the targets (`q_proj`, `v_proj`, ... or `all`): `A: [r, in]` drawn as PEFT does
//! (Kaiming-uniform with a = √5, i.e. `U(−1/√in, 1/√in)`), `B: [out, r]` zero, so training starts
//! at the base model. Only A and B are variables; the base weights are plain tensors (dense f32 for
//! LoRA, NF4 with double quantization for QLoRA via `requantize_nf4`), so backward computes no
//! gradient for them and keeps no gradient memory — the NF4 op's backward only gives `∂L/∂x`.
//!
//! `SftObjective` is the fine-tuning objective: batches of `SftExample`s, masked cross-entropy on
//! the target tokens, held-out loss with the adapters detached (the inference paths, no graph).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use canon_models::llama::{PROJECTIONS, projection_name};
use canon_models::peft::Adapter;
use canon_models::{CausalLm, Positions};
use canon_nn::{Lora, SplitMix64, Weight, masked_cross_entropy};
use canon_quant::Nf4Tensor;

use super::{SftExample, collate};
use crate::optim::Param;
use crate::{Result, TrainError};

/// The module suffixes of a LLaMA block (`q_proj` … `down_proj`), from the model's one list.
pub fn all_targets() -> impl Iterator<Item = &'static str> {
    PROJECTIONS.iter().map(|p| projection_name(p))
}

/// Parses `--targets`: `all`, or comma-separated names with or without `_proj` (`q,v`,
/// `q_proj,gate_proj`).
pub fn parse_targets(s: &str) -> Result<Vec<String>> {
    if s.trim() == "all" {
        return Ok(all_targets().map(str::to_string).collect());
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let name = if part.ends_with("_proj") {
            part.to_string()
        } else {
            format!("{part}_proj")
        };
        if !all_targets().any(|t| t == name) {
            return Err(TrainError::Data(format!(
                "--targets: unknown module '{part}' (expected 'all' or some of q, k, v, o, gate, \
                 up, down)"
            )));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(TrainError::Data(
            "--targets names no module (expected e.g. 'q,v' or 'all')".into(),
        ));
    }
    Ok(out)
}

/// Adapter hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// Module suffixes (`q_proj`, ...).
    pub targets: Vec<String>,
    pub seed: u64,
    /// Dropout on each adapter's input during training (PEFT's `lora_dropout`).
    pub dropout: f64,
}

/// One adapted layer.
#[derive(Debug, Clone)]
pub struct LoraModule {
    pub name: String,
    pub a: Var,
    pub b: Var,
}

/// The adapters attached to a model.
#[derive(Debug, Clone)]
pub struct LoraSet {
    pub spec: LoraSpec,
    pub scale: f64,
    pub modules: Vec<LoraModule>,
    /// The per-batch randomness of LoRA dropout (seeded by the objective from the engine's RNG).
    pub noise: std::sync::Arc<canon_nn::Noise>,
}

impl LoraSet {
    /// The trainable parameters, named `<module>.lora_A.weight` / `.lora_B.weight`.
    pub fn params(&self) -> Vec<Param> {
        self.modules
            .iter()
            .flat_map(|m| {
                [
                    Param {
                        name: format!("{}.lora_A.weight", m.name),
                        var: m.a.clone(),
                        decay: true,
                    },
                    Param {
                        name: format!("{}.lora_B.weight", m.name),
                        var: m.b.clone(),
                        decay: true,
                    },
                ]
            })
            .collect()
    }

    /// Number of trainable values: `r·(in + out)` per adapted matrix.
    pub fn num_params(&self) -> usize {
        self.modules
            .iter()
            .map(|m| m.a.elem_count() + m.b.elem_count())
            .sum()
    }

    /// The adapter as PEFT writes it (current values of A and B).
    pub fn to_adapter(&self) -> Result<Adapter> {
        let mut modules = BTreeMap::new();
        for m in &self.modules {
            modules.insert(
                m.name.clone(),
                (m.a.as_tensor().copy()?, m.b.as_tensor().copy()?),
            );
        }
        Ok(Adapter {
            rank: self.spec.rank,
            alpha: self.spec.alpha,
            scale: self.scale,
            modules,
            dropout: self.spec.dropout,
        })
    }

    /// Points every adapted layer at the variables (`tracking`: ops record a backward pass) or at
    /// detached views of them (evaluation: no graph, the inference kernels).
    pub fn set_tracking(&self, model: &mut dyn CausalLm, tracking: bool) -> Result<()> {
        for m in &self.modules {
            let (a, b) = if tracking {
                (m.a.as_tensor().clone(), m.b.as_tensor().clone())
            } else {
                (m.a.as_tensor().detach(), m.b.as_tensor().detach())
            };
            let lin = model.linear_mut(&m.name).ok_or_else(|| {
                TrainError::Data(format!("the model lost its module '{}'", m.name))
            })?;
            let dropout = (tracking && self.spec.dropout > 0.0)
                .then(|| (self.spec.dropout, self.noise.clone()));
            lin.set_lora(Lora {
                a,
                b,
                scale: self.scale,
                dropout,
            })?;
        }
        Ok(())
    }
}

/// Attaches fresh adapters (A Kaiming-uniform from `spec.seed`, B zero) to every linear layer whose
/// name ends in a target. Errors: rank 0, a target matching no layer of this model.
pub fn attach(model: &mut dyn CausalLm, spec: &LoraSpec) -> Result<LoraSet> {
    if spec.rank == 0 {
        return Err(TrainError::Data(
            "--rank 0: a LoRA rank must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&spec.dropout) {
        return Err(TrainError::Data(format!(
            "--dropout must be in [0, 1), found {}",
            spec.dropout
        )));
    }
    if !(spec.alpha > 0.0 && spec.alpha.is_finite()) {
        return Err(TrainError::Data(format!(
            "--alpha must be positive, found {}",
            spec.alpha
        )));
    }
    let names = model.linear_names();
    let mut rng = SplitMix64::new(spec.seed ^ 0x10AA_A5EE_D000_0001);
    let mut modules = Vec::new();
    let noise: std::sync::Arc<canon_nn::Noise> = Default::default();
    for t in &spec.targets {
        if !names
            .iter()
            .any(|n| n.rsplit('.').next() == Some(t.as_str()))
        {
            return Err(TrainError::Data(format!(
                "--targets: '{t}' matches no linear layer of this model (its layers are named \
                 like '{}')",
                names.first().map_or("none", String::as_str)
            )));
        }
    }
    let scale = spec.alpha / spec.rank as f64;
    for name in &names {
        let suffix = name.rsplit('.').next().unwrap_or("");
        if !spec.targets.iter().any(|t| t == suffix) {
            continue;
        }
        let lin = model
            .linear_mut(name)
            .ok_or_else(|| TrainError::Data(format!("no module '{name}'")))?;
        let (out, inp) = (lin.out_features(), lin.in_features());
        let bound = 1.0 / (inp as f64).sqrt();
        let av: Vec<f32> = (0..spec.rank * inp)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Var::from_vec(av, (spec.rank, inp), &Device::Cpu)?;
        let b = Var::zeros((out, spec.rank), DType::F32, &Device::Cpu)?;
        lin.set_lora(Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale,
            dropout: (spec.dropout > 0.0).then(|| (spec.dropout, noise.clone())),
        })?;
        modules.push(LoraModule {
            name: name.clone(),
            a,
            b,
        });
    }
    if modules.is_empty() {
        return Err(TrainError::Data(
            "--targets matched no linear layer of this model".into(),
        ));
    }
    Ok(LoraSet {
        spec: spec.clone(),
        scale,
        modules,
        noise,
    })
}

/// QLoRA's storage: every adaptable linear layer's weight re-quantized to NF4 with double
/// quantization (block 64, constants in 8 bits per block of 256). Returns the bytes of the NF4
/// weights.
pub fn requantize_nf4(model: &mut dyn CausalLm) -> Result<usize> {
    let mut bytes = 0;
    for name in model.linear_names() {
        let lin = model
            .linear_mut(&name)
            .ok_or_else(|| TrainError::Data(format!("no module '{name}'")))?;
        let (rows, cols) = (lin.out_features(), lin.in_features());
        let w: Vec<f32> = lin
            .weight
            .to_dense()?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let q = Nf4Tensor::quantize(&w, rows, cols, true)
            .map_err(|e| TrainError::Data(format!("{name}: {e}")))?;
        bytes += q.size_in_bytes();
        lin.weight = Weight::Nf4(Arc::new(q));
    }
    Ok(bytes)
}

/// The loss of one batch.
#[derive(Debug, Clone)]
pub struct SftLoss {
    /// Scalar tensor with the graph kept.
    pub total: Tensor,
    /// Mean cross-entropy over the target tokens (nats/token).
    pub loss: f64,
    /// Real (non-padding) tokens processed.
    pub tokens: usize,
    /// Target tokens.
    pub targets: usize,
}

/// Fine-tuning objective over tokenized records.
pub struct SftObjective {
    pub model: Box<dyn CausalLm>,
    pub lora: LoraSet,
    pub train: Vec<SftExample>,
    pub eval: Vec<SftExample>,
    pub batch_size: usize,
    pub pad: u32,
    /// At most this many held-out batches per evaluation (0 = all).
    pub eval_batches: usize,
}

impl SftObjective {
    fn loss_of(&self, batch: &[&SftExample]) -> Result<SftLoss> {
        let (ids, labels, t, real) = collate(batch, self.pad);
        let b = batch.len();
        let x = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
        let logits = self
            .model
            .forward(&x, &mut self.model.new_cache(), Positions::All)?;
        let v = logits.dim(2)?;
        let (total, k) = masked_cross_entropy(&logits.reshape((b * t, v))?, &labels, 0.0)?;
        let loss = total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(SftLoss {
            total,
            loss,
            tokens: real,
            targets: k,
        })
    }

    /// The loss of a training batch of `batch_size` records drawn uniformly with `rng`.
    pub fn train_loss(&mut self, rng: &mut SplitMix64) -> Result<SftLoss> {
        if self.train.is_empty() || self.batch_size == 0 {
            return Err(TrainError::Data(
                "no training records or a batch size of 0".into(),
            ));
        }
        let picks: Vec<usize> = (0..self.batch_size)
            .map(|_| rng.below(self.train.len()))
            .collect();
        let batch: Vec<&SftExample> = picks.iter().map(|&i| &self.train[i]).collect();
        self.loss_of(&batch)
    }

    /// Mean cross-entropy per target token over the held-out records (in order, `batch_size` at a
    /// time), computed without a graph.
    pub fn eval_loss(&mut self) -> Result<f64> {
        if self.eval.is_empty() {
            return Err(TrainError::Data("no held-out records".into()));
        }
        self.lora.set_tracking(self.model.as_mut(), false)?;
        let mut result = Ok(());
        let (mut sum, mut n) = (0.0, 0usize);
        let bs = self.batch_size.max(1);
        for (i, chunk) in self.eval.chunks(bs).enumerate() {
            if self.eval_batches > 0 && i >= self.eval_batches {
                break;
            }
            let batch: Vec<&SftExample> = chunk.iter().collect();
            match self.loss_of(&batch) {
                Ok(l) => {
                    sum += l.loss * l.targets as f64;
                    n += l.targets;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.lora.set_tracking(self.model.as_mut(), true)?;
        result?;
        Ok(sum / n.max(1) as f64)
    }
}

impl crate::engine::Objective for SftObjective {
    fn train_batch(
        &mut self,
        rng: &mut SplitMix64,
        _index: u64,
    ) -> Result<crate::engine::BatchLoss> {
        if self.lora.spec.dropout > 0.0 {
            self.lora.noise.set(Some(rng.next_u64()));
        }
        let l = self.train_loss(rng)?;
        Ok(crate::engine::BatchLoss {
            total: l.total,
            loss: l.loss,
            tokens: l.tokens,
            extra: Vec::new(),
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        Ok(vec![("eval_loss".into(), self.eval_loss()?)])
    }
}
