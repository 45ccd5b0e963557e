//! The few-row quantized products of batched decoding, timed in CPU time of the calling thread
//! (so that a shared, loaded machine disturbs the figures less than wall time would): `y = x Wᵀ`
//! for 1, 2, 4, 6, 8 and 12 activation rows, on SmolLM2-135M's shapes, with the path `matmul` takes.
//!
//! Usage: `RAYON_NUM_THREADS=1 cargo run --release -p canon-quant --example fewrows [kind]`
//! (kind: q4_0, q4_1 (default), q5_0, q5_1, q8_0, q4_k, q5_k, q6_k). Prints µs per product and per activation row.

use canon_quant::Isa;
use canon_quant::kernels::{
    Kind, Q8Rows, QMatrixRef, matmul, matmul_dequantized, matmul_q8, scalar,
};

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU seconds per call: the median of 9 trials of about 40 ms of CPU time each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut trials = Vec::new();
    for _ in 0..9 {
        let (mut iters, t0) = (0u32, cpu_seconds());
        while cpu_seconds() - t0 < 0.04 {
            f();
            iters += 1;
        }
        trials.push((cpu_seconds() - t0) / iters as f64);
    }
    trials.sort_by(f64::total_cmp);
    trials[trials.len() / 2]
}

fn main() {
    let kind = match std::env::args().nth(1).as_deref() {
        None | Some("q4_1") => Kind::Q4_1,
        Some("q4_0") => Kind::Q4_0,
        Some("q5_0") => Kind::Q5_0,
        Some("q5_1") => Kind::Q5_1,
        Some("q8_0") => Kind::Q8_0,
        Some("q4_k") => Kind::Q4K,
        Some("q5_k") => Kind::Q5K,
        Some("q6_k") => Kind::Q6K,
        Some(other) => {
            eprintln!(
                "error: expected q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k or q6_k, found '{other}'"
            );
            std::process::exit(2);
        }
    };
    let isa = Isa::best();
    // `CANON_FEWROWS=unpacked`: the row-at-a-time kernels even where weights are packed.
    let unpacked = std::env::var("CANON_FEWROWS").as_deref() == Ok("unpacked");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{kind:?} on {isa:?}, {} kernel thread(s), load {}",
        canon_quant::pool::pool().threads(),
        load.trim()
    );
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    println!("| W [n, k] | m=1 µs | m=2 | m=4 | m=6 | m=8 | m=12 | µs/row at m=8 vs m=1 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (n, k) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)] {
        let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..12 * k).map(|_| rnd()).collect();
        let mut bytes = Vec::new();
        scalar::quantize_row(kind, &wf, &mut bytes);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let packed = canon_quant::kernels::tile::packed::Packed::pack(w);
        let mut cells = Vec::new();
        let mut per_row = [0.0f64; 2];
        for m in [1usize, 2, 4, 6, 8, 12] {
            let mut y = vec![0.0f32; m * n];
            let secs = time(|| match &packed {
                Some(p) if !unpacked => p.matmul(&x[..m * k], m, &mut y),
                _ => matmul(isa, w, &x[..m * k], m, &mut y),
            });
            cells.push(format!("{:.0}", secs * 1e6));
            if m == 1 {
                per_row[0] = secs;
            } else if m == 8 {
                per_row[1] = secs / 8.0;
            }
        }
        println!(
            "| [{n}, {k}] | {} | {:.2} |",
            cells.join(" | "),
            per_row[1] / per_row[0]
        );
    }
    // Dequantizing whole rows (QLoRA's input gradient, embedding lookups): from the file's
    // blocks and from the packed copy.
    {
        let (n, k) = (1536, 576);
        let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        let mut bytes = Vec::new();
        scalar::quantize_row(kind, &wf, &mut bytes);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let mut out = vec![0.0f32; n * k];
        let file = time(|| {
            for (r, row) in out.chunks_mut(k).enumerate() {
                canon_quant::kernels::dequantize_row(w, r, row);
            }
        });
        // NaN where the matrix is not packed or its packed rows do not dequantize (K-quants:
        // their rows are read back from the file's blocks).
        let pk = canon_quant::kernels::tile::packed::Packed::pack(w)
            .filter(|p| p.dequantize_rows(0, &mut out))
            .map_or(f64::NAN, |p| {
                time(|| assert!(p.dequantize_rows(0, &mut out)))
            });
        println!(
            "\ndequantize [{n}, {k}]: file blocks {:.0} µs, packed copy {:.0} µs",
            file * 1e6,
            pk * 1e6
        );
    }
    // Prompt chunks: the 8-bit row kernel against the dequantizing f32 GEMM.
    println!("\n| W [n, k] | m | 8-bit µs | GEMM µs | packed µs |");
    println!("|---|---|---|---|---|");
    for (n, k) in [(1536, 576), (49152, 576)] {
        let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..128 * k).map(|_| rnd()).collect();
        let mut bytes = Vec::new();
        scalar::quantize_row(kind, &wf, &mut bytes);
        let w = QMatrixRef {
            kind,
            rows: n,
            cols: k,
            bytes: &bytes,
        };
        let packed = canon_quant::kernels::tile::packed::Packed::pack(w);
        for m in [16usize, 24, 32, 64, 128] {
            let mut y = vec![0.0f32; m * n];
            let xs = &x[..m * k];
            let mut a = Q8Rows::default();
            // The 32-blocks' 8-bit row kernel (the K-quants round activations to Q8_K instead).
            let q8 = if kind.is_k() {
                f64::NAN
            } else {
                time(|| {
                    a.quantize_into(xs, m, k);
                    matmul_q8(isa, w, &a, &mut y)
                })
            };
            let gemm = time(|| matmul_dequantized(w, xs, m, &mut y));
            let pk = packed
                .as_ref()
                .map_or(f64::NAN, |p| time(|| p.matmul(xs, m, &mut y)));
            println!(
                "| [{n}, {k}] | {m} | {:.0} | {:.0} | {:.0} |",
                q8 * 1e6,
                gemm * 1e6,
                pk * 1e6
            );
        }
    }
}
