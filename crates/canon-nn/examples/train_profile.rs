//! Where a training step's time goes, by phase: each phase of one step (matmuls, attention,
//! softmax, norms, activations, cross-entropy) runs alone on the step's shapes, forward and then
//! forward + backward, and is scaled by how often a step runs it. Two shapes: nanoGPT's
//! shakespeare-char model (6 layers, 384 wide, batch 8 × 256) and a SmolLM2-135M LoRA step (30
//! layers, 576 wide, GQA 9/3 heads, SwiGLU 1536, vocabulary 49,152, rank-8 adapters on all seven
//! projections over a frozen f32 base, batch 4 × 128). Where a fused kernel and the composed candle
//! ops both exist, both are timed (the composed rows, indented or marked, are not in the total).
//!
//! ```sh
//! cargo run --release -p canon-nn --example train_profile -- [reps] [threads] [all|nanogpt|lora]
//! ```
//!
//! Wall-clock medians: on a shared machine compare figures taken in the same run only. AdamW and
//! the data pipeline live outside this crate and are not in the table.

use std::time::Instant;

use candle_core::{D, Device, Tensor, Var};
use canon_nn::{AttnMask, Linear, Lora, Weight, attention, train_ops};

type Res<T> = candle_core::Result<T>;

fn randn(shape: &[usize], seed: u64, scale: f64) -> Res<Tensor> {
    let mut rng = canon_nn::SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn var(shape: &[usize], seed: u64, scale: f64) -> Res<Var> {
    Var::from_tensor(&randn(shape, seed, scale)?)
}

/// Median milliseconds of `f` (forward) and of `f` then backward.
fn time<F: Fn() -> Res<Tensor>>(reps: usize, f: F) -> Res<(f64, f64)> {
    let mut fwd = Vec::new();
    let mut both = Vec::new();
    // One untimed run warms the allocator and the thread pool.
    f()?.sum_all()?.backward()?;
    for _ in 0..reps {
        let t = Instant::now();
        drop(f()?);
        fwd.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let y = f()?;
        y.sum_all()?.backward()?;
        both.push(t.elapsed().as_secs_f64() * 1e3);
        drop(y);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((med(fwd), med(both)))
}

struct Row {
    phase: String,
    per_step: usize,
    fwd: f64,
    both: f64,
}

fn print(title: &str, rows: &[Row], fused_only: &[&str]) {
    println!("\n{title}");
    println!(
        "| phase | per step | fwd ms | fwd+bwd ms | step ms | share |\n|---|---|---|---|---|---|"
    );
    let counted = |r: &&Row| !fused_only.iter().any(|p| r.phase.starts_with(p));
    let total: f64 = rows
        .iter()
        .filter(counted)
        .map(|r| r.both * r.per_step as f64)
        .sum();
    for r in rows {
        let step = r.both * r.per_step as f64;
        let share = if counted(&r) {
            format!("{:.1}%", 100.0 * step / total)
        } else {
            "(not in total)".into()
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {share} |",
            r.phase, r.per_step, r.fwd, r.both, step
        );
    }
    println!("| sum of counted phases | | | | {total:.1} | 100% |");
}

fn nanogpt(reps: usize) -> Res<()> {
    let (b, t, d, h, ff, v, layers) = (8usize, 256usize, 384usize, 6usize, 1536usize, 65usize, 6);
    let hd = d / h;
    let n = b * t;
    let x = var(&[n, d], 1, 1.0)?;
    let mut rows = Vec::new();
    let mut add = |phase: &str, per_step: usize, (fwd, both): (f64, f64)| {
        rows.push(Row {
            phase: phase.into(),
            per_step,
            fwd,
            both,
        })
    };
    let w_ln = var(&[d], 2, 1.0)?;
    add(
        "layer norm (fused)",
        2 * layers + 1,
        time(reps, || train_ops::layer_norm(&x, &w_ln, None, 1e-5))?,
    );
    let ln = canon_nn::LayerNorm::new(w_ln.as_tensor().clone(), None, 1e-5);
    add(
        "layer norm (composed)",
        2 * layers + 1,
        time(reps, || ln.forward_composed(&x))?,
    );
    for (name, o, i) in [
        ("matmul qkv", 3 * d, d),
        ("matmul attn out", d, d),
        ("matmul fc1", ff, d),
        ("matmul fc2", d, ff),
    ] {
        let xi = var(&[n, i], 3, 1.0)?;
        let w = var(&[o, i], 4, 0.02)?;
        let lin = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
        add(name, layers, time(reps, || lin.forward(xi.as_tensor()))?);
        if name == "matmul fc1" {
            add(
                "  fc1 as candle's matmul by Wᵀ",
                layers,
                time(reps, || xi.as_tensor().matmul(&w.as_tensor().t()?))?,
            );
        }
    }
    let q = var(&[b, h, t, hd], 5, 1.0)?;
    let k = var(&[b, h, t, hd], 6, 1.0)?;
    let vv = var(&[b, h, t, hd], 7, 1.0)?;
    add(
        "attention (tiled op, causal)",
        layers,
        time(reps, || {
            canon_nn::attention(&q, &k, &vv, AttnMask::Causal { offset: 0 })
        })?,
    );
    add(
        "  attention composed (QKᵀ, mask, softmax, PV)",
        layers,
        time(reps, || {
            canon_nn::attention::attention_composed(&q, &k, &vv, AttnMask::Causal { offset: 0 })
        })?,
    );
    let xf = var(&[n, ff], 9, 1.0)?;
    add(
        "GELU (fused)",
        layers,
        time(reps, || train_ops::gelu(&xf, false))?,
    );
    add(
        "GELU (composed)",
        layers,
        time(reps, || xf.as_tensor().gelu_erf())?,
    );
    let wte = var(&[v, d], 10, 0.02)?;
    let targets = Tensor::from_vec(
        (0..n as u32).map(|i| i % v as u32).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )?;
    add(
        "matmul head (tied)",
        1,
        time(reps, || x.as_tensor().matmul(&wte.as_tensor().t()?))?,
    );
    let logits = var(&[n, v], 11, 1.0)?;
    add(
        "cross-entropy (fused log-sum-exp)",
        1,
        time(reps, || {
            Ok(canon_nn::lm_loss(&logits, &targets, 0.0)?.cross_entropy)
        })?,
    );
    add(
        "cross-entropy (composed)",
        1,
        time(reps, || composed_ce(&logits, &targets))?,
    );
    add(
        "residual adds",
        2 * layers,
        time(reps, || x.as_tensor() + x.as_tensor())?,
    );
    print(
        "nanoGPT shakespeare-char step (batch 8 × 256, 6 layers)",
        &rows,
        &[
            "layer norm (composed)",
            "  ",
            "GELU (composed)",
            "cross-entropy (composed)",
        ],
    );
    Ok(())
}

fn composed_ce(logits: &Tensor, targets: &Tensor) -> Res<Tensor> {
    let lse = canon_nn::loss::logsumexp_composed(logits)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    (lse - picked)?.mean_all()
}

fn lora_linear(o: usize, i: usize, seed: u64) -> Res<(Linear, Var, Var)> {
    let mut l = Linear::new(Weight::Dense(randn(&[o, i], seed, 0.02)?), None);
    let a = var(&[8, i], seed + 1, 0.02)?;
    let bb = var(&[o, 8], seed + 2, 0.02)?;
    l.set_lora(Lora {
        a: a.as_tensor().clone(),
        b: bb.as_tensor().clone(),
        scale: 2.0,
        dropout: None,
    })?;
    Ok((l, a, bb))
}

fn smollm_lora(reps: usize) -> Res<()> {
    let (b, t, d, h, hkv, hd, ff, v, layers) = (4usize, 128usize, 576, 9, 3, 64, 1536, 49152, 30);
    let n = b * t;
    let x = var(&[n, d], 1, 1.0)?;
    let mut rows = Vec::new();
    let mut add = |phase: &str, per_step: usize, (fwd, both): (f64, f64)| {
        rows.push(Row {
            phase: phase.into(),
            per_step,
            fwd,
            both,
        })
    };
    let norm = canon_nn::RmsNorm::new(randn(&[d], 2, 1.0)?, 1e-5);
    add(
        "RMS norm (fused)",
        2 * layers + 1,
        time(reps, || train_ops::rms_norm(&x, &norm.weight, 1e-5))?,
    );
    add(
        "RMS norm (composed)",
        2 * layers + 1,
        time(reps, || norm.forward_composed(&x))?,
    );
    for (name, o, i) in [
        ("LoRA linear q", h * hd, d),
        ("LoRA linear k", hkv * hd, d),
        ("LoRA linear v", hkv * hd, d),
        ("LoRA linear o", d, h * hd),
        ("LoRA linear gate", ff, d),
        ("LoRA linear up", ff, d),
        ("LoRA linear down", d, ff),
    ] {
        let xi = var(&[n, i], 3, 1.0)?;
        let (l, _a, _b) = lora_linear(o, i, 40)?;
        add(name, layers, time(reps, || l.forward(&xi))?);
    }
    let q = var(&[b, h, t, hd], 5, 1.0)?;
    let k = var(&[b, hkv, t, hd], 6, 1.0)?;
    let vv = var(&[b, hkv, t, hd], 7, 1.0)?;
    add(
        "attention (GQA, tiled op)",
        layers,
        time(reps, || {
            attention(&q, &k, &vv, AttnMask::Causal { offset: 0 })
        })?,
    );
    add(
        "  attention composed",
        layers,
        time(reps, || {
            canon_nn::attention::attention_composed(&q, &k, &vv, AttnMask::Causal { offset: 0 })
        })?,
    );
    let a = var(&[n, ff], 8, 1.0)?;
    let u = var(&[n, ff], 9, 1.0)?;
    add(
        "SiLU·mul (fused)",
        layers,
        time(reps, || train_ops::silu_mul(&a, &u))?,
    );
    add(
        "SiLU·mul (composed)",
        layers,
        time(reps, || a.as_tensor().silu()? * u.as_tensor())?,
    );
    let emb = randn(&[v, d], 10, 0.02)?;
    let head = Weight::Dense(emb);
    add(
        "head matmul (frozen tied embedding)",
        1,
        time(reps, || head.matmul_t(&x))?,
    );
    let logits = var(&[n, v], 11, 1.0)?;
    let targets = Tensor::from_vec(
        (0..n as u32)
            .map(|i| (i * 7919) % v as u32)
            .collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )?;
    add(
        "cross-entropy (fused log-sum-exp)",
        1,
        time(reps, || {
            Ok(canon_nn::lm_loss(&logits, &targets, 0.0)?.cross_entropy)
        })?,
    );
    add(
        "cross-entropy (composed)",
        1,
        time(reps, || composed_ce(&logits, &targets))?,
    );
    let rope = canon_nn::Rope::new(
        hd,
        t,
        10000.0,
        canon_nn::RopeLayout::HalfSplit,
        &Device::Cpu,
    )?;
    add(
        "rotary embedding (q and k)",
        layers,
        time(reps, || {
            let q = rope.apply(&q, 0)?;
            let k = rope.apply(&k, 0)?;
            q.sum_keepdim(D::Minus1)?.sum_all()? + k.sum_keepdim(D::Minus1)?.sum_all()?
        })?,
    );
    add(
        "  rotary embedding composed",
        layers,
        time(reps, || {
            let q = rope.apply_composed(&q, 0)?;
            let k = rope.apply_composed(&k, 0)?;
            q.sum_keepdim(D::Minus1)?.sum_all()? + k.sum_keepdim(D::Minus1)?.sum_all()?
        })?,
    );
    add(
        "residual adds",
        2 * layers,
        time(reps, || x.as_tensor() + x.as_tensor())?,
    );
    print(
        "SmolLM2-135M LoRA step, f32 base (batch 4 × 128, 30 layers, rank 8 on all projections)",
        &rows,
        &[
            "RMS norm (composed)",
            "  ",
            "SiLU·mul (composed)",
            "cross-entropy (composed)",
        ],
    );
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    if let Some(th) = args.get(2).and_then(|s| s.parse::<usize>().ok()) {
        // candle's kernels and rayon read these once, at first use.
        // SAFETY: no other thread exists yet.
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", th.to_string());
            std::env::set_var("CANDLE_NUM_THREADS", th.to_string());
        }
    }
    let which = args.get(3).map(String::as_str).unwrap_or("all");
    println!("train_profile: {reps} repetitions, medians");
    if which != "lora" {
        nanogpt(reps)?;
    }
    if which != "nanogpt" {
        smollm_lora(reps)?;
    }
    Ok(())
}
