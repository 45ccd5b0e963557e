//! LoRA adapters in PEFT's on-disk layout (Hu et al., 2021, paper 13).
//!
//! A folder holds `adapter_config.json` (`r`, `lora_alpha`, `target_modules`, `use_rslora`,
//! `fan_in_fan_out`, `bias`) and `adapter_model.safetensors` with, per adapted module,
//! `base_model.model.<module>.lora_A.weight: [r, in]` and `…lora_B.weight: [out, r]`. The layer then
//! computes `W₀x + s·B A x` (eq. 3) with `s = α/r`, or `α/√r` with rsLoRA.
//!
//! Supported: adapters on the linear layers a model names (`CausalLm::linear_names`); not supported
//! (clear errors): `fan_in_fan_out`, trained biases, `modules_to_save`, DoRA.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use canon_nn::Lora;
use serde_json::Value;

use crate::{CausalLm, ModelError, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// An adapter read from disk.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub rank: usize,
    pub alpha: f64,
    /// `α/r`, or `α/√r` with rsLoRA.
    pub scale: f64,
    /// Module name → (A `[r, in]`, B `[out, r]`).
    pub modules: BTreeMap<String, (Tensor, Tensor)>,
    /// The dropout it was trained with (`lora_dropout`; recorded, not applied at inference).
    pub dropout: f64,
}

fn bad(dir: &Path, file: &str, message: impl Into<String>) -> ModelError {
    ModelError::Config {
        file: dir.join(file).display().to_string(),
        message: message.into(),
    }
}

/// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
pub fn read_adapter(dir: &Path) -> Result<Adapter> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::Io {
        path: cfg_path.display().to_string(),
        message: format!("{e} (a PEFT adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE})"),
    })?;
    let cfg: Value = serde_json::from_str(&text)
        .map_err(|e| bad(dir, CONFIG_FILE, format!("not valid JSON: {e}")))?;
    let rank = cfg["r"]
        .as_u64()
        .ok_or_else(|| bad(dir, CONFIG_FILE, "expected an integer field \"r\""))?
        as usize;
    if rank == 0 {
        return Err(bad(
            dir,
            CONFIG_FILE,
            "\"r\" is 0: a LoRA rank must be at least 1",
        ));
    }
    let alpha = cfg["lora_alpha"].as_f64().unwrap_or(8.0);
    for (key, why) in [
        (
            "fan_in_fan_out",
            "weights stored as [in, out] (GPT-2 Conv1D)",
        ),
        ("use_dora", "DoRA"),
    ] {
        if cfg[key].as_bool() == Some(true) {
            return Err(bad(
                dir,
                CONFIG_FILE,
                format!("\"{key}\": true ({why}) is not supported"),
            ));
        }
    }
    if let Some(b) = cfg["bias"].as_str()
        && b != "none"
    {
        return Err(bad(
            dir,
            CONFIG_FILE,
            format!("\"bias\": \"{b}\" is not supported (expected \"none\")"),
        ));
    }
    if cfg["modules_to_save"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        return Err(bad(
            dir,
            CONFIG_FILE,
            "\"modules_to_save\" is not supported",
        ));
    }
    let scale = if cfg["use_rslora"].as_bool() == Some(true) {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };

    let w_path = dir.join(WEIGHTS_FILE);
    if !w_path.exists() {
        return Err(ModelError::Io {
            path: w_path.display().to_string(),
            message: "not found (only safetensors adapters are read, not adapter_model.bin)".into(),
        });
    }
    let tensors =
        candle_core::safetensors::load(&w_path, &Device::Cpu).map_err(|e| ModelError::Io {
            path: w_path.display().to_string(),
            message: e.to_string(),
        })?;
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (name, t) in tensors {
        let module = name.strip_prefix(PREFIX).and_then(|n| {
            n.strip_suffix(".lora_A.weight")
                .map(|m| (m, true))
                .or_else(|| n.strip_suffix(".lora_B.weight").map(|m| (m, false)))
        });
        let Some((module, is_a)) = module else {
            return Err(bad(
                dir,
                WEIGHTS_FILE,
                format!("tensor '{name}' is not a LoRA matrix ({PREFIX}<module>.lora_A/B.weight)"),
            ));
        };
        let t = t.to_dtype(DType::F32)?;
        let e = halves.entry(module.to_string()).or_default();
        if is_a { e.0 = Some(t) } else { e.1 = Some(t) }
    }
    let mut modules = BTreeMap::new();
    for (m, (a, b)) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad(
                dir,
                WEIGHTS_FILE,
                format!("module '{m}' lacks lora_A or lora_B"),
            ));
        };
        if a.dim(0)? != rank || b.dim(1)? != rank {
            return Err(bad(
                dir,
                WEIGHTS_FILE,
                format!(
                    "module '{m}': A {:?} and B {:?} do not have rank r = {rank}",
                    a.dims(),
                    b.dims()
                ),
            ));
        }
        modules.insert(m, (a, b));
    }
    if modules.is_empty() {
        return Err(bad(dir, WEIGHTS_FILE, "no LoRA matrices found"));
    }
    let dropout = cfg
        .get("lora_dropout")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    Ok(Adapter {
        rank,
        alpha,
        scale,
        modules,
        dropout,
    })
}

/// Attaches every module of `adapter` to `model`; errors name a module the model lacks or a shape
/// that does not fit (an adapter trained for another model). Returns the number of modules.
pub fn apply_adapter(model: &mut dyn CausalLm, adapter: &Adapter) -> Result<usize> {
    let example = model.linear_names().into_iter().next();
    for (m, (a, b)) in &adapter.modules {
        let lin = model.linear_mut(m).ok_or_else(|| {
            ModelError::Input(format!(
                "the adapter targets module '{m}', which this model does not have (its modules \
                 are named like '{}')",
                example.as_deref().unwrap_or("none")
            ))
        })?;
        lin.set_lora(Lora {
            a: a.clone(),
            b: b.clone(),
            scale: adapter.scale,
            dropout: None,
        })
        .map_err(|e| ModelError::Input(format!("module '{m}': {e}")))?;
    }
    Ok(adapter.modules.len())
}

/// Writes an adapter folder in PEFT's layout (config, then weights through a temporary file).
pub fn write_adapter(dir: &Path, adapter: &Adapter, base_model: &str) -> Result<()> {
    let io = |path: &Path, e: &dyn std::fmt::Display| ModelError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    let mut targets: Vec<String> = adapter
        .modules
        .keys()
        .filter_map(|m| m.rsplit('.').next().map(str::to_string))
        .collect();
    targets.sort();
    targets.dedup();
    let cfg = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": (adapter.scale - adapter.alpha / adapter.rank as f64).abs() > 1e-12,
        "modules_to_save": null,
    });
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (m, (a, b)) in &adapter.modules {
        named.push((format!("{PREFIX}{m}.lora_A.weight"), a.contiguous()?));
        named.push((format!("{PREFIX}{m}.lora_B.weight"), b.contiguous()?));
    }
    let cfg_path = dir.join(CONFIG_FILE);
    let w_path = dir.join(WEIGHTS_FILE);
    let named: std::collections::HashMap<String, Tensor> = named.into_iter().collect();
    let bytes = safetensors::serialize(&named, None).map_err(|e| io(&w_path, &e))?;
    canon_fs::write_atomic(&w_path, &bytes).map_err(|e| io(&w_path, &e))?;
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| io(&cfg_path, &e))?;
    canon_fs::write_atomic(&cfg_path, text.as_bytes()).map_err(|e| io(&cfg_path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Positions;
    use crate::llama::tests::tiny;
    use canon_testkit::{Tol, assert_close, randn};

    fn random_adapter(m: &dyn CausalLm, zero_b: bool) -> Adapter {
        let mut modules = BTreeMap::new();
        for (i, name) in m.linear_names().iter().enumerate().step_by(3) {
            let (out, inp) = match name.rsplit('.').next() {
                Some("q_proj") | Some("o_proj") => (32, 32),
                Some("k_proj") | Some("v_proj") => (16, 32),
                Some("gate_proj") | Some("up_proj") => (48, 32),
                _ => (32, 48),
            };
            let b = if zero_b {
                Tensor::zeros((out, 4), DType::F32, &Device::Cpu).unwrap()
            } else {
                randn(&[out, 4], 100 + i as u64)
            };
            modules.insert(name.clone(), (randn(&[4, inp], 50 + i as u64), b));
        }
        Adapter {
            rank: 4,
            alpha: 8.0,
            scale: 2.0,
            modules,
            dropout: 0.0,
        }
    }

    fn ids(v: &[u32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
    }

    #[test]
    fn a_written_adapter_reads_back_and_b_zero_is_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = tiny(2);
        let base = m
            .forward(&ids(&[1, 5, 9]), &mut m.new_cache(), Positions::All)
            .unwrap();
        let ad = random_adapter(&m, true);
        write_adapter(dir.path(), &ad, "tiny").unwrap();
        let back = read_adapter(dir.path()).unwrap();
        assert_eq!((back.rank, back.scale), (4, 2.0));
        assert_eq!(back.modules.len(), ad.modules.len());
        assert_eq!(apply_adapter(&mut m, &back).unwrap(), ad.modules.len());
        let with = m
            .forward(&ids(&[1, 5, 9]), &mut m.new_cache(), Positions::All)
            .unwrap();
        assert_close(&with, &base, Tol::EXACT);
    }

    #[test]
    fn an_adapter_changes_the_output_and_merging_keeps_it() {
        let mut m = tiny(2);
        let base = m
            .forward(&ids(&[3, 4]), &mut m.new_cache(), Positions::All)
            .unwrap();
        let ad = random_adapter(&m, false);
        apply_adapter(&mut m, &ad).unwrap();
        let adapted = m
            .forward(&ids(&[3, 4]), &mut m.new_cache(), Positions::All)
            .unwrap();
        let moved = (&adapted - &base)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 1e-3);
        for name in m.linear_names() {
            let l = m.linear_mut(&name).unwrap();
            *l = l.merged().unwrap();
        }
        let merged = m
            .forward(&ids(&[3, 4]), &mut m.new_cache(), Positions::All)
            .unwrap();
        assert_close(&merged, &adapted, Tol::new(1e-4, 1e-4));
    }

    #[test]
    fn bad_adapters_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = tiny(2);
        // Missing folder.
        let e = read_adapter(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(CONFIG_FILE), "{e}");
        // Rank 0.
        std::fs::write(dir.path().join(CONFIG_FILE), r#"{"r": 0, "lora_alpha": 8}"#).unwrap();
        let e = read_adapter(dir.path()).unwrap_err().to_string();
        assert!(e.contains("rank must be at least 1"), "{e}");
        // An adapter for another model: a module this model lacks, then a wrong shape.
        let mut ad = random_adapter(&m, false);
        let (a, b) = ad.modules.values().next().unwrap().clone();
        ad.modules
            .insert("model.layers.7.self_attn.q_proj".into(), (a, b));
        let e = apply_adapter(&mut m, &ad).unwrap_err().to_string();
        assert!(e.contains("model.layers.7.self_attn.q_proj"), "{e}");
        let mut ad = random_adapter(&m, false);
        ad.modules.insert(
            "model.layers.0.self_attn.q_proj".into(),
            (randn(&[4, 31], 1), randn(&[32, 4], 2)),
        );
        let e = apply_adapter(&mut m, &ad).unwrap_err().to_string();
        assert!(e.contains("q_proj") && e.contains("[4, 31]"), "{e}");
    }
}
