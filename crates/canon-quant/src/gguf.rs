//! GGUF, llama.cpp's model file format: a header, typed key/value metadata, tensor descriptors and
//! aligned tensor data. This reader is defensive: every length and offset is checked against the file
//! size before anything is allocated, so a truncated or garbage file ends in a `GgufError` that says
//! what was expected and what was found, never in a panic or a huge allocation.
//!
//! Layout (little endian): magic "GGUF", version u32 (2 or 3), tensor count u64, metadata count u64,
//! metadata (key string, value type u32, value), tensor infos (name, n_dims u32, dims u64 × n_dims,
//! ggml type u32, offset u64), padding to `general.alignment` (default 32), tensor data.
//! Dimensions are stored innermost first (ne0 = row length); `TensorInfo::shape` gives them
//! outermost first, as tensors are indexed.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file: expected the magic bytes \"GGUF\", found {found:?}")]
    Magic { path: PathBuf, found: Vec<u8> },
    #[error("{path}: unsupported GGUF version {found} (expected 2 or 3)")]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{path} is truncated or corrupt: {what} needs {needed} bytes at offset {offset}, but the file has {len}"
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// One tensor's descriptor.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Outermost dimension first (a weight of `out × in` is `[out, in]`).
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub n_bytes: usize,
}

/// An opened GGUF file: metadata parsed, tensor data memory-mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    mmap: std::sync::Arc<Mmap>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

// Caps that no real file comes near; they bound allocations on garbage input.
const MAX_STRING: u64 = 64 << 20;
const MAX_DIMS: u32 = 8;

impl<'a> Reader<'a> {
    fn need(&self, n: u64, what: &str) -> Result<(), GgufError> {
        let len = self.buf.len() as u64;
        if (self.pos as u64).checked_add(n).is_none_or(|end| end > len) {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                len,
            });
        }
        Ok(())
    }
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        self.need(n as u64, what)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let b = self.bytes(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn corrupt(&self, what: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            what,
        }
    }
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(self.corrupt(format!(
                "{what}: string length {n} at offset {} exceeds {MAX_STRING}",
                self.pos - 8
            )));
        }
        let b = self.bytes(n as usize, what)?;
        // Some converters write invalid UTF-8 in vocabularies; keep the bytes visible rather than fail.
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("{key}: bool byte {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(self.corrupt(format!("{key}: arrays nested too deeply")));
                }
                let elem_ty = self.u32(key)?;
                let n = self.u64(key)?;
                // Every element takes at least one byte: a count beyond the bytes left is corrupt.
                self.need(n, &format!("{key}: array of {n} elements"))?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(self.corrupt(format!("{key}: unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file; tensor data stays memory-mapped.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|source| GgufError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the file is opened read-only; like every mmap-based model loader we assume it is not
        // truncated by another process while we read it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| GgufError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let h = parse(&mmap, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            mmap: std::sync::Arc::new(mmap),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (already bounds-checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.n_bytes]
    }

    /// Drops this process's copies of the header's pages (metadata and tensor table: 15 MB for a
    /// 262k-token vocabulary with its merges) once it is parsed: `metadata` and `tensors` are
    /// owned copies, so nothing reads those pages again unless asked, and a read faults them back
    /// from the file unchanged. The tensors' pages are untouched.
    pub fn release_header_pages(&self) {
        let end = self
            .tensors
            .iter()
            .map(|t| t.offset)
            .min()
            .unwrap_or(self.mmap.len());
        // Whole pages only: the page holding the first tensor's start keeps its bytes resident.
        let page = 4096;
        let end = end / page * page;
        if end == 0 {
            return;
        }
        // SAFETY: the mapping is read-only and file-backed: MADV_DONTNEED only drops this
        // process's copies of the pages, and any later read faults them back in from the file
        // unchanged. A failure leaves them resident.
        #[cfg(unix)]
        unsafe {
            let _ = self
                .mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, end);
        }
    }

    /// A tensor's bytes as a view that keeps the mapping alive (no copy: the pages stay the
    /// operating system's file cache, shared between processes, as llama.cpp's mmap loading does).
    pub fn tensor_view(&self, info: &TensorInfo) -> crate::Bytes {
        crate::Bytes::Mapped {
            map: self.mmap.clone(),
            start: info.offset,
            len: info.n_bytes,
        }
    }
}

/// What the header of a GGUF file says: version, metadata, and the tensor table with every
/// tensor's byte range checked against the file's length.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

/// Parses a GGUF file's bytes (`path` only names it in errors). Every count and offset is checked
/// against the bytes before anything is allocated for it.
pub fn parse(buf: &[u8], path: &Path) -> Result<GgufHeader, GgufError> {
    let mut r = Reader { buf, pos: 0, path };
    if buf.len() < 4 || &buf[..4] != b"GGUF" {
        return Err(GgufError::Magic {
            path: path.to_path_buf(),
            found: buf[..buf.len().min(4)].to_vec(),
        });
    }
    r.pos = 4;
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // Each entry takes at least 8 bytes (a key length); reject absurd counts before looping.
    r.need(n_kv.saturating_mul(8), "metadata entries")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let ty = r.u32(&key)?;
        let v = r.value(ty, &key, 0)?;
        metadata.insert(key, v);
    }
    r.need(n_tensors.saturating_mul(8), "tensor infos")?;
    let mut raw = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string("tensor name")?;
        let n_dims = r.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.corrupt(format!("tensor {name}: {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&name)?);
        }
        let ty = r.u32(&name)?;
        let off = r.u64(&name)?;
        raw.push((name, dims, ty, off));
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 16 => a,
            _ => {
                return Err(r.corrupt(format!(
                    "general.alignment must be a power of two, found {v:?}"
                )));
            }
        },
    };
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, ty, off) in raw {
        let dtype = GgmlType::from_u32(ty)
            .ok_or_else(|| r.corrupt(format!("tensor {name}: unknown ggml type {ty}")))?;
        let mut n_elem: u64 = 1;
        for &d in &dims {
            n_elem = n_elem
                .checked_mul(d)
                .filter(|&n| n < 1 << 40)
                .ok_or_else(|| r.corrupt(format!("tensor {name}: dimensions {dims:?}")))?;
        }
        let block = dtype.block_size() as u64;
        if dims[0] % block != 0 {
            return Err(r.corrupt(format!(
                "tensor {name}: row length {} is not a multiple of the {dtype:?} block size {block}",
                dims[0]
            )));
        }
        let n_bytes = n_elem / block * dtype.type_size() as u64;
        let start = data_start
            .checked_add(off)
            .ok_or_else(|| r.corrupt(format!("tensor {name}: offset {off}")))?;
        if start.checked_add(n_bytes).is_none_or(|e| e > len) {
            return Err(GgufError::Truncated {
                path: path.to_path_buf(),
                what: format!("tensor {name} ({dtype:?} {dims:?})"),
                offset: start,
                needed: n_bytes,
                len,
            });
        }
        let shape = dims.iter().rev().map(|&d| d as usize).collect();
        tensors.push(TensorInfo {
            name,
            shape,
            dtype,
            offset: start as usize,
            n_bytes: n_bytes as usize,
        });
    }
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a minimal valid GGUF with one F32 tensor of shape [2, 3] (ne0 = 3).
    fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // kv
        let key = |b: &mut Vec<u8>, k: &str| {
            b.extend_from_slice(&(k.len() as u64).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
        };
        key(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        key(&mut b, "llama");
        key(&mut b, "x.list");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&9u32.to_le_bytes());
        key(&mut b, "w");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..6 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn parses_a_valid_file() {
        let f = write(&tiny_gguf());
        let g = GgufFile::open(f.path()).unwrap();
        assert_eq!(
            g.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(
            g.get("x.list").unwrap(),
            &Value::Array(vec![Value::U32(7), Value::U32(9)])
        );
        let t = g.tensor_info("w").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        let bytes = g.tensor_bytes(t);
        assert_eq!(f32::from_le_bytes(bytes[20..24].try_into().unwrap()), 5.0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        for cut in 0..full.len() {
            let f = write(&full[..cut]);
            assert!(
                GgufFile::open(f.path()).is_err(),
                "cut at {cut} was accepted"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let f = write(b"this is not a model file at all");
        let e = GgufFile::open(f.path()).unwrap_err().to_string();
        assert!(e.contains("not a GGUF file"), "{e}");
        // A valid header with an absurd string length must not allocate it.
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        let f = write(&b);
        assert!(GgufFile::open(f.path()).is_err());
    }

    #[test]
    fn random_bytes_after_the_magic_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let mut b = b"GGUF".to_vec();
            b.extend_from_slice(&3u32.to_le_bytes());
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b.push((state & 0x0f) as u8);
            }
            let f = write(&b);
            let _ = GgufFile::open(f.path());
        }
    }
}
