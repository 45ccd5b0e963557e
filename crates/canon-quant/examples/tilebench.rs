//! Microbenchmark of the products for several activation rows: the tile kernel on weights
//! repacked once (`tile::packed`) and unpacking them per product (AVX-512 VNNI, `kernels::tile`),
//! against the row-at-a-time 8-bit kernels and the f32 GEMM on dequantized tiles.
//!
//! Usage: `RAYON_NUM_THREADS=1 cargo run --release -p canon-quant --example tilebench [n k]`
//! (default `W: [1536, 576]`). Prints G multiply-adds per second.

use std::time::{Duration, Instant};

use canon_quant::Isa;
use canon_quant::kernels::kquant::Q8KRows;
use canon_quant::kernels::tile::{self, TileActs};
use canon_quant::kernels::{
    Kind, Q8Rows, QMatrixRef, matmul_dequantized, matmul_q8, matmul_q8k, scalar,
};

fn best_time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let (mut iters, t0) = (0u32, Instant::now());
        while t0.elapsed() < Duration::from_millis(40) {
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
        [n, k] if k % 256 == 0 => (*n, *k),
        [] => (1536, 768),
        _ => {
            eprintln!("error: expected `n k` with k a multiple of 256, found {args:?}");
            std::process::exit(2);
        }
    };
    if !Isa::Avx512Vnni.available() {
        eprintln!("error: this CPU lacks AVX-512 VNNI; the tile kernel does not run here");
        std::process::exit(2);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "threads {}; load {}; W [{n}, {k}]; G multiply-adds/s",
        canon_quant::pool::pool().threads(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let ms = [1usize, 2, 4, 8, 16, 64, 256];
    println!(
        "| format | path | {} |",
        ms.iter()
            .map(|m| format!("m={m}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
    let x: Vec<f32> = (0..256 * k).map(|_| rnd()).collect();
    for kind in [
        Kind::Q4_0,
        Kind::Q4_1,
        Kind::Q8_0,
        Kind::Q4K,
        Kind::Q5K,
        Kind::Q6K,
    ] {
        let mut bytes = Vec::new();
        scalar::quantize_row(kind, &wf, &mut bytes);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let packed = tile::packed::Packed::pack(w);
        for path in ["packed", "tile", "8-bit rows", "f32 GEMM"] {
            let mut cells = Vec::new();
            for &m in &ms {
                let xs = &x[..m * k];
                let mut y = vec![0.0f32; m * n];
                let secs = match path {
                    "packed" => match &packed {
                        Some(p) => best_time(|| p.matmul(xs, m, &mut y)),
                        None => f64::NAN,
                    },
                    "tile" => {
                        let mut a = TileActs::default();
                        best_time(|| {
                            a.quantize_into(xs, m, k);
                            tile::matmul(w, &a, &mut y);
                        })
                    }
                    "8-bit rows" if kind.is_k() => {
                        let mut a = Q8KRows::default();
                        best_time(|| {
                            a.quantize_into(xs, m, k);
                            matmul_q8k(Isa::Avx512Vnni, w, &a, &mut y);
                        })
                    }
                    "8-bit rows" => {
                        let mut a = Q8Rows::default();
                        best_time(|| {
                            a.quantize_into(xs, m, k);
                            matmul_q8(Isa::Avx512Vnni, w, &a, &mut y);
                        })
                    }
                    _ => best_time(|| matmul_dequantized(w, xs, m, &mut y)),
                };
                cells.push(format!("{:.1}", (n * m * k) as f64 / secs / 1e9));
            }
            println!("| {kind:?} | {path} | {} |", cells.join(" | "));
        }
    }
}
