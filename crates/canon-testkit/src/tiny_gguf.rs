//! A tiny LLaMA-architecture GGUF file with random weights and a byte-level vocabulary, for tests of
//! loading, generation and error handling that must not depend on downloaded assets.

use std::path::Path;

use canon_quant::GgmlType;
use canon_quant::gguf::Value;
use canon_quant::gguf_write::{TensorOut, write_gguf};
use rand::{Rng, SeedableRng};

/// GPT-2's byte → printable character table.
pub fn byte_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

#[derive(Debug, Clone)]
pub struct TinyLlama {
    pub context_length: u32,
    pub architecture: &'static str,
    /// Multiply the q_proj rows by this (1 = correct shape); 2 makes a wrong-shaped tensor.
    pub q_rows_factor: usize,
}

impl Default for TinyLlama {
    fn default() -> Self {
        Self {
            context_length: 64,
            architecture: "llama",
            q_rows_factor: 1,
        }
    }
}

pub const TINY_CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Writes the model; returns the vocabulary size (3 control tokens + 256 bytes + one merge).
pub fn write_tiny_llama(path: &Path, opts: &TinyLlama) -> std::io::Result<usize> {
    let (d, nh, nkv, hd, ffn, layers) = (16usize, 2usize, 1usize, 8usize, 32usize, 2usize);
    let table = byte_to_unicode();
    let mut tokens: Vec<Value> = vec![
        Value::String("<|endoftext|>".into()),
        Value::String("<|im_start|>".into()),
        Value::String("<|im_end|>".into()),
    ];
    let mut types = vec![Value::I32(3); 3];
    for c in &table {
        tokens.push(Value::String(c.to_string()));
        types.push(Value::I32(1));
    }
    // The result of the one merge ("h" + "i").
    tokens.push(Value::String("hi".into()));
    types.push(Value::I32(1));
    let vocab = tokens.len();
    let a = opts.architecture;
    let k = |s: &str| format!("{a}.{s}");
    let keys: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String("tiny-test".into())),
        (k("context_length"), Value::U32(opts.context_length)),
        (k("embedding_length"), Value::U32(d as u32)),
        (k("block_count"), Value::U32(layers as u32)),
        (k("feed_forward_length"), Value::U32(ffn as u32)),
        (k("attention.head_count"), Value::U32(nh as u32)),
        (k("attention.head_count_kv"), Value::U32(nkv as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (k("rope.freq_base"), Value::F32(10000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String(format!(
                "{} {}",
                table[b'h' as usize], table[b'i' as usize]
            ))]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(TINY_CHATML.into()),
        ),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut rand_bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| ((rng.random::<f32>() - 0.5) * 0.5).to_le_bytes())
            .collect()
    };
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };
    // (name, shape, data)
    let mut ts: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        (
            "token_embd.weight".into(),
            vec![vocab, d],
            rand_bytes(vocab * d),
        ),
        ("output_norm.weight".into(), vec![d], ones(d)),
    ];
    for l in 0..layers {
        let p = format!("blk.{l}");
        let q_rows = nh * hd * opts.q_rows_factor;
        ts.push((format!("{p}.attn_norm.weight"), vec![d], ones(d)));
        ts.push((
            format!("{p}.attn_q.weight"),
            vec![q_rows, d],
            rand_bytes(q_rows * d),
        ));
        ts.push((
            format!("{p}.attn_k.weight"),
            vec![nkv * hd, d],
            rand_bytes(nkv * hd * d),
        ));
        ts.push((
            format!("{p}.attn_v.weight"),
            vec![nkv * hd, d],
            rand_bytes(nkv * hd * d),
        ));
        ts.push((
            format!("{p}.attn_output.weight"),
            vec![d, nh * hd],
            rand_bytes(d * nh * hd),
        ));
        ts.push((format!("{p}.ffn_norm.weight"), vec![d], ones(d)));
        ts.push((
            format!("{p}.ffn_gate.weight"),
            vec![ffn, d],
            rand_bytes(ffn * d),
        ));
        ts.push((
            format!("{p}.ffn_up.weight"),
            vec![ffn, d],
            rand_bytes(ffn * d),
        ));
        ts.push((
            format!("{p}.ffn_down.weight"),
            vec![d, ffn],
            rand_bytes(d * ffn),
        ));
    }
    let meta: Vec<(&str, Value)> = keys.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let outs: Vec<TensorOut<'_>> = ts
        .iter()
        .map(|(n, s, b)| TensorOut {
            name: n,
            dtype: GgmlType::F32,
            shape: s,
            data: b,
        })
        .collect();
    write_gguf(path, &meta, &outs)?;
    Ok(vocab)
}
