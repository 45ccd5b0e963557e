//! Loading a `.gguf` file: the LLaMA-family configuration from its metadata, the vocabulary, and
//! the model with its tokenizer and chat template.

use std::path::Path;

use canon_nn::RopeLayout;
use canon_quant::gguf::{GgufFile, Value};
use canon_text::{ChatTemplate, GgufVocab, Tokenizer};

use super::LoadedLm;
use crate::source::{GgufSource, WeightMode, llama_gguf_name};
use crate::{Llama, LlamaConfig, LlamaVariant, ModelError, Result};

fn meta_err(file: &GgufFile, message: String) -> ModelError {
    ModelError::Config {
        file: file.path.display().to_string(),
        message,
    }
}

fn meta_u64(f: &GgufFile, key: &str) -> Result<u64> {
    let v = f
        .get(key)
        .ok_or_else(|| meta_err(f, format!("missing metadata key '{key}'")))?;
    v.as_u64().ok_or_else(|| {
        meta_err(
            f,
            format!("'{key}' should be an integer, found {}", v.type_name()),
        )
    })
}

fn meta_u64_opt(f: &GgufFile, key: &str) -> Option<u64> {
    f.get(key).and_then(Value::as_u64)
}

fn meta_f64(f: &GgufFile, key: &str) -> Result<Option<f64>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            meta_err(
                f,
                format!("'{key}' should be a number, found {}", v.type_name()),
            )
        }),
    }
}

fn strings(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    match f.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| meta_err(f, format!("'{key}' should hold strings")))
            })
            .collect(),
        Some(v) => Err(meta_err(
            f,
            format!("'{key}' should be an array, found {}", v.type_name()),
        )),
    }
}

/// LLaMA-family hyper-parameters from GGUF metadata (`{arch}.*` keys).
pub fn llama_config_from_gguf(f: &GgufFile) -> Result<LlamaConfig> {
    const SUPPORTED: &[&str] = &["llama", "mistral", "gemma3", "qwen2", "phi3"];
    let arch = f
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| meta_err(f, "missing 'general.architecture'".into()))?
        .to_string();
    if !SUPPORTED.contains(&arch.as_str()) {
        return Err(ModelError::Architecture {
            found: arch,
            expected: SUPPORTED.join(", "),
        });
    }
    let k = |s: &str| format!("{arch}.{s}");
    let d = meta_u64(f, &k("embedding_length"))? as usize;
    let n_heads = meta_u64(f, &k("attention.head_count"))? as usize;
    let n_kv = meta_u64_opt(f, &k("attention.head_count_kv")).unwrap_or(n_heads as u64) as usize;
    let head_dim = match meta_u64_opt(f, &k("attention.key_length")) {
        Some(v) => v as usize,
        None if n_heads > 0 => d / n_heads,
        None => 0,
    };
    if let Some(rd) = meta_u64_opt(f, &k("rope.dimension_count"))
        && rd as usize != head_dim
    {
        return Err(meta_err(
            f,
            format!(
                "partial rotary embeddings (rope.dimension_count {rd} < head dim {head_dim}) are not supported"
            ),
        ));
    }
    let rope_freq_factors = gguf_rope_scaling(f, &k, head_dim)?;
    let vocab = match meta_u64_opt(f, &k("vocab_size")) {
        Some(v) => v as usize,
        None => match f.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => f
                .tensor_info("token_embd.weight")
                .and_then(|t| t.shape.first().copied())
                .unwrap_or(0),
        },
    };
    let mut cfg = LlamaConfig {
        vocab_size: vocab,
        hidden_size: d,
        intermediate_size: meta_u64(f, &k("feed_forward_length"))? as usize,
        num_hidden_layers: meta_u64(f, &k("block_count"))? as usize,
        num_attention_heads: n_heads,
        num_key_value_heads: n_kv,
        head_dim,
        rms_norm_eps: meta_f64(f, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: meta_f64(f, &k("rope.freq_base"))?.unwrap_or(10000.0) as f32,
        // llama.cpp's converter permutes LLaMA's Q/K rows for its interleaved RoPE; Gemma's,
        // Qwen2's and Phi-3's are stored as trained and rotated in halves (NeoX).
        rope_layout: if matches!(arch.as_str(), "gemma3" | "qwen2" | "phi3") {
            RopeLayout::HalfSplit
        } else {
            RopeLayout::Interleaved
        },
        max_position_embeddings: meta_u64(f, &k("context_length"))? as usize,
        tie_word_embeddings: f.tensor_info("output.weight").is_none(),
        variant: match arch.as_str() {
            "gemma3" => gemma3_variant(f, &k)?,
            _ => LlamaVariant {
                qkv_bias: arch == "qwen2",
                fused_projections: arch == "phi3",
                // A window on every layer (Mistral, Phi-3), where the file gives one.
                sliding_window: meta_u64_opt(f, &k("attention.sliding_window"))
                    .filter(|&w| w > 0)
                    .map(|w| w as usize),
                sliding_window_pattern: 0,
                ..Default::default()
            },
        },
    };
    cfg.variant.rope_freq_factors = rope_freq_factors;
    cfg.validate().map_err(|m| meta_err(f, m))?;
    Ok(cfg)
}

/// Scaled RoPE from GGUF, as llama.cpp applies it: `rope.scaling.type = "linear"` with
/// `rope.scaling.factor` s (every frequency divided by s) and/or a `rope_freqs.weight` tensor of
/// `head_dim / 2` divisors (Llama 3.1+), combined; `None` for plain RoPE. YaRN and Phi-3's
/// LongRoPE factors are not implemented: a file that asks for them is refused by name rather
/// than run with plain RoPE.
fn gguf_rope_scaling(
    f: &GgufFile,
    k: &dyn Fn(&str) -> String,
    head_dim: usize,
) -> Result<Option<Vec<f32>>> {
    let type_key = k("rope.scaling.type");
    let kind = f.get(&type_key).and_then(Value::as_str).unwrap_or("none");
    let factor_key = k("rope.scaling.factor");
    let factor = meta_f64(f, &factor_key)?.filter(|&x| x != 0.0 && x != 1.0);
    let linear = match (kind, factor) {
        ("none", None) => None,
        ("linear", Some(s)) | ("none", Some(s)) if s > 0.0 && s.is_finite() => Some(s as f32),
        ("linear", None) => None,
        ("linear" | "none", Some(s)) => {
            return Err(meta_err(
                f,
                format!("'{factor_key}' = {s}: expected a positive scaling factor"),
            ));
        }
        (t, _) => {
            return Err(meta_err(
                f,
                format!(
                    "'{type_key}' = \"{t}\": this RoPE scaling is not supported (plain, linear and Llama 3's rope_freqs are)"
                ),
            ));
        }
    };
    let freqs = match f.tensor_info("rope_freqs.weight") {
        None => None,
        Some(info) => {
            let half = head_dim / 2;
            if info.dtype != canon_quant::GgmlType::F32 || info.n_bytes != 4 * half {
                return Err(meta_err(
                    f,
                    format!(
                        "tensor 'rope_freqs.weight': expected {half} f32 values (head_dim / 2), found {:?} of {} bytes",
                        info.dtype, info.n_bytes
                    ),
                ));
            }
            Some(
                f.tensor_bytes(info)
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect::<Vec<f32>>(),
            )
        }
    };
    for t in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if f.tensor_info(t).is_some() {
            return Err(meta_err(
                f,
                format!(
                    "tensor '{t}': LongRoPE (Phi-3 128k rope_scaling) is not supported; the 4k-context models run"
                ),
            ));
        }
    }
    Ok(match (freqs, linear) {
        (None, None) => None,
        (Some(v), None) => Some(v),
        (None, Some(s)) => Some(vec![s; head_dim / 2]),
        (Some(v), Some(s)) => Some(v.into_iter().map(|x| x * s).collect()),
    })
}

/// Gemma 3's block, as llama.cpp's `gemma3` graph runs it: embeddings × √d, q/k RMS norms, post-norms
/// around attention and FFN, GELU-tanh gating, a sliding window (`attention.sliding_window`) on
/// all layers but every `attention.sliding_window_pattern`-th (default 6), local RoPE base
/// `rope.freq_base_swa` (default 10 000), queries scaled by 1/√key_length (the 62-layer 27B model:
/// 1/√(d / heads)), optional final logit soft-capping. The converter already folded Gemma's
/// `(1 + w)` RMSNorm weights into the stored `w`, so the norms are plain RMSNorms here.
fn gemma3_variant(f: &GgufFile, k: &dyn Fn(&str) -> String) -> Result<LlamaVariant> {
    let window = meta_u64_opt(f, &k("attention.sliding_window")).filter(|&w| w > 0);
    let pattern = match f.get(&k("attention.sliding_window_pattern")) {
        None => 6,
        Some(v) => v.as_u64().ok_or_else(|| {
            meta_err(
                f,
                format!(
                    "'{}' should be a layer period (integer), found {}; per-layer lists are not supported",
                    k("attention.sliding_window_pattern"),
                    v.type_name()
                ),
            )
        })? as usize,
    };
    let layers = meta_u64(f, &k("block_count"))?;
    let query_scale = if layers == 62 {
        let d = meta_u64(f, &k("embedding_length"))? as f64;
        let h = meta_u64(f, &k("attention.head_count"))?.max(1) as f64;
        Some((1.0 / (d / h).sqrt()) as f32)
    } else {
        None
    };
    Ok(LlamaVariant {
        scale_embeddings: true,
        qk_norm: true,
        post_norms: true,
        gelu_tanh_ffn: true,
        sliding_window: window.map(|w| w as usize),
        sliding_window_pattern: pattern,
        rope_theta_local: Some(meta_f64(f, &k("rope.freq_base_swa"))?.unwrap_or(10000.0) as f32),
        query_scale,
        final_logit_softcap: meta_f64(f, &k("final_logit_softcapping"))?
            .filter(|&c| c > 0.0)
            .map(|c| c as f32),
        ..Default::default()
    })
}

/// The `tokenizer.ggml.*` metadata as plain data.
pub fn gguf_vocab(f: &GgufFile) -> Result<GgufVocab> {
    let id = |key: &str| meta_u64_opt(f, key).map(|v| v as u32);
    let token_types = match f.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
        _ => Vec::new(),
    };
    Ok(GgufVocab {
        model: f
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                meta_err(
                    f,
                    "missing 'tokenizer.ggml.model': the file has no tokenizer".into(),
                )
            })?
            .to_string(),
        pre: f
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .map(str::to_string),
        tokens: strings(f, "tokenizer.ggml.tokens")?,
        token_types,
        merges: strings(f, "tokenizer.ggml.merges")?,
        scores: match f.get("tokenizer.ggml.scores") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32).unwrap_or(f32::NAN))
                .collect(),
            _ => Vec::new(),
        },
        add_space_prefix: f
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(Value::as_bool),
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        eot_id: id("tokenizer.ggml.eot_token_id"),
        eom_id: id("tokenizer.ggml.eom_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        add_bos: f
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        add_eos: f
            .get("tokenizer.ggml.add_eos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Hands heap pages freed after a one-time build (the tokenizer's JSON, the vocabulary copies) back
/// to the operating system, so they do not stay in the resident set while the model runs.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's allocator; it touches no live data.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn load_gguf_lm(path: &Path, mode: WeightMode) -> Result<LoadedLm> {
    let file = GgufFile::open(path)?;
    let cfg = llama_config_from_gguf(&file)?;
    let vocab = gguf_vocab(&file)?;
    let tokenizer = Tokenizer::from_gguf(&vocab)?;
    let tok_text = |id: Option<u32>| {
        id.and_then(|i| vocab.tokens.get(i as usize).cloned())
            .unwrap_or_default()
    };
    let chat_template = match file.get("tokenizer.chat_template").and_then(Value::as_str) {
        Some(src) => Some(ChatTemplate::new(
            src,
            &tok_text(vocab.bos_id),
            &tok_text(vocab.eos_id),
        )?),
        None => None,
    };
    let name = file
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or("model")
        .to_string();
    drop(vocab);
    // The weights are packed while the source is alive: free the vocabulary's metadata arrays
    // first, which the source never reads (gemma-3-270m: heap peak 292 -> 271 MB by heaptrack;
    // the process's peak RSS did not move, 353 MB).
    let mut file = file;
    file.metadata.retain(|k, _| !k.starts_with("tokenizer."));
    // The header is parsed into owned copies: its pages (the vocabulary's strings, 15 MB for
    // gemma-3-270m) need not stay resident.
    file.release_header_pages();
    let src = GgufSource::new(file, llama_gguf_name);
    let model = Llama::load(cfg, &src, mode)?;
    // The metadata (vocabulary and merges as strings) goes with the source; the tensors keep
    // their own handle on the mapping.
    drop(src);
    release_freed_heap();
    Ok(LoadedLm {
        model: Box::new(model),
        tokenizer,
        chat_template,
        name,
        path: path.to_path_buf(),
    })
}
