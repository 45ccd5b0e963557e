//! Decode-shaped products (one activation row) of a GGUF file's matrices on the kernel pool, in
//! wall time and the bandwidth they reach (bytes of the packed weights read per second): how
//! close a memory-bound decode step's products come to the machine's read bandwidth.
//!
//! Usage: `RAYON_NUM_THREADS=2 cargo run --release -p canon-quant --example headbench -- FILE.gguf
//! [NAME ...]` (default: every 2-D tensor of the first block and `token_embd.weight`), or
//! `-- FILE.gguf --pass`: every block's matrices in file order, then `token_embd.weight` (or
//! `output.weight`), one row each, as one decoded token multiplies them; the time of a pass (median
//! of 30), the layers' and the head's parts, and the bandwidth each reaches.

use std::time::Instant;

use canon_quant::GgmlTensor;
use canon_quant::gguf::GgufFile;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("error: expected a GGUF file as the first argument");
        std::process::exit(2);
    };
    let file = match GgufFile::open(std::path::Path::new(path)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if args.get(1).map(String::as_str) == Some("--pass") {
        return pass(&file);
    }
    let names: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        file.tensors
            .iter()
            .filter(|t| {
                t.shape.len() == 2
                    && (t.name.starts_with("blk.0.") || t.name == "token_embd.weight")
            })
            .map(|t| t.name.clone())
            .collect()
    };
    for name in names {
        let Some(info) = file.tensor_info(&name) else {
            eprintln!("error: no tensor {name} in {path}");
            continue;
        };
        let t = match GgmlTensor::from_view(info.dtype, &info.shape, file.tensor_view(info)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {name}: {e}");
                continue;
            }
        };
        let Some(p) = t.packed() else {
            println!("{name}: {:?} not packed", info.dtype);
            continue;
        };
        let (n, k) = (p.rows, p.cols);
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let mut y = vec![0.0f32; n];
        p.matmul(&x, 1, &mut y);
        let reps = (2_000_000_000 / p.bytes().max(1)).clamp(3, 2000);
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t0 = Instant::now();
            p.matmul(&x, 1, &mut y);
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "{name:>28} {:?} [{n} x {k}] packed {:.1} MB: median {:.3} ms, {:.1} GB/s",
            info.dtype,
            p.bytes() as f64 / 1e6,
            med * 1e3,
            p.bytes() as f64 / med / 1e9
        );
    }
}

/// One decode step's products in order (no other work between them), timed per part.
fn pass(file: &GgufFile) {
    let mut mats: Vec<(String, GgmlTensor)> = Vec::new();
    for info in &file.tensors {
        if info.shape.len() != 2 || !info.name.starts_with("blk.") {
            continue;
        }
        if let Ok(t) = GgmlTensor::from_view(info.dtype, &info.shape, file.tensor_view(info)) {
            mats.push((info.name.clone(), t));
        }
    }
    let head = ["output.weight", "token_embd.weight"]
        .iter()
        .find_map(|n| file.tensor_info(n))
        .and_then(|i| GgmlTensor::from_view(i.dtype, &i.shape, file.tensor_view(i)).ok());
    let Some(head) = head else {
        eprintln!("error: no output.weight or token_embd.weight");
        return;
    };
    let packed: Vec<_> = mats.iter().filter_map(|(_, t)| t.packed()).collect();
    let Some(hp) = head.packed() else {
        eprintln!("error: the head is not packed on this CPU");
        return;
    };
    let run = |p: &canon_quant::kernels::tile::packed::Packed| {
        let x: Vec<f32> = (0..p.cols)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let mut y = vec![0.0f32; p.rows];
        p.matmul(&x, 1, &mut y);
        std::hint::black_box(&y);
    };
    let (mut lt, mut ht) = (Vec::new(), Vec::new());
    for _ in 0..31 {
        let t0 = Instant::now();
        packed.iter().for_each(|p| run(p));
        let t1 = Instant::now();
        run(hp);
        lt.push((t1 - t0).as_secs_f64());
        ht.push(t1.elapsed().as_secs_f64());
    }
    lt.sort_by(f64::total_cmp);
    ht.sort_by(f64::total_cmp);
    let (l, h) = (lt[15], ht[15]);
    let lb: usize = packed.iter().map(|p| p.bytes()).sum();
    println!(
        "{} layer matrices ({} packed of {}), {:.1} MB: {:.3} ms, {:.1} GB/s; head {:.1} MB: {:.3} ms, {:.1} GB/s; pass {:.3} ms ({:.1} passes/s)",
        mats.len(),
        packed.len(),
        mats.len(),
        lb as f64 / 1e6,
        l * 1e3,
        lb as f64 / l / 1e9,
        hp.bytes() as f64 / 1e6,
        h * 1e3,
        hp.bytes() as f64 / h / 1e9,
        (l + h) * 1e3,
        1.0 / (l + h)
    );
}
