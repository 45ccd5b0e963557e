//! Times the phases of one training step of the nanogpt-bench shape (forward, backward, gradient
//! extraction, optimizer) on random tokens, as `Engine::train_step` runs them (reused gradient
//! buffers, clipping folded into the update):
//!
//! ```sh
//! cargo run --release -p canon-train --example step_profile -- [threads] [steps]
//! ```
//!
//! `CANON_STEP_PROFILE_MALLOC=default` leaves the C allocator's settings alone (see
//! `canon_train::alloc`), to compare.

use std::time::Instant;

use rayon::prelude::*;

use candle_core::{Device, Tensor};
use canon_models::ModelConfig;
use canon_models::gpt::{BlockStyle, FfnKind, GptConfig, NormKind, PosKind};
use canon_nn::{Activation, SplitMix64, lm_loss};
use canon_train::engine::clip_and_step_in_place;
use canon_train::optim::{Optimizer, OptimizerConfig, Param};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let steps: usize = args.next().map_or(Ok(6), |a| a.parse())?;
    // candle's kernels read these at first use, as `canon --threads` sets them (unless the
    // environment already does, to compare settings).
    for key in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(key).is_none() {
            // SAFETY: no other thread exists yet.
            unsafe { std::env::set_var(key, threads.to_string()) };
        }
    }
    // By default the steps run on the main thread, which hands each parallel kernel to rayon's
    // workers and waits, as `canon train` runs them; `CANON_STEP_PROFILE_POOL=1` runs them on a
    // worker of a pool of `threads` threads instead (the worker takes part in every kernel).
    if std::env::var("CANON_STEP_PROFILE_POOL").is_ok_and(|v| v == "1") {
        eprintln!("steps on a rayon worker");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        pool.install(|| run(threads, steps).map_err(|e| e.to_string()))?;
        return Ok(());
    }
    run(threads, steps)
}

fn run(threads: usize, steps: usize) -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("CANON_STEP_PROFILE_MALLOC").is_ok_and(|v| v == "default") {
        eprintln!("C allocator: default settings");
    } else {
        canon_train::alloc::keep_freed_memory();
    }
    let cfg = GptConfig {
        vocab_size: 104,
        n_layer: 6,
        n_head: 6,
        n_kv_head: None,
        d_model: 384,
        d_ff: 1536,
        max_seq_len: 256,
        block: BlockStyle::PreLn,
        norm: NormKind::LayerNorm,
        norm_bias: false,
        positions: PosKind::Learned,
        ffn: FfnKind::Mlp,
        activation: Activation::Gelu,
        bias: false,
        tie_embeddings: true,
        final_norm: true,
        scaled_residual_init: true,
        init_std: 0.02,
        embed_init_std: None,
        scale_logits: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        moe: None,
        moe_every: 2,
        dropout: 0.0,
    };
    let mc = ModelConfig::Gpt(cfg);
    let store = canon_models::VarStore::new_random(1, mc.init_policy());
    let model = mc.build(&store)?;
    let params: Vec<Param> = store
        .vars()
        .into_iter()
        .map(|(name, var, decay)| Param { name, var, decay })
        .collect();
    let mut opt = Optimizer::new(OptimizerConfig::default(), &params);
    let mut rng = SplitMix64::new(3);
    let (b, t) = (8, 256);
    let mut grads: Vec<Vec<f32>> = params
        .iter()
        .map(|p| vec![0f32; p.var.elem_count()])
        .collect();
    let mut totals = Vec::new();
    for it in 0..steps {
        // Phase timings (`canon_nn::profile`) from the second step on (the first faults pages in).
        canon_nn::profile::enable(it > 0);
        let x: Vec<u32> = (0..b * t).map(|_| rng.below(104) as u32).collect();
        let y: Vec<u32> = (0..b * t).map(|_| rng.below(104) as u32).collect();
        let t0 = Instant::now();
        let fwd = canon_nn::profile::scope(canon_nn::profile::Phase::StepForward);
        let xt = Tensor::from_vec(x, (b, t), &Device::Cpu)?;
        let yt = Tensor::from_vec(y, b * t, &Device::Cpu)?;
        let out = model.forward_train(&xt)?;
        let logits = out.logits.reshape((b * t, 104))?;
        let l = lm_loss(&logits, &yt, 0.0)?;
        drop(fwd);
        let t1 = Instant::now();
        let bwd = canon_nn::profile::scope(canon_nn::profile::Phase::StepBackward);
        let g = l.cross_entropy.backward()?;
        drop(bwd);
        let t2 = Instant::now();
        for (p, buf) in params.iter().zip(grads.iter_mut()) {
            match g.get(p.var.as_tensor()) {
                Some(gr) => {
                    let (s, lay) = gr.storage_and_layout();
                    let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, e))) =
                        (&*s, lay.contiguous_offsets())
                    else {
                        return Err("expected contiguous f32 gradients".into());
                    };
                    buf.par_chunks_mut(1 << 14)
                        .zip(v[a..e].par_chunks(1 << 14))
                        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d = s + 0.0));
                }
                None => buf.fill(0.0),
            }
        }
        let t3 = Instant::now();
        let upd = canon_nn::profile::scope(canon_nn::profile::Phase::Optimizer);
        clip_and_step_in_place(&params, &mut opt, &grads, 1e-3, Some(1.0))?;
        drop(upd);
        let t4 = Instant::now();
        drop(g);
        let t5 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        eprintln!(
            "iter {it}: forward {:.0} ms, backward {:.0} ms, grads {:.0} ms, optimizer {:.0} ms, drop {:.0} ms, total {:.0} ms = {:.0} tok/s",
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, t3),
            ms(t3, t4),
            ms(t4, t5),
            ms(t0, t5),
            (b * t) as f64 / (t5 - t0).as_secs_f64()
        );
        if it > 0 {
            totals.push((t5 - t0).as_secs_f64());
        }
    }
    canon_nn::profile::enable(false);
    eprintln!(
        "phases over steps 2.. (gradient copy and drop outside them):\n{}",
        canon_nn::profile::table(steps.saturating_sub(1) as u64)
    );
    totals.sort_by(f64::total_cmp);
    if let Some(m) = totals.get(totals.len() / 2) {
        eprintln!(
            "median of steps 2..: {:.0} ms = {:.0} tok/s at {threads} threads",
            m * 1e3,
            (b * t) as f64 / m
        );
    }
    Ok(())
}
