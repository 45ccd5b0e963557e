//! `canon info` and `canon generate` on the tiny Qwen2 / Phi-3 / scaled-RoPE LLaMA fixtures of `goldens/archs/` (GGUF
//! and HF folders): the shape is read, and greedy generation gives transformers' ids.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use canon_testkit::{golden, goldens_dir};

fn canon(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .env("CANON_HOME", home)
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .output()
        .expect("run canon")
}

fn fixture(name: &str) -> PathBuf {
    goldens_dir().join("archs").join(name)
}

#[test]
fn info_and_greedy_generate_work_on_qwen2_and_phi3_files() {
    let home = tempfile::tempdir().unwrap();
    let g = golden("archs/archs.json");
    for (arch, file) in [
        ("qwen2", "qwen2.q8_0.gguf"),
        ("qwen2", "qwen2-hf"),
        ("phi3", "phi3.f16.gguf"),
        ("phi3", "phi3-hf"),
        ("llama3", "llama3.f16.gguf"),
        ("llamalin", "llamalin-hf"),
    ] {
        let path = fixture(file);
        let path = path.to_str().unwrap();
        let o = canon(&["info", "--model", path, "--json"], home.path());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{file}: {err}");
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let text = info.to_string();
        assert!(!text.contains("unsupported"), "{file}: {text}");
        let family = if arch.starts_with("llama") {
            "llama"
        } else {
            arch
        };
        assert!(text.contains(family), "{file}: {text}");
        if file == "llama3.f16.gguf" {
            // Llama 3's RoPE factors, as the file's rope_freqs.weight holds them.
            assert_eq!(
                info["shape"]["rope_freq_divisors"],
                "1.000 1.662 8.000 8.000 8.000 8.000 8.000 8.000",
                "{text}"
            );
        }

        let case = &g["models"][arch]["cases"][0];
        let o = canon(
            &[
                "generate",
                "--model",
                path,
                "--prompt",
                case["prompt"].as_str().unwrap(),
                "--temperature",
                "0",
                "--max-tokens",
                "20",
                "--ignore-eos",
                "--json",
                "-q",
            ],
            home.path(),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{file}: {err}");
        let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(out["prompt_tokens"], case["prompt_ids"], "{file}");
        // The Q8_0 file runs on the quantized kernels: llama.cpp's ids for it.
        let want = if file.ends_with("q8_0.gguf") {
            &g["models"][arch]["gguf"][file]["cases"][0]["llamacpp_greedy"]
        } else {
            &case["hf_greedy"]
        };
        assert_eq!(&out["tokens"], want, "{file}");
    }
}
