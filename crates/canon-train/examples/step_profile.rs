//! Times the phases of one training step of the nanogpt-bench shape (forward, backward, gradient
//! extraction, optimizer) on random tokens: `cargo run --release -p canon-train --example step_profile`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use canon_models::ModelConfig;
use canon_models::gpt::{BlockStyle, FfnKind, GptConfig, NormKind, PosKind};
use canon_nn::{Activation, SplitMix64, lm_loss};
use canon_train::optim::{Optimizer, OptimizerConfig, Param, clip_global_norm};

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    for it in 0..4 {
        let x: Vec<u32> = (0..b * t).map(|_| rng.below(104) as u32).collect();
        let y: Vec<u32> = (0..b * t).map(|_| rng.below(104) as u32).collect();
        let t0 = Instant::now();
        let xt = Tensor::from_vec(x, (b, t), &Device::Cpu)?;
        let yt = Tensor::from_vec(y, b * t, &Device::Cpu)?;
        let out = model.forward_train(&xt)?;
        let logits = out.logits.reshape((b * t, 104))?;
        let l = lm_loss(&logits, &yt, 0.0)?;
        let t1 = Instant::now();
        let g = l.cross_entropy.backward()?;
        let t2 = Instant::now();
        let mut grads: Vec<Vec<f32>> = Vec::new();
        for p in &params {
            grads.push(match g.get(p.var.as_tensor()) {
                Some(gr) => gr.flatten_all()?.to_vec1()?,
                None => vec![0.0; p.var.elem_count()],
            });
        }
        let t3 = Instant::now();
        clip_global_norm(&mut grads, Some(1.0));
        opt.step(&params, &grads, 1e-3)?;
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
    }
    Ok(())
}
