//! The one loader: `--model` is an alias of a pinned asset (`smollm2`, `minilm`), a `.gguf` file, or an
//! HF-style folder (config.json + model.safetensors + tokenizer.json). Configuration comes only from
//! the file's own metadata; tokenizer and chat template come with the model.

use std::path::{Path, PathBuf};

use canon_assets::FetchProgress;
use canon_nn::RopeLayout;
use canon_quant::gguf::{GgufFile, Value};
use canon_text::{ChatTemplate, GgufVocab, Tokenizer};
use serde_json::Value as Json;

use crate::source::{GgufSource, SafetensorsSource, WeightMode, llama_gguf_name};
use crate::{
    Bert, BertConfig, CausalLm, Llama, LlamaConfig, LlamaVariant, ModelError, Pooling, Result,
    SentenceEmbedder,
};

/// What `--model` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Alias(String),
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let p = Path::new(s);
        if p.is_dir() {
            return Ok(Self::HfDir(p.to_path_buf()));
        }
        if p.is_file() {
            return Ok(Self::Gguf(p.to_path_buf()));
        }
        if canon_assets::spec(s).is_ok() {
            return Ok(Self::Alias(s.to_string()));
        }
        let aliases: Vec<&str> = canon_assets::ASSETS.iter().map(|a| a.name).collect();
        Err(ModelError::Input(format!(
            "--model '{s}' is neither an existing file or folder nor a known alias (expected a .gguf file, an HF-style folder, or one of: {})",
            aliases.join(", ")
        )))
    }

    /// Resolves an alias to its local path, fetching the asset on first use.
    pub fn resolve(&self, progress: &dyn FetchProgress) -> Result<ModelSpec> {
        match self {
            Self::Alias(a) => {
                let p = canon_assets::ensure_main(a, progress)?;
                Ok(if p.is_dir() {
                    Self::HfDir(p)
                } else {
                    Self::Gguf(p)
                })
            }
            other => Ok(other.clone()),
        }
    }
}

/// A causal LM with everything generation needs.
pub struct LoadedLm {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub name: String,
    pub path: PathBuf,
}

/// A sentence-embedding model.
pub struct LoadedEncoder {
    pub embedder: SentenceEmbedder,
    pub name: String,
    pub path: PathBuf,
}

pub fn load_causal_lm(
    spec: &ModelSpec,
    mode: WeightMode,
    progress: &dyn FetchProgress,
) -> Result<LoadedLm> {
    match spec.resolve(progress)? {
        ModelSpec::Gguf(p) => load_gguf_lm(&p, mode),
        ModelSpec::HfDir(d) if crate::family::is_run_dir(&d) => crate::family::load_run_dir(&d),
        ModelSpec::HfDir(d) => load_hf_lm(&d),
        ModelSpec::Alias(_) => unreachable_alias(),
    }
}

pub fn load_encoder(spec: &ModelSpec, progress: &dyn FetchProgress) -> Result<LoadedEncoder> {
    match spec.resolve(progress)? {
        ModelSpec::HfDir(d) => load_hf_encoder(&d),
        ModelSpec::Gguf(p) => Err(ModelError::Architecture {
            found: format!("GGUF file {}", p.display()),
            expected: "an HF-style BERT folder (config.json, model.safetensors, tokenizer.json) for embeddings".into(),
        }),
        ModelSpec::Alias(_) => unreachable_alias(),
    }
}

/// Only the tokenizer of a model (no weights are read): GGUF metadata or `tokenizer.json`.
/// Returns the tokenizer and whether the model is an encoder (BERT folders add [CLS]/[SEP]).
pub fn load_tokenizer(spec: &ModelSpec, progress: &dyn FetchProgress) -> Result<(Tokenizer, bool)> {
    match spec.resolve(progress)? {
        ModelSpec::Gguf(p) => {
            let file = GgufFile::open(&p)?;
            Ok((Tokenizer::from_gguf(&gguf_vocab(&file)?)?, false))
        }
        ModelSpec::HfDir(d) if crate::family::is_run_dir(&d) => Ok((
            Tokenizer::from_file(&d.join(crate::family::RUN_TOKENIZER_FILE))?,
            false,
        )),
        ModelSpec::HfDir(d) => {
            let v = read_json(&d.join("config.json"))?;
            let encoder = model_type(&v) == "bert";
            let mut t = hf_tokenizer(&d)?;
            t.use_post_processor = true;
            Ok((t, encoder))
        }
        ModelSpec::Alias(_) => unreachable_alias(),
    }
}

fn unreachable_alias<T>() -> Result<T> {
    Err(ModelError::Input("internal: alias left unresolved".into()))
}

// ---------------------------------------------------------------- GGUF

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

// ---------------------------------------------------------------- HF folders

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.display().to_string(),
        message: format!("invalid JSON: {e}"),
    })
}

fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

struct Cfg<'a> {
    v: &'a Json,
    file: String,
}

impl Cfg<'_> {
    fn usize(&self, key: &str) -> Result<usize> {
        self.v[key]
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| ModelError::Config {
                file: self.file.clone(),
                message: format!(
                    "'{key}' should be a non-negative integer, found {}",
                    self.v[key]
                ),
            })
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.v[key].is_null() {
            Ok(default)
        } else {
            self.usize(key)
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match &self.v[key] {
            Json::Null => Ok(default),
            v => v.as_f64().ok_or_else(|| ModelError::Config {
                file: self.file.clone(),
                message: format!("'{key}' should be a number, found {v}"),
            }),
        }
    }
}

fn model_type(cfg: &Json) -> String {
    cfg["model_type"].as_str().unwrap_or("").to_string()
}

fn hf_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let p = dir.join("tokenizer.json");
    if !p.is_file() {
        return Err(ModelError::Io {
            path: p.display().to_string(),
            message: "missing: an HF-style folder needs tokenizer.json".into(),
        });
    }
    Ok(Tokenizer::from_file(&p)?)
}

fn token_id(tok: &Tokenizer, v: &Json) -> Option<u32> {
    match v {
        Json::String(s) => tok.token_to_id(s),
        Json::Object(o) => o
            .get("content")
            .and_then(Json::as_str)
            .and_then(|s| tok.token_to_id(s)),
        _ => None,
    }
}

pub fn load_hf_lm(dir: &Path) -> Result<LoadedLm> {
    let cfg_path = dir.join("config.json");
    let v = read_json(&cfg_path)?;
    let mt = model_type(&v);
    if !matches!(mt.as_str(), "llama" | "mistral" | "qwen2" | "phi3") {
        return Err(ModelError::Architecture {
            found: if mt.is_empty() {
                "(no model_type in config.json)".into()
            } else {
                mt
            },
            expected: "llama, mistral, qwen2, phi3 (causal LM); bert for embeddings".into(),
        });
    }
    let c = Cfg {
        v: &v,
        file: cfg_path.display().to_string(),
    };
    let d = c.usize("hidden_size")?;
    let nh = c.usize("num_attention_heads")?;
    let mut variant = hf_variant(&c, &mt)?;
    let head_dim = c.usize_or("head_dim", d.checked_div(nh).unwrap_or(0))?;
    variant.rope_freq_factors = hf_rope_factors(&c, head_dim, hf_rope_theta(&c)? as f32)?;
    let cfg = LlamaConfig {
        vocab_size: c.usize("vocab_size")?,
        hidden_size: d,
        intermediate_size: c.usize("intermediate_size")?,
        num_hidden_layers: c.usize("num_hidden_layers")?,
        num_attention_heads: nh,
        num_key_value_heads: c.usize_or("num_key_value_heads", nh)?,
        head_dim,
        rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
        rope_theta: hf_rope_theta(&c)? as f32,
        rope_layout: RopeLayout::HalfSplit,
        max_position_embeddings: c.usize_or("max_position_embeddings", 2048)?,
        tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
        variant,
    };
    let mut tokenizer = hf_tokenizer(dir)?;
    tokenizer.use_post_processor = true;
    let tcfg = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let gcfg = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
    let mut eog: Vec<u32> = Vec::new();
    for src in [&v["eos_token_id"], &gcfg["eos_token_id"]] {
        match src {
            Json::Number(n) => eog.extend(n.as_u64().map(|x| x as u32)),
            Json::Array(a) => eog.extend(a.iter().filter_map(|x| x.as_u64().map(|x| x as u32))),
            _ => {}
        }
    }
    eog.extend(token_id(&tokenizer, &tcfg["eos_token"]));
    eog.sort_unstable();
    eog.dedup();
    tokenizer.eos_id = eog.first().copied();
    tokenizer.eog_ids = eog;
    tokenizer.bos_id = token_id(&tokenizer, &tcfg["bos_token"]);
    let text_of = |v: &Json| match v {
        Json::String(s) => s.clone(),
        Json::Object(o) => o
            .get("content")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    };
    let chat_template = match tcfg["chat_template"].as_str() {
        Some(s) => Some(ChatTemplate::new(
            s,
            &text_of(&tcfg["bos_token"]),
            &text_of(&tcfg["eos_token"]),
        )?),
        None => None,
    };
    let src = SafetensorsSource::open_dir(dir)?;
    let model = Llama::load(cfg, &src, WeightMode::DequantizeF32)?;
    Ok(LoadedLm {
        model: Box::new(model),
        tokenizer,
        chat_template,
        name: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: dir.to_path_buf(),
    })
}

/// The RoPE base: `rope_theta`, or `rope_parameters.rope_theta` as transformers 5 writes it.
/// Scaled RoPE other than linear and Llama 3's (`rope_scaling` / `rope_parameters.rope_type`
/// dynamic, YaRN, Phi-3's LongRoPE) and partial rotary embeddings are refused by key.
fn hf_rope_theta(c: &Cfg) -> Result<f64> {
    let refuse = |key: &str, found: &Json, what: &str| ModelError::Config {
        file: c.file.clone(),
        message: format!("'{key}' = {found}: {what} is not supported (only plain RoPE)"),
    };
    let params = &c.v["rope_parameters"];
    for (key, found) in [
        ("rope_scaling", &c.v["rope_scaling"]),
        ("rope_parameters", params),
    ] {
        let kind = match found {
            Json::Null => continue,
            Json::Object(o) => o
                .get("rope_type")
                .or_else(|| o.get("type"))
                .and_then(Json::as_str)
                .unwrap_or("default"),
            _ => return Err(refuse(key, found, "this RoPE setting")),
        };
        if !matches!(kind, "default" | "linear" | "llama3") {
            return Err(refuse(key, found, "RoPE scaling"));
        }
    }
    for (key, found) in [
        ("partial_rotary_factor", &c.v["partial_rotary_factor"]),
        (
            "rope_parameters.partial_rotary_factor",
            &params["partial_rotary_factor"],
        ),
    ] {
        if let Some(x) = found.as_f64()
            && x != 1.0
        {
            return Err(refuse(key, found, "partial rotary embedding"));
        }
    }
    match (&c.v["rope_theta"], &params["rope_theta"]) {
        (Json::Null, Json::Null) => Ok(10000.0),
        (Json::Null, t) => t.as_f64().ok_or_else(|| ModelError::Config {
            file: c.file.clone(),
            message: format!("'rope_parameters.rope_theta' should be a number, found {t}"),
        }),
        _ => c.f64_or("rope_theta", 10000.0),
    }
}

/// Scaled RoPE from config.json as transformers applies it: `rope_type` (or `type`) `linear`
/// (every frequency divided by `factor`) or `llama3` (`factor`, `low_freq_factor`,
/// `high_freq_factor`, `original_max_position_embeddings`), in `rope_scaling` or transformers
/// 5's `rope_parameters`; `None` for plain RoPE. Other types were refused by [`hf_rope_theta`].
fn hf_rope_factors(c: &Cfg, head_dim: usize, theta: f32) -> Result<Option<Vec<f32>>> {
    let scaling = match (&c.v["rope_scaling"], &c.v["rope_parameters"]) {
        (Json::Object(o), _) | (Json::Null, Json::Object(o)) => o,
        _ => return Ok(None),
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let num = |key: &str, default: Option<f64>| -> Result<f32> {
        match (scaling.get(key), default) {
            (Some(v), _) if v.as_f64().is_some_and(|x| x > 0.0 && x.is_finite()) => {
                Ok(v.as_f64().unwrap_or(1.0) as f32)
            }
            (None | Some(Json::Null), Some(d)) => Ok(d as f32),
            (found, _) => Err(ModelError::Config {
                file: c.file.clone(),
                message: format!(
                    "'rope_scaling.{key}' should be a positive number, found {}",
                    found.map_or("nothing".to_string(), |v| v.to_string())
                ),
            }),
        }
    };
    match kind {
        "linear" => Ok(Some(vec![num("factor", None)?; head_dim / 2])),
        "llama3" => {
            let (low, high) = (
                num("low_freq_factor", Some(1.0))?,
                num("high_freq_factor", Some(4.0))?,
            );
            if high <= low {
                return Err(ModelError::Config {
                    file: c.file.clone(),
                    message: format!(
                        "'rope_scaling': high_freq_factor ({high}) must exceed low_freq_factor ({low})"
                    ),
                });
            }
            Ok(Some(canon_nn::Rope::llama3_factors(
                head_dim,
                theta,
                num("factor", None)?,
                low,
                high,
                num("original_max_position_embeddings", Some(8192.0))?,
            )))
        }
        _ => Ok(None),
    }
}

/// What a family changes in the LLaMA block, from its config.json: Qwen2's q/k/v biases, Phi-3's
/// fused projections, Mistral's and Phi-3's sliding window on every layer. Qwen2's per-layer
/// windows (`use_sliding_window`) and biases in LLaMA/Mistral (`attention_bias`, `mlp_bias`) are
/// refused by key.
fn hf_variant(c: &Cfg, model_type: &str) -> Result<LlamaVariant> {
    let refuse = |key: &str, found: &Json, what: &str| ModelError::Config {
        file: c.file.clone(),
        message: format!("'{key}' = {found}: {what} is not supported for {model_type}"),
    };
    for key in ["attention_bias", "mlp_bias"] {
        if c.v[key].as_bool() == Some(true) {
            return Err(refuse(key, &c.v[key], "biases on these projections"));
        }
    }
    let mut window = match model_type {
        "mistral" | "phi3" => c.usize_or("sliding_window", 0)?,
        _ => 0,
    };
    if model_type == "qwen2" {
        if c.v["use_sliding_window"].as_bool() == Some(true) {
            return Err(refuse(
                "use_sliding_window",
                &c.v["use_sliding_window"],
                "a sliding window on some layers",
            ));
        }
        if let Some(types) = c.v["layer_types"].as_array()
            && types.iter().any(|t| t.as_str() != Some("full_attention"))
        {
            return Err(refuse(
                "layer_types",
                &c.v["layer_types"],
                "a sliding window on some layers",
            ));
        }
        window = 0;
    }
    Ok(LlamaVariant {
        qkv_bias: model_type == "qwen2",
        fused_projections: model_type == "phi3",
        sliding_window: (window > 0).then_some(window),
        sliding_window_pattern: 0,
        ..Default::default()
    })
}

pub fn load_hf_encoder(dir: &Path) -> Result<LoadedEncoder> {
    let cfg_path = dir.join("config.json");
    let v = read_json(&cfg_path)?;
    let mt = model_type(&v);
    if mt != "bert" {
        return Err(ModelError::Architecture {
            found: if mt.is_empty() {
                "(no model_type in config.json)".into()
            } else {
                mt
            },
            expected: "bert (sentence embeddings)".into(),
        });
    }
    let c = Cfg {
        v: &v,
        file: cfg_path.display().to_string(),
    };
    let act_name = v["hidden_act"].as_str().unwrap_or("gelu");
    let cfg = BertConfig {
        vocab_size: c.usize("vocab_size")?,
        hidden_size: c.usize("hidden_size")?,
        num_hidden_layers: c.usize("num_hidden_layers")?,
        num_attention_heads: c.usize("num_attention_heads")?,
        intermediate_size: c.usize("intermediate_size")?,
        hidden_act: BertConfig::activation_from_hf(act_name).ok_or_else(|| ModelError::Config {
            file: c.file.clone(),
            message: format!("unsupported hidden_act '{act_name}'"),
        })?,
        layer_norm_eps: c.f64_or("layer_norm_eps", 1e-12)?,
        max_position_embeddings: c.usize_or("max_position_embeddings", 512)?,
        type_vocab_size: c.usize_or("type_vocab_size", 2)?,
    };
    let mut src = SafetensorsSource::open_dir(dir)?;
    src.detect_prefix("embeddings.word_embeddings.weight", &["bert.", "model."]);
    let encoder = Bert::load(cfg.clone(), &src)?;
    // sentence-transformers' settings: max_seq_length, pooling, normalisation.
    let st = read_json_opt(&dir.join("sentence_bert_config.json"))?.unwrap_or(Json::Null);
    let max_seq_length = st["max_seq_length"]
        .as_u64()
        .map(|x| x as usize)
        .unwrap_or(cfg.max_position_embeddings)
        .min(cfg.max_position_embeddings);
    let pool = read_json_opt(&dir.join("1_Pooling/config.json"))?.unwrap_or(Json::Null);
    let pooling = if pool["pooling_mode_cls_token"].as_bool() == Some(true)
        && pool["pooling_mode_mean_tokens"].as_bool() != Some(true)
    {
        Pooling::Cls
    } else {
        Pooling::Mean
    };
    let normalize = match read_json_opt(&dir.join("modules.json"))? {
        Some(Json::Array(mods)) => mods.iter().any(|m| {
            m["type"]
                .as_str()
                .is_some_and(|t| t.ends_with(".Normalize"))
        }),
        _ => true,
    };
    let tokenizer = hf_tokenizer(dir)?.with_truncation(max_seq_length)?;
    let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
    Ok(LoadedEncoder {
        embedder: SentenceEmbedder {
            encoder: Box::new(encoder),
            tokenizer,
            max_seq_length,
            pooling,
            normalize,
            pad_id,
        },
        name: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: dir.to_path_buf(),
    })
}
