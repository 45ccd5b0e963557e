//! `canon info --model M`: what a model file or folder holds, read from its headers (no weights
//! are loaded): architecture and shape, parameter count, weight formats, tokenizer.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use canon_models::ModelSpec;
use canon_quant::gguf::GgufFile;
use clap::Args;
use serde_json::{Value, json};

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon info --model smollm2
  canon info --model minilm --json
  canon info --model ./my-model.gguf
  canon info --model runs/gpt2        # a training run folder")]
pub struct InfoArgs {
    /// An alias (smollm2, minilm), a .gguf file, an HF-style folder or a training run folder.
    #[arg(long)]
    pub model: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let spec = ModelSpec::parse(&a.model)?
        .resolve(ctx.progress())
        .with_context(|| format!("cannot find model '{}'", a.model))?;
    let info = match &spec {
        ModelSpec::Gguf(p) => gguf_info(p)?,
        ModelSpec::HfDir(d) => folder_info(d)?,
        ModelSpec::Alias(_) => bail!("internal: alias left unresolved"),
    };
    let tokenizer = match canon_models::load::load_tokenizer(&spec, ctx.progress()) {
        Ok((t, _)) => json!({"vocab_size": t.vocab_size()}),
        Err(e) => json!({"error": e.to_string()}),
    };
    let mut info = info;
    if let Some(obj) = info.as_object_mut() {
        let tok = obj.entry("tokenizer").or_insert_with(|| json!({}));
        if let (Some(t), Some(extra)) = (tok.as_object_mut(), tokenizer.as_object()) {
            for (k, v) in extra {
                t.entry(k.clone()).or_insert(v.clone());
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_table(&info, "");
    }
    Ok(())
}

fn print_table(v: &Value, indent: &str) {
    let Some(obj) = v.as_object() else {
        return;
    };
    for (k, v) in obj {
        match v {
            Value::Object(_) => {
                println!("{indent}{k}:");
                print_table(v, &format!("{indent}  "));
            }
            Value::String(s) => println!("{indent}{k}: {s}"),
            other => println!("{indent}{k}: {other}"),
        }
    }
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{:.1} kB", n / 1e3)
    }
}

fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else {
        format!("{:.1} k", n / 1e3)
    }
}

fn gguf_info(path: &Path) -> anyhow::Result<Value> {
    let f = GgufFile::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let meta_str = |k: &str| f.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let arch = meta_str("general.architecture").unwrap_or_else(|| "unknown".into());
    let mut formats: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut params = 0u64;
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
    let shape = match canon_models::load::llama_config_from_gguf(&f) {
        Ok(c) => json!({
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
        }),
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
fn safetensors_formats(dir: &Path) -> anyhow::Result<(u64, Formats)> {
    let mut params = 0u64;
    let mut formats = Formats::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for p in files {
        use std::io::Read;
        let mut f =
            std::fs::File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len)
            .with_context(|| format!("{}: not a safetensors file", p.display()))?;
        let n = u64::from_le_bytes(len);
        if n > 100 << 20 {
            bail!(
                "{}: header of {n} bytes (over 100 MB): not a safetensors file",
                p.display()
            );
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header)
            .with_context(|| format!("{}: truncated header", p.display()))?;
        let h: serde_json::Map<String, Value> = serde_json::from_slice(&header)
            .with_context(|| format!("{}: header is not JSON", p.display()))?;
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

fn folder_info(dir: &Path) -> anyhow::Result<Value> {
    let cfg_path = [dir.join("config.json"), dir.join("model.json")]
        .into_iter()
        .find(|p| p.is_file());
    let cfg: Value = match &cfg_path {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{}: not valid JSON", p.display()))?,
        None => bail!(
            "{}: expected config.json (an HF-style folder) or model.json (a training run), found neither",
            dir.display()
        ),
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
