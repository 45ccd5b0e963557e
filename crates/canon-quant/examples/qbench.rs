//! Microbenchmark of the quantized products `y = x Wᵀ`, every format against every instruction
//! set this CPU runs, for a few activation row counts (1 = decoding one stream, 2..8 = batched
//! decoding, 64 = a prompt chunk).
//!
//! Usage: `RAYON_NUM_THREADS=1 cargo run --release -p canon-quant --example qbench [n k]`
//! (default `W: [1536, 2048]`). Prints weight rows × activation rows per second (millions) and
//! the effective GB/s of weight bytes streamed; the CPU model, the load average and the thread
//! count head the table.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use canon_quant::kernels::{Kind, QMatrixRef, matmul, scalar};
use canon_quant::{GgmlTensor, Isa};

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, k) = match args.as_slice() {
        [n, k] if k % 256 == 0 => (*n, *k),
        [] => (1536, 2048),
        _ => {
            eprintln!("error: expected `n k` with k a multiple of 256, found {args:?}");
            std::process::exit(2);
        }
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let threads = canon_quant::pool::pool().threads();
    println!(
        "CPU: {}; threads {threads}; load average {}; W [{n}, {k}]",
        cpu_model(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| format | ISA | m=1 | m=2 | m=4 | m=8 | m=64 | GB/s at m=1 |");
    println!("|---|---|---|---|---|---|---|---|");
    // Deterministic weights and activations.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
    let x: Vec<f32> = (0..64 * k).map(|_| rnd()).collect();
    let kinds = [
        Kind::Q4_0,
        Kind::Q4_1,
        Kind::Q5_0,
        Kind::Q8_0,
        Kind::Q4K,
        Kind::Q5K,
        Kind::Q6K,
    ];
    for kind in kinds {
        let mut bytes = Vec::new();
        scalar::quantize_row(kind, &wf, &mut bytes);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        if kind.is_k() {
            // What a product cost before these kernels: the whole matrix dequantized (candle's
            // block types) and an f32 matrix product, per call.
            let t = GgmlTensor::from_bytes(kind.ggml(), &[n, k], &bytes).expect("tensor");
            let mut cells = Vec::new();
            for m in [1usize, 2, 4, 8, 64] {
                let xs = Tensor::from_slice(&x[..m * k], (m, k), &Device::Cpu).expect("x");
                let run = || {
                    let dense = t.dequantize_candle().expect("dequantize");
                    xs.matmul(&dense.t().expect("t")).expect("matmul")
                };
                run();
                let (mut iters, t0) = (0u32, Instant::now());
                while t0.elapsed() < Duration::from_millis(300) {
                    run();
                    iters += 1;
                }
                let secs = t0.elapsed().as_secs_f64() / iters as f64;
                cells.push(format!("{:.0}", (n * m) as f64 / secs / 1e6));
            }
            println!(
                "| {kind:?} | before: dequantize + f32 matmul | {} | |",
                cells.join(" | ")
            );
        }
        for isa in [Isa::Avx2, Isa::Avx512Vnni] {
            if !isa.available() {
                println!(
                    "| {kind:?} | {isa:?} | SKIPPED: CPU lacks one of {} |",
                    isa.extensions()
                );
                continue;
            }
            let mut cells = Vec::new();
            let mut gbs = 0.0;
            for m in [1usize, 2, 4, 8, 64] {
                let mut y = vec![0.0f32; m * n];
                let xs = &x[..m * k];
                matmul(isa, w, xs, m, &mut y);
                let (mut iters, t0) = (0u32, Instant::now());
                while t0.elapsed() < Duration::from_millis(300) {
                    matmul(isa, w, xs, m, &mut y);
                    iters += 1;
                }
                let secs = t0.elapsed().as_secs_f64() / iters as f64;
                if m == 1 {
                    gbs = bytes.len() as f64 / secs / 1e9;
                }
                cells.push(format!("{:.0}", (n * m) as f64 / secs / 1e6));
            }
            println!("| {kind:?} | {isa:?} | {} | {gbs:.1} |", cells.join(" | "));
        }
    }
    println!(
        "(cells: million weight-row × activation-row products per second; m ≥ 16 on 32-blocks runs the dequantized f32 GEMM)"
    );
}
