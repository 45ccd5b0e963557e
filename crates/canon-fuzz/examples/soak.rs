//! Runs one fuzz target over many deterministic mutations of the files given (or of one empty
//! input) in a single process and prints the resident memory as it goes: a steady climb over
//! rounds of the *same* inputs is a leak; a plateau is allocator or cache state.
//!
//! `cargo run --release -p canon-fuzz --example soak -- gguf_vocab 100000 fuzz/corpus/gguf_vocab/*`
//!
//! With `SOAK_EACH=N` set, each file instead runs alone N times and the files after which the
//! resident memory grew by more than 1 MiB are listed: the inputs that leak.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use canon_fuzz::{TARGETS, mutations};

/// The system allocator, counting the bytes currently allocated: resident memory that climbs
/// while this count stays flat is the allocator's fragmentation, not a leak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the counter
// is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    /// # Safety
    /// The contract of `GlobalAlloc::alloc`, passed on to `System` unchanged.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    /// # Safety
    /// The contract of `GlobalAlloc::dealloc`, passed on to `System` unchanged.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from `alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    /// # Safety
    /// The contract of `GlobalAlloc::realloc`, passed on to `System` unchanged.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_kib() -> usize {
    LIVE.load(Ordering::Relaxed) / 1024
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(name), Some(count)) = (args.first(), args.get(1).and_then(|c| c.parse().ok())) else {
        eprintln!("error: usage: soak TARGET COUNT [SEED_FILE...]");
        std::process::exit(2);
    };
    let count: usize = count;
    let Some((_, target)) = TARGETS.iter().find(|(n, _)| n == name) else {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "error: expected a target ({}), found {name}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for f in &args[2..] {
        match std::fs::read(f) {
            Ok(b) => seeds.push(b),
            Err(e) => {
                eprintln!("error: cannot read {f}: {e}");
                std::process::exit(2);
            }
        }
    }
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    if let Some(n) = std::env::var("SOAK_EACH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for (f, x) in args[2..].iter().zip(&seeds) {
            target(x);
            let before = rss_kib();
            for _ in 0..n {
                target(x);
            }
            let grew = rss_kib().saturating_sub(before);
            if grew > 1024 {
                println!("{f}: +{grew} KiB over {n} runs");
            }
        }
        return;
    }
    // One fixed set of inputs, run again each round.
    let per_seed = (count / seeds.len()).clamp(1, 2000);
    let inputs: Vec<Vec<u8>> = seeds
        .iter()
        .enumerate()
        .flat_map(|(i, s)| mutations(s, per_seed, 0x9e37_79b9 + i as u64))
        .collect();
    let rounds = count.div_ceil(inputs.len()).max(1);
    let start = std::time::Instant::now();
    println!("round  inputs  rss_kib  live_kib  seconds");
    for r in 0..rounds {
        for x in &inputs {
            target(x);
        }
        println!(
            "{r:5}  {:6}  {:7}  {:8}  {:7.1}",
            inputs.len(),
            rss_kib(),
            live_kib(),
            start.elapsed().as_secs_f64()
        );
    }
}
