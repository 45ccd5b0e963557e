//! Writing GGUF files (version 3): used to save models Canon produces and to build small test
//! models. Writes go to a temporary file beside the target, renamed into place when complete.

use std::io::{self, Write};
use std::path::Path;

use crate::GgmlType;
use crate::gguf::Value;

/// One tensor to write: name, type, shape (outermost first) and its ggml bytes.
pub struct TensorOut<'a> {
    pub name: &'a str,
    pub dtype: GgmlType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

fn ty_code(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q5_1 => 7,
        GgmlType::Q8_0 => 8,
        GgmlType::Q8_1 => 9,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 11,
        GgmlType::Q4K => 12,
        GgmlType::Q5K => 13,
        GgmlType::Q6K => 14,
        GgmlType::Q8K => 15,
        GgmlType::I8 => 24,
        GgmlType::BF16 => 30,
    }
}

fn value_code(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn put_value(w: &mut Vec<u8>, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.push(*x),
        Value::I8(x) => w.push(*x as u8),
        Value::U16(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => w.push(*x as u8),
        Value::String(s) => put_str(w, s),
        Value::U64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => {
            let code = a.first().map_or(4, value_code);
            if a.iter().any(|x| value_code(x) != code) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "GGUF arrays hold one type",
                ));
            }
            w.extend_from_slice(&code.to_le_bytes());
            w.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(w, x)?;
            }
        }
    }
    Ok(())
}

/// Writes a GGUF file atomically (temporary file + rename).
pub fn write_gguf(
    path: &Path,
    metadata: &[(&str, Value)],
    tensors: &[TensorOut<'_>],
) -> io::Result<()> {
    const ALIGN: usize = 32;
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut head, k);
        head.extend_from_slice(&value_code(v).to_le_bytes());
        put_value(&mut head, v)?;
    }
    let mut offset = 0usize;
    for t in tensors {
        let n: usize = t.shape.iter().product();
        let expected = n / t.dtype.block_size() * t.dtype.type_size();
        if t.data.len() != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor {}: {} bytes, expected {expected}",
                    t.name,
                    t.data.len()
                ),
            ));
        }
        put_str(&mut head, t.name);
        head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            head.extend_from_slice(&(d as u64).to_le_bytes());
        }
        head.extend_from_slice(&ty_code(t.dtype).to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.data.len().div_ceil(ALIGN) * ALIGN;
    }
    while head.len() % ALIGN != 0 {
        head.push(0);
    }
    canon_fs::write_atomic_with(path, |w| {
        w.write_all(&head)?;
        for (i, t) in tensors.iter().enumerate() {
            w.write_all(t.data)?;
            let pad = t.data.len().div_ceil(ALIGN) * ALIGN - t.data.len();
            w.write_all(&vec![0u8; pad])?;
            if i + 1 == tensors.len() / 2 {
                w.flush()?;
                canon_fs::crash_point(canon_fs::POINT_MID_WRITE, path);
            }
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn round_trips_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        write_gguf(
            &p,
            &[
                ("general.architecture", Value::String("llama".into())),
                ("a.list", Value::Array(vec![Value::I32(1), Value::I32(-2)])),
            ],
            &[TensorOut {
                name: "w",
                dtype: GgmlType::F32,
                shape: &[2, 3],
                data: &data,
            }],
        )
        .unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(
            g.get("a.list").unwrap(),
            &Value::Array(vec![Value::I32(1), Value::I32(-2)])
        );
        let t = g.tensor_info("w").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(g.tensor_bytes(t), &data[..]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{mode:o}");
        }
    }
}
