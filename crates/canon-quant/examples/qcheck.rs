//! Checks the quantized kernels on every 2-D tensor of a real GGUF file: `x Wᵀ` from the kernels
//! (each instruction set this CPU runs) against an f64 product with `W` dequantized by candle (an
//! implementation independent of ours) and `x` rounded as the kernels round it. Prints the largest
//! error per tensor type, relative to `Σ|w·x|`.
//!
//! Usage: `cargo run --release -p canon-quant --example qcheck -- FILE.gguf`

use std::borrow::Cow;
use std::collections::BTreeMap;

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use canon_quant::gguf::GgufFile;
use canon_quant::kernels::kquant::Q8KRows;
use canon_quant::kernels::{Q8Rows, matmul};
use canon_quant::{GgmlTensor, GgmlType, Isa};

fn candle_type(t: GgmlType) -> Option<GgmlDType> {
    Some(match t {
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        _ => return None,
    })
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("error: expected a GGUF file path, found no argument");
        std::process::exit(2);
    };
    let file = match GgufFile::open(std::path::Path::new(&path)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            std::process::exit(1);
        }
    };
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    let mut worst: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let m = 3;
    for info in &file.tensors {
        let (Some(ct), [rows, cols]) = (candle_type(info.dtype), info.shape.as_slice()) else {
            continue;
        };
        let (rows, cols) = (*rows.min(&512), *cols);
        let t = GgmlTensor::from_view(info.dtype, &info.shape, file.tensor_view(info))
            .expect("tensor view");
        let Some(w) = t.as_matrix() else { continue };
        let w = canon_quant::kernels::QMatrixRef {
            rows,
            bytes: &w.bytes[..rows * w.row_bytes()],
            ..w
        };
        let storage = QStorage::from_data(Cow::Borrowed(w.bytes), &Device::Cpu, ct).expect("qs");
        let wd: Vec<f32> = QTensor::new(storage, vec![rows, cols])
            .expect("qtensor")
            .dequantize(&Device::Cpu)
            .expect("dequantize")
            .flatten_all()
            .expect("flatten")
            .to_vec1()
            .expect("vec");
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect();
        // x as the kernels see it.
        let xr: Vec<f64> = if w.kind.is_k() {
            let a = Q8KRows::quantize(&x, m, cols);
            a.qs.iter()
                .enumerate()
                .map(|(i, &q)| a.d[i / 256] as f64 * q as f64)
                .collect()
        } else {
            let a = Q8Rows::quantize(&x, m, cols);
            a.qs.iter()
                .enumerate()
                .map(|(i, &q)| a.d[i / 32] as f64 * q as f64)
                .collect()
        };
        for &isa in &isas {
            let mut y = vec![0.0f32; m * rows];
            matmul(isa, w, &x, m, &mut y);
            let mut err = 0.0f64;
            for t in 0..m {
                for r in 0..rows {
                    let (mut e, mut mag) = (0.0f64, 0.0f64);
                    for c in 0..cols {
                        let p = wd[r * cols + c] as f64 * xr[t * cols + c];
                        e += p;
                        mag += p.abs();
                    }
                    err = err.max((y[t * rows + r] as f64 - e).abs() / mag.max(1e-30));
                }
            }
            let key = format!("{:?} {:?}", info.dtype, isa);
            let ent = worst.entry(key).or_insert((0.0, 0));
            ent.0 = ent.0.max(err);
            ent.1 += 1;
        }
    }
    println!("| tensor type | ISA | tensors | max error / Σ|w·x| |");
    println!("|---|---|---|---|");
    for (k, (e, n)) in worst {
        let mut it = k.split(' ');
        let (a, b) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        println!("| {a} | {b} | {n} | {e:.2e} |");
    }
}
