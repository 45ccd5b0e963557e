//! The same tiny LLaMA loaded from GGUF (interleaved RoPE pairs, llama.cpp names) and from an
//! HF-style folder (half-split RoPE pairs, HF names, Q/K rows un-permuted as HF checkpoints store
//! them) gives the same logits: the loader's name table and both RoPE layouts agree.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use canon_models::load::{gguf_vocab, load_gguf_lm, load_hf_lm};
use canon_models::{Positions, WeightMode};
use canon_nn::rope::interleaved_to_half_split_rows;
use canon_quant::GgmlTensor;
use canon_quant::gguf::GgufFile;
use canon_testkit::tiny_gguf::{TINY_CHATML, TinyLlama, write_tiny_llama};
use canon_testkit::{Tol, assert_close};

const NH: usize = 2;
const NKV: usize = 1;

/// Writes the GGUF model as an HF folder; `unpermute` = false keeps GGUF's interleaved Q/K rows
/// (the mistake a converter could make).
fn write_hf(g: &GgufFile, folder: &std::path::Path, unpermute_qk: bool) {
    let (nh, nkv, hd) = (NH, NKV, 8usize);
    let perm = interleaved_to_half_split_rows(hd);
    let unpermute = |t: &Tensor, heads: usize| -> Tensor {
        let rows: Vec<u32> = (0..heads)
            .flat_map(|h| perm.iter().map(move |&p| (h * hd + p) as u32))
            .collect();
        if unpermute_qk {
            t.index_select(&Tensor::new(rows, &Device::Cpu).unwrap(), 0)
                .unwrap()
        } else {
            t.clone()
        }
    };
    let mut hf: HashMap<String, Tensor> = HashMap::new();
    for info in &g.tensors {
        let t = GgmlTensor::from_bytes(info.dtype, &info.shape, g.tensor_bytes(info))
            .unwrap()
            .dequantize()
            .unwrap();
        let n = &info.name;
        let (name, t) = if let Some(rest) = n.strip_prefix("blk.") {
            let (l, tail) = rest.split_once('.').unwrap();
            let p = format!("model.layers.{l}");
            match tail {
                "attn_norm.weight" => (format!("{p}.input_layernorm.weight"), t),
                "attn_q.weight" => (format!("{p}.self_attn.q_proj.weight"), unpermute(&t, nh)),
                "attn_k.weight" => (format!("{p}.self_attn.k_proj.weight"), unpermute(&t, nkv)),
                "attn_v.weight" => (format!("{p}.self_attn.v_proj.weight"), t),
                "attn_output.weight" => (format!("{p}.self_attn.o_proj.weight"), t),
                "ffn_norm.weight" => (format!("{p}.post_attention_layernorm.weight"), t),
                "ffn_gate.weight" => (format!("{p}.mlp.gate_proj.weight"), t),
                "ffn_up.weight" => (format!("{p}.mlp.up_proj.weight"), t),
                "ffn_down.weight" => (format!("{p}.mlp.down_proj.weight"), t),
                other => panic!("unexpected {other}"),
            }
        } else if n == "token_embd.weight" {
            ("model.embed_tokens.weight".to_string(), t)
        } else {
            assert_eq!(n, "output_norm.weight");
            ("model.norm.weight".to_string(), t)
        };
        hf.insert(name, t);
    }
    std::fs::create_dir(folder).unwrap();
    candle_core::safetensors::save(&hf, folder.join("model.safetensors")).unwrap();
    let vocab = gguf_vocab(g).unwrap();
    std::fs::write(
        folder.join("tokenizer.json"),
        vocab.to_tokenizer_json().unwrap(),
    )
    .unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": vocab.tokens.len(), "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": nh,
        "num_key_value_heads": nkv, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": true, "eos_token_id": 2
    });
    std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        folder.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": TINY_CHATML, "eos_token": "<|im_end|>", "bos_token": "<|im_start|>"})
            .to_string(),
    )
    .unwrap();
}

#[test]
fn gguf_and_hf_folder_give_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let gguf_path = dir.path().join("tiny.gguf");
    write_tiny_llama(&gguf_path, &TinyLlama::default()).unwrap();
    let g = GgufFile::open(&gguf_path).unwrap();
    let folder = dir.path().join("hf");
    write_hf(&g, &folder, true);
    let wrong = dir.path().join("hf-wrong-layout");
    write_hf(&g, &wrong, false);

    let a = load_gguf_lm(&gguf_path, WeightMode::DequantizeF32).unwrap();
    let b = load_hf_lm(&folder).unwrap();
    let text = "hi there, tiny model";
    let ids_a = a.tokenizer.encode(text, true).unwrap();
    assert_eq!(ids_a, b.tokenizer.encode(text, true).unwrap());
    assert_eq!(b.tokenizer.eog_ids, vec![2]);
    let t = Tensor::new(ids_a.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let la = a
        .model
        .forward(&t, &mut a.model.new_cache(), Positions::All)
        .unwrap();
    let lb = b
        .model
        .forward(&t, &mut b.model.new_cache(), Positions::All)
        .unwrap();
    assert_close(&la, &lb, Tol::new(1e-5, 1e-5));
    // Keeping GGUF's interleaved rows under the half-split layout breaks the model.
    let c = load_hf_lm(&wrong).unwrap();
    let lc = c
        .model
        .forward(&t, &mut c.model.new_cache(), Positions::All)
        .unwrap();
    let diff = (la - lc)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff > 1e-3,
        "wrong RoPE layout went unnoticed (max diff {diff})"
    );
}

#[test]
fn hf_folder_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_hf_lm(dir.path()).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"gpt_neox\"}",
    )
    .unwrap();
    let e = load_hf_lm(dir.path()).err().unwrap().to_string();
    assert!(e.contains("gpt_neox"), "{e}");
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let e = load_hf_lm(dir.path()).err().unwrap().to_string();
    assert!(e.contains("invalid JSON"), "{e}");
}
