//! Gemma 3 from an HF folder: `model_type` `gemma3_text` (`Gemma3ForCausalLM`) or `gemma3`
//! (`Gemma3ForConditionalGeneration`: the text model's config under `text_config`, its tensors
//! under `language_model.model.` or `model.language_model.`; the vision tower is not read).
//!
//! The configuration becomes the same [`LlamaVariant`] as a `gemma3` GGUF file's; the weights go
//! through [`Gemma3Source`], which maps Canon's internal names to HF Gemma 3's and adds 1 to every
//! RMSNorm weight (transformers computes `norm(x)·(1 + w)` in f32; llama.cpp's converter folds the
//! same `1 + w` into the GGUF). Missing keys take transformers' `Gemma3TextConfig` defaults, as
//! configs on the Hub rely on them (gemma-3-4b's `text_config` has no `vocab_size` or `head_dim`).

use std::path::Path;

use candle_core::Tensor;
use canon_nn::RopeLayout;
use serde_json::Value as Json;

use super::Cfg;
use crate::source::{SafetensorsSource, WeightSource};
use crate::{LlamaConfig, LlamaVariant, ModelError, Result};

/// transformers' `Gemma3TextConfig` defaults.
const DEFAULT_HEAD_DIM: usize = 256;
const DEFAULT_QUERY_PRE_ATTN_SCALAR: f64 = 256.0;
const DEFAULT_SLIDING_WINDOW: usize = 4096;
const DEFAULT_PATTERN: usize = 6;
const DEFAULT_THETA_GLOBAL: f64 = 1_000_000.0;
const DEFAULT_THETA_LOCAL: f64 = 10_000.0;

/// The text model's part of config.json: the file itself (`gemma3_text`) or its `text_config`
/// (`gemma3`), with the name errors give it.
pub(super) fn text_config<'a>(
    v: &'a Json,
    model_type: &str,
    file: &str,
) -> Result<(&'a Json, String)> {
    if model_type != "gemma3" {
        return Ok((v, file.to_string()));
    }
    match &v["text_config"] {
        t @ Json::Object(_) => Ok((t, format!("{file} (text_config)"))),
        other => Err(ModelError::Config {
            file: file.to_string(),
            message: format!(
                "'text_config' should be an object holding the text model's configuration (model_type gemma3), found {other}"
            ),
        }),
    }
}

impl Cfg<'_> {
    fn err(&self, message: String) -> ModelError {
        ModelError::Config {
            file: self.file.clone(),
            message,
        }
    }
}

/// The LLaMA-family configuration of a Gemma 3 text model (`c` is the text model's config;
/// `top` the whole file, for keys a multimodal config keeps at its top level).
pub(super) fn gemma3_config(c: &Cfg, top: &Json) -> Result<LlamaConfig> {
    let v = c.v;
    let refuse = |key: &str, found: &Json, expected: &str| {
        c.err(format!(
            "'{key}' = {found}: expected {expected} (Gemma 3 as Canon runs it)"
        ))
    };
    let act = &v["hidden_activation"];
    if !matches!(act, Json::Null) && act.as_str() != Some("gelu_pytorch_tanh") {
        return Err(refuse(
            "hidden_activation",
            act,
            "\"gelu_pytorch_tanh\" (the tanh GELU of Gemma 3's gated FFN)",
        ));
    }
    if !v["attn_logit_softcapping"].is_null() {
        return Err(refuse(
            "attn_logit_softcapping",
            &v["attn_logit_softcapping"],
            "null (soft-capped attention scores are not implemented)",
        ));
    }
    for key in ["attention_bias", "use_bidirectional_attention"] {
        if v[key].as_bool() == Some(true) {
            return Err(refuse(key, &v[key], "false"));
        }
    }
    let d = c.usize_or("hidden_size", 2304)?;
    let nh = c.usize_or("num_attention_heads", 8)?;
    let head_dim = c.usize_or("head_dim", DEFAULT_HEAD_DIM)?;
    let layers = c.usize_or("num_hidden_layers", 26)?;

    // Queries scaled by query_pre_attn_scalar^-1/2 (Canon's attention divides by √head_dim).
    let qpas = c.f64_or("query_pre_attn_scalar", DEFAULT_QUERY_PRE_ATTN_SCALAR)?;
    if !(qpas > 0.0 && qpas.is_finite()) {
        return Err(refuse(
            "query_pre_attn_scalar",
            &v["query_pre_attn_scalar"],
            "a positive number",
        ));
    }
    let query_scale = (qpas != head_dim as f64).then(|| (1.0 / qpas.sqrt()) as f32);

    let final_logit_softcap = match &v["final_logit_softcapping"] {
        Json::Null => None,
        x => match x.as_f64() {
            Some(cap) if cap > 0.0 && cap.is_finite() => Some(cap as f32),
            _ => {
                return Err(refuse(
                    "final_logit_softcapping",
                    x,
                    "null or a positive number",
                ));
            }
        },
    };

    let window = match &v["sliding_window"] {
        Json::Null if v.get("sliding_window").is_some() => None,
        _ => Some(c.usize_or("sliding_window", DEFAULT_SLIDING_WINDOW)?).filter(|&w| w > 0),
    };
    let pattern = layer_pattern(c, layers)?;
    let (sliding_window, sliding_window_pattern) = match pattern {
        // Every layer global: no window anywhere.
        Some(1) => (None, 0),
        Some(n) => (window, n),
        // Every layer local.
        None => (window, 0),
    };

    let (theta_global, theta_local, factor) = rope(c)?;
    let rope_freq_factors = factor.map(|f| vec![f as f32; head_dim / 2]);

    let tie = match (&v["tie_word_embeddings"], &top["tie_word_embeddings"]) {
        (Json::Bool(b), _) | (Json::Null, Json::Bool(b)) => *b,
        _ => true,
    };
    Ok(LlamaConfig {
        vocab_size: c.usize_or("vocab_size", 262_208)?,
        hidden_size: d,
        intermediate_size: c.usize_or("intermediate_size", 9216)?,
        num_hidden_layers: layers,
        num_attention_heads: nh,
        num_key_value_heads: c.usize_or("num_key_value_heads", 4)?,
        head_dim,
        rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
        rope_theta: theta_global as f32,
        rope_layout: RopeLayout::HalfSplit,
        max_position_embeddings: c.usize_or("max_position_embeddings", 131_072)?,
        tie_word_embeddings: tie,
        variant: LlamaVariant {
            scale_embeddings: true,
            qk_norm: true,
            post_norms: true,
            gelu_tanh_ffn: true,
            sliding_window,
            sliding_window_pattern,
            rope_theta_local: Some(theta_local as f32),
            query_scale,
            final_logit_softcap,
            rope_freq_factors,
            ..Default::default()
        },
    })
}

/// The period `n` of global layers (layers n-1, 2n-1, ... global, the others local, as
/// [`LlamaConfig::is_local_layer`] reads `sliding_window_pattern`): from `layer_types`
/// (transformers 5) or `sliding_window_pattern` (older configs; default 6). `Some(1)`: every
/// layer global; `None`: every layer local. A list that no period describes is refused.
fn layer_pattern(c: &Cfg, layers: usize) -> Result<Option<usize>> {
    let v = c.v;
    if let Some(list) = v.get("layer_types").filter(|t| !t.is_null()) {
        let types = list.as_array().ok_or_else(|| {
            c.err(format!(
                "'layer_types' should be a list of \"sliding_attention\" / \"full_attention\", found {list}"
            ))
        })?;
        if types.len() != layers {
            return Err(c.err(format!(
                "'layer_types' has {} entries, expected one per layer (num_hidden_layers = {layers})",
                types.len()
            )));
        }
        let mut global = Vec::with_capacity(types.len());
        for (i, t) in types.iter().enumerate() {
            global.push(match t.as_str() {
                Some("full_attention") => true,
                Some("sliding_attention") => false,
                _ => {
                    return Err(c.err(format!(
                        "'layer_types[{i}]' = {t}: expected \"sliding_attention\" or \"full_attention\""
                    )));
                }
            });
        }
        let Some(first) = global.iter().position(|&g| g) else {
            return Ok(None);
        };
        let n = first + 1;
        if let Some(i) = (0..global.len()).find(|&i| global[i] != ((i + 1) % n == 0)) {
            return Err(c.err(format!(
                "'layer_types' = {list}: not supported: Canon runs a global layer every n-th layer \
                 (layers n-1, 2n-1, ..., the others sliding); the first full_attention layer ({first}) \
                 gives n = {n}, but layer {i} is {} (expected {})",
                types[i],
                if (i + 1) % n == 0 {
                    "\"full_attention\""
                } else {
                    "\"sliding_attention\""
                }
            )));
        }
        return Ok(Some(n));
    }
    match v.get("sliding_window_pattern") {
        None | Some(Json::Null) => Ok(Some(DEFAULT_PATTERN)),
        Some(p) => match p.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(c.err(format!(
                "'sliding_window_pattern' = {p}: expected a positive layer period (every n-th layer global)"
            ))),
        },
    }
}

/// The RoPE bases of global and local layers and the linear scaling factor of global layers:
/// from `rope_parameters.full_attention` / `.sliding_attention` (transformers 5), else
/// `rope_theta`, `rope_local_base_freq` and `rope_scaling` (older configs). Only linear scaling,
/// and only on global layers, is implemented; other kinds are refused by key.
fn rope(c: &Cfg) -> Result<(f64, f64, Option<f64>)> {
    let v = c.v;
    let params = &v["rope_parameters"];
    if !params.is_null() && !params.is_object() {
        return Err(c.err(format!(
            "'rope_parameters' should be an object keyed by layer type, found {params}"
        )));
    }
    let (full, local) = (&params["full_attention"], &params["sliding_attention"]);
    let number = |key: &str, x: &Json| -> Result<Option<f64>> {
        match x {
            Json::Null => Ok(None),
            x => match x.as_f64() {
                Some(f) if f > 0.0 && f.is_finite() => Ok(Some(f)),
                _ => Err(c.err(format!("'{key}' = {x}: expected a positive number"))),
            },
        }
    };
    for (key, x) in [
        ("partial_rotary_factor", &v["partial_rotary_factor"]),
        (
            "rope_parameters.full_attention.partial_rotary_factor",
            &full["partial_rotary_factor"],
        ),
        (
            "rope_parameters.sliding_attention.partial_rotary_factor",
            &local["partial_rotary_factor"],
        ),
    ] {
        if let Some(f) = number(key, x)?
            && f != 1.0
        {
            return Err(c.err(format!(
                "'{key}' = {x}: partial rotary embeddings are not supported (expected 1)"
            )));
        }
    }
    let kind = |x: &Json| -> Option<String> {
        x.get("rope_type")
            .or_else(|| x.get("type"))
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    if let Some(k) = kind(local)
        && k != "default"
    {
        return Err(c.err(format!(
            "'rope_parameters.sliding_attention.rope_type' = \"{k}\": expected \"default\" (local layers keep plain RoPE)"
        )));
    }
    // The global layers' scaling: `rope_parameters.full_attention`, where transformers also
    // merges an older `rope_scaling`.
    let mut scaling = None;
    for (key, x) in [
        ("rope_parameters.full_attention", full),
        ("rope_scaling", &v["rope_scaling"]),
    ] {
        if x.is_null() {
            continue;
        }
        if !x.is_object() {
            return Err(c.err(format!("'{key}' = {x}: expected an object")));
        }
        match kind(x).as_deref() {
            None | Some("default") => {}
            Some("linear") => {
                let f = number(&format!("{key}.factor"), &x["factor"])?.ok_or_else(|| {
                    c.err(format!(
                        "'{key}': linear RoPE scaling needs a positive 'factor', found {}",
                        x["factor"]
                    ))
                })?;
                scaling = Some(f);
            }
            Some(k) => {
                return Err(c.err(format!(
                    "'{key}' = {x}: RoPE scaling \"{k}\" is not supported for Gemma 3 (expected \"default\" or \"linear\")"
                )));
            }
        }
    }
    let theta_global = match number(
        "rope_parameters.full_attention.rope_theta",
        &full["rope_theta"],
    )? {
        Some(t) => t,
        None => number("rope_theta", &v["rope_theta"])?.unwrap_or(DEFAULT_THETA_GLOBAL),
    };
    let theta_local = match number(
        "rope_parameters.sliding_attention.rope_theta",
        &local["rope_theta"],
    )? {
        Some(t) => t,
        None => number("rope_local_base_freq", &v["rope_local_base_freq"])?
            .unwrap_or(DEFAULT_THETA_LOCAL),
    };
    Ok((theta_global, theta_local, scaling.filter(|&f| f != 1.0)))
}

/// HF Gemma 3 weights under Canon's internal names (those [`crate::Llama::load`] asks for):
/// Canon's `post_attention_layernorm` (the norm before the FFN) is HF's
/// `pre_feedforward_layernorm`, `self_attn.post_norm` HF's `post_attention_layernorm`,
/// `mlp.post_norm` HF's `post_feedforward_layernorm`; every RMSNorm weight is returned as
/// `1 + w` (f32). A multimodal checkpoint's text tensors are found under its prefix.
pub(super) struct Gemma3Source {
    inner: SafetensorsSource,
    /// What replaces the leading `model.` of a name: `model.`, `language_model.model.` or
    /// `model.language_model.`.
    model_prefix: &'static str,
    /// `lm_head.weight` or `language_model.lm_head.weight`.
    lm_head: &'static str,
}

impl Gemma3Source {
    pub(super) fn open(dir: &Path) -> Result<Self> {
        let inner = SafetensorsSource::open_dir(dir)?;
        let prefixes = ["model.", "language_model.model.", "model.language_model."];
        let model_prefix = prefixes
            .into_iter()
            .find(|p| inner.has(&format!("{p}embed_tokens.weight")))
            .ok_or_else(|| ModelError::MissingTensor {
                file: inner.describe(),
                name: format!("embed_tokens.weight (under any of {})", prefixes.join(", ")),
            })?;
        let lm_head = if model_prefix == "language_model.model." {
            "language_model.lm_head.weight"
        } else {
            "lm_head.weight"
        };
        Ok(Self {
            inner,
            model_prefix,
            lm_head,
        })
    }

    fn hf_name(&self, name: &str) -> String {
        if name == "lm_head.weight" {
            return self.lm_head.to_string();
        }
        let Some(rest) = name.strip_prefix("model.") else {
            return name.to_string();
        };
        let rest = match rest.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
            Some((layer, tail)) => {
                let t = match tail {
                    "post_attention_layernorm.weight" => "pre_feedforward_layernorm.weight",
                    "self_attn.post_norm.weight" => "post_attention_layernorm.weight",
                    "mlp.post_norm.weight" => "post_feedforward_layernorm.weight",
                    other => other,
                };
                format!("layers.{layer}.{t}")
            }
            None => rest.to_string(),
        };
        format!("{}{rest}", self.model_prefix)
    }
}

impl WeightSource for Gemma3Source {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn has(&self, name: &str) -> bool {
        self.inner.has(&self.hf_name(name))
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.inner.tensor(&self.hf_name(name), shape)?;
        // Every norm Canon's Llama asks for (input, the pre-FFN norm, the two post-norms, q/k
        // norms, the final norm) is a Gemma RMSNorm.
        if name.ends_with("norm.weight") {
            Ok(t.affine(1.0, 1.0)?)
        } else {
            Ok(t)
        }
    }
}
