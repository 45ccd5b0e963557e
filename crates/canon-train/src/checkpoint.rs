//! Checkpoints: one safetensors file holding the weights (`model.<name>`), the optimizer state
//! (`optim.m.<name>`, `optim.v.<name>`), and in its metadata the step, the optimizer's update count
//! and the data-order RNG state. Written to a temporary file in the same folder, synced, then renamed
//! over the old one, so a crash never leaves a torn checkpoint.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use canon_models::family::CHECKPOINT_PARAM_PREFIX;
use safetensors::{Dtype, View};

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

struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn view(shape: &[usize], v: &[f32]) -> F32View {
    F32View {
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
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
    let mut entries: Vec<(String, F32View)> = Vec::new();
    for (name, t) in extra {
        let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        entries.push((format!("state.{name}"), view(t.dims(), &v)));
    }
    for (i, p) in params.iter().enumerate() {
        let shape = p.var.dims().to_vec();
        let w: Vec<f32> = p.var.as_tensor().flatten_all()?.to_vec1()?;
        entries.push((
            format!("{CHECKPOINT_PARAM_PREFIX}{}", p.name),
            view(&shape, &w),
        ));
        if !opt.m[i].is_empty() {
            entries.push((format!("optim.m.{}", p.name), view(&shape, &opt.m[i])));
        }
        if !opt.v[i].is_empty() {
            entries.push((format!("optim.v.{}", p.name), view(&shape, &opt.v[i])));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("step".to_string(), state.step.to_string());
    meta.insert("rng_state".to_string(), state.rng_state.to_string());
    meta.insert("optimizer".to_string(), opt.config.name().to_string());
    meta.insert("optimizer_t".to_string(), opt.t.to_string());
    let bytes = safetensors::serialize(entries, Some(meta)).map_err(|e| ck_err(path, e))?;
    canon_fs::write_atomic(path, &bytes).map_err(|e| io_err(path, e))
}

/// Restores weights (into the existing variables), optimizer state and the train state; returns the
/// extra state tensors (names without the `state.` prefix, sorted).
pub fn load(
    path: &Path,
    params: &[Param],
    opt: &mut Optimizer,
) -> Result<(TrainState, Vec<(String, Tensor)>)> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| ck_err(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ck_err(path, e))?;
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
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let v = st
            .tensor(name)
            .map_err(|_| ck_err(path, format!("missing tensor '{name}'")))?;
        if v.shape() != shape || v.dtype() != Dtype::F32 {
            return Err(ck_err(
                path,
                format!(
                    "tensor '{name}' is {:?} {:?}, expected F32 {shape:?}",
                    v.dtype(),
                    v.shape()
                ),
            ));
        }
        Ok(v.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
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
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("state."))
        .map(|n| n.to_string())
        .collect();
    names.sort();
    let mut extra = Vec::new();
    for n in names {
        let v = st.tensor(&n).map_err(|e| ck_err(path, e))?;
        let shape = v.shape().to_vec();
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
