//! Tier 2: all-MiniLM-L6-v2 (fetched through pip on first use) against sentence-transformers'
//! embeddings in `goldens/minilm/minilm.json` (generator: goldens/minilm/gen.py).
//!
//! Tolerance: independent f32 implementations agree to ~2e-7 per component; plausible bugs (tanh
//! GELU, LayerNorm eps 1e-5, leaving [CLS]/[SEP] out of the mean, no truncation) move components by
//! 1.8e-4 or more. We require max |diff| ≤ 1e-5 and cosine ≥ 0.9999.

use canon_models::{ModelSpec, load_encoder};
use canon_testkit::{Tol, assert_close_f32, golden};

fn embedder() -> canon_models::LoadedEncoder {
    load_encoder(&ModelSpec::Alias("minilm".into()), &canon_assets::Stderr).expect("load minilm")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The golden cases' texts.
fn golden_texts(cases: &[serde_json::Value]) -> Vec<String> {
    cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

/// A golden case's sentence-transformers embedding.
fn golden_embedding(c: &serde_json::Value) -> Vec<f32> {
    c["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn embeddings_and_token_ids_match_sentence_transformers() {
    let g = golden("minilm/minilm.json");
    let enc = embedder();
    let cases = g["texts"].as_array().expect("texts");
    assert!(cases.len() >= 20);
    let texts = golden_texts(cases);
    let ours = enc.embedder.embed(&texts, 16).unwrap();
    let mut worst = 0.0f64;
    for (c, v) in cases.iter().zip(&ours) {
        let name = c["name"].as_str().unwrap();
        let ids: Vec<u32> = c["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            enc.embedder.token_ids(c["text"].as_str().unwrap()).unwrap(),
            ids,
            "token ids of {name}"
        );
        let r = golden_embedding(c);
        let d = assert_close_f32(v, &r, Tol::new(1e-5, 0.0));
        worst = worst.max(d);
        assert!(cosine(v, &r) >= 0.9999, "{name}: cosine {}", cosine(v, &r));
    }
    eprintln!("max |diff| over {} texts: {worst:.2e}", cases.len());
}

#[test]
fn a_text_alone_equals_the_same_text_in_a_padded_batch() {
    let enc = embedder();
    let texts: Vec<String> = [
        "short",
        "A considerably longer sentence that forces the others in its batch to be padded.",
        "",
        "naïve café",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let batch = enc.embedder.embed(&texts, 4).unwrap();
    for (t, b) in texts.iter().zip(&batch) {
        let alone = enc.embedder.embed(std::slice::from_ref(t), 1).unwrap();
        assert_close_f32(b, &alone[0], Tol::new(1e-6, 0.0));
    }
}

#[test]
fn paraphrase_ranks_above_unrelated() {
    let enc = embedder();
    let t: Vec<String> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let e = enc.embedder.embed(&t, 8).unwrap();
    assert!(cosine(&e[0], &e[1]) > cosine(&e[0], &e[2]) + 0.1);
}

/// The fused inference pass (what `embed` runs) against the composed, backward-capable pass on
/// the real weights, padded positions included.
#[test]
fn inference_pass_equals_composed_pass_on_real_weights() {
    use canon_models::source::{SafetensorsSource, WeightSource};
    use canon_models::{Bert, BertConfig};

    let enc = embedder();
    let dir = &enc.path;
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let u = |k: &str| v[k].as_u64().unwrap() as usize;
    let cfg = BertConfig {
        vocab_size: u("vocab_size"),
        hidden_size: u("hidden_size"),
        num_hidden_layers: u("num_hidden_layers"),
        num_attention_heads: u("num_attention_heads"),
        intermediate_size: u("intermediate_size"),
        hidden_act: canon_nn::Activation::Gelu,
        layer_norm_eps: v["layer_norm_eps"].as_f64().unwrap(),
        max_position_embeddings: u("max_position_embeddings"),
        type_vocab_size: u("type_vocab_size"),
    };
    let mut src = SafetensorsSource::open_dir(dir).unwrap();
    src.detect_prefix("embeddings.word_embeddings.weight", &["bert.", "model."]);
    assert!(src.has("embeddings.word_embeddings.weight"));
    let bert = Bert::load(cfg, &src).unwrap();

    let texts = [
        "A considerably longer sentence that forces the others in its batch to be padded.",
        "short",
        "naïve café",
    ];
    let rows: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| enc.embedder.token_ids(t).unwrap())
        .collect();
    let t = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![0u32; rows.len() * t];
    let mut mask = vec![0f32; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        ids[i * t..i * t + r.len()].copy_from_slice(r);
        mask[i * t..i * t + r.len()].fill(1.0);
    }
    let dev = &candle_core::Device::Cpu;
    let ids = candle_core::Tensor::from_vec(ids, (rows.len(), t), dev).unwrap();
    let mask = candle_core::Tensor::from_vec(mask, (rows.len(), t), dev).unwrap();
    let fast = bert
        .forward_inference(&ids, None, &mask)
        .unwrap()
        .expect("the inference pass applies to frozen f32 MiniLM");
    let composed = bert.forward_composed(&ids, None, &mask).unwrap();
    // Both passes evaluate GELU with (different) f32 erf approximations and fused layer norms; over
    // six layers they agree to a few 1e-5 on hidden states of magnitude ~1.
    let d = canon_testkit::assert_close(&fast, &composed, Tol::new(5e-5, 1e-5));
    eprintln!("inference vs composed pass, max |diff| over hidden states: {d:.2e}");
}

/// `minilm:q8_0` (8-bit weights and activations on the integer kernels where the CPU has them)
/// against sentence-transformers' f32 vectors: every golden at cosine 0.998 or more (lowest
/// measured 0.9983), the tag carried in the loaded name, and an unknown tag refused.
#[test]
fn eight_bit_minilm_stays_next_to_the_reference_vectors() {
    let g = golden("minilm/minilm.json");
    let enc = canon_models::load_encoder_named("minilm:q8_0", &canon_assets::Stderr)
        .expect("load minilm:q8_0");
    assert!(enc.name.ends_with(":q8_0"), "{}", enc.name);
    let cases = g["texts"].as_array().expect("texts");
    let texts = golden_texts(cases);
    let ours = enc.embedder.embed(&texts, 16).unwrap();
    let mut worst = 1.0f64;
    for (c, v) in cases.iter().zip(&ours) {
        let r = golden_embedding(c);
        let cos = cosine(v, &r);
        assert!(cos >= 0.998, "{}: cosine {cos}", c["name"]);
        worst = worst.min(cos);
    }
    eprintln!(
        "lowest cosine to the f32 reference over {} texts: {worst:.5}",
        cases.len()
    );
    // A wrong tag is refused by name.
    let err = canon_models::load_encoder_named("minilm:q4", &canon_assets::Quiet)
        .err()
        .expect("minilm:q4 refused")
        .to_string();
    assert!(err.contains(":q8_0") && err.contains("q4"), "{err}");
}
