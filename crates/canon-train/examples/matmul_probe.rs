//! Probes candle's f32 matmul speed for the shapes of a training step.
use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (2048, 384), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (1536, 384), &Device::Cpu)?;
    let wt = w.t()?.contiguous()?;
    for _ in 0..3 {
        let t0 = Instant::now();
        let _y = x.matmul(&w.t()?)?;
        let t1 = Instant::now();
        let _y2 = x.matmul(&wt)?;
        let t2 = Instant::now();
        let q = Tensor::randn(0f32, 1.0, (8, 6, 256, 64), &Device::Cpu)?;
        let t3 = Instant::now();
        let _s = q.matmul(&q.t()?)?;
        let t4 = Instant::now();
        let f = 2.0 * 2048.0 * 384.0 * 1536.0 / 1e9;
        eprintln!(
            "x·wᵀ (view) {:.1} ms = {:.1} GFLOP/s; x·w (contiguous) {:.1} ms = {:.1} GFLOP/s; batched qkᵀ {:.1} ms = {:.1} GFLOP/s",
            (t1 - t0).as_secs_f64() * 1e3,
            f / (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64() * 1e3,
            f / (t2 - t1).as_secs_f64(),
            (t4 - t3).as_secs_f64() * 1e3,
            2.0 * 48.0 * 256.0 * 256.0 * 64.0 / 1e9 / (t4 - t3).as_secs_f64()
        );
    }
    Ok(())
}
