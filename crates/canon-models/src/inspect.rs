//! What a model file or folder holds, read from its headers (no weights are loaded):
//! architecture and shape, parameter count, weight formats, tokenizer (`canon info`).

use std::collections::BTreeMap;
use std::path::Path;

use canon_quant::gguf::GgufFile;
use serde_json::{Value, json};

use crate::{ModelError, Result};

fn io(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn bad(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Config {
        file: path.display().to_string(),
        message: message.into(),
    }
}

pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{:.1} kB", n / 1e3)
    }
}

pub fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else {
        format!("{:.1} k", n / 1e3)
    }
}

/// What a GGUF file holds, from its header.
/// The kernel path this CPU runs (`CANON_ISA` caps it) and which of the file's block formats the
/// products repack once at load on it (`repacked`: the panel kernels) or multiply from the file's
/// blocks (`unpacked`: the row kernels and, for prompts, the dequantizing GEMM), as llama.cpp
/// prints its system info.
fn kernels_info(types: impl Iterator<Item = canon_quant::GgmlType>) -> Value {
    use canon_quant::kernels::{Isa, Kind, avx_vnni, tile::packed::packs};
    let path = match Isa::best() {
        Isa::Avx512Vnni => "avx512vnni",
        Isa::Avx2 if avx_vnni() => "avx2 + avx-vnni",
        Isa::Avx2 => "avx2",
        Isa::Scalar => "scalar",
    };
    let mut kinds: Vec<Kind> = types.filter_map(Kind::of).collect();
    kinds.sort_by_key(|k| format!("{k:?}"));
    kinds.dedup();
    let list = |want: bool| {
        let v: Vec<String> = kinds
            .iter()
            .filter(|&&k| packs(k) == want)
            .map(|k| format!("{k:?}"))
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    json!({"path": path, "repacked": list(true), "unpacked": list(false)})
}

pub fn gguf_info(path: &Path) -> Result<Value> {
    let f = GgufFile::open(path).map_err(|e| io(path, e))?;
    let meta_str = |k: &str| f.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let arch = meta_str("general.architecture").unwrap_or_else(|| "unknown".into());
    let mut formats: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut params = 0u64;
    let kernels = kernels_info(f.tensors.iter().map(|t| t.dtype));
    for t in &f.tensors {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product();
        params += n;
        let e = formats.entry(format!("{:?}", t.dtype)).or_default();
        e.0 += 1;
        e.1 += n;
        e.2 += t.n_bytes as u64;
    }
    let formats: serde_json::Map<String, Value> = formats
        .into_iter()
        .map(|(k, (tensors, n, bytes))| {
            (
                k,
                Value::String(format!(
                    "{tensors} tensors, {} parameters, {}",
                    human_count(n),
                    human_bytes(bytes)
                )),
            )
        })
        .collect();
    let shape = match crate::load::llama_config_from_gguf(&f) {
        Ok(c) => {
            let mut shape = json!({
            "layers": c.num_hidden_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "attention_heads": c.num_attention_heads,
            "kv_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "context_length": c.max_position_embeddings,
            "rope_theta": c.rope_theta,
            "rms_norm_eps": c.rms_norm_eps,
            "tied_embeddings": c.tie_word_embeddings,
            "vocab_size": c.vocab_size,
            });
            if let Some(f) = &c.variant.rope_freq_factors {
                // Scaled RoPE: each rotary pair's frequency divisor (linear: all equal).
                let shown = if let Some(first) = f.first()
                    && f.iter().all(|x| x == first)
                {
                    format!("{first:.3} (all {} pairs: linear)", f.len())
                } else {
                    let v: Vec<String> = f.iter().map(|x| format!("{x:.3}")).collect();
                    v.join(" ")
                };
                shape["rope_freq_divisors"] = Value::String(shown);
            }
            shape
        }
        Err(e) => json!({"unsupported": e.to_string()}),
    };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let tok_model = meta_str("tokenizer.ggml.model").unwrap_or_else(|| "none".into());
    let id = |k: &str| f.get(k).and_then(|v| v.as_u64());
    Ok(json!({
        "file": path.display().to_string(),
        "format": format!("GGUF v{}, {}", f.version, human_bytes(size)),
        "name": meta_str("general.name").unwrap_or_default(),
        "architecture": arch,
        "parameters": format!("{} ({params})", human_count(params)),
        "shape": shape,
        "weights": formats,
        "kernels": kernels,
        "tokenizer": {
            "model": tok_model,
            "bos_id": id("tokenizer.ggml.bos_token_id"),
            "eos_id": id("tokenizer.ggml.eos_token_id"),
            "chat_template": f.get("tokenizer.chat_template").is_some(),
        },
    }))
}

/// dtype → (tensors, parameters).
type Formats = BTreeMap<String, (u64, u64)>;

/// Total parameters and their formats over the safetensors files of a folder, from headers only.
pub fn safetensors_formats(dir: &Path) -> Result<(u64, Formats)> {
    let mut params = 0u64;
    let mut formats = Formats::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for p in files {
        use std::io::Read;
        let mut f = std::fs::File::open(&p).map_err(|e| io(&p, e))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len)
            .map_err(|e| bad(&p, format!("not a safetensors file ({e})")))?;
        let n = u64::from_le_bytes(len);
        if n > 100 << 20 {
            return Err(bad(
                &p,
                format!("header of {n} bytes (over 100 MB): not a safetensors file"),
            ));
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header)
            .map_err(|e| bad(&p, format!("truncated header ({e})")))?;
        let h: serde_json::Map<String, Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(&p, format!("header is not JSON ({e})")))?;
        for (name, t) in h {
            if name == "__metadata__" {
                continue;
            }
            let dtype = t["dtype"].as_str().unwrap_or("?").to_string();
            let count: u64 = t["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(|d| d.as_u64()).product())
                .unwrap_or(0);
            params += count;
            let e = formats.entry(dtype).or_default();
            e.0 += 1;
            e.1 += count;
        }
    }
    Ok((params, formats))
}

/// What an HF-style folder or a training run folder holds, from its config and safetensors
/// headers.
pub fn folder_info(dir: &Path) -> Result<Value> {
    let cfg_path = [dir.join("config.json"), dir.join("model.json")]
        .into_iter()
        .find(|p| p.is_file());
    let cfg: Value = match &cfg_path {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p).map_err(|e| io(p, e))?)
            .map_err(|e| bad(p, format!("not valid JSON ({e})")))?,
        None => {
            return Err(bad(
                dir,
                "expected config.json (an HF-style folder) or model.json (a training run), found \
                 neither",
            ));
        }
    };
    let keys = [
        "model_type",
        "architectures",
        "family",
        "num_hidden_layers",
        "n_layer",
        "hidden_size",
        "d_model",
        "intermediate_size",
        "num_attention_heads",
        "n_head",
        "num_key_value_heads",
        "max_position_embeddings",
        "block_size",
        "vocab_size",
        "rope_theta",
        "rope_parameters",
        "sliding_window",
        "tie_word_embeddings",
    ];
    let mut shape = serde_json::Map::new();
    for k in keys {
        if let Some(v) = cfg
            .get(k)
            .or_else(|| cfg.get("model").and_then(|m| m.get(k)))
        {
            shape.insert(k.to_string(), v.clone());
        }
    }
    let (params, formats) = safetensors_formats(dir)?;
    let formats: serde_json::Map<String, Value> = formats
        .into_iter()
        .map(|(k, (tensors, n))| {
            (
                k,
                Value::String(format!("{tensors} tensors, {} parameters", human_count(n))),
            )
        })
        .collect();
    let tok = if dir.join("tokenizer.json").is_file() {
        "tokenizer.json"
    } else {
        "none found"
    };
    Ok(json!({
        "folder": dir.display().to_string(),
        "config": cfg_path.map(|p| p.display().to_string()),
        "parameters": format!("{} ({params})", human_count(params)),
        "shape": shape,
        "weights": formats,
        "tokenizer": {"file": tok},
    }))
}
