//! The training loop, generic over `canon_models::TrainableLm`.
//!
//! Per step: `grad_accum` micro-batches of `batch_size` windows of `block_size` tokens (seeded
//! order), loss = cross-entropy (+ PaLM's z-loss) (+ w · GLaM's load-balancing loss), backward,
//! gradients summed over micro-batches and divided by their number, clipped by global norm, one fused
//! optimizer update at the scheduled learning rate. Evaluation on fixed held-out windows every
//! `eval_every` steps; `metrics.jsonl` every `log_every` steps; a checkpoint every
//! `checkpoint_every` steps, at the end, and when `stop` is raised (Ctrl-C).
//!
//! Exact resume: the checkpoint holds weights, optimizer state and the data RNG state; nothing else
//! influences a step, so N steps straight equal N/2 + resume + N/2 bit for bit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use canon_models::{ModelConfig, TrainableLm, VarStore};
use canon_nn::{SplitMix64, lm_loss};

use crate::checkpoint::{self, TrainState};
use crate::data::TokenData;
use crate::metrics::{MetricsFile, MetricsLine, plot_loss, read_lines};
use crate::optim::{Optimizer, Param, clip_global_norm};
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
    pub eval_loss: Option<f64>,
    /// Transformer-XL: held-out loss of the same text without memory.
    pub eval_loss_no_mem: Option<f64>,
    pub moe_aux_loss: Option<f64>,
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

pub struct Trainer {
    pub model: Box<dyn TrainableLm>,
    pub params: Vec<Param>,
    pub opt: Optimizer,
    pub cfg: TrainConfig,
    /// Steps completed.
    pub step: u64,
    pub rng: SplitMix64,
}

/// The loss terms of one micro-batch.
struct Losses {
    total: Tensor,
    ce: f64,
    aux: Option<f64>,
    load: Vec<Vec<f32>>,
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
        let params: Vec<Param> = store
            .vars()
            .into_iter()
            .map(|(name, var, decay)| Param { name, var, decay })
            .collect();
        let opt = Optimizer::new(cfg.optimizer, &params);
        // The data order has its own stream, derived from the seed.
        let rng = SplitMix64::new(cfg.seed ^ 0xDA7A_0D3D_5EED_0001);
        Ok(Self {
            model,
            params,
            opt,
            cfg,
            step: 0,
            rng,
        })
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let extra: Vec<(String, Tensor)> = match self.model.segment_memory() {
            Some(mem) => {
                let m = mem.take_memory();
                mem.put_memory(m.clone());
                m.into_iter()
                    .enumerate()
                    .map(|(i, t)| (format!("mem.{i:03}"), t))
                    .collect()
            }
            None => Vec::new(),
        };
        checkpoint::save(
            path,
            &self.params,
            &self.opt,
            TrainState {
                step: self.step,
                rng_state: self.rng.state,
            },
            &extra,
        )
    }

    /// Restores weights, optimizer state, step and data order from a checkpoint.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let (st, extra) = checkpoint::load(path, &self.params, &mut self.opt)?;
        if let Some(mem) = self.model.segment_memory() {
            mem.put_memory(
                extra
                    .into_iter()
                    .filter(|(n, _)| n.starts_with("mem."))
                    .map(|(_, t)| t)
                    .collect(),
            );
        }
        self.step = st.step;
        self.rng = SplitMix64 {
            state: st.rng_state,
        };
        Ok(())
    }

    fn losses(&self, x: Vec<u32>, y: Vec<u32>, b: usize, t: usize) -> Result<Losses> {
        let xt = Tensor::from_vec(x, (b, t), &Device::Cpu)?;
        let yt = Tensor::from_vec(y, b * t, &Device::Cpu)?;
        let out = self.model.forward_train(&xt)?;
        let v = out.logits.dim(2)?;
        let logits = out.logits.reshape((b * t, v))?; // [b·t, vocab]
        let l = lm_loss(&logits, &yt, self.cfg.z_loss)?;
        let ce = l.cross_entropy.to_scalar::<f32>()? as f64;
        let mut total = (l.cross_entropy + l.z_loss)?;
        let mut aux = None;
        if let Some(a) = out.moe_aux_loss {
            aux = Some(a.to_scalar::<f32>()? as f64);
            total = (total + (a * self.cfg.moe_aux_weight)?)?;
        }
        Ok(Losses {
            total,
            ce,
            aux,
            load: out.expert_load,
        })
    }

    /// One optimizer step (with accumulation); advances `step` and the data RNG.
    pub fn train_step(&mut self, data: &TokenData) -> Result<StepReport> {
        let t0 = Instant::now();
        let (b, t, acc) = (
            self.cfg.batch_size,
            self.cfg.block_size,
            self.cfg.grad_accum,
        );
        let mut grads: Vec<Vec<f32>> = self
            .params
            .iter()
            .map(|p| vec![0f32; p.var.elem_count()])
            .collect();
        let (mut ce, mut aux_sum, mut has_aux) = (0.0, 0.0, false);
        let mut load = Vec::new();
        for micro in 0..acc {
            let (x, y) = match self.model.segment_memory() {
                Some(mem) => {
                    // Consecutive segments; a new pass over the streams starts without memory.
                    let index = (self.step as usize) * acc + micro;
                    let (x, y, first) = TokenData::sequential(&data.train, b, t, index);
                    if first {
                        mem.take_memory();
                    }
                    (x, y)
                }
                None => data.sample(&mut self.rng, b, t),
            };
            let l = self.losses(x, y, b, t)?;
            if !l.ce.is_finite() {
                return Err(TrainError::Diverged {
                    step: self.step + 1,
                    loss: l.ce,
                });
            }
            ce += l.ce / acc as f64;
            if let Some(a) = l.aux {
                aux_sum += a / acc as f64;
                has_aux = true;
            }
            load = l.load;
            let total = if acc > 1 {
                (l.total / acc as f64)?
            } else {
                l.total
            };
            let gs = total.backward()?;
            for (p, g) in self.params.iter().zip(grads.iter_mut()) {
                // A parameter that did not take part (an expert no token reached) gets zero.
                if let Some(gr) = gs.get(p.var.as_tensor()) {
                    let gv: Vec<f32> = gr.flatten_all()?.to_vec1()?;
                    if acc == 1 {
                        *g = gv;
                    } else {
                        g.iter_mut().zip(&gv).for_each(|(a, b)| *a += b);
                    }
                }
            }
        }
        let grad_norm = clip_global_norm(&mut grads, self.cfg.grad_clip);
        let lr = self
            .cfg
            .schedule
            .lr(self.step, self.cfg.max_steps, self.cfg.lr);
        self.opt.step(&self.params, &grads, lr)?;
        self.step += 1;
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        Ok(StepReport {
            step: self.step,
            loss: ce,
            lr,
            grad_norm,
            tokens_per_s: (b * t * acc) as f64 / secs,
            eval_loss: None,
            eval_loss_no_mem: None,
            moe_aux_loss: has_aux.then_some(aux_sum),
            expert_load: load,
        })
    }

    /// Transformer-XL: mean cross-entropy over consecutive held-out segments with a memory of
    /// `mem_len` (0 = none); the training memory is set aside and restored.
    pub fn evaluate_recurrent(&self, data: &TokenData, mem_len: usize) -> Result<Option<f64>> {
        let Some(mem) = self.model.segment_memory() else {
            return Ok(None);
        };
        let (b, t) = (self.cfg.batch_size, self.cfg.block_size);
        let saved = mem.take_memory();
        let train_len = mem.mem_len();
        mem.set_mem_len(mem_len);
        let n = TokenData::segments(&data.val, b, t).min(self.cfg.eval_batches * 4);
        let mut sum = 0.0;
        let mut result = Ok(());
        for i in 0..n {
            let (x, y, _) = TokenData::sequential(&data.val, b, t, i);
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

    /// Mean cross-entropy over `eval_batches · batch_size` fixed held-out windows of `block` tokens
    /// (Transformer-XL: over consecutive segments with its evaluation memory).
    pub fn evaluate(&self, data: &TokenData, block: usize) -> Result<f64> {
        if let Some(mem) = self.model.segment_memory() {
            return Ok(self
                .evaluate_recurrent(data, mem.eval_mem_len())?
                .unwrap_or(f64::NAN));
        }
        let b = self.cfg.batch_size;
        let wins = data.eval_windows(self.cfg.eval_batches * b, block);
        let mut sum = 0.0;
        for chunk in wins.chunks(b) {
            let x: Vec<u32> = chunk.iter().flat_map(|w| w.0.iter().copied()).collect();
            let y: Vec<u32> = chunk.iter().flat_map(|w| w.1.iter().copied()).collect();
            sum += self.losses(x, y, chunk.len(), block)?.ce * chunk.len() as f64;
        }
        Ok(sum / wins.len() as f64)
    }

    /// Trains until `stop_at` steps are complete (or `stop` is raised), writing metrics, plot and
    /// checkpoints into `files`. `on_step` sees every step's report (progress display).
    pub fn run(
        &mut self,
        data: &TokenData,
        stop_at: u64,
        stop: &AtomicBool,
        files: &RunFiles,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<Outcome> {
        data.check(self.cfg.block_size)?;
        if self.model.segment_memory().is_some() {
            for (name, split) in [("training", &data.train), ("held-out", &data.val)] {
                if TokenData::segments(split, self.cfg.batch_size, self.cfg.block_size) == 0 {
                    return Err(TrainError::Data(format!(
                        "the {name} split ({} tokens) cannot hold one segment of train.block_size {} in each of train.batch_size {} streams",
                        split.len(),
                        self.cfg.block_size,
                        self.cfg.batch_size
                    )));
                }
            }
        }
        let resumed = self.step > 0;
        let mut metrics = MetricsFile::open(&files.metrics, resumed.then_some(self.step))?;
        let mut saved_at = self.step;
        while self.step < stop_at {
            if stop.load(Ordering::SeqCst) {
                self.save(&files.checkpoint)?;
                self.plot(files)?;
                return Ok(Outcome::Interrupted);
            }
            let mut r = self.train_step(data)?;
            let s = r.step;
            let last = s == stop_at;
            if s % self.cfg.eval_every == 0 || last {
                r.eval_loss = Some(self.evaluate(data, self.cfg.block_size)?);
                r.eval_loss_no_mem = self.evaluate_recurrent(data, 0)?;
            }
            if s == 1 || s % self.cfg.log_every == 0 || r.eval_loss.is_some() || last {
                metrics.append(&MetricsLine {
                    step: s,
                    loss: r.loss,
                    tokens_per_s: r.tokens_per_s,
                    lr: r.lr,
                    grad_norm: r.grad_norm,
                    eval_loss: r.eval_loss,
                    eval_loss_no_mem: r.eval_loss_no_mem,
                    moe_aux_loss: r.moe_aux_loss,
                    expert_load: r.expert_load.clone(),
                })?;
            }
            on_step(&r);
            if s % self.cfg.checkpoint_every == 0 || last {
                self.save(&files.checkpoint)?;
                saved_at = s;
                self.plot(files)?;
            }
        }
        if saved_at != self.step || !files.checkpoint.is_file() {
            self.save(&files.checkpoint)?;
            self.plot(files)?;
        }
        Ok(if stop.load(Ordering::SeqCst) {
            Outcome::Interrupted
        } else {
            Outcome::Finished
        })
    }

    fn plot(&self, files: &RunFiles) -> Result<()> {
        let lines = if files.metrics.is_file() {
            read_lines(&files.metrics)?
        } else {
            Vec::new()
        };
        plot_loss(&lines, &files.plot)
    }
}
