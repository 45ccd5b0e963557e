//! The quick tier of fuzzing: every target over its seeds (real files and the repository's configs)
//! and deterministic mutations of them. A panic anywhere fails the test and names the target; the
//! long coverage-guided runs use the same entry points (see fuzz/README.md).
//!
//! `CANON_FUZZ_WRITE_SEEDS=1` also writes the seeds into fuzz/corpus/<target>/ for cargo-fuzz.

use std::path::{Path, PathBuf};

use canon_fuzz::{TARGETS, mutations};
use canon_testkit::tiny_gguf::{TINY_CHATML, TinyLlama, write_tiny_llama};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    match target {
        "gguf" | "gguf_vocab" | "tokenizer_json" => {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("tiny.gguf");
            write_tiny_llama(&p, &TinyLlama::default()).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let h = canon_quant::gguf::parse(&bytes, &p).unwrap();
            match target {
                "gguf" => out.push(bytes),
                "gguf_vocab" => {
                    let mut v = vec![0x41u8];
                    if let Some(canon_quant::gguf::Value::Array(toks)) =
                        h.metadata.get("tokenizer.ggml.tokens")
                    {
                        for t in toks.iter().take(300) {
                            if let canon_quant::gguf::Value::String(s) = t {
                                v.extend_from_slice(s.as_bytes());
                                v.push(0);
                            }
                        }
                    }
                    v.extend_from_slice(b"h\0i");
                    out.push(v);
                }
                _ => {
                    let lm = canon_models_free_tokenizer(&h);
                    out.push(lm.into_bytes());
                }
            }
        }
        "chat_template" => {
            let mut v = TINY_CHATML.as_bytes().to_vec();
            v.extend_from_slice(b"\0system\0Be terse.\0user\0Hi\0assistant\0Hello");
            out.push(v);
            out.push(b"{% for m in messages %}{{ m.role|upper }}: {{ m.content }}\n{% endfor %}\0user\0x".to_vec());
            out.push(b"{% for i in range(1000000) %}{% for j in range(1000000) %}x{% endfor %}{% endfor %}\0user\0x".to_vec());
        }
        "server_request" => {
            out.push(br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, "n": 2, "stop": ["\n"], "logprobs": true, "top_logprobs": 2}"#.to_vec());
            out.push(br#"{"messages": [{"role": "user", "content": "w?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}, {"role": "tool", "tool_call_id": "c", "content": "3"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}], "tool_choice": "required", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}"#.to_vec());
            out.push(
                br#"{"prompt": ["a", "b"], "max_tokens": 5, "echo": true, "logprobs": 1}"#.to_vec(),
            );
            out.push(br#"{"input": ["x", "y"], "encoding_format": "base64"}"#.to_vec());
            out.push(b"<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>".to_vec());
        }
        "train_config" => {
            for e in std::fs::read_dir(root().join("configs")).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    out.push(std::fs::read(p).unwrap());
                }
            }
        }
        "sft_jsonl" => {
            out.push(br#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
{"prompt": "p", "completion": "c"}
{"instruction": "i", "input": "x", "output": "o"}"#.to_vec());
        }
        "fewshot_jsonl" => {
            out.push(
                br#"{"input": "2 + 2 =", "choices": ["3", "4"], "answer": 1}
{"input": "capital of France?", "target": "Paris"}"#
                    .to_vec(),
            );
        }
        "bm25_index" => {
            let b = canon_rag::bm25::Bm25::build([
                "tar extracts archives",
                "ls lists a directory",
                "gzip compresses",
            ]);
            out.push(b.to_bytes());
        }
        "hf_folder" => {
            let sep = canon_fuzz::FILE_SEPARATOR;
            let st = tiny_llama_safetensors();
            let config = br#"{"model_type": "llama", "vocab_size": 4, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32, "tie_word_embeddings": true, "eos_token_id": 2}"#;
            let tcfg = br#"{"bos_token": "a", "eos_token": {"content": "b"}, "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}"#;
            out.push([&config[..], sep, &st, sep, tcfg].concat());
            let bert = br#"{"model_type": "bert", "vocab_size": 4, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32, "type_vocab_size": 2}"#;
            out.push([&bert[..], sep, &st].concat());
        }
        "rag_index" => {
            let d = tempfile::tempdir().unwrap();
            let chunks: Vec<canon_rag::chunk::Chunk> = [
                "tar extracts archives",
                "ls lists a directory",
                "gzip compresses",
            ]
            .iter()
            .enumerate()
            .map(|(i, t)| canon_rag::chunk::Chunk {
                path: format!("/doc/{i}"),
                page: format!("page{i}"),
                section: "NAME".into(),
                line_start: 1,
                line_end: 2,
                text: t.to_string(),
            })
            .collect();
            let dim = 4;
            let vectors: Vec<f32> = (0..chunks.len() * dim)
                .map(|i| ((i * 7 % 5) as f32) / 5.0)
                .collect();
            let meta = canon_rag::index::Meta {
                format: canon_rag::index::FORMAT.into(),
                version: canon_rag::index::VERSION,
                model: "minilm".into(),
                dim,
                chunks: chunks.len(),
                man_rendered: false,
                roots: vec!["/doc".into()],
                files: Vec::new(),
                stats: Default::default(),
            };
            let ix = d.path().join("ix");
            canon_rag::index::write_index_with(&ix, &meta, &chunks, &vectors, true).unwrap();
            let parts: Vec<Vec<u8>> = [
                "meta.json",
                "chunks.jsonl",
                "vectors.f32",
                "bm25.bin",
                "hnsw.bin",
            ]
            .iter()
            .map(|f| std::fs::read(ix.join(f)).unwrap())
            .collect();
            out.push(parts.join(canon_fuzz::FILE_SEPARATOR));
        }
        "humaneval_jsonl" => {
            let problem = br#"{"task_id": "HumanEval/0", "prompt": "def f(x):\n", "canonical_solution": "    return x\n", "test": "def check(c):\n    assert c(1) == 1\n", "entry_point": "f"}"#;
            let sample = br#"{"task_id": "HumanEval/0", "completion": "    return x\n"}"#;
            out.push([&problem[..], canon_fuzz::FILE_SEPARATOR, sample].concat());
        }
        other => panic!("no seeds for {other}"),
    }
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

/// A one-layer LLaMA (vocabulary 4, width 8, 2 heads, 1 KV head) as `model.safetensors` bytes.
fn tiny_llama_safetensors() -> Vec<u8> {
    use candle_core::{Device, Tensor};
    let mut n = 0u32;
    let mut t = |shape: &[usize]| {
        let len: usize = shape.iter().product();
        let v: Vec<f32> = (0..len)
            .map(|i| {
                n += 1;
                (((i as u32 * 31 + n) % 17) as f32 - 8.0) / 40.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let mut m: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
    m.insert("model.embed_tokens.weight".into(), t(&[4, 8]));
    m.insert("model.norm.weight".into(), t(&[8]));
    let p = "model.layers.0";
    for (name, shape) in [
        ("input_layernorm.weight", vec![8]),
        ("post_attention_layernorm.weight", vec![8]),
        ("self_attn.q_proj.weight", vec![8, 8]),
        ("self_attn.k_proj.weight", vec![4, 8]),
        ("self_attn.v_proj.weight", vec![4, 8]),
        ("self_attn.o_proj.weight", vec![8, 8]),
        ("mlp.gate_proj.weight", vec![16, 8]),
        ("mlp.up_proj.weight", vec![16, 8]),
        ("mlp.down_proj.weight", vec![8, 16]),
    ] {
        m.insert(format!("{p}.{name}"), t(&shape));
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("model.safetensors");
    candle_core::safetensors::save(&m, &f).unwrap();
    std::fs::read(f).unwrap()
}

/// The tokenizer.json a GGUF vocabulary turns into (a real tokenizer.json, small).
fn canon_models_free_tokenizer(h: &canon_quant::gguf::GgufHeader) -> String {
    use canon_quant::gguf::Value;
    let s = |k: &str| match h.metadata.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let strings = |k: &str| match h.metadata.get(k) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let tokens: Vec<String> = strings("tokenizer.ggml.tokens");
    let vocab = canon_text::GgufVocab {
        model: s("tokenizer.ggml.model").unwrap_or_default(),
        pre: s("tokenizer.ggml.pre"),
        token_types: vec![1; tokens.len()],
        tokens,
        merges: strings("tokenizer.ggml.merges"),
        ..Default::default()
    };
    vocab.to_tokenizer_json().unwrap()
}

#[test]
fn every_target_survives_its_seeds_and_mutations() {
    let scratch = tempfile::tempdir().unwrap();
    canon_fuzz::set_scratch_root(scratch.path());
    let write = std::env::var("CANON_FUZZ_WRITE_SEEDS").is_ok_and(|v| v == "1");
    for (i, (name, run)) in TARGETS.iter().enumerate() {
        let seeds = seeds(name);
        if write {
            let dir = root().join("fuzz/corpus").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (k, s) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{k}")), s).unwrap();
            }
        }
        let mut execs = 0;
        for (k, seed) in seeds.iter().enumerate() {
            run(seed);
            execs += 1;
            // Fewer mutations of large seeds keep the tier quick.
            let n = if seed.len() > 100_000 { 40 } else { 400 };
            for m in mutations(seed, n, 0x9E37_79B9 ^ ((i as u64) << 32) ^ k as u64) {
                let r = std::panic::catch_unwind(|| run(&m));
                if r.is_err() {
                    let path = std::env::temp_dir().join(format!("canon-fuzz-{name}-crash"));
                    let _ = std::fs::write(&path, &m);
                    panic!(
                        "target {name} panicked on a mutation of seed {k}; input saved to {}",
                        path.display()
                    );
                }
                execs += 1;
            }
        }
        eprintln!("{name}: {execs} inputs");
    }
}

/// The multi-file seeds are valid inputs: the fuzzer starts from a model that loads and an index
/// that opens, not from an early error.
#[test]
fn multi_file_seeds_load() {
    let sep = canon_fuzz::FILE_SEPARATOR;
    let split = |b: &[u8]| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = b;
        while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
            out.push(rest[..i].to_vec());
            rest = &rest[i + sep.len()..];
        }
        out.push(rest.to_vec());
        out
    };
    let d = tempfile::tempdir().unwrap();
    let hf = split(&seeds("hf_folder")[0]);
    for (name, b) in ["config.json", "model.safetensors", "tokenizer_config.json"]
        .iter()
        .zip(&hf)
    {
        std::fs::write(d.path().join(name), b).unwrap();
    }
    std::fs::write(
        d.path().join("tokenizer.json"),
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"a":1,"b":2,"c":3},"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let lm = canon_models::load::load_hf_lm(d.path()).unwrap();
    assert_eq!(lm.model.vocab_size(), 4);
    assert!(lm.chat_template.is_some());

    let ix = d.path().join("ix");
    std::fs::create_dir(&ix).unwrap();
    let parts = split(&seeds("rag_index")[0]);
    for (name, b) in [
        "meta.json",
        "chunks.jsonl",
        "vectors.f32",
        "bm25.bin",
        "hnsw.bin",
    ]
    .iter()
    .zip(&parts)
    {
        std::fs::write(ix.join(name), b).unwrap();
    }
    let index = canon_rag::index::Index::open(&ix, None).unwrap();
    assert_eq!(index.chunks.len(), 3);
    assert!(index.hnsw.is_some());
}
