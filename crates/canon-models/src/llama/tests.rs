use super::*;
use crate::source::WeightSource;
use candle_core::{DType, Device};
use canon_nn::RopeLayout;
use canon_testkit::{Tol, assert_close, randn};
use std::collections::HashMap;

/// A source of random weights with HF names, for tiny models.
pub(crate) struct RandomSource(pub std::cell::RefCell<HashMap<String, Tensor>>);

/// The same weights wrapped as variables: every op records a backward pass, so the model runs
/// its composed (training) path instead of the inference loops.
struct TrackedSource(RandomSource);
impl WeightSource for TrackedSource {
    fn describe(&self) -> String {
        "tracked".into()
    }
    fn has(&self, name: &str) -> bool {
        self.0.has(name)
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.0.tensor(name, shape)?;
        Ok(candle_core::Var::from_tensor(&t)?.as_tensor().clone())
    }
}
impl WeightSource for RandomSource {
    fn describe(&self) -> String {
        "random".into()
    }
    fn has(&self, name: &str) -> bool {
        name != "lm_head.weight"
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut m = self.0.borrow_mut();
        let seed = m.len() as u64 + 1;
        Ok(m.entry(name.to_string())
            .or_insert_with(|| (randn(shape, seed) * 0.2).unwrap())
            .clone())
    }
}

pub(crate) fn tiny(n_kv: usize) -> Llama {
    Llama::load(
        tiny_config(n_kv),
        &RandomSource(Default::default()),
        WeightMode::DequantizeF32,
    )
    .unwrap()
}

fn tiny_config(n_kv: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: n_kv,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_layout: RopeLayout::Interleaved,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        variant: Default::default(),
    }
}

#[test]
fn inference_loops_equal_the_composed_training_path() {
    let cfg = tiny_config(2);
    let fast = Llama::load(
        cfg.clone(),
        &RandomSource(Default::default()),
        WeightMode::DequantizeF32,
    )
    .unwrap();
    let slow = Llama::load(
        cfg,
        &TrackedSource(RandomSource(Default::default())),
        WeightMode::DequantizeF32,
    )
    .unwrap();
    let seq = [3u32, 7, 1, 9, 4];
    let (mut cf, mut cs) = (fast.new_cache(), slow.new_cache());
    for (i, part) in [&seq[..3], &seq[3..4], &seq[4..]].into_iter().enumerate() {
        let a = fast.forward(&ids(part), &mut cf, Positions::All).unwrap();
        let b = slow.forward(&ids(part), &mut cs, Positions::All).unwrap();
        assert!(
            b.track_op() && !a.track_op(),
            "step {i}: paths not distinct"
        );
        assert_close(&a, &b.detach(), Tol::new(1e-5, 1e-5));
    }
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

/// The trainer's entry (`TrainableLm::forward_train`, tracked weights: fused RMS norm,
/// SwiGLU, RoPE and the tiled attention op with grouped K/V heads) equals the inference path.
#[test]
fn forward_train_equals_the_inference_path() {
    let cfg = tiny_config(2);
    let fast = Llama::load(
        cfg.clone(),
        &RandomSource(Default::default()),
        WeightMode::DequantizeF32,
    )
    .unwrap();
    let slow = Llama::load(
        cfg,
        &TrackedSource(RandomSource(Default::default())),
        WeightMode::DequantizeF32,
    )
    .unwrap();
    let x = ids(&[3, 7, 1, 9, 4, 4, 12, 30]);
    let train = crate::TrainableLm::forward_train(&slow, &x).unwrap().logits;
    assert!(train.track_op());
    let y = fast
        .forward(&x, &mut fast.new_cache(), Positions::All)
        .unwrap();
    assert!(!y.track_op());
    assert_close(&train.detach(), &y, Tol::new(1e-5, 1e-5));
}

#[test]
fn cached_decoding_equals_the_full_forward_pass() {
    let m = tiny(2);
    let seq = [3u32, 7, 1, 9, 4, 4, 12, 30];
    let full = m
        .forward(&ids(&seq), &mut m.new_cache(), Positions::All)
        .unwrap();
    let mut cache = m.new_cache();
    let mut steps = vec![
        m.forward(&ids(&seq[..3]), &mut cache, Positions::All)
            .unwrap(),
    ];
    for &t in &seq[3..] {
        steps.push(m.forward(&ids(&[t]), &mut cache, Positions::All).unwrap());
    }
    let inc = Tensor::cat(&steps, 1).unwrap();
    assert_close(&inc, &full, Tol::new(1e-5, 1e-4));
}

/// The tiny model with Gemma 3's block: window 3, every 2nd layer global, its own local RoPE.
fn tiny_gemma() -> Llama {
    let mut cfg = tiny_config(1);
    cfg.num_hidden_layers = 4;
    cfg.rope_layout = RopeLayout::HalfSplit;
    cfg.variant = crate::LlamaVariant {
        scale_embeddings: true,
        qk_norm: true,
        post_norms: true,
        gelu_tanh_ffn: true,
        sliding_window: Some(3),
        sliding_window_pattern: 2,
        rope_theta_local: Some(100.0),
        query_scale: Some(0.2),
        final_logit_softcap: Some(5.0),
        ..Default::default()
    };
    Llama::load(
        cfg,
        &RandomSource(Default::default()),
        WeightMode::DequantizeF32,
    )
    .unwrap()
}

#[test]
fn gemma_variant_decodes_like_its_full_pass_and_batches_like_one_sequence() {
    let m = tiny_gemma();
    assert!(m.config.is_local_layer(0) && !m.config.is_local_layer(1));
    assert!(m.config.is_local_layer(2) && !m.config.is_local_layer(3));
    let seq = [3u32, 7, 1, 9, 4, 4, 12, 30, 2, 8];
    let full = m
        .forward(&ids(&seq), &mut m.new_cache(), Positions::All)
        .unwrap();
    // Soft-capped logits stay inside (-5, 5).
    let max = full
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max < 5.0, "{max}");
    let mut cache = m.new_cache();
    let mut steps = vec![
        m.forward(&ids(&seq[..4]), &mut cache, Positions::All)
            .unwrap(),
    ];
    for &t in &seq[4..] {
        steps.push(m.forward(&ids(&[t]), &mut cache, Positions::All).unwrap());
    }
    let inc = Tensor::cat(&steps, 1).unwrap();
    assert_close(&inc, &full, Tol::new(1e-5, 1e-4));
    // Two sequences in one batch step equal each run alone.
    let (a, b) = (&seq[..6], &seq[2..9]);
    let (mut ca, mut cb) = (m.new_cache(), m.new_cache());
    let both = m.forward_batch(&[a, b], &mut [&mut ca, &mut cb]).unwrap();
    for (i, s) in [a, b].into_iter().enumerate() {
        let alone = m
            .forward(&ids(s), &mut m.new_cache(), Positions::Last)
            .unwrap();
        assert_close(
            &both.narrow(0, i, 1).unwrap(),
            &alone.squeeze(0).unwrap(),
            Tol::new(1e-5, 1e-4),
        );
    }
    // Then decode rows together (the tensor-free row path: per-head norms, local and global
    // RoPE, query scale, the window sliding past old keys) against each sequence's own steps.
    let mut solo: Vec<_> = [a, b]
        .iter()
        .map(|s| {
            let mut c = m.new_cache();
            m.forward(&ids(s), &mut c, Positions::Last).unwrap();
            c
        })
        .collect();
    for (step, t) in [5u32, 11, 0, 6, 6, 19].into_iter().enumerate() {
        let next = [t, (t + 3) % 32];
        let rows = m
            .forward_batch(&[&next[..1], &next[1..]], &mut [&mut ca, &mut cb])
            .unwrap();
        for (i, c) in solo.iter_mut().enumerate() {
            let alone = m
                .forward(&ids(&next[i..i + 1]), c, Positions::Last)
                .unwrap();
            assert_close(
                &rows.narrow(0, i, 1).unwrap(),
                &alone.squeeze(0).unwrap(),
                Tol::new(1e-5, 1e-4),
            );
            assert_eq!(c.len(), [a, b][i].len() + step + 1);
        }
        assert_eq!((ca.len(), cb.len()), (solo[0].len(), solo[1].len()));
    }
}

#[test]
fn the_sliding_window_forgets_old_tokens_on_local_layers_only() {
    // With every layer local and a window of 3, the last position's logits depend only on the
    // last 3 + (layers - 1)·2 tokens; a change further back leaves them equal.
    let mut m = tiny_gemma();
    m.config.variant.sliding_window_pattern = 0;
    let a = [5u32, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    let mut b = a;
    b[0] = 40;
    let la = m
        .forward(&ids(&a), &mut m.new_cache(), Positions::Last)
        .unwrap();
    let lb = m
        .forward(&ids(&b), &mut m.new_cache(), Positions::Last)
        .unwrap();
    assert_close(&la, &lb, Tol::F32);
    // With global layers the change reaches the end.
    m.config.variant.sliding_window_pattern = 2;
    let la = m
        .forward(&ids(&a), &mut m.new_cache(), Positions::Last)
        .unwrap();
    let lb = m
        .forward(&ids(&b), &mut m.new_cache(), Positions::Last)
        .unwrap();
    let d = (la - lb)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d > 1e-4, "{d}");
}

#[test]
fn an_f16_cache_halves_the_memory_and_stays_close_to_f32() {
    let mut m = tiny_gemma();
    let seq = [3u32, 7, 1, 9, 4, 4, 12, 30, 2, 8];
    let run = |m: &Llama| {
        let mut c = m.new_cache();
        let mut out = vec![m.forward(&ids(&seq[..5]), &mut c, Positions::All).unwrap()];
        for &t in &seq[5..] {
            out.push(m.forward(&ids(&[t]), &mut c, Positions::All).unwrap());
        }
        (Tensor::cat(&out, 1).unwrap(), c.bytes())
    };
    let (a, bytes32) = run(&m);
    m.set_kv_f16(true).unwrap();
    let (b, bytes16) = run(&m);
    assert_eq!(2 * bytes16, bytes32);
    let d = (a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // f16 keeps 11 significant bits: differences of the order of 1e-3 of the activations.
    assert!(d > 0.0 && d < 1e-2, "{d}");
}

#[test]
fn later_tokens_do_not_change_earlier_logits() {
    let m = tiny(4);
    let a = m
        .forward(&ids(&[5, 6, 7, 8]), &mut m.new_cache(), Positions::All)
        .unwrap();
    let b = m
        .forward(
            &ids(&[5, 6, 7, 8, 40, 2]),
            &mut m.new_cache(),
            Positions::All,
        )
        .unwrap();
    assert_close(&b.narrow(1, 0, 4).unwrap(), &a, Tol::F32);
}

#[test]
fn last_position_equals_the_last_row_of_all() {
    let m = tiny(1);
    let all = m
        .forward(&ids(&[1, 2, 3]), &mut m.new_cache(), Positions::All)
        .unwrap();
    let last = m
        .forward(&ids(&[1, 2, 3]), &mut m.new_cache(), Positions::Last)
        .unwrap();
    assert_close(&last, &all.narrow(1, 2, 1).unwrap(), Tol::F32);
    assert_eq!(last.dtype(), DType::F32);
}

#[test]
fn context_overflow_and_empty_input_are_errors() {
    let m = tiny(2);
    let long: Vec<u32> = (0..65).map(|i| i % 50).collect();
    let e = m
        .forward(&ids(&long), &mut m.new_cache(), Positions::Last)
        .unwrap_err();
    assert!(e.to_string().contains("context of 64"), "{e}");
    let empty = Tensor::zeros((1, 0), DType::U32, &Device::Cpu).unwrap();
    assert!(
        m.forward(&empty, &mut m.new_cache(), Positions::Last)
            .is_err()
    );
}

#[test]
fn a_wrong_shape_names_the_tensor() {
    struct Bad;
    impl WeightSource for Bad {
        fn describe(&self) -> String {
            "bad.gguf".into()
        }
        fn has(&self, _: &str) -> bool {
            true
        }
        fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
            let mut s = shape.to_vec();
            if name.contains("k_proj") {
                s[0] += 1;
                return Err(ModelError::Shape {
                    file: "bad.gguf".into(),
                    name: name.into(),
                    expected: shape.to_vec(),
                    found: s,
                });
            }
            Ok(Tensor::zeros(s, DType::F32, &Device::Cpu)?)
        }
    }
    let mut cfg = tiny(2).config;
    cfg.num_hidden_layers = 1;
    let e = Llama::load(cfg, &Bad, WeightMode::DequantizeF32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("k_proj") && e.contains("bad.gguf"), "{e}");
}

/// Greedy decoding with an f16 cache (read in place by the decode loops) picks the f32 cache's
/// tokens: 40 steps on the tiny LLaMA and Gemma models, the f16 run fed the f32 run's tokens so
/// that every step's logits are compared; they agree within f16's rounding, and the argmax
/// agrees wherever the f32 logits' top two are further apart than that. The batched step with an
/// f16 cache gives the single-sequence step's logits.
#[test]
fn greedy_decoding_with_an_f16_cache_picks_the_f32_caches_tokens() {
    let argmax = |l: &Tensor| -> (u32, f32) {
        let v = l.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
        (idx[0] as u32, v[idx[0]] - v[idx[1]])
    };
    for mut m in [tiny(2), tiny_gemma()] {
        let prompt = [3u32, 7, 1, 9, 4];
        let steps = 40;
        let (mut c32, mut c16) = (m.new_cache(), {
            m.set_kv_f16(true).unwrap();
            m.new_cache()
        });
        let mut cb = m.new_cache();
        m.set_kv_f16(false).unwrap();
        assert!(c16.layers.iter().all(|l| l.is_f16()));
        assert!(!c32.layers.iter().any(|l| l.is_f16()));
        let mut l32 = m.forward(&ids(&prompt), &mut c32, Positions::Last).unwrap();
        let mut l16 = m.forward(&ids(&prompt), &mut c16, Positions::Last).unwrap();
        m.forward_batch(&[&prompt], &mut [&mut cb]).unwrap();
        let (mut same, mut close_calls) = (0, 0);
        for step in 0..steps {
            let tol = Tol::new(2e-2, 2e-2);
            assert_close(&l16, &l32, tol);
            let (t32, margin) = argmax(&l32);
            let (t16, _) = argmax(&l16);
            if margin > 0.05 {
                assert_eq!(t16, t32, "step {step}: margin {margin}");
            } else {
                close_calls += 1;
            }
            same += usize::from(t16 == t32);
            l32 = m.forward(&ids(&[t32]), &mut c32, Positions::Last).unwrap();
            l16 = m.forward(&ids(&[t32]), &mut c16, Positions::Last).unwrap();
            let lb = m.forward_batch(&[&[t32]], &mut [&mut cb]).unwrap();
            assert_close(&lb, &l16.flatten_to(1).unwrap(), Tol::new(1e-5, 1e-4));
        }
        assert_eq!(c16.len(), prompt.len() + steps);
        assert!(
            same + close_calls >= steps && same >= steps - 2,
            "{same}/{steps}"
        );
    }
}
