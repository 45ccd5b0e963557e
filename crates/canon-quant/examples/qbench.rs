//! Microbenchmark of the quantized products `y = x Wᵀ`, every format against every instruction
//! set this CPU runs, for a few activation row counts (1 = decoding one stream, 2..8 = batched
//! decoding, 64 = a prompt chunk).
//!
//! Usage: `RAYON_NUM_THREADS=1 cargo run --release -p canon-quant --example qbench [n k]`
//! (default `W: [1536, 2048]`). Prints G multiply-adds per second and the GB/s of weight bytes
//! streamed at one row; the CPU model, the load average and the thread
//! count head the table.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use canon_quant::kernels::kquant::Q8KRows;
use canon_quant::kernels::{
    Kind, Q8Rows, QMatrixRef, matmul, matmul_dequantized, matmul_q8, matmul_q8k, scalar,
};
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

/// Seconds per call: the fastest of 7 trials of about 60 ms each (the machine may be shared;
/// the fastest trial is the one least disturbed).
fn best_time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let (mut iters, t0) = (0u32, Instant::now());
        while t0.elapsed() < Duration::from_millis(60) {
            f();
            iters += 1;
        }
        best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
    }
    best
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, k) = match args.as_slice() {
        [n, k] if k % 32 == 0 => (*n, *k),
        [] => (1536, 2048),
        _ => {
            eprintln!("error: expected `n k` with k a multiple of 32, found {args:?}");
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
    println!(
        "| format | ISA | m=1 | m=2 | m=4 | m=8 | 8-bit m=64 | 8-bit m=256 | GEMM m=256 | GB/s at m=1 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // Deterministic weights and activations.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
    let x: Vec<f32> = (0..256 * k).map(|_| rnd()).collect();
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
        if k % kind.block_len() != 0 {
            continue;
        }
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
            for m in [1usize, 2, 4, 8] {
                let xs = Tensor::from_slice(&x[..m * k], (m, k), &Device::Cpu).expect("x");
                let run = || {
                    let dense = t.dequantize_candle().expect("dequantize");
                    xs.matmul(&dense.t().expect("t")).expect("matmul")
                };
                let secs = best_time(|| {
                    run();
                });
                cells.push(format!("{:.1}", (n * m * k) as f64 / secs / 1e9));
            }
            println!(
                "| {kind:?} | before: dequantize + f32 matmul | {} | — | — | — | |",
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
            for (m, int8) in [
                (1usize, false),
                (2, false),
                (4, false),
                (8, false),
                (64, true),
                (256, true),
                (256, false),
            ] {
                let mut y = vec![0.0f32; m * n];
                let xs = &x[..m * k];
                let secs = if int8 {
                    // The 8-bit path at prompt sizes (`matmul` takes the GEMM from 16 rows).
                    if kind.is_k() {
                        let mut a = Q8KRows::default();
                        best_time(|| {
                            a.quantize_into(xs, m, k);
                            matmul_q8k(isa, w, &a, &mut y)
                        })
                    } else {
                        let mut a = Q8Rows::default();
                        best_time(|| {
                            a.quantize_into(xs, m, k);
                            matmul_q8(isa, w, &a, &mut y)
                        })
                    }
                } else if m >= 16 {
                    // The dequantized-tile f32 GEMM (what the scalar and AVX2 paths take here).
                    best_time(|| matmul_dequantized(w, xs, m, &mut y))
                } else {
                    best_time(|| matmul(isa, w, xs, m, &mut y))
                };
                if m == 1 {
                    gbs = bytes.len() as f64 / secs / 1e9;
                }
                cells.push(format!("{:.1}", (n * m * k) as f64 / secs / 1e9));
            }
            println!("| {kind:?} | {isa:?} | {} | {gbs:.1} |", cells.join(" | "));
        }
    }
    println!(
        "(cells: G multiply-adds per second, n·m·k / time, fastest of 7 trials; from 16 rows `matmul` runs the dequantized f32 GEMM)"
    );
}
