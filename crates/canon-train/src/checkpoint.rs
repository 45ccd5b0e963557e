//! Checkpoints: one safetensors file holding the weights (`model.<name>`), the optimizer state
//! (`optim.m.<name>`, `optim.v.<name>`), and in its metadata the step, the optimizer's update count
//! and the data-order RNG state. Written to a temporary file in the same folder, synced, then renamed
//! over the old one, so a crash never leaves a torn checkpoint.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use canon_models::family::CHECKPOINT_PARAM_PREFIX;
use safetensors::Dtype;

use crate::optim::{Optimizer, Param};
use crate::{Result, TrainError, io_err};

const FORMAT: &str = "canon-checkpoint-1";

/// Everything besides tensors that exact resume needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainState {
    /// Steps completed.
    pub step: u64,
    pub rng_state: u64,
}

/// One tensor of a checkpoint, written straight from where it lives (no byte copy of the whole
/// checkpoint is ever held).
enum Source<'a> {
    Slice(&'a [f32]),
    Tensor(&'a Tensor),
}

impl Source<'_> {
    /// Writes the values as little-endian f32 bytes through a small buffer.
    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        let owned;
        let values: &[f32] = match self {
            Source::Slice(v) => v,
            Source::Tensor(t) => {
                owned = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(std::io::Error::other)?;
                &owned
            }
        };
        let mut buf = Vec::with_capacity(4 * WRITE_CHUNK);
        for c in values.chunks(WRITE_CHUNK) {
            buf.clear();
            c.iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
            w.write_all(&buf)?;
        }
        Ok(())
    }
}

/// Values per write of [`Source::write`].
const WRITE_CHUNK: usize = 1 << 14;

/// The largest checkpoint header read (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

/// `count` little-endian f32 values at byte `at` of `file`.
fn read_f32s(file: &mut std::fs::File, at: u64, count: usize) -> std::io::Result<Vec<f32>> {
    file.seek(SeekFrom::Start(at))?;
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; 4 * WRITE_CHUNK];
    while out.len() < count {
        let k = (count - out.len()).min(WRITE_CHUNK);
        file.read_exact(&mut buf[..4 * k])?;
        out.extend(
            buf[..4 * k]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(out)
}

fn ck_err(path: &Path, m: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        message: m.to_string(),
    }
}

/// Writes a checkpoint; `extra` holds model state besides weights (Transformer-XL's memory), saved
/// under `state.<name>`.
pub fn save(
    path: &Path,
    params: &[Param],
    opt: &Optimizer,
    state: TrainState,
    extra: &[(String, Tensor)],
) -> Result<()> {
    let mut entries: Vec<(String, Vec<usize>, Source)> = Vec::new();
    for (name, t) in extra {
        entries.push((
            format!("state.{name}"),
            t.dims().to_vec(),
            Source::Tensor(t),
        ));
    }
    for (i, p) in params.iter().enumerate() {
        let shape = p.var.dims().to_vec();
        entries.push((
            format!("{CHECKPOINT_PARAM_PREFIX}{}", p.name),
            shape.clone(),
            Source::Tensor(p.var.as_tensor()),
        ));
        if !opt.m[i].is_empty() {
            entries.push((
                format!("optim.m.{}", p.name),
                shape.clone(),
                Source::Slice(&opt.m[i]),
            ));
        }
        if !opt.v[i].is_empty() {
            entries.push((
                format!("optim.v.{}", p.name),
                shape,
                Source::Slice(&opt.v[i]),
            ));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("step".to_string(), state.step.to_string());
    meta.insert("rng_state".to_string(), state.rng_state.to_string());
    meta.insert("optimizer".to_string(), opt.config.name().to_string());
    meta.insert("optimizer_t".to_string(), opt.t.to_string());
    // safetensors' own layout (`safetensors::serialize`): tensors sorted by name (all f32),
    // packed in that order, the JSON header padded with spaces to a multiple of 8 bytes. The
    // tensors are streamed into the file one at a time rather than serialized into one buffer
    // (that buffer and the byte copies before it were twice the checkpoint, about 2 GB at GPT-2
    // 124M's shape: the process's peak memory).
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut infos = Vec::with_capacity(entries.len());
    let mut offset = 0usize;
    for (name, shape, _) in &entries {
        let n = 4 * shape.iter().product::<usize>();
        infos.push((
            name.clone(),
            safetensors::tensor::TensorInfo {
                dtype: Dtype::F32,
                shape: shape.clone(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let header =
        safetensors::tensor::Metadata::new(Some(meta), infos).map_err(|e| ck_err(path, e))?;
    let mut header = serde_json::to_string(&header)
        .map_err(|e| ck_err(path, e))?
        .into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let half = entries.len() / 2;
    canon_fs::write_atomic_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (i, (_, _, src)) in entries.iter().enumerate() {
            if i == half && i > 0 {
                w.flush()?;
                canon_fs::crash_point(canon_fs::POINT_MID_WRITE, path);
            }
            src.write(w)?;
        }
        Ok(())
    })
    .map_err(|e| io_err(path, e))
}

/// Restores weights (into the existing variables), optimizer state and the train state; returns the
/// extra state tensors (names without the `state.` prefix, sorted).
pub fn load(
    path: &Path,
    params: &[Param],
    opt: &mut Optimizer,
) -> Result<(TrainState, Vec<(String, Tensor)>)> {
    // Read tensor by tensor from the file (not the whole file into memory: at GPT-2 124M's shape
    // the checkpoint is about 1 GB, and the resumed run holds the same tensors once more).
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut nb = [0u8; 8];
    file.read_exact(&mut nb)
        .map_err(|e| ck_err(path, format!("expected an 8-byte header length: {e}")))?;
    let n = u64::from_le_bytes(nb);
    if n > MAX_HEADER || n > file_len.saturating_sub(8) {
        return Err(ck_err(
            path,
            format!("header of {n} bytes in a file of {file_len} bytes"),
        ));
    }
    let mut hb = vec![0u8; n as usize];
    file.read_exact(&mut hb).map_err(|e| io_err(path, e))?;
    let header: safetensors::tensor::Metadata =
        serde_json::from_slice(&hb).map_err(|e| ck_err(path, e))?;
    let data_start = 8 + n;
    let data_len = header
        .tensors()
        .values()
        .map(|t| t.data_offsets.1 as u64)
        .max()
        .unwrap_or(0);
    if data_start + data_len != file_len {
        return Err(ck_err(
            path,
            format!(
                "the header describes {} bytes, the file has {file_len}",
                data_start + data_len
            ),
        ));
    }
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(ck_err(path, format!("not a {FORMAT} file")));
    }
    let num = |k: &str| -> Result<u64> {
        meta.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ck_err(path, format!("metadata '{k}' is missing or not a number")))
    };
    if meta.get("optimizer").map(String::as_str) != Some(opt.config.name()) {
        return Err(ck_err(
            path,
            format!(
                "written by optimizer {:?}, but the config asks for {}",
                meta.get("optimizer"),
                opt.config.name()
            ),
        ));
    }
    let mut read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let info = header
            .info(name)
            .ok_or_else(|| ck_err(path, format!("missing tensor '{name}'")))?;
        let (a, b) = info.data_offsets;
        if info.shape != shape
            || info.dtype != Dtype::F32
            || b - a != 4 * shape.iter().product::<usize>()
        {
            return Err(ck_err(
                path,
                format!(
                    "tensor '{name}' is {:?} {:?}, expected F32 {shape:?}",
                    info.dtype, info.shape
                ),
            ));
        }
        read_f32s(&mut file, data_start + a as u64, (b - a) / 4).map_err(|e| io_err(path, e))
    };
    for (i, p) in params.iter().enumerate() {
        let shape = p.var.dims().to_vec();
        let w = read(&format!("{CHECKPOINT_PARAM_PREFIX}{}", p.name), &shape)?;
        p.var
            .set(&Tensor::from_vec(w, shape.as_slice(), &Device::Cpu)?.to_dtype(DType::F32)?)?;
        if !opt.m[i].is_empty() {
            opt.m[i] = read(&format!("optim.m.{}", p.name), &shape)?;
        }
        if !opt.v[i].is_empty() {
            opt.v[i] = read(&format!("optim.v.{}", p.name), &shape)?;
        }
    }
    opt.t = num("optimizer_t")?;
    let mut names: Vec<(String, Vec<usize>)> = header
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.starts_with("state."))
        .map(|(n, t)| (n, t.shape.clone()))
        .collect();
    names.sort();
    let mut extra = Vec::new();
    for (n, shape) in names {
        let data = read(&n, &shape)?;
        extra.push((
            n["state.".len()..].to_string(),
            Tensor::from_vec(data, shape.as_slice(), &Device::Cpu)?,
        ));
    }
    Ok((
        TrainState {
            step: num("step")?,
            rng_state: num("rng_state")?,
        },
        extra,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::OptimizerConfig;
    use candle_core::Var;
    use std::borrow::Cow;

    /// The checkpoint as `safetensors::serialize` wrote it from byte copies (the earlier writer).
    struct Owned(Vec<usize>, Vec<u8>);

    impl safetensors::View for Owned {
        fn dtype(&self) -> Dtype {
            Dtype::F32
        }
        fn shape(&self) -> &[usize] {
            &self.0
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.1)
        }
        fn data_len(&self) -> usize {
            self.1.len()
        }
    }

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// The streamed file holds what `safetensors::serialize` gives for the same tensors (the
    /// same names, shapes, offsets and data bytes), and loads back.
    #[test]
    fn the_streamed_checkpoint_is_the_safetensors_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        let mk = |name: &str, v: Vec<f32>, shape: &[usize]| Param {
            name: name.into(),
            var: Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap(),
            decay: true,
        };
        let big: Vec<f32> = (0..40_000).map(|i| (i as f32).sin()).collect();
        let params = vec![
            mk("z.w", big.clone(), &[200, 200]),
            mk("a.b", vec![1.0, -0.0, 3.5], &[3]),
        ];
        let mut opt = Optimizer::new(OptimizerConfig::default(), &params);
        opt.m[0] = big.iter().map(|x| x * 0.5).collect();
        opt.v[1] = vec![7.0, 8.0, 9.0];
        opt.t = 4;
        let extra = vec![(
            "mem".to_string(),
            Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap(),
        )];
        let st = TrainState {
            step: 9,
            rng_state: 42,
        };
        save(&path, &params, &opt, st, &extra).unwrap();
        let file = std::fs::read(&path).unwrap();

        let mut want: Vec<(String, Owned)> =
            vec![("state.mem".into(), Owned(vec![1, 2], bytes(&[1.0, 2.0])))];
        for (i, p) in params.iter().enumerate() {
            let shape = p.var.dims().to_vec();
            let w: Vec<f32> = p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            want.push((
                format!("{CHECKPOINT_PARAM_PREFIX}{}", p.name),
                Owned(shape.clone(), bytes(&w)),
            ));
            want.push((
                format!("optim.m.{}", p.name),
                Owned(shape.clone(), bytes(&opt.m[i])),
            ));
            want.push((
                format!("optim.v.{}", p.name),
                Owned(shape, bytes(&opt.v[i])),
            ));
        }
        let reference = safetensors::serialize(want, None).unwrap();
        let data_of = |b: &[u8]| -> Vec<u8> {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            b[8 + n..].to_vec()
        };
        assert_eq!(data_of(&file), data_of(&reference));
        let (_, got) = safetensors::SafeTensors::read_metadata(&file).unwrap();
        let (_, exp) = safetensors::SafeTensors::read_metadata(&reference).unwrap();
        let infos = |m: &safetensors::tensor::Metadata| {
            m.tensors()
                .into_iter()
                .map(|(k, v)| (k, v.dtype, v.shape.clone(), v.data_offsets))
                .collect::<Vec<_>>()
        };
        let (mut a, mut b) = (infos(&got), infos(&exp));
        a.sort_by(|x, y| x.0.cmp(&y.0));
        b.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(a, b);
        assert_eq!(file.len() % 8, reference.len() % 8);

        let mut opt2 = Optimizer::new(OptimizerConfig::default(), &params);
        let (st2, extra2) = load(&path, &params, &mut opt2).unwrap();
        assert_eq!(st2, st);
        assert_eq!(
            (opt2.m.clone(), opt2.v.clone(), opt2.t),
            (opt.m.clone(), opt.v.clone(), 4)
        );
        assert_eq!(extra2.len(), 1);
        assert_eq!(extra2[0].0, "mem");

        // A torn file and a file that is not a safetensors one are refused with what was found.
        let torn = dir.path().join("torn.safetensors");
        std::fs::write(&torn, &file[..file.len() - 4]).unwrap();
        let e = load(&torn, &params, &mut opt2).unwrap_err().to_string();
        assert!(e.contains("the header describes"), "{e}");
        std::fs::write(&torn, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").unwrap();
        let e = load(&torn, &params, &mut opt2).unwrap_err().to_string();
        assert!(e.contains("header of"), "{e}");
    }
}
