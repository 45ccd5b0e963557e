//! Training a causal language model (every decoder family of `canon_models::family`): the
//! [`LmObjective`] over token windows, and [`Trainer`], the engine plus that objective.
//!
//! Per micro-batch: `batch_size` windows of `block_size` tokens (seeded order; Transformer-XL reads
//! consecutive segments and keeps its memory), loss = cross-entropy (+ PaLM's z-loss)
//! (+ w · GLaM's load-balancing loss). Evaluation on fixed held-out windows (Transformer-XL: with its
//! evaluation memory, and again without memory).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use canon_models::{ModelConfig, TrainableLm, VarStore};
use canon_nn::{SplitMix64, lm_loss};

use crate::data::TokenData;
use crate::engine::{BatchLoss, Engine, Objective};
use crate::{Result, TrainConfig, TrainError};

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps completed (1 after the first).
    pub step: u64,
    /// Mean cross-entropy over the step's micro-batches (nats/token).
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Training tokens in this step (all micro-batches).
    pub tokens: u64,
    pub eval_loss: Option<f64>,
    /// Other held-out metrics (Transformer-XL's `eval_loss_no_mem`, accuracies, BLEU).
    pub eval: Vec<(String, f64)>,
    /// Other training terms (GLaM's `moe_aux_loss`, BERT's `nsp_loss`, …).
    pub extra: Vec<(String, f64)>,
    /// GLaM: per MoE layer, the fraction of tokens whose top-1 expert is each expert.
    pub expert_load: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Interrupted,
}

/// The files of a run folder the trainer writes.
#[derive(Debug, Clone)]
pub struct RunFiles {
    pub checkpoint: PathBuf,
    pub metrics: PathBuf,
    pub plot: PathBuf,
}

impl RunFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            checkpoint: dir.join(canon_models::family::RUN_CHECKPOINT_FILE),
            metrics: dir.join("metrics.jsonl"),
            plot: dir.join("loss.png"),
        }
    }
}

impl StepReport {
    /// A named training term or held-out metric.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.extra
            .iter()
            .chain(&self.eval)
            .find(|(k, _)| k == key)
            .map(|&(_, v)| v)
    }
}

/// The causal-LM objective over a tokenized corpus.
pub struct LmObjective<'a> {
    pub model: &'a dyn TrainableLm,
    pub data: &'a TokenData,
    pub batch_size: usize,
    pub block_size: usize,
    pub eval_batches: usize,
    pub z_loss: f64,
    pub moe_aux_weight: f64,
    load: Vec<Vec<f32>>,
}

/// Cross-entropy of one batch and its auxiliary terms.
struct Losses {
    total: Tensor,
    ce: f64,
    aux: Option<f64>,
    load: Vec<Vec<f32>>,
}

impl<'a> LmObjective<'a> {
    pub fn new(model: &'a dyn TrainableLm, data: &'a TokenData, cfg: &TrainConfig) -> Self {
        Self {
            model,
            data,
            batch_size: cfg.batch_size,
            block_size: cfg.block_size,
            eval_batches: cfg.eval_batches,
            z_loss: cfg.z_loss,
            moe_aux_weight: cfg.moe_aux_weight,
            load: Vec::new(),
        }
    }

    /// Checks that both splits can feed this objective.
    pub fn check(&self) -> Result<()> {
        self.data.check(self.block_size)?;
        if self.model.segment_memory().is_some() {
            for (name, split) in [("training", &self.data.train), ("held-out", &self.data.val)] {
                if TokenData::segments(split, self.batch_size, self.block_size) == 0 {
                    return Err(TrainError::Data(format!(
                        "the {name} split ({} tokens) cannot hold one segment of train.block_size {} in each of train.batch_size {} streams",
                        split.len(),
                        self.block_size,
                        self.batch_size
                    )));
                }
            }
        }
        Ok(())
    }

    fn losses(&self, x: Vec<u32>, y: Vec<u32>, b: usize, t: usize) -> Result<Losses> {
        let xt = Tensor::from_vec(x, (b, t), &Device::Cpu)?;
        let yt = Tensor::from_vec(y, b * t, &Device::Cpu)?;
        let out = self.model.forward_train(&xt)?;
        let v = out.logits.dim(2)?;
        let logits = out.logits.reshape((b * t, v))?; // [b·t, vocab]
        let l = lm_loss(&logits, &yt, self.z_loss)?;
        let ce = l.cross_entropy.to_scalar::<f32>()? as f64;
        let mut total = (l.cross_entropy + l.z_loss)?;
        let mut aux = None;
        if let Some(a) = out.moe_aux_loss {
            aux = Some(a.to_scalar::<f32>()? as f64);
            total = (total + (a * self.moe_aux_weight)?)?;
        }
        Ok(Losses {
            total,
            ce,
            aux,
            load: out.expert_load,
        })
    }

    /// Transformer-XL: mean cross-entropy over consecutive held-out segments with a memory of
    /// `mem_len` (0 = none); the training memory is set aside and restored.
    pub fn evaluate_recurrent(&self, mem_len: usize) -> Result<Option<f64>> {
        let Some(mem) = self.model.segment_memory() else {
            return Ok(None);
        };
        self.model.set_noise(None);
        let (b, t) = (self.batch_size, self.block_size);
        let saved = mem.take_memory();
        let train_len = mem.mem_len();
        mem.set_mem_len(mem_len);
        let n = TokenData::segments(&self.data.val, b, t).min(self.eval_batches * 4);
        let mut sum = 0.0;
        let mut result = Ok(());
        for i in 0..n {
            let (x, y, _) = TokenData::sequential(&self.data.val, b, t, i);
            match self.losses(x, y, b, t) {
                Ok(l) => sum += l.ce,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        mem.set_mem_len(train_len);
        mem.put_memory(saved);
        result?;
        if n == 0 {
            return Err(TrainError::Data(format!(
                "the held-out split has too few tokens for one segment of {t} per stream of {b}"
            )));
        }
        Ok(Some(sum / n as f64))
    }

    /// Mean cross-entropy over `eval_batches · batch_size` fixed held-out windows of `block`
    /// tokens (Transformer-XL: over consecutive segments with its evaluation memory).
    pub fn eval_loss(&self, block: usize) -> Result<f64> {
        if let Some(mem) = self.model.segment_memory() {
            return Ok(self
                .evaluate_recurrent(mem.eval_mem_len())?
                .unwrap_or(f64::NAN));
        }
        self.model.set_noise(None);
        let b = self.batch_size;
        let wins = self.data.eval_windows(self.eval_batches * b, block);
        let mut sum = 0.0;
        for chunk in wins.chunks(b) {
            let x: Vec<u32> = chunk.iter().flat_map(|w| w.0.iter().copied()).collect();
            let y: Vec<u32> = chunk.iter().flat_map(|w| w.1.iter().copied()).collect();
            sum += self.losses(x, y, chunk.len(), block)?.ce * chunk.len() as f64;
        }
        Ok(sum / wins.len() as f64)
    }
}

impl Objective for LmObjective<'_> {
    fn train_batch(&mut self, rng: &mut SplitMix64, index: u64) -> Result<BatchLoss> {
        let (b, t) = (self.batch_size, self.block_size);
        if self.model.uses_noise() {
            self.model.set_noise(Some(rng.next_u64()));
        }
        let (x, y) = match self.model.segment_memory() {
            Some(mem) => {
                // Consecutive segments; a new pass over the streams starts without memory.
                let (x, y, first) = TokenData::sequential(&self.data.train, b, t, index as usize);
                if first {
                    mem.take_memory();
                }
                (x, y)
            }
            None => self.data.sample(rng, b, t),
        };
        let l = self.losses(x, y, b, t)?;
        self.load = l.load;
        Ok(BatchLoss {
            total: l.total,
            loss: l.ce,
            tokens: b * t,
            extra: l
                .aux
                .map(|a| ("moe_aux_loss".to_string(), a))
                .into_iter()
                .collect(),
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let mut out = vec![("eval_loss".to_string(), self.eval_loss(self.block_size)?)];
        if let Some(nm) = self.evaluate_recurrent(0)? {
            out.push(("eval_loss_no_mem".to_string(), nm));
        }
        Ok(out)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(match self.model.segment_memory() {
            Some(mem) => {
                let m = mem.take_memory();
                mem.put_memory(m.clone());
                m.into_iter()
                    .enumerate()
                    .map(|(i, t)| (format!("mem.{i:03}"), t))
                    .collect()
            }
            None => Vec::new(),
        })
    }

    fn restore_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        if let Some(mem) = self.model.segment_memory() {
            mem.put_memory(
                state
                    .into_iter()
                    .filter(|(n, _)| n.starts_with("mem."))
                    .map(|(_, t)| t)
                    .collect(),
            );
        }
        Ok(())
    }

    fn expert_load(&self) -> Vec<Vec<f32>> {
        self.load.clone()
    }
}

/// A causal LM freshly initialised from a config, trained by the [`Engine`].
pub struct Trainer {
    pub model: Box<dyn TrainableLm>,
    pub engine: Engine,
}

impl Trainer {
    /// A freshly initialised model (weights drawn from `cfg.seed`).
    pub fn new(model_cfg: &ModelConfig, cfg: TrainConfig) -> Result<Self> {
        cfg.validate().map_err(|m| TrainError::Config {
            file: "train config".into(),
            message: m,
        })?;
        let store = VarStore::new_random(cfg.seed, model_cfg.init_policy());
        let model = model_cfg.build(&store)?;
        let engine = Engine::new(Engine::params_of(&store), cfg)?;
        Ok(Self { model, engine })
    }

    pub fn step(&self) -> u64 {
        self.engine.step
    }

    pub fn num_params(&self) -> usize {
        self.engine.num_params()
    }

    fn objective<'a>(
        model: &'a dyn TrainableLm,
        data: &'a TokenData,
        cfg: &TrainConfig,
    ) -> LmObjective<'a> {
        LmObjective::new(model, data, cfg)
    }

    /// Saves weights, optimizer state, step, data order and recurrent memory.
    pub fn save(&self, data: &TokenData, path: &Path) -> Result<()> {
        let obj = Self::objective(&*self.model, data, &self.engine.cfg);
        self.engine.save(&obj, path)
    }

    /// Restores weights, optimizer state, step, data order and recurrent memory.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let empty = TokenData::default();
        let mut obj = Self::objective(&*self.model, &empty, &self.engine.cfg);
        self.engine.resume(&mut obj, path)
    }

    /// One optimizer step.
    pub fn train_step(&mut self, data: &TokenData) -> Result<StepReport> {
        let mut obj = Self::objective(&*self.model, data, &self.engine.cfg);
        self.engine.train_step(&mut obj)
    }

    /// Held-out loss over windows of `block` tokens (see [`LmObjective::eval_loss`]).
    pub fn evaluate(&self, data: &TokenData, block: usize) -> Result<f64> {
        Self::objective(&*self.model, data, &self.engine.cfg).eval_loss(block)
    }

    /// Transformer-XL: held-out loss with a memory of `mem_len` (0 = none).
    pub fn evaluate_recurrent(&self, data: &TokenData, mem_len: usize) -> Result<Option<f64>> {
        Self::objective(&*self.model, data, &self.engine.cfg).evaluate_recurrent(mem_len)
    }

    /// Trains until `stop_at` steps are complete (or `stop` is raised); see [`Engine::run`].
    pub fn run(
        &mut self,
        data: &TokenData,
        stop_at: u64,
        stop: &AtomicBool,
        files: &RunFiles,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<Outcome> {
        let mut obj = Self::objective(&*self.model, data, &self.engine.cfg);
        obj.check()?;
        self.engine.run(&mut obj, stop_at, stop, files, on_step)
    }
}
