//! Loading an HF-style folder (config.json + model.safetensors + tokenizer.json): a LLaMA-family
//! causal LM, or a BERT sentence embedder with sentence-transformers' settings.

mod gemma3;

use std::path::Path;

use canon_nn::RopeLayout;
use canon_text::{ChatTemplate, Tokenizer};
use serde_json::Value as Json;

use super::{LoadedEncoder, LoadedLm};
use crate::source::{SafetensorsSource, WeightMode, WeightSource};
use crate::{
    Bert, BertConfig, Llama, LlamaConfig, LlamaVariant, ModelError, Pooling, Result,
    SentenceEmbedder,
};

pub(super) fn read_json(path: &Path) -> Result<Json> {
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

pub(super) struct Cfg<'a> {
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

pub(super) fn model_type(cfg: &Json) -> String {
    cfg["model_type"].as_str().unwrap_or("").to_string()
}

pub(super) fn hf_tokenizer(dir: &Path) -> Result<Tokenizer> {
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

/// LLaMA-family models (LLaMA, Mistral, Qwen2, Phi-3) and Gemma 3, as `model_type` names them.
const CAUSAL_TYPES: &str =
    "llama, mistral, qwen2, phi3, gemma3_text, gemma3 (causal LM); bert for embeddings";

pub fn load_hf_lm(dir: &Path) -> Result<LoadedLm> {
    let cfg_path = dir.join("config.json");
    let v = read_json(&cfg_path)?;
    let mt = model_type(&v);
    let file = cfg_path.display().to_string();
    let gemma = matches!(mt.as_str(), "gemma3_text" | "gemma3");
    if !gemma && !matches!(mt.as_str(), "llama" | "mistral" | "qwen2" | "phi3") {
        return Err(ModelError::Architecture {
            found: if mt.is_empty() {
                "(no model_type in config.json)".into()
            } else {
                mt
            },
            expected: CAUSAL_TYPES.into(),
        });
    }
    // Gemma 3's text model: the file itself or its `text_config`.
    let (text, text_file) = gemma3::text_config(&v, &mt, &file)?;
    let c = Cfg {
        v: text,
        file: text_file,
    };
    let cfg = if gemma {
        gemma3::gemma3_config(&c, &v)?
    } else {
        llama_family_config(&c, &mt)?
    };
    let mut tokenizer = hf_tokenizer(dir)?;
    tokenizer.use_post_processor = true;
    let tcfg = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let gcfg = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
    let mut eog: Vec<u32> = Vec::new();
    for src in [
        &v["eos_token_id"],
        &text["eos_token_id"],
        &gcfg["eos_token_id"],
    ] {
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
    let src: Box<dyn WeightSource> = if gemma {
        Box::new(gemma3::Gemma3Source::open(dir)?)
    } else {
        Box::new(SafetensorsSource::open_dir(dir)?)
    };
    let model = Llama::load(cfg, src.as_ref(), WeightMode::DequantizeF32)?;
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

/// A LLaMA, Mistral, Qwen2 or Phi-3 configuration from config.json.
fn llama_family_config(c: &Cfg, mt: &str) -> Result<LlamaConfig> {
    let d = c.usize("hidden_size")?;
    let nh = c.usize("num_attention_heads")?;
    let mut variant = hf_variant(c, mt)?;
    let head_dim = c.usize_or("head_dim", d.checked_div(nh).unwrap_or(0))?;
    variant.rope_freq_factors = hf_rope_factors(c, head_dim, hf_rope_theta(c)? as f32)?;
    Ok(LlamaConfig {
        vocab_size: c.usize("vocab_size")?,
        hidden_size: d,
        intermediate_size: c.usize("intermediate_size")?,
        num_hidden_layers: c.usize("num_hidden_layers")?,
        num_attention_heads: nh,
        num_key_value_heads: c.usize_or("num_key_value_heads", nh)?,
        head_dim,
        rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
        rope_theta: hf_rope_theta(c)? as f32,
        rope_layout: RopeLayout::HalfSplit,
        max_position_embeddings: c.usize_or("max_position_embeddings", 2048)?,
        tie_word_embeddings: c.v["tie_word_embeddings"].as_bool().unwrap_or(false),
        variant,
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
