//! The training loop every family shares: an [`Objective`] builds each micro-batch's loss; the
//! [`Engine`] owns the trainable parameters, the optimizer, the step counter and the data RNG, and
//! does accumulation, clipping, the scheduled update, evaluation, metrics, checkpoints and Ctrl-C.
//!
//! Exact resume: a checkpoint holds the weights, the optimizer state, the step, the RNG state and the
//! objective's own state (e.g. Transformer-XL's memory). An objective draws every random choice
//! (batch, masking, corruption) from the RNG the engine hands it, so N steps straight equal N/2
//! steps, resume, N/2 steps, bit for bit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use canon_models::VarStore;
use canon_nn::SplitMix64;

use crate::checkpoint::{self, TrainState};
use crate::metrics::{MetricsFile, MetricsLine, plot_loss, read_lines};
use candle_core::{CpuStorage, DType, Storage};
use rayon::prelude::*;

use crate::optim::{Optimizer, Param, clip_factor};
use crate::trainer::{Outcome, RunFiles, StepReport};
use crate::{Result, TrainConfig, TrainError};

/// Named values: training terms or held-out metrics.
pub type Metrics = Vec<(String, f64)>;

/// The loss of one micro-batch.
pub struct BatchLoss {
    /// Scalar tensor the gradients come from (graph kept).
    pub total: Tensor,
    /// The main reported loss (e.g. mean cross-entropy, nats/token), logged as `loss`.
    pub loss: f64,
    /// Tokens this batch processed (for tokens/s).
    pub tokens: usize,
    /// Further terms to log by name, e.g. `("mlm_loss", 2.1)`; they become extra keys of the
    /// step's `metrics.jsonl` line (averaged over the step's micro-batches).
    pub extra: Vec<(String, f64)>,
}

/// What a family trains on: builds losses from its data and evaluates on held-out data.
pub trait Objective {
    /// The loss of training micro-batch `index` (0, 1, 2, … over the whole run, counting the
    /// micro-batches of gradient accumulation), drawing any randomness from `rng`.
    fn train_batch(&mut self, rng: &mut SplitMix64, index: u64) -> Result<BatchLoss>;
    /// Called once at the start of every optimizer step, before its micro-batches: a hook for
    /// constraints applied to the parameters between updates (TransE projects its entity vectors
    /// back onto the unit sphere here).
    fn before_step(&mut self) -> Result<()> {
        Ok(())
    }
    /// Held-out evaluation: `("eval_loss", x)` first, then any other metrics
    /// (`("eval_accuracy", 0.83)`); all are logged.
    fn evaluate(&mut self) -> Result<Vec<(String, f64)>>;
    /// Non-parameter state to checkpoint (e.g. a recurrent memory).
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    /// Restores what `state` saved.
    fn restore_state(&mut self, _state: Vec<(String, Tensor)>) -> Result<()> {
        Ok(())
    }
    /// GLaM: per MoE layer, the fraction of the last batch's tokens routed to each expert.
    fn expert_load(&self) -> Vec<Vec<f32>> {
        Vec::new()
    }
}

/// Backward of `total`, adding each parameter's gradient into `grads` (one flat vector per
/// parameter). A parameter that did not take part (an expert no token reached) adds nothing.
pub fn add_grads(total: &Tensor, params: &[Param], grads: &mut [Vec<f32>]) -> Result<()> {
    accumulate_grads(total, params, grads, false)
}

/// The gradients of `total` with respect to `params`, added into `grads` (`assign`: written
/// over them, as `0 + g` would be, so a reused buffer needs no zeroing pass). Each gradient is read
/// in place from the backward's tensor when it is contiguous f32 (no copy) and added on the rayon
/// pool in fixed chunks (the same sums at any thread count).
pub fn accumulate_grads(
    total: &Tensor,
    params: &[Param],
    grads: &mut [Vec<f32>],
    assign: bool,
) -> Result<()> {
    const CHUNK: usize = 1 << 14;
    let gs = total.backward()?;
    for (p, g) in params.iter().zip(grads.iter_mut()) {
        let Some(gr) = gs.get(p.var.as_tensor()) else {
            if assign {
                g.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
            }
            continue;
        };
        let add = |src: &[f32], g: &mut [f32]| {
            if src.len() != g.len() {
                return Err(TrainError::Data(format!(
                    "gradient of {}: {} values for {} parameters",
                    p.name,
                    src.len(),
                    g.len()
                )));
            }
            g.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(a, b)| {
                    if assign {
                        // `b + 0.0` is `0.0 + b` bit for bit (a −0 gradient becomes +0).
                        a.iter_mut().zip(b).for_each(|(a, &b)| *a = b + 0.0);
                    } else {
                        a.iter_mut().zip(b).for_each(|(a, &b)| *a += b);
                    }
                });
            Ok(())
        };
        let (storage, layout) = gr.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => add(&v[a..b], g)?,
            _ => {
                drop(storage);
                let gv: Vec<f32> = gr.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                add(&gv, g)?
            }
        }
    }
    Ok(())
}

/// A parameter's gradient as the optimizer reads it: the backward's own tensor, read in place when
/// it is contiguous f32, else an owned copy (zeros where the parameter took no part).
pub enum GradView<'a> {
    /// The store's tensor (its storage's read guard) and the parameter's range in it.
    Store(
        Box<dyn std::ops::Deref<Target = Storage> + 'a>,
        usize,
        usize,
    ),
    Owned(Vec<f32>),
}

impl AsRef<[f32]> for GradView<'_> {
    fn as_ref(&self) -> &[f32] {
        match self {
            GradView::Store(s, a, b) => match &***s {
                Storage::Cpu(CpuStorage::F32(v)) => v.get(*a..*b).unwrap_or(&[]),
                _ => &[],
            },
            GradView::Owned(v) => v,
        }
    }
}

/// The gradients of `params` in a backward's store, without copying them: a step with one
/// micro-batch updates straight from the store, so no second gradient buffer of the model's size
/// is ever held. The same values as [`accumulate_grads`] with `assign` (candle's gradient of a
/// variable is `0 + g`, never −0, so `+ 0.0` changes no bit).
pub fn grad_views<'a>(gs: &'a GradStore, params: &[Param]) -> Result<Vec<GradView<'a>>> {
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        let n = p.var.elem_count();
        let Some(gr) = gs.get(p.var.as_tensor()) else {
            out.push(GradView::Owned(vec![0f32; n]));
            continue;
        };
        if gr.elem_count() != n {
            return Err(TrainError::Data(format!(
                "gradient of {}: {} values for {n} parameters",
                p.name,
                gr.elem_count()
            )));
        }
        let (storage, layout) = gr.storage_and_layout();
        let offsets = layout.contiguous_offsets();
        match (&*storage, offsets) {
            (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) => {
                out.push(GradView::Store(Box::new(storage), a, b))
            }
            _ => {
                drop(storage);
                let gv: Vec<f32> = gr.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                out.push(GradView::Owned(gv.iter().map(|&x| x + 0.0).collect()));
            }
        }
    }
    Ok(out)
}

/// Clips `grads` to the configured global norm and takes one optimizer step; returns the norm.
pub fn clip_and_step(
    params: &[Param],
    opt: &mut Optimizer,
    grads: Vec<Vec<f32>>,
    lr: f64,
    clip: Option<f64>,
) -> Result<f64> {
    clip_and_step_in_place(params, opt, &grads, lr, clip)
}

/// [`clip_and_step`] on borrowed gradients: the clipping factor is applied as the optimizer reads
/// each gradient (the same f32 products as scaling the buffers first), so they stay unchanged.
pub fn clip_and_step_in_place<G: AsRef<[f32]>>(
    params: &[Param],
    opt: &mut Optimizer,
    grads: &[G],
    lr: f64,
    clip: Option<f64>,
) -> Result<f64> {
    let (norm, scale) = clip_factor(grads, clip);
    opt.step_scaled(params, grads, scale, lr)?;
    Ok(norm)
}

/// One optimizer step on the gradients of `total` (fresh buffers), clipped to `clip`.
pub fn step_on_loss(
    total: &Tensor,
    params: &[Param],
    opt: &mut Optimizer,
    lr: f64,
    clip: Option<f64>,
) -> Result<f64> {
    let mut grads: Vec<Vec<f32>> = params
        .iter()
        .map(|p| vec![0f32; p.var.elem_count()])
        .collect();
    add_grads(total, params, &mut grads)?;
    clip_and_step(params, opt, grads, lr, clip)
}

/// Prints a memory mark ([`crate::alloc::mem_mark`]) when dropped.
struct MemMarkOnDrop(&'static str);

impl Drop for MemMarkOnDrop {
    fn drop(&mut self) {
        crate::alloc::mem_mark(self.0);
    }
}

pub struct Engine {
    pub params: Vec<Param>,
    pub opt: Optimizer,
    pub cfg: TrainConfig,
    /// Steps completed.
    pub step: u64,
    pub rng: SplitMix64,
    /// Gradient buffers, one per parameter, reused from step to step.
    grads: Vec<Vec<f32>>,
}

impl Engine {
    /// `params` are the variables the optimizer updates (all of a model, or only LoRA's A and B).
    pub fn new(params: Vec<Param>, cfg: TrainConfig) -> Result<Self> {
        cfg.validate().map_err(|m| TrainError::Config {
            file: "train config".into(),
            message: m,
        })?;
        if params.is_empty() {
            return Err(TrainError::Config {
                file: "train config".into(),
                message: "nothing to train: the model has no trainable parameters".into(),
            });
        }
        let opt = Optimizer::new(cfg.optimizer, &params);
        // The data order has its own stream, derived from the seed.
        let rng = SplitMix64::new(cfg.seed ^ 0xDA7A_0D3D_5EED_0001);
        crate::alloc::keep_freed_memory();
        Ok(Self {
            params,
            opt,
            cfg,
            step: 0,
            rng,
            grads: Vec::new(),
        })
    }

    /// Every variable of a store, with its weight-decay flag.
    pub fn params_of(store: &VarStore) -> Vec<Param> {
        store
            .vars()
            .into_iter()
            .map(|(name, var, decay)| Param { name, var, decay })
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    pub fn save(&self, obj: &dyn Objective, path: &Path) -> Result<()> {
        let _mark = MemMarkOnDrop("checkpoint saved");
        checkpoint::save(
            path,
            &self.params,
            &self.opt,
            TrainState {
                step: self.step,
                rng_state: self.rng.state,
            },
            &obj.state()?,
        )
    }

    /// Restores weights, optimizer state, step, data order and the objective's state.
    pub fn resume(&mut self, obj: &mut dyn Objective, path: &Path) -> Result<()> {
        let (st, extra) = checkpoint::load(path, &self.params, &mut self.opt)?;
        obj.restore_state(extra)?;
        self.step = st.step;
        self.rng = SplitMix64 {
            state: st.rng_state,
        };
        Ok(())
    }

    /// One optimizer step: `grad_accum` micro-batches, backward, gradients averaged, clipped by
    /// global norm, one fused update at the scheduled learning rate.
    pub fn train_step(&mut self, obj: &mut dyn Objective) -> Result<StepReport> {
        let t0 = Instant::now();
        obj.before_step()?;
        crate::alloc::mem_mark("step start");
        let acc = self.cfg.grad_accum;
        let mut grads = std::mem::take(&mut self.grads);
        // One micro-batch: the update reads the backward's store in place (`grad_views`), and
        // no gradient buffer of the model's size is kept between steps.
        let in_place = acc == 1;
        if in_place {
            grads = Vec::new();
        } else if grads.len() != self.params.len()
            || grads
                .iter()
                .zip(&self.params)
                .any(|(g, p)| g.len() != p.var.elem_count())
        {
            grads = self
                .params
                .iter()
                .map(|p| vec![0f32; p.var.elem_count()])
                .collect();
        }
        let mut loss = 0.0;
        let mut tokens = 0usize;
        let mut extra: Vec<(String, f64)> = Vec::new();
        let mut store: Option<GradStore> = None;
        for micro in 0..acc {
            let index = self.step * acc as u64 + micro as u64;
            let fwd = canon_nn::profile::scope(canon_nn::profile::Phase::StepForward);
            let l = obj.train_batch(&mut self.rng, index)?;
            drop(fwd);
            if !l.loss.is_finite() {
                return Err(TrainError::Diverged {
                    step: self.step + 1,
                    loss: l.loss,
                });
            }
            loss += l.loss / acc as f64;
            tokens += l.tokens;
            for (k, v) in l.extra {
                match extra.iter_mut().find(|(n, _)| *n == k) {
                    Some((_, s)) => *s += v / acc as f64,
                    None => extra.push((k, v / acc as f64)),
                }
            }
            let total = if acc > 1 {
                (l.total / acc as f64)?
            } else {
                l.total
            };
            crate::alloc::mem_mark("forward done");
            let _bwd = canon_nn::profile::scope(canon_nn::profile::Phase::StepBackward);
            if in_place {
                store = Some(total.backward()?);
            } else {
                accumulate_grads(&total, &self.params, &mut grads, micro == 0)?;
            }
            crate::alloc::mem_mark("backward done");
            // `total` (and with it the graph's activations) goes here, before the update.
        }
        let lr = self
            .cfg
            .schedule
            .lr(self.step, self.cfg.max_steps, self.cfg.lr);
        let upd = canon_nn::profile::scope(canon_nn::profile::Phase::Optimizer);
        let clip = self.cfg.grad_clip;
        let grad_norm = match &store {
            Some(gs) => {
                let views = grad_views(gs, &self.params)?;
                clip_and_step_in_place(&self.params, &mut self.opt, &views, lr, clip)?
            }
            None => clip_and_step_in_place(&self.params, &mut self.opt, &grads, lr, clip)?,
        };
        drop(store);
        drop(upd);
        crate::alloc::mem_mark("update done");
        self.grads = grads;
        self.step += 1;
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        Ok(StepReport {
            step: self.step,
            loss,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / secs,
            tokens: tokens as u64,
            eval_loss: None,
            eval: Vec::new(),
            extra,
            expert_load: obj.expert_load(),
        })
    }

    /// Runs `obj.evaluate()` and splits `eval_loss` from the other metrics.
    pub fn evaluate(obj: &mut dyn Objective) -> Result<(Option<f64>, Metrics)> {
        let mut all = obj.evaluate()?;
        let pos = all.iter().position(|(k, _)| k == "eval_loss");
        let loss = pos.map(|i| all.remove(i).1);
        Ok((loss, all))
    }

    /// Trains until `stop_at` steps are complete (or `stop` is raised), evaluating every
    /// `eval_every` steps and at the end, writing metrics, plot and checkpoints into `files`.
    /// `on_step` sees every step's report (progress display).
    pub fn run(
        &mut self,
        obj: &mut dyn Objective,
        stop_at: u64,
        stop: &AtomicBool,
        files: &RunFiles,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<Outcome> {
        let resumed = self.step > 0;
        let mut metrics = MetricsFile::open(&files.metrics, resumed.then_some(self.step))?;
        // Token and time counters continue from the last line a resumed run kept.
        let kept = if resumed && files.metrics.is_file() {
            read_lines(&files.metrics)?.pop()
        } else {
            None
        };
        let mut tokens_seen = kept.as_ref().and_then(|l| l.tokens).unwrap_or(0);
        let elapsed_before = kept.as_ref().and_then(|l| l.elapsed_s).unwrap_or(0.0);
        let started = Instant::now();
        let mut saved_at = self.step;
        while self.step < stop_at {
            if stop.load(Ordering::SeqCst) {
                self.save(obj, &files.checkpoint)?;
                self.plot(files)?;
                return Ok(Outcome::Interrupted);
            }
            let mut r = self.train_step(obj)?;
            let s = r.step;
            tokens_seen += r.tokens;
            let last = s == stop_at;
            if s % self.cfg.eval_every == 0 || last {
                // Phase timings (`canon_nn::profile`) cover training steps only.
                let timing = canon_nn::profile::enabled();
                canon_nn::profile::enable(false);
                let e = Self::evaluate(obj);
                canon_nn::profile::enable(timing);
                crate::alloc::mem_mark("evaluation done");
                (r.eval_loss, r.eval) = e?;
            }
            if s == 1 || s % self.cfg.log_every == 0 || r.eval_loss.is_some() || last {
                metrics.append(&MetricsLine {
                    step: s,
                    loss: r.loss,
                    tokens_per_s: r.tokens_per_s,
                    lr: r.lr,
                    grad_norm: r.grad_norm,
                    eval_loss: r.eval_loss,
                    tokens: Some(tokens_seen),
                    elapsed_s: Some(elapsed_before + started.elapsed().as_secs_f64()),
                    extra: r.extra.iter().chain(&r.eval).cloned().collect(),
                    expert_load: r.expert_load.clone(),
                })?;
            }
            on_step(&r);
            if s % self.cfg.checkpoint_every == 0 || last {
                self.save(obj, &files.checkpoint)?;
                saved_at = s;
                self.plot(files)?;
            }
        }
        if saved_at != self.step || !files.checkpoint.is_file() {
            self.save(obj, &files.checkpoint)?;
            self.plot(files)?;
        }
        Ok(if stop.load(Ordering::SeqCst) {
            Outcome::Interrupted
        } else {
            Outcome::Finished
        })
    }
}

impl Engine {
    /// Redraws the run's loss figure from its metrics file.
    fn plot(&self, files: &RunFiles) -> Result<()> {
        let lines = if files.metrics.is_file() {
            read_lines(&files.metrics)?
        } else {
            Vec::new()
        };
        let run = files
            .plot
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let c = &self.cfg;
        let foot = format!(
            "run {run} · seed {} · batch {} × {} tokens × {} accumulation · peak lr {}",
            c.seed, c.batch_size, c.block_size, c.grad_accum, c.lr
        );
        plot_loss(&lines, &files.plot, &format!("Loss: {run}"), &[foot])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// `grad_views` reads the same bits `accumulate_grads` writes (with `assign`), including a
    /// parameter the loss does not reach (zeros) and one used twice (its two contributions).
    #[test]
    fn gradients_read_in_place_equal_the_assigned_buffers() {
        let mk = |name: &str, v: Vec<f32>| Param {
            name: name.into(),
            var: Var::from_tensor(&Tensor::new(v.as_slice(), &Device::Cpu).unwrap()).unwrap(),
            decay: false,
        };
        let a = mk("a", (0..50_000).map(|i| (i as f32 * 0.37).sin()).collect());
        let b = mk("b", (0..50_000).map(|i| (i as f32 * 0.11).cos()).collect());
        let unused = mk("unused", vec![1.0; 7]);
        let params = vec![a, b, unused];
        let loss = || -> Tensor {
            let (a, b) = (params[0].var.as_tensor(), params[1].var.as_tensor());
            let ab = (a * b).unwrap();
            ((&ab * a).unwrap().sum_all().unwrap() - (b.sqr().unwrap().sum_all().unwrap() * 0.5))
                .unwrap()
        };
        let mut bufs: Vec<Vec<f32>> = params
            .iter()
            .map(|p| vec![f32::NAN; p.var.elem_count()])
            .collect();
        accumulate_grads(&loss(), &params, &mut bufs, true).unwrap();
        let gs = loss().backward().unwrap();
        let views = grad_views(&gs, &params).unwrap();
        for (v, b) in views.iter().zip(&bufs) {
            let got: Vec<u32> = v.as_ref().iter().map(|x| x.to_bits()).collect();
            let want: Vec<u32> = b.iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want);
        }
        assert!(views[2].as_ref().iter().all(|&x| x.to_bits() == 0));
    }
}
