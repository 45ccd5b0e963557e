//! Times the HNSW graph build over an index's stored vectors and checks it against the exact scan.
//!
//! Usage: `cargo run --release -p canon-rag --example hnsw_build -- INDEX_DIR [queries]`
//! (`INDEX_DIR/vectors.f32`, the index's `dim` from `meta.json`). Queries are stored vectors
//! themselves (every n/queries-th row), so recall@10 is measured against the exact scan's top 10.

use std::time::Instant;

use canon_rag::dense;
use canon_rag::hnsw::{EF_SEARCH, Hnsw, HnswConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("error: expected an index folder (with vectors.f32 and meta.json), found none");
        std::process::exit(2);
    };
    let queries: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let dir = std::path::Path::new(dir);
    let meta: serde_json::Value = match std::fs::read_to_string(dir.join("meta.json"))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: expected {}/meta.json, found: {e}", dir.display());
            std::process::exit(2);
        }
    };
    let dim = meta["dim"].as_u64().unwrap_or(0) as usize;
    let bytes = match std::fs::read(dir.join("vectors.f32")) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: expected {}/vectors.f32, found: {e}", dir.display());
            std::process::exit(2);
        }
    };
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if dim == 0 || !data.len().is_multiple_of(dim) {
        eprintln!(
            "error: expected rows of the index's width, found dim {dim} and {} values",
            data.len()
        );
        std::process::exit(2);
    }
    let n = data.len() / dim;
    let t0 = Instant::now();
    let h = Hnsw::build(&data, dim, &HnswConfig::default());
    let build_s = t0.elapsed().as_secs_f64();
    let step = (n / queries.max(1)).max(1);
    let (mut hit, mut total, mut t_h, mut t_x) = (0usize, 0usize, Vec::new(), Vec::new());
    for qi in (0..n).step_by(step).take(queries) {
        let q = &data[qi * dim..(qi + 1) * dim];
        let t = Instant::now();
        let got = h.search(&data, q, 10, EF_SEARCH);
        t_h.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let want = dense::search(&data, dim, q, 10);
        t_x.push(t.elapsed().as_secs_f64() * 1e3);
        let want: std::collections::HashSet<usize> = want.iter().map(|w| w.0).collect();
        hit += got.iter().filter(|g| want.contains(&g.0)).count();
        total += want.len();
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "{{\"rows\":{n},\"dim\":{dim},\"build_s\":{build_s:.2},\"queries\":{},\"recall_at_10\":{:.4},\"p50_hnsw_ms\":{:.3},\"p50_exact_ms\":{:.3}}}",
        t_h.len(),
        hit as f64 / total.max(1) as f64,
        p50(&mut t_h),
        p50(&mut t_x)
    );
}
