//! Every matrix product of one nanoGPT training step's linears, alone, on the `gemm` crate exactly as
//! the training ops call it (`y = x Wᵀ`, `dx = g W`, `dW = gᵀ x`, row-major operands read through
//! strides, no copies), at 1 and at the given thread count (1 thread: CPU time of the thread; more:
//! wall-clock time). `ROOFLINE=canon` runs the training ops' own f32 product (`CANON_GEMM=own`)
//! instead of the crate, `ROOFLINE=bf16` their bf16 product (`vdpbf16ps`, f32 accumulation). Prints median milliseconds and GFLOP/s
//! per product, for comparison with `bench/gemm_roofline_torch.py` (PyTorch's BLAS, same shapes).
//!
//! ```sh
//! cargo run --release -p canon-nn --example gemm_roofline -- [reps] [threads]
//! ```

use std::time::Instant;

#[allow(clippy::too_many_arguments)]
fn mm(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    (a, ars, acs): (&[f32], usize, usize),
    (b, brs, bcs): (&[f32], usize, usize),
    par: gemm::Parallelism,
) {
    assert!((m - 1) * ldc + n <= c.len());
    assert!((m - 1) * ars + (k - 1) * acs < a.len());
    assert!((k - 1) * brs + (n - 1) * bcs < b.len());
    if std::env::var("ROOFLINE").is_ok_and(|v| v == "canon" || v == "bf16") {
        let th = match par {
            gemm::Parallelism::Rayon(t) => t,
            _ => 1,
        };
        canon_nn::train_ops::bench_mm(
            (m, n, k),
            c,
            ldc,
            false,
            (a, ars, acs),
            (b, brs, bcs),
            1.0,
            th,
        );
        return;
    }
    // SAFETY: the asserts above keep every access inside its slice; `c` is a unique borrow.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            false,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            bcs as isize,
            brs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`), or 0 where unavailable: on a
/// machine shared with other work, single-thread CPU time is steadier than wall-clock time.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    if std::env::var("ROOFLINE").is_ok_and(|v| v == "bf16")
        && let Err(e) = canon_nn::train_ops::set_bf16_products(true)
    {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    let n = 8 * 256;
    let mut seed = 1u32;
    let mut rnd = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let mut total = [0f64; 2];
    for (name, o, i) in [
        ("qkv", 1152, 384),
        ("attn out", 384, 384),
        ("fc1", 1536, 384),
        ("fc2", 384, 1536),
    ] {
        let x = rnd(n * i);
        let w = rnd(o * i);
        let g = rnd(n * o);
        let mut y = vec![0f32; n * o];
        let mut dx = vec![0f32; n * i];
        let mut dw = vec![0f32; o * i];
        let flop = 2.0 * (n * o * i) as f64;
        for (pi, th) in [1, threads].into_iter().enumerate() {
            let par = if th == 1 {
                gemm::Parallelism::None
            } else {
                gemm::Parallelism::Rayon(th)
            };
            let mut line = format!("{name:>9} n={n} out={o} in={i} threads={th}:");
            for (pk, what) in ["y=xWt", "dx=gW", "dW=gtx"].into_iter().enumerate() {
                let mut run = || match pk {
                    0 => mm((n, o, i), &mut y, o, (&x, i, 1), (&w, 1, i), par),
                    1 => mm((n, i, o), &mut dx, i, (&g, o, 1), (&w, i, 1), par),
                    _ => mm((o, i, n), &mut dw, i, (&g, 1, o), (&x, i, 1), par),
                };
                let mut ts = Vec::new();
                for _ in 0..reps + 1 {
                    let t = Instant::now();
                    let c0 = thread_cpu_ns();
                    if th == 1 {
                        run();
                    } else {
                        pool.install(&mut run);
                    }
                    let cpu = (thread_cpu_ns() - c0) as f64 * 1e-9;
                    // One thread: its CPU time (wall time if schedstat is missing).
                    ts.push(if th == 1 && cpu > 0.0 {
                        cpu
                    } else {
                        t.elapsed().as_secs_f64()
                    });
                }
                ts.remove(0);
                ts.sort_by(f64::total_cmp);
                let med = ts[ts.len() / 2];
                total[pi] += med;
                line += &format!("  {what} {:.2} ms {:.0} GF/s", med * 1e3, flop / med / 1e9);
            }
            println!("{line}");
        }
    }
    println!(
        "sum of the 12 products (one layer): {:.1} ms at 1 thread, {:.1} ms at {threads}",
        total[0] * 1e3,
        total[1] * 1e3
    );
}
