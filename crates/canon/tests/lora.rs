//! `--lora` and `canon merge` end to end on a tiny GGUF model written by the test: an adapter in
//! PEFT's layout changes the greedy output, the merged model generates the same ids as base +
//! adapter, and an adapter for another model is one clear error.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use canon_models::peft::{Adapter, write_adapter};
use canon_testkit::randn;
use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

fn canon(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .env("CANON_HOME", home)
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .output()
        .expect("run canon")
}

fn greedy(model: &Path, home: &Path, extra: &[&str]) -> Vec<u64> {
    let mut args = vec![
        "-q",
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hi hi",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = canon(&args, home);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// The tiny model: d 16, 2 heads of 8, 1 KV head, FFN 32, 2 layers.
fn adapter(scale: f32) -> Adapter {
    let mut modules = BTreeMap::new();
    for (i, (m, out, inp)) in [
        ("self_attn.q_proj", 16, 16),
        ("self_attn.v_proj", 8, 16),
        ("mlp.down_proj", 16, 32),
    ]
    .into_iter()
    .enumerate()
    {
        for layer in 0..2 {
            let seed = (10 * i + layer) as u64;
            modules.insert(
                format!("model.layers.{layer}.{m}"),
                (
                    randn(&[4, inp], seed),
                    (randn(&[out, 4], seed + 100) * scale as f64).unwrap(),
                ),
            );
        }
    }
    Adapter {
        rank: 4,
        alpha: 16.0,
        scale: 4.0,
        modules,
        dropout: 0.0,
    }
}

#[test]
fn merged_model_generates_what_base_plus_adapter_generates() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let base = h.join("base.gguf");
    write_tiny_llama(&base, &TinyLlama::default()).unwrap();
    let ad = h.join("adapter");
    write_adapter(&ad, &adapter(3.0), "tiny").unwrap();
    let ad_s = ad.to_str().unwrap();

    let plain = greedy(&base, h, &[]);
    let with = greedy(&base, h, &["--lora", ad_s]);
    assert_ne!(plain, with, "the adapter should change the greedy path");

    let merged = h.join("merged.gguf");
    let o = canon(
        &[
            "merge",
            "--model",
            base.to_str().unwrap(),
            "--lora",
            ad_s,
            "--out",
            merged.to_str().unwrap(),
        ],
        h,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(greedy(&merged, h, &[]), with);
    assert_eq!(
        greedy(&merged, h, &["--f32"]),
        greedy(&base, h, &["--f32", "--lora", ad_s])
    );

    // B = 0 is the identity.
    let zero = h.join("zero");
    write_adapter(&zero, &adapter(0.0), "tiny").unwrap();
    assert_eq!(greedy(&base, h, &["--lora", zero.to_str().unwrap()]), plain);
}

#[test]
fn an_adapter_for_another_model_is_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let base = h.join("base.gguf");
    write_tiny_llama(&base, &TinyLlama::default()).unwrap();
    let mut a = adapter(1.0);
    a.modules.insert(
        "model.layers.0.self_attn.k_proj".into(),
        (
            randn(&[4, 24], 1),
            Tensor::zeros((8, 4), DType::F32, &Device::Cpu).unwrap(),
        ),
    );
    let ad = h.join("other");
    write_adapter(&ad, &a, "other").unwrap();
    for args in [
        vec![
            "generate",
            "--model",
            base.to_str().unwrap(),
            "--lora",
            ad.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        vec![
            "merge",
            "--model",
            base.to_str().unwrap(),
            "--lora",
            ad.to_str().unwrap(),
            "--out",
            h.join("m.gguf").to_str().unwrap(),
        ],
    ] {
        let o = canon(&args, h);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.starts_with("error:") && e.contains("k_proj") && e.contains("24"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    assert!(!h.join("m.gguf").exists());
}
