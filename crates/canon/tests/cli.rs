//! The `canon` binary end to end on a tiny GGUF model written by the test (no downloads): bad input
//! ends with one clear error line and a non-zero exit, never a panic; generation flags behave.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

fn canon(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .env("CANON_HOME", home)
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .output()
        .expect("run canon")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the command failed cleanly with a one-line error containing every needle.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {e}"
    );
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {e}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}

fn tiny(dir: &Path, name: &str, opts: &TinyLlama) -> PathBuf {
    let p = dir.join(name);
    write_tiny_llama(&p, opts).unwrap();
    p
}

#[test]
fn bad_models_end_in_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let o = canon(
        &[
            "generate",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "x",
        ],
        h,
    );
    assert_clean_error(&o, &["/nonexistent/model.gguf", "alias"]);
    let o = canon(&["generate", "--model", "gpt-17", "--prompt", "x"], h);
    assert_clean_error(&o, &["gpt-17", "smollm2"]);

    let garbage = h.join("garbage.gguf");
    std::fs::write(&garbage, b"definitely not a model").unwrap();
    let o = canon(
        &[
            "generate",
            "--model",
            garbage.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        h,
    );
    assert_clean_error(&o, &["not a GGUF file"]);

    let good = tiny(h, "good.gguf", &TinyLlama::default());
    let bytes = std::fs::read(&good).unwrap();
    let cut = h.join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let o = canon(
        &[
            "generate",
            "--model",
            cut.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        h,
    );
    assert_clean_error(&o, &["truncated"]);

    let arch = tiny(
        h,
        "arch.gguf",
        &TinyLlama {
            architecture: "gptx",
            ..Default::default()
        },
    );
    let o = canon(
        &[
            "generate",
            "--model",
            arch.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        h,
    );
    assert_clean_error(&o, &["unsupported architecture", "gptx"]);

    let shape = tiny(
        h,
        "shape.gguf",
        &TinyLlama {
            q_rows_factor: 2,
            ..Default::default()
        },
    );
    let o = canon(
        &[
            "generate",
            "--model",
            shape.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        h,
    );
    assert_clean_error(&o, &["blk.0.attn_q.weight", "[16, 16]", "[32, 16]"]);

    // An alias whose asset cannot be fetched: pip is missing.
    let o = canon(&["embed", "--model", "minilm", "--text", "x"], h);
    assert_clean_error(&o, &["python-for-tests"]);
}

#[test]
fn bad_prompts_end_in_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(
        d.path(),
        "m.gguf",
        &TinyLlama {
            context_length: 32,
            ..Default::default()
        },
    );
    let m = m.to_str().unwrap();
    let o = canon(&["generate", "--model", m, "--prompt", ""], d.path());
    assert_clean_error(&o, &["empty prompt"]);
    let long = "x".repeat(40);
    let o = canon(&["generate", "--model", m, "--prompt", &long], d.path());
    assert_clean_error(&o, &["40 tokens", "32"]);
    let o = canon(
        &["generate", "--model", m, "--prompt", "hi", "--top-p", "2"],
        d.path(),
    );
    assert_clean_error(&o, &["top-p"]);
}

fn json_out(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn generation_flags_behave() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(d.path(), "m.gguf", &TinyLlama::default());
    let m = m.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec!["generate", "--model", m, "--prompt", "hi there", "--json"];
        a.extend_from_slice(extra);
        json_out(&canon(&a, d.path()))
    };
    // --ignore-eos generates exactly --max-tokens.
    let v = run(&[
        "--max-tokens",
        "12",
        "--ignore-eos",
        "--temperature",
        "1",
        "--seed",
        "3",
    ]);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 12);
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["timings"]["decode_tokens"], 12);
    // "hi" merges into one token; " there" is six byte tokens.
    assert_eq!(v["prompt_tokens"].as_array().unwrap().len(), 7);
    // Same seed, same text; another seed, (almost surely) another text.
    let w = run(&[
        "--max-tokens",
        "12",
        "--ignore-eos",
        "--temperature",
        "1",
        "--seed",
        "3",
    ]);
    assert_eq!(v["tokens"], w["tokens"]);
    let x = run(&[
        "--max-tokens",
        "12",
        "--ignore-eos",
        "--temperature",
        "1",
        "--seed",
        "4",
    ]);
    assert_ne!(v["tokens"], x["tokens"]);
    // --logprobs K: K alternatives per token, probabilities that sum to at most 1.
    let l = run(&[
        "--max-tokens",
        "3",
        "--ignore-eos",
        "--temperature",
        "0",
        "--logprobs",
        "4",
    ]);
    let lps = l["logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), 3);
    for e in lps {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 4);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["id"], e["id"]);
        let s: f64 = top
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap().exp())
            .sum();
        assert!(s <= 1.0 + 1e-5);
    }
}

#[test]
fn chat_template_and_tokenize_work_on_the_tiny_model() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(d.path(), "m.gguf", &TinyLlama::default());
    let m = m.to_str().unwrap();
    let v = json_out(&canon(
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--chat",
            "--max-tokens",
            "2",
            "--json",
            "--temperature",
            "0",
        ],
        d.path(),
    ));
    // <|im_start|> user \n hi <|im_end|> \n <|im_start|> assistant \n: specials are one token each.
    let p: Vec<u64> = v["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(p[0], 1);
    assert_eq!(p.iter().filter(|&&x| x == 1).count(), 2);
    assert_eq!(p.iter().filter(|&&x| x == 2).count(), 1);
    let o = canon(
        &[
            "tokenize",
            "--model",
            m,
            "--text",
            "<|im_start|>hi",
            "--json",
        ],
        d.path(),
    );
    let t = json_out(&o);
    assert_eq!(t["ids"], serde_json::json!([1, 259]));
}

#[test]
fn info_reads_headers_and_names_bad_files() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let m = tiny(h, "t.gguf", &TinyLlama::default());
    let o = canon(&["info", "--model", m.to_str().unwrap(), "--json"], h);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["architecture"], "llama");
    assert!(v["shape"]["layers"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["parameters"].as_str().unwrap().contains('('), "{v}");
    assert!(
        v["weights"].as_object().is_some_and(|w| !w.is_empty()),
        "{v}"
    );
    assert!(v["tokenizer"]["vocab_size"].as_u64().unwrap() > 0, "{v}");
    // The kernel path, and each block format of the file in exactly one of the two lists.
    let k = &v["kernels"];
    let path = k["path"].as_str().unwrap();
    assert!(
        ["avx512vnni", "avx2 + avx-vnni", "avx2", "scalar"].contains(&path),
        "{v}"
    );
    let listed = |key: &str, f: &str| k[key].as_str().unwrap().split(", ").any(|x| x == f);
    for f in v["weights"].as_object().unwrap().keys() {
        if f.starts_with('Q') {
            assert!(listed("repacked", f) != listed("unpacked", f), "{f}: {v}");
        }
    }
    let o = canon(&["info", "--model", m.to_str().unwrap()], h);
    assert!(String::from_utf8_lossy(&o.stdout).contains("architecture: llama"));

    let junk = h.join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").unwrap();
    let o = canon(&["info", "--model", junk.to_str().unwrap()], h);
    assert_clean_error(&o, &["junk.gguf", "GGUF"]);
    let empty = h.join("emptydir");
    std::fs::create_dir_all(&empty).unwrap();
    let o = canon(&["info", "--model", empty.to_str().unwrap()], h);
    assert_clean_error(&o, &["config.json"]);
}

#[test]
fn global_flags_a_command_cannot_honour_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let o = canon(
        &[
            "--lora", "/tmp", "embed", "--model", "minilm", "--text", "x",
        ],
        h,
    );
    assert_clean_error(
        &o,
        &["--lora", "canon embed", "generate, chat, eval and serve"],
    );
    let o = canon(&["--f32", "train", "--config", "c.toml", "--out", "o"], h);
    assert_clean_error(&o, &["--f32", "canon train"]);
    let o = canon(&["--cache-type", "f16", "info", "--model", "x.gguf"], h);
    assert_clean_error(&o, &["--cache-type", "canon info"]);
}

#[test]
fn an_f16_kv_cache_generates() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(d.path(), "m.gguf", &TinyLlama::default());
    let m = m.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        m,
        "--prompt",
        "hi there",
        "--json",
        "--max-tokens",
        "6",
        "--ignore-eos",
        "--temperature",
        "0",
    ];
    let f32 = json_out(&canon(&args, d.path()));
    let mut a = vec!["--cache-type", "f16"];
    a.extend_from_slice(&args);
    let f16 = json_out(&canon(&a, d.path()));
    assert_eq!(f16["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(f32["prompt_tokens"], f16["prompt_tokens"]);
}

#[test]
fn completions_and_help_teach() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    for shell in ["bash", "zsh", "fish"] {
        let o = canon(&["completions", shell], h);
        assert!(o.status.success(), "{}", stderr(&o));
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("canon") && s.contains("generate"), "{shell}");
    }
    let o = canon(&["--help"], h);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("Examples:") && s.contains("canon info --model smollm2"),
        "{s}"
    );
    let o = canon(&["completions", "tcsh"], h);
    assert!(!o.status.success());
}

#[test]
fn finetune_is_one_command_family() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let help = |args: &[&str]| {
        let o = canon(args, h);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let s = help(&["finetune", "--help"]);
    assert!(
        s.contains("gpt1-heads") && s.contains("classifier") && s.contains("--targets"),
        "{s}"
    );
    // Each method's own flags, whatever the global flags before the command.
    let s = help(&["finetune", "--method", "gpt1-heads", "--help"]);
    assert!(s.contains("--lambda") && !s.contains("--targets"), "{s}");
    let s = help(&[
        "-q",
        "--threads",
        "1",
        "finetune",
        "--method=classifier",
        "--help",
    ]);
    assert!(s.contains("minilm") && !s.contains("--targets"), "{s}");
    // The top-level list no longer shows the separate commands.
    let s = help(&["--help"]);
    assert!(
        !s.contains("finetune-gpt1") && !s.contains("finetune-bert"),
        "{s}"
    );
    // A bad method is still clap's one clear error.
    let o = canon(&["finetune", "--method", "full"], h);
    assert!(
        !o.status.success() && stderr(&o).contains("invalid value 'full'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn generate_n_samples_k_completions_each_equal_to_its_seed_alone() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(d.path(), "m.gguf", &TinyLlama::default());
    let m = m.to_str().unwrap();
    let base = [
        "generate",
        "--model",
        m,
        "--prompt",
        "hi there",
        "--json",
        "--max-tokens",
        "10",
        "--ignore-eos",
        "--temperature",
        "1",
    ];
    let mut a = base.to_vec();
    a.extend_from_slice(&["--n", "4", "--seed", "20"]);
    let v = json_out(&canon(&a, d.path()));
    let arr = v.as_array().expect("an array of completions");
    assert_eq!(arr.len(), 4);
    for (i, c) in arr.iter().enumerate() {
        assert_eq!(c["seed"], 20 + i as u64);
        let seed = (20 + i).to_string();
        let mut one = base.to_vec();
        one.extend_from_slice(&["--seed", &seed]);
        let alone = json_out(&canon(&one, d.path()));
        assert_eq!(c["tokens"], alone["tokens"], "completion {i}");
        assert_eq!(c["text"], alone["text"], "completion {i}");
    }
    let mut bad = base.to_vec();
    bad.extend_from_slice(&["--n", "0"]);
    assert_clean_error(&canon(&bad, d.path()), &["--n", "between 1 and"]);
}
