//! Microbenchmark of decoding's attention on one thread: `attention::one_row` (one query row of
//! every head against a cache of `keys` positions, the loop the batched decode step runs per
//! sequence), on an f16 and an f32 cache.
//!
//! Usage: `cargo run --release -p canon-nn --example decode_attention [heads kv_heads head_dim keys]`
//! (default SmolLM2-135M's 9 3 64 and 100 keys). Prints the best µs per call over 7 runs.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use canon_nn::attention::one_row;

fn best(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let (mut n, t0) = (0u32, Instant::now());
        while t0.elapsed() < Duration::from_millis(50) {
            f();
            n += 1;
        }
        best = best.min(t0.elapsed().as_secs_f64() / f64::from(n));
    }
    best * 1e6
}

fn main() -> candle_core::Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("error: expected counts (heads kv_heads head_dim keys), found {s:?}");
                std::process::exit(2)
            })
        })
        .collect();
    let (h, hkv, d, n) = match a.as_slice() {
        [] => (9, 3, 64, 100),
        [h, hkv, d, n] if *hkv > 0 && *h % *hkv == 0 && *n > 0 && *d > 0 => (*h, *hkv, *d, *n),
        _ => {
            eprintln!(
                "error: expected four counts: heads kv_heads head_dim keys (heads a multiple of kv_heads)"
            );
            std::process::exit(2)
        }
    };
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (1, h, 1, d), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, hkv, n, d), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (1, hkv, n, d), &dev)?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; h * d];
    for dt in [DType::F16, DType::F32] {
        let (k, v) = (k.to_dtype(dt)?, v.to_dtype(dt)?);
        let us = best(|| {
            if !one_row(&q, &k, &v, 0, scale, &mut out) {
                eprintln!("error: one_row refused the shapes");
                std::process::exit(1)
            }
        });
        println!(
            "heads {h}, K/V heads {hkv}, width {d}, {n} keys, {dt:?} cache: {us:.2} µs a row ({:.1} ns a head and key)",
            us * 1e3 / (h * n) as f64
        );
    }
    Ok(())
}
