//! One entry point per parser of input Canon did not write. Each takes arbitrary bytes and must
//! return without panicking, aborting, looping without bound or allocating beyond what the bytes
//! justify; errors are fine. The cargo-fuzz targets under `fuzz/` call these for coverage-guided
//! runs, and the quick test tier runs each over a seed corpus and deterministic mutations of it.

use std::path::Path;

use canon_serve::api::{self, ChatRequest, CompletionRequest, EmbeddingRequest};
use canon_text::{ChatTemplate, GgufVocab, Message, Tokenizer};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for the runners.
pub const TARGETS: &[(&str, Target)] = &[
    ("gguf", gguf),
    ("gguf_vocab", gguf_vocab),
    ("tokenizer_json", tokenizer_json),
    ("chat_template", chat_template),
    ("server_request", server_request),
    ("train_config", train_config),
    ("sft_jsonl", sft_jsonl),
    ("fewshot_jsonl", fewshot_jsonl),
    ("bm25_index", bm25_index),
    ("hf_folder", hf_folder),
    ("rag_index", rag_index),
    ("humaneval_jsonl", humaneval_jsonl),
];

/// Separates the files of a multi-file input (`hf_folder`, `rag_index`, `humaneval_jsonl`).
pub const FILE_SEPARATOR: &[u8] = b"\n--8<--\n";

/// Splits `data` at [`FILE_SEPARATOR`] into at most `max` files.
fn files(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < max {
        match rest
            .windows(FILE_SEPARATOR.len())
            .position(|w| w == FILE_SEPARATOR)
        {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + FILE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

static SCRATCH_ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Where the targets that read files write their inputs (default: the system's temporary folder,
/// as `canon-fuzz-PID-TARGET`). Tests point it at a folder they remove; set it before the first
/// input. False if it was already set.
pub fn set_scratch_root(dir: &Path) -> bool {
    SCRATCH_ROOT.set(dir.to_path_buf()).is_ok()
}

/// A folder of this process for the targets whose parser reads files (made once, reused).
fn scratch(name: &str) -> Option<std::path::PathBuf> {
    let root = SCRATCH_ROOT.get_or_init(std::env::temp_dir);
    let d = root.join(format!("canon-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).ok()?;
    Some(d)
}

/// Writes `files` as `names` into `dir` (a missing part removes the file: absent files are input
/// too). False when a write fails.
fn write_files(dir: &Path, names: &[&str], parts: &[&[u8]]) -> bool {
    for (i, n) in names.iter().enumerate() {
        let p = dir.join(n);
        let ok = match parts.get(i) {
            Some(b) => std::fs::write(&p, b).is_ok(),
            None => !p.exists() || std::fs::remove_file(&p).is_ok(),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A tokenizer.json small enough to write per input: the HF folder loaders need one beside the
/// config and weights.
const TINY_TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"a":1,"b":2,"c":3},"unk_token":"[UNK]"}}"#;

/// An HF model folder: `config.json` (the first file), `model.safetensors` (the second),
/// `tokenizer_config.json` (the third, optional), loaded as a causal LM and as an encoder.
pub fn hf_folder(data: &[u8]) {
    let Some(dir) = scratch("hf") else {
        return;
    };
    let parts = files(data, 3);
    // config.json, model.safetensors, then the fixed tokenizer.json, then tokenizer_config.json
    // when the input has a third file.
    let mut all: Vec<&[u8]> = parts.iter().take(2).copied().collect();
    if all.len() == 2 {
        all.push(TINY_TOKENIZER_JSON.as_bytes());
        all.extend(parts.get(2).copied());
    }
    if !write_files(
        &dir,
        &[
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ],
        &all,
    ) {
        return;
    }
    if let Ok(lm) = canon_models::load::load_hf_lm(&dir) {
        let _ = lm.model.vocab_size();
    }
    let _ = canon_models::load::load_hf_encoder(&dir);
}

/// A `canon index` folder: `meta.json`, `chunks.jsonl`, `vectors.f32`, `bm25.bin`, `hnsw.bin`
/// (in that order; a missing part is a missing file), opened, then searched every way.
pub fn rag_index(data: &[u8]) {
    let Some(dir) = scratch("index") else {
        return;
    };
    let parts = files(data, 5);
    if !write_files(
        &dir,
        &[
            "meta.json",
            "chunks.jsonl",
            "vectors.f32",
            "bm25.bin",
            "hnsw.bin",
        ],
        &parts,
    ) {
        return;
    }
    if let Ok(ix) = canon_rag::index::Index::open(&dir, None) {
        let dim = ix.meta.dim;
        let mut q = vec![0.0f32; dim];
        if let Some(x) = q.first_mut() {
            *x = 1.0;
        }
        for mode in [
            canon_rag::index::Mode::Dense,
            canon_rag::index::Mode::Bm25,
            canon_rag::index::Mode::Hybrid,
        ] {
            let _ = ix.search("tar extract", Some(&q), mode, 5);
        }
        let _ = ix.dense(&q, 3, true);
    }
}

/// HumanEval problems (the first file) and completions for them (the second), as read by
/// `canon eval humaneval`.
pub fn humaneval_jsonl(data: &[u8]) {
    let Some(dir) = scratch("humaneval") else {
        return;
    };
    let parts = files(data, 2);
    if !write_files(&dir, &["problems.jsonl", "samples.jsonl"], &parts) {
        return;
    }
    if let Ok(problems) = canon_eval::humaneval::load_problems(&dir.join("problems.jsonl")) {
        let _ = canon_eval::humaneval::read_completions(&dir.join("samples.jsonl"), &problems);
    }
}

/// The GGUF header: magic, version, metadata (nested arrays, strings), tensor table and offsets.
pub fn gguf(data: &[u8]) {
    if let Ok(h) = canon_quant::gguf::parse(data, Path::new("fuzz.gguf")) {
        for t in &h.tensors {
            // Parsed ranges lie inside the bytes.
            assert!(
                t.offset
                    .checked_add(t.n_bytes)
                    .is_some_and(|e| e <= data.len())
            );
        }
    }
}

/// Splits `data` at NUL bytes into at most `max` pieces of (lossy) text.
fn pieces(data: &[u8], max: usize) -> Vec<String> {
    data.split(|&b| b == 0)
        .take(max)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// A tokenizer from GGUF vocabulary metadata (tokens, types, merges, special ids), then encoding
/// and decoding text with it.
pub fn gguf_vocab(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let p = pieces(rest, 4096);
    let n = p.len() as u32;
    let models = ["gpt2", "llama", "bert", ""];
    let pres = ["smollm", "llama3", "qwen2", "gpt2", "unknown"];
    let tokens: Vec<String> = p.iter().take(p.len() / 2 + 1).cloned().collect();
    let merges: Vec<String> = p.iter().skip(p.len() / 2 + 1).cloned().collect();
    let id = |k: u8| (n > 0).then(|| (u32::from(k)) % (n + 2));
    let vocab = GgufVocab {
        model: models[(head & 3) as usize].into(),
        pre: Some(pres[(head >> 2) as usize % pres.len()].into()),
        token_types: tokens
            .iter()
            .enumerate()
            .map(|(i, _)| (i as i32 + i32::from(head)) % 7)
            .collect(),
        scores: (0..tokens.len())
            .map(|i| -((i as f32) * f32::from(head % 5)))
            .collect(),
        add_space_prefix: (head & 0x20 != 0).then_some(head & 0x10 != 0),
        tokens,
        merges,
        bos_id: id(head),
        eos_id: id(head.wrapping_mul(3)),
        eot_id: None,
        eom_id: None,
        pad_id: id(head.wrapping_add(1)),
        unk_id: None,
        add_bos: head & 0x80 != 0,
        add_eos: false,
    };
    if let Ok(mut t) = Tokenizer::from_gguf(&vocab) {
        // One tokenizer per input: without this the `tokenizers` crate's per-thread merge memo
        // keeps every dropped tokenizer's entries (see `disable_encode_cache`).
        t.disable_encode_cache();
        let text = String::from_utf8_lossy(rest);
        if let Ok(ids) = t.encode(&text, head & 0x40 != 0) {
            let _ = t.decode(&ids, false);
        }
        let _ = t.eog_ids.len();
    }
}

/// A `tokenizer.json`, then encoding a short text.
pub fn tokenizer_json(data: &[u8]) {
    if let Ok(mut t) = Tokenizer::from_json_bytes(data) {
        t.disable_encode_cache();
        if let Ok(ids) = t.encode("Hello, wörld! 123 <|im_start|>", true) {
            let _ = t.decode(&ids, false);
        }
        let _ = t.encode_with_special("a b");
    }
}

/// A chat template (the part before the first NUL) rendered on messages (the rest: role and
/// content pairs separated by NULs). Templates come from model files, so they may be hostile.
pub fn chat_template(data: &[u8]) {
    let p = pieces(data, 64);
    let Some((src, rest)) = p.split_first() else {
        return;
    };
    let Ok(t) = ChatTemplate::new(src.clone(), "<s>", "</s>") else {
        return;
    };
    let msgs: Vec<Message> = rest
        .chunks(2)
        .map(|c| Message::new(c[0].clone(), c.get(1).cloned().unwrap_or_default()))
        .collect();
    let _ = t.render(&msgs, true);
    let _ = t.render(&msgs, false);
}

/// A request body of every endpoint, then the checks that turn tools and response formats into
/// grammars, and the rendering of tool-call history.
pub fn server_request(data: &[u8]) {
    if let Ok(r) = api::parse::<ChatRequest>(data) {
        if let Ok(Some(t)) = canon_serve::tools::parse(r.tools.as_ref(), r.tool_choice.as_ref()) {
            let _ = t.instructions();
            let answer = canon_serve::tools::response_format(r.response_format.as_ref())
                .ok()
                .flatten();
            let _ = t.grammar(answer.as_ref());
        }
        for m in &r.messages {
            if let Some(tc) = &m.tool_calls {
                let _ = canon_serve::tools::render_assistant_calls("", tc);
            }
        }
    }
    let _ = api::parse::<CompletionRequest>(data);
    let _ = api::parse::<EmbeddingRequest>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = canon_serve::tools::parse_calls(text);
    }
}

/// A training config (TOML), then its validation.
pub fn train_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = toml::from_str::<canon_train::RunConfig>(text) {
        let _ = c.train.validate();
    }
    // Every family's typed sections (`canon train` reads configs this way).
    if let Ok(v) = toml::from_str::<toml::Value>(text)
        && let Ok(c) = canon_runs::RunConfig::parse(&v, Path::new("fuzz.toml"))
    {
        let _ = c.train().validate();
    }
}

/// Fine-tuning records, one JSON object per line.
pub fn sft_jsonl(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
            let _ = canon_train::sft::parse_record(&v);
        }
    }
}

/// A few-shot task file (JSONL).
pub fn fewshot_jsonl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = canon_agent::tasks::parse_jsonl("fuzz", "fuzz.jsonl", &text);
}

/// The BM25 part of an index as stored on disk, then a search over it.
pub fn bm25_index(data: &[u8]) {
    if let Ok(b) = canon_rag::bm25::Bm25::from_bytes(data) {
        let _ = b.search("tar extract directory", 5);
        let _ = b.len();
    }
}

/// Deterministic mutations of `seed` for the quick tier: bit flips, byte insertions and deletions,
/// splices of interesting values (lengths near 2^32 and 2^64, zero), truncations.
pub fn mutations(seed: &[u8], count: usize, mut state: u64) -> Vec<Vec<u8>> {
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let interesting: [&[u8]; 6] = [
        &[0xff; 8],
        &[0; 8],
        &[0xff, 0xff, 0xff, 0xff],
        &[0x00, 0x00, 0x00, 0x80],
        b"\"",
        b"{{",
    ];
    (0..count)
        .map(|_| {
            let mut m = seed.to_vec();
            for _ in 0..1 + next() % 4 {
                let r = next();
                let pos = if m.is_empty() {
                    0
                } else {
                    (r >> 8) as usize % m.len()
                };
                match r % 6 {
                    0 if !m.is_empty() => m[pos] ^= 1 << ((r >> 40) % 8),
                    1 => m.insert(pos, (r >> 16) as u8),
                    2 if !m.is_empty() => {
                        m.remove(pos);
                    }
                    3 => {
                        let v = interesting[(r >> 24) as usize % interesting.len()];
                        let end = (pos + v.len()).min(m.len());
                        m.splice(pos..end, v.iter().copied());
                    }
                    4 => m.truncate(pos),
                    _ if !m.is_empty() => m[pos] = (r >> 32) as u8,
                    _ => m.push(r as u8),
                }
            }
            m
        })
        .collect()
}
