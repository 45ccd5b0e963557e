//! Whether this machine's logical CPUs are separate cores: a loop bound by the vector FMA units
//! (ten independent chains of 256-bit fused multiply-adds) timed on one thread alone, then on
//! every logical CPU at once. Separate cores keep each thread's rate; hyperthreads of one core
//! (or virtual CPUs placed on them) split it. The serving figures depend on it: a decode step of
//! 8 streams is bound by the vector units, one stream by memory, so on two logical CPUs of one
//! core the second thread adds far less to the first than it does for one stream.
//!
//! Usage: `cargo run --release -p canon-quant --example core_sharing [threads]` (default: the
//! logical CPUs the process may use). Needs AVX2 and FMA.

use std::time::Instant;

/// Fused multiply-adds a nanosecond on this thread, over about `secs` seconds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_rate(secs: f64) -> f64 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999_9);
    let c = _mm256_set1_ps(1e-7);
    let mut a = [_mm256_set1_ps(1.0); 10];
    let (t0, mut rounds) = (Instant::now(), 0u64);
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..100_000 {
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, m, c);
            }
        }
        a = std::hint::black_box(a);
        rounds += 100_000;
    }
    let ns = t0.elapsed().as_secs_f64() * 1e9;
    // Eight lanes in each of ten registers a round.
    (rounds * 10 * 8) as f64 / ns
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            eprintln!("error: this check needs AVX2 and FMA; this CPU lacks one of them");
            std::process::exit(1);
        }
        let threads = match std::env::args().nth(1) {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    eprintln!("error: expected a thread count of 1 or more, found {s:?}");
                    std::process::exit(2)
                }
            },
        };
        // SAFETY: AVX2 and FMA were detected above.
        let alone = unsafe { fma_rate(1.0) };
        let rates: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                // SAFETY: as above.
                .map(|_| s.spawn(|| unsafe { fma_rate(1.0) }))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
        });
        let mean = rates.iter().sum::<f64>() / threads as f64;
        println!("one thread alone: {alone:.2} lane-FMAs/ns");
        println!(
            "{threads} threads at once: {} lane-FMAs/ns each, {:.2} in all",
            rates
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            rates.iter().sum::<f64>()
        );
        let kept = mean / alone;
        println!(
            "each thread keeps {:.0} % of the lone rate: {}",
            100.0 * kept,
            if kept > 0.8 {
                "the logical CPUs behave as separate cores"
            } else {
                "the logical CPUs share the vector units (hyperthreads of fewer cores)"
            }
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        eprintln!("error: this check is written for x86-64 CPUs");
        std::process::exit(1);
    }
}
