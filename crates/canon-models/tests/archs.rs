//! Qwen2, Phi-3, Mistral, scaled-RoPE LLaMA and Gemma 3 through `models::llama` as configuration, from GGUF and HF
//! safetensors, against the tiny random-weight fixtures of `goldens/archs/gen.py`: last-position
//! logits against transformers (f32), greedy ids against transformers and llama.cpp (the first
//! tokens exactly; after a first difference, only at a near-tie of Canon's own logits), and the
//! configurations Canon does not implement refused by key.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use canon_models::load::{load_gguf_lm, load_hf_lm};
use canon_models::{LoadedLm, Positions, WeightMode};
use canon_testkit::{Tol, assert_close_f32, golden, goldens_dir};
use serde_json::Value;

/// f16-rounded weights in every file, f32 arithmetic on both sides: only summation orders differ.
const LOGITS_TOL: Tol = Tol::new(1e-4, 1e-4);
/// Tokens that must equal the reference exactly before any near-tie is allowed.
const EXACT: usize = 4;

fn dir() -> PathBuf {
    goldens_dir().join("archs")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array of floats")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

fn row(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn last_logits(lm: &LoadedLm, prompt: &[u32]) -> Vec<f32> {
    let x = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let m = &lm.model;
    row(&m.forward(&x, &mut m.new_cache(), Positions::Last).unwrap())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding with the KV cache, checked against `reference`: equal for the first `EXACT`
/// tokens; at a first difference after that, the two picks must be within `near` in Canon's
/// logits. Returns how many tokens equal the reference.
fn check_greedy(lm: &LoadedLm, prompt: &[u32], reference: &[u32], near: f32, what: &str) -> usize {
    check_greedy_from(lm, prompt, reference, near, EXACT, what)
}

/// [`check_greedy`] with the first `exact` tokens required equal.
fn check_greedy_from(
    lm: &LoadedLm,
    prompt: &[u32],
    reference: &[u32],
    near: f32,
    exact: usize,
    what: &str,
) -> usize {
    let m = &lm.model;
    let mut cache = m.new_cache();
    let mut x = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    for (step, &want) in reference.iter().enumerate() {
        let logits = row(&m.forward(&x, &mut cache, Positions::Last).unwrap());
        let got = argmax(&logits);
        if got != want {
            let gap = logits[got as usize] - logits[want as usize];
            assert!(
                step >= exact && gap < near,
                "{what}: step {step}: Canon picks {got}, the reference {want} (Canon's gap {gap})"
            );
            return step;
        }
        x = Tensor::new(&[got], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
    }
    reference.len()
}

/// Logits vs transformers and greedy ids vs transformers for every prompt of `arch`.
fn check_against_hf(lm: &LoadedLm, arch: &str, near: f32, what: &str) -> (f64, usize) {
    let g = golden("archs/archs.json");
    let mut worst = 0.0f64;
    let mut equal = 0;
    for case in g["models"][arch]["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let text = case["prompt"].as_str().unwrap();
        assert_eq!(
            lm.tokenizer.encode(text, false).unwrap(),
            prompt,
            "{what}: tokenization of {text:?}"
        );
        let d = assert_close_f32(
            &last_logits(lm, &prompt),
            &floats(&case["hf_last_logits"]),
            LOGITS_TOL,
        );
        worst = worst.max(d);
        equal += check_greedy(lm, &prompt, &ids(&case["hf_greedy"]), near, what);
    }
    eprintln!("{what}: max |Δlogit| vs transformers {worst:.2e}, greedy ids equal {equal}/60");
    (worst, equal)
}

/// Greedy ids vs llama.cpp's for the GGUF file `name`.
fn check_against_llama_cpp(lm: &LoadedLm, arch: &str, name: &str, near: f32) -> usize {
    check_against_llama_cpp_from(lm, arch, name, near, EXACT)
}

/// [`check_against_llama_cpp`] with the first `exact` tokens required equal.
fn check_against_llama_cpp_from(
    lm: &LoadedLm,
    arch: &str,
    name: &str,
    near: f32,
    exact: usize,
) -> usize {
    let g = golden("archs/archs.json");
    let m = &g["models"][arch];
    let mut equal = 0;
    for (case, lc) in m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(m["gguf"][name]["cases"].as_array().unwrap())
    {
        let prompt = ids(&case["prompt_ids"]);
        assert_eq!(
            ids(&lc["prompt_ids_llamacpp"]),
            prompt,
            "{name}: tokenization"
        );
        equal += check_greedy_from(lm, &prompt, &ids(&lc["llamacpp_greedy"]), near, exact, name);
    }
    eprintln!("{name}: greedy ids equal to llama.cpp's {equal}/60");
    equal
}

fn gguf(name: &str, mode: WeightMode) -> LoadedLm {
    load_gguf_lm(&dir().join(name), mode).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn hf(name: &str) -> LoadedLm {
    load_hf_lm(&dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn qwen2_from_hf_safetensors_equals_transformers() {
    let (_, equal) = check_against_hf(&hf("qwen2-hf"), "qwen2", 0.05, "qwen2-hf");
    assert_eq!(equal, 60);
}

#[test]
fn qwen2_from_gguf_equals_transformers_and_llama_cpp() {
    let lm = gguf("qwen2.f16.gguf", WeightMode::DequantizeF32);
    let (_, equal) = check_against_hf(&lm, "qwen2", 0.05, "qwen2.f16.gguf");
    assert_eq!(equal, 60);
    assert_eq!(
        check_against_llama_cpp(&lm, "qwen2", "qwen2.f16.gguf", 0.05),
        60
    );
    // Quantized kernels (8-bit activations, as llama.cpp's) on Q8_0 and Q4_0 files.
    for name in ["qwen2.q8_0.gguf", "qwen2.q4_0.gguf"] {
        let lm = gguf(name, WeightMode::KeepQuantized);
        assert_eq!(check_against_llama_cpp(&lm, "qwen2", name, 0.5), 60);
    }
}

#[test]
fn phi3_from_hf_safetensors_equals_transformers() {
    let (_, equal) = check_against_hf(&hf("phi3-hf"), "phi3", 0.1, "phi3-hf");
    assert_eq!(equal, 60);
}

#[test]
fn phi3_from_gguf_equals_transformers_and_llama_cpp() {
    let lm = gguf("phi3.f16.gguf", WeightMode::DequantizeF32);
    let (_, equal) = check_against_hf(&lm, "phi3", 0.1, "phi3.f16.gguf");
    assert_eq!(equal, 60);
    assert_eq!(
        check_against_llama_cpp(&lm, "phi3", "phi3.f16.gguf", 0.1),
        60
    );
    // The fused Q8_0 matrices split by rows stay Q8_0 blocks on the quantized kernels.
    let lm = gguf("phi3.q8_0.gguf", WeightMode::KeepQuantized);
    assert_eq!(
        check_against_llama_cpp(&lm, "phi3", "phi3.q8_0.gguf", 0.5),
        60
    );
}

#[test]
fn mistral_sliding_window_equals_transformers() {
    // Window 4; every prompt is longer, and decoding runs 20 tokens past it.
    let g = golden("archs/archs.json");
    for case in g["models"]["mistral"]["cases"].as_array().unwrap() {
        assert!(ids(&case["prompt_ids"]).len() > 4);
    }
    let (_, equal) = check_against_hf(&hf("mistral-hf"), "mistral", 0.1, "mistral-hf");
    assert_eq!(equal, 60);
    // Without the window the last prompt's logits move away from transformers': the mask matters.
    let tmp = tempfile::tempdir().unwrap();
    let full = edited_hf("mistral-hf", tmp.path(), |c| {
        c["sliding_window"] = Value::Null;
    });
    let lm = load_hf_lm(&full).unwrap();
    let case = &g["models"]["mistral"]["cases"][2];
    let a = last_logits(&lm, &ids(&case["prompt_ids"]));
    let r = floats(&case["hf_last_logits"]);
    let d = a
        .iter()
        .zip(&r)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d > 0.1, "{d}");
}

/// Scaled RoPE: Llama 3's per-frequency factors (`rope_parameters.rope_type = "llama3"`; GGUF's
/// `rope_freqs.weight`) and linear interpolation (`"linear"`; GGUF's `rope.scaling.type`), from
/// both formats, against transformers and llama.cpp; without the scaling the logits move away.
#[test]
fn scaled_rope_llama3_and_linear_equal_transformers_and_llama_cpp() {
    for arch in ["llama3", "llamalin"] {
        let (_, equal) = check_against_hf(&hf(&format!("{arch}-hf")), arch, 0.05, arch);
        assert_eq!(equal, 60, "{arch}-hf");
        let name = format!("{arch}.f16.gguf");
        let lm = gguf(&name, WeightMode::DequantizeF32);
        let (_, equal) = check_against_hf(&lm, arch, 0.05, &name);
        assert_eq!(equal, 60, "{name}");
        assert_eq!(
            check_against_llama_cpp(&lm, arch, &name, 0.05),
            60,
            "{name}"
        );
        // Q8_0 on both sides, summed in different orders: a near-tie (the reference ids have
        // gaps down to 0.001) may go either way from the first token on.
        let name = format!("{arch}.q8_0.gguf");
        let lm = gguf(&name, WeightMode::KeepQuantized);
        assert!(
            check_against_llama_cpp_from(&lm, arch, &name, 0.01, 0) >= 30,
            "{name}"
        );
        // Plain RoPE in place of the scaling: the last prompt's logits move away.
        let tmp = tempfile::tempdir().unwrap();
        let plain = edited_hf(&format!("{arch}-hf"), tmp.path(), |c| {
            c["rope_parameters"]["rope_type"] = Value::from("default");
        });
        let lm = load_hf_lm(&plain).unwrap();
        let g = golden("archs/archs.json");
        let case = &g["models"][arch]["cases"][2];
        let a = last_logits(&lm, &ids(&case["prompt_ids"]));
        let r = floats(&case["hf_last_logits"]);
        let d = a
            .iter()
            .zip(&r)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            d > 0.1,
            "{arch}: plain RoPE within {d} of the scaled logits"
        );
    }
}

/// Copies the HF folder `name` with its config.json changed by `edit`.
fn edited_hf(name: &str, tmp: &Path, edit: impl Fn(&mut Value)) -> PathBuf {
    let src = dir().join(name);
    let out = tmp.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

fn refusal(dir: &Path) -> String {
    match load_hf_lm(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn configurations_canon_does_not_implement_are_refused_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let longrope = edited_hf("phi3-hf", tmp.path(), |c| {
        c["rope_parameters"] = serde_json::json!({
            "rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": [1.0, 1.0], "long_factor": [2.0, 2.0]
        });
    });
    let e = refusal(&longrope);
    assert!(
        e.contains("rope_parameters") && e.contains("longrope"),
        "{e}"
    );
    let old_style = edited_hf("mistral-hf", tmp.path(), |c| {
        c["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
    });
    let e = refusal(&old_style);
    assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
    let swa = edited_hf("qwen2-hf", tmp.path(), |c| {
        c["use_sliding_window"] = Value::Bool(true);
    });
    let e = refusal(&swa);
    assert!(e.contains("use_sliding_window"), "{e}");
    let partial = tmp.path().join("partial");
    std::fs::rename(
        edited_hf("phi3-hf", tmp.path(), |c| {
            c["rope_parameters"]["partial_rotary_factor"] = serde_json::json!(0.75);
        }),
        &partial,
    )
    .unwrap();
    let e = refusal(&partial);
    assert!(e.contains("partial_rotary_factor"), "{e}");

    // A GGUF file asking for scaled RoPE.
    let f = canon_quant::gguf::GgufFile::open(&dir().join("phi3.f16.gguf")).unwrap();
    let mut meta: Vec<(&str, canon_quant::gguf::Value)> = f
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    meta.push((
        "phi3.rope.scaling.type",
        canon_quant::gguf::Value::String("yarn".into()),
    ));
    let tensors: Vec<canon_quant::gguf_write::TensorOut> = f
        .tensors
        .iter()
        .map(|t| canon_quant::gguf_write::TensorOut {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            data: f.tensor_bytes(t),
        })
        .collect();
    let path = tmp.path().join("scaled.gguf");
    canon_quant::gguf_write::write_gguf(&path, &meta, &tensors).unwrap();
    let e = match load_gguf_lm(&path, WeightMode::DequantizeF32) {
        Ok(_) => panic!("scaled RoPE loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("phi3.rope.scaling.type") && e.contains("yarn"),
        "{e}"
    );
}

/// The batched step (`forward_batch`: stacked rows through the biased and split projections)
/// equals each sequence run alone, on the quantized kernels.
#[test]
fn batched_steps_equal_single_sequences_for_qwen2_and_phi3() {
    for name in ["qwen2.q8_0.gguf", "phi3.q8_0.gguf"] {
        let lm = gguf(name, WeightMode::KeepQuantized);
        let m = &lm.model;
        let (a, b): (&[u32], &[u32]) = (&[5, 17, 200, 31, 9], &[100, 3, 77]);
        let (mut ca, mut cb) = (m.new_cache(), m.new_cache());
        let both = m.forward_batch(&[a, b], &mut [&mut ca, &mut cb]).unwrap();
        for (i, s) in [a, b].into_iter().enumerate() {
            let alone = last_logits(&lm, s);
            assert_close_f32(
                &row(&both.narrow(0, i, 1).unwrap()),
                &alone,
                Tol::new(1e-4, 1e-4),
            );
        }
    }
}

/// Gemma 3 from an HF folder (`gemma3_text`): the `(1 + w)` norms, HF's norm names, per-head
/// q/k norms, a 4-token window on 5 of 6 layers, RoPE bases 1,000 (local) and 50,000 with linear
/// scaling ×4 (global only), head_dim 32 ≠ d / heads, final soft-capping, against transformers.
#[test]
fn gemma3_from_hf_safetensors_equals_transformers() {
    let (_, equal) = check_against_hf(&hf("gemma3-hf"), "gemma3", 0.1, "gemma3-hf");
    assert_eq!(equal, 60);
}

/// The GGUF files of the same weights (norms stored as `1 + w`, as llama.cpp's converter writes
/// them): f16 against transformers and llama.cpp, Q8_0 on the quantized kernels against
/// llama.cpp, and the HF folder and the f16 GGUF giving the same logits.
#[test]
fn gemma3_from_gguf_equals_transformers_llama_cpp_and_the_hf_folder() {
    let lm = gguf("gemma3.f16.gguf", WeightMode::DequantizeF32);
    let (_, equal) = check_against_hf(&lm, "gemma3", 0.1, "gemma3.f16.gguf");
    assert_eq!(equal, 60);
    assert_eq!(
        check_against_llama_cpp(&lm, "gemma3", "gemma3.f16.gguf", 0.1),
        60
    );
    let folder = hf("gemma3-hf");
    let g = golden("archs/archs.json");
    for case in g["models"]["gemma3"]["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        assert_close_f32(
            &last_logits(&lm, &prompt),
            &last_logits(&folder, &prompt),
            LOGITS_TOL,
        );
    }
    // Q8_0 on both sides: llama.cpp's own Q8_0 ids part from transformers' at a near-tie (step
    // 14 of the second prompt); Canon may take either side there.
    let lm = gguf("gemma3.q8_0.gguf", WeightMode::KeepQuantized);
    assert!(check_against_llama_cpp(&lm, "gemma3", "gemma3.q8_0.gguf", 0.5) >= 40);
}

/// Gemma3ForConditionalGeneration's layout (`model_type` gemma3, the text config under
/// `text_config`, the text tensors under `language_model.model.` as transformers 5.25 saves them,
/// or `model.language_model.`; vision tensors ignored) and an older config's keys
/// (`sliding_window_pattern`, `rope_theta`, `rope_local_base_freq`, `rope_scaling`) load the
/// same model.
#[test]
fn gemma3_multimodal_layout_and_older_config_keys_load_the_same_model() {
    let g = golden("archs/archs.json");
    let prompt = ids(&g["models"]["gemma3"]["cases"][2]["prompt_ids"]);
    let want = last_logits(&hf("gemma3-hf"), &prompt);
    let src = dir().join("gemma3-hf");
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let text_cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for prefix in ["language_model.model.", "model.language_model."] {
        let out = tmp.path().join(prefix.replace('.', "_"));
        std::fs::create_dir_all(&out).unwrap();
        let vision = [0u8; 8];
        let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .map(|(name, t)| (name.replacen("model.", prefix, 1), t))
            .collect();
        tensors.push((
            "vision_tower.vision_model.post_layernorm.weight".into(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![4], &vision)
                .unwrap(),
        ));
        std::fs::write(
            out.join("model.safetensors"),
            safetensors::serialize(tensors, None).unwrap(),
        )
        .unwrap();
        std::fs::copy(src.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
        let cfg = serde_json::json!({
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "text_config": text_cfg,
            "vision_config": {"model_type": "siglip_vision_model"},
        });
        std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
        let lm = load_hf_lm(&out).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert_eq!(last_logits(&lm, &prompt), want, "{prefix}");
    }
    let old = edited_hf("gemma3-hf", tmp.path(), |c| {
        let o = c.as_object_mut().unwrap();
        o.remove("layer_types");
        o.remove("rope_parameters");
        o.insert("sliding_window_pattern".into(), Value::from(6));
        o.insert("rope_theta".into(), Value::from(50000.0));
        o.insert("rope_local_base_freq".into(), Value::from(1000.0));
        o.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "linear", "factor": 4.0}),
        );
    });
    assert_eq!(last_logits(&load_hf_lm(&old).unwrap(), &prompt), want);
    // A query_pre_attn_scalar other than head_dim scales the queries: the logits move.
    let scaled = tmp.path().join("scaled");
    std::fs::rename(
        edited_hf("gemma3-hf", tmp.path(), |c| {
            c["query_pre_attn_scalar"] = Value::from(128);
        }),
        &scaled,
    )
    .unwrap();
    let a = last_logits(&load_hf_lm(&scaled).unwrap(), &prompt);
    let d = a
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d > 0.1, "query_pre_attn_scalar 128 within {d}");
}

/// A config edit and the texts its refusal must contain.
type Refused = (&'static str, fn(&mut Value), &'static [&'static str]);

#[test]
fn gemma3_configurations_canon_does_not_implement_are_refused_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [Refused; 4] = [
        // Periodic, but global layers first (0, 2, 4): no `sliding_window_pattern` says that.
        (
            "periodic",
            |c| {
                c["layer_types"] = serde_json::json!([
                    "full_attention",
                    "sliding_attention",
                    "full_attention",
                    "sliding_attention",
                    "full_attention",
                    "sliding_attention"
                ]);
            },
            &["layer_types", "layer 1"],
        ),
        (
            "act",
            |c| c["hidden_activation"] = Value::from("gelu"),
            &["hidden_activation", "gelu_pytorch_tanh", "\"gelu\""],
        ),
        (
            "softcap",
            |c| c["attn_logit_softcapping"] = Value::from(50.0),
            &["attn_logit_softcapping", "50"],
        ),
        (
            "yarn",
            |c| c["rope_parameters"]["full_attention"]["rope_type"] = Value::from("yarn"),
            &["rope_parameters.full_attention", "yarn"],
        ),
    ];
    for (name, edit, needles) in cases {
        let d = tmp.path().join(name);
        std::fs::rename(edited_hf("gemma3-hf", tmp.path(), edit), &d).unwrap();
        let e = refusal(&d);
        for n in needles {
            assert!(e.contains(n), "{name}: {e}");
        }
    }
}
