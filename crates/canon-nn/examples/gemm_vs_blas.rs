//! The nanoGPT step's matrix products alone, on the `gemm` crate as the training ops call it
//! (`y = x Wᵀ`, `dx = g W`, `dW = gᵀ x`), for comparison with a BLAS on the same shapes
//! (`bench/gemm_vs_torch.py` runs PyTorch's). Prints the median milliseconds and GFLOP/s.
//!
//! ```sh
//! cargo run --release -p canon-nn --example gemm_vs_blas -- [reps] [threads]
//! ```

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use canon_nn::{Linear, Weight};

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    if let Some(th) = args.get(2).and_then(|s| s.parse::<usize>().ok()) {
        // SAFETY: no other thread exists yet.
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", th.to_string());
            std::env::set_var("CANDLE_NUM_THREADS", th.to_string());
        }
    }
    let n = 8 * 256;
    for (name, o, i) in [
        ("qkv", 1152, 384),
        ("attn out", 384, 384),
        ("fc1", 1536, 384),
        ("fc2", 384, 1536),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, i), &Device::Cpu)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.02, (o, i), &Device::Cpu)?)?;
        let g = Tensor::randn(0f32, 1.0, (n, o), &Device::Cpu)?;
        let lin = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
        let mut fwd = Vec::new();
        let mut both = Vec::new();
        for _ in 0..reps + 1 {
            let t = Instant::now();
            let y = lin.forward(x.as_tensor())?;
            fwd.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let y2 = lin.forward(x.as_tensor())?;
            let _grads = (y2 * &g)?.sum_all()?.backward()?;
            both.push(t.elapsed().as_secs_f64());
            drop(y);
        }
        let med = |v: &mut Vec<f64>| {
            v.remove(0);
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (f, b) = (med(&mut fwd), med(&mut both));
        let flop = 2.0 * (n * o * i) as f64;
        println!(
            "{name:>9} [{n}x{i}]·[{i}x{o}]: fwd {:.1} ms ({:.1} GFLOP/s), fwd+bwd {:.1} ms ({:.1} GFLOP/s)",
            f * 1e3,
            flop / f / 1e9,
            b * 1e3,
            3.0 * flop / b / 1e9
        );
    }
    Ok(())
}
