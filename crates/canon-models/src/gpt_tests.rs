//! Tests of the GPT family: the acceptance checks (docs/papers/) for GPT-2, PaLM and GLaM presets,
//! gradients reaching every parameter, and cached decoding.

use super::*;
use crate::varstore::VarStore;
use candle_core::{D, DType, Device, Var};
use canon_nn::Activation;
use canon_nn::MoeConfig;
use canon_testkit::{Tol, assert_close, to_vec};

pub(crate) fn tiny(block: BlockStyle) -> GptConfig {
    GptConfig {
        vocab_size: 23,
        n_layer: 2,
        n_head: 4,
        n_kv_head: None,
        d_model: 16,
        d_ff: 32,
        max_seq_len: 32,
        block,
        norm: NormKind::LayerNorm,
        norm_bias: true,
        positions: PosKind::Learned,
        ffn: FfnKind::Mlp,
        activation: Activation::GeluTanh,
        bias: true,
        tie_embeddings: block == BlockStyle::PreLn,
        final_norm: block == BlockStyle::PreLn,
        scaled_residual_init: block == BlockStyle::PreLn,
        init_std: 0.2,
        embed_init_std: None,
        scale_logits: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        moe: None,
        moe_every: 2,
        dropout: 0.0,
    }
}

pub(crate) fn tiny_palm() -> GptConfig {
    GptConfig {
        n_kv_head: Some(1),
        norm_bias: false,
        positions: PosKind::Rope,
        ffn: FfnKind::SwiGlu,
        bias: false,
        tie_embeddings: true,
        final_norm: true,
        embed_init_std: Some(1.0),
        scale_logits: true,
        ..tiny(BlockStyle::Parallel)
    }
}

pub(crate) fn tiny_glam() -> GptConfig {
    GptConfig {
        moe: Some(MoeConfig {
            n_experts: 4,
            top_k: 2,
            capacity_factor: 2.0,
            second_expert: canon_nn::SecondExpert::Argmax,
        }),
        ..tiny(BlockStyle::PreLn)
    }
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn build(c: &GptConfig, seed: u64) -> (Gpt, VarStore) {
    let s = VarStore::new_random(seed, c.init_policy());
    (Gpt::load(c.clone(), &s).unwrap(), s)
}

/// Zero-strided tensors of any shape: counts parameters without allocating them.
struct Counting(std::cell::RefCell<Vec<(String, usize)>>);
impl WeightSource for Counting {
    fn describe(&self) -> String {
        "count".into()
    }
    fn has(&self, _: &str) -> bool {
        true
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.0
            .borrow_mut()
            .push((name.into(), shape.iter().product()));
        Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape)?)
    }
}

#[test]
fn gpt2_small_has_124_439_808_parameters_with_tied_embeddings() {
    let c = GptConfig {
        vocab_size: 50257,
        n_layer: 12,
        n_head: 12,
        d_model: 768,
        d_ff: 3072,
        max_seq_len: 1024,
        init_std: 0.02,
        ..tiny(BlockStyle::PreLn)
    };
    let src = Counting(Default::default());
    Gpt::load(c, &src).unwrap();
    let names = src.0.borrow();
    let total: usize = names.iter().map(|n| n.1).sum();
    assert_eq!(total, 124_439_808);
    let block0: usize = names
        .iter()
        .filter(|n| n.0.starts_with("h.0."))
        .map(|n| n.1)
        .sum();
    assert_eq!(block0, 7_087_872);
}

#[test]
fn gpt2_residual_projections_have_std_scaled_by_sqrt_2n() {
    let c = GptConfig {
        n_layer: 12,
        d_model: 64,
        d_ff: 256,
        init_std: 0.02,
        ..tiny(BlockStyle::PreLn)
    };
    let (_, s) = build(&c, 3);
    let mut xs = Vec::new();
    for (name, v, _) in s.vars() {
        if name.ends_with("c_proj.weight") {
            xs.extend(to_vec(v.as_tensor()));
        }
    }
    let n = xs.len() as f64;
    let std = (xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt();
    let want = 0.02 / 24f64.sqrt();
    assert!((std / want - 1.0).abs() < 0.05, "std {std} vs {want}");
    // Other matrices keep 0.02.
    let fc = to_vec(s.get("h.0.mlp.c_fc.weight").unwrap().as_tensor());
    let sd = (fc.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / fc.len() as f64).sqrt();
    assert!((sd / 0.02 - 1.0).abs() < 0.05, "{sd}");
}

fn all_params_get_gradients(c: &GptConfig) {
    let (m, s) = build(c, 5);
    let x = ids(&[1, 5, 7, 2, 9, 11, 3, 4, 20, 0, 13, 8]);
    let (logits, aux) = m.forward_train(&x).unwrap();
    let mut loss = logits.sqr().unwrap().mean_all().unwrap();
    if let Some(a) = aux.moe_aux_loss {
        loss = (loss + a).unwrap();
    }
    let g = loss.backward().unwrap();
    let vars = s.vars();
    assert!(!vars.is_empty());
    for (name, v, _) in &vars {
        let gr = g
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(
            to_vec(gr).iter().any(|x| *x != 0.0),
            "{name}: gradient is all zeros"
        );
    }
}

#[test]
fn every_parameter_of_every_gpt_preset_receives_a_gradient() {
    all_params_get_gradients(&tiny(BlockStyle::PostLn)); // GPT-1
    all_params_get_gradients(&tiny(BlockStyle::PreLn)); // GPT-2
    all_params_get_gradients(&tiny_palm()); // PaLM
    all_params_get_gradients(&tiny_glam()); // GLaM
}

#[test]
fn cached_decoding_equals_the_full_forward_for_learned_and_rotary_positions() {
    for c in [
        tiny(BlockStyle::PreLn),
        tiny(BlockStyle::PostLn),
        tiny_palm(),
    ] {
        let (m, _) = build(&c, 9);
        let seq = [3u32, 7, 1, 9, 4, 4, 12, 22];
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
}

#[test]
fn palm_parallel_block_equals_the_two_branches_added_separately() {
    let (m, _) = build(&tiny_palm(), 2);
    let x = canon_testkit::randn(&[1, 5, 16], 4);
    let blk = &m.blocks[0];
    let got = m.block(blk, &x, None, 0, &mut Aux::default()).unwrap();
    let h = blk.ln_1.forward(&x).unwrap();
    let a = m.attn(blk, &h, None, 0, None).unwrap();
    let f = match &blk.ffn {
        Ffn::Dense(f) => f.forward(&h).unwrap(),
        Ffn::Moe(_) => unreachable!(),
    };
    let want = ((&x + a).unwrap() + f).unwrap();
    assert_close(&got, &want, Tol::new(1e-6, 1e-6));
}

#[test]
fn palm_inventory_has_one_norm_per_block_no_biases_and_one_kv_head() {
    let c = tiny_palm();
    let (_, s) = build(&c, 1);
    let names: Vec<String> = s.vars().into_iter().map(|v| v.0).collect();
    assert!(names.iter().all(|n| !n.ends_with(".bias")), "{names:?}");
    for i in 0..c.n_layer {
        let norms = names
            .iter()
            .filter(|n| n.starts_with(&format!("h.{i}.ln_")))
            .count();
        assert_eq!(norms, 1);
    }
    let qkv = s.get("h.0.attn.c_attn.weight").unwrap();
    // q: n_head·hd rows, then one K head and one V head of head_dim rows each.
    assert_eq!(qkv.dims(), &[(4 + 2) * 4, 16]);
    assert!(
        !names.iter().any(|n| n.starts_with("lm_head")),
        "shared embedding"
    );
}

#[test]
fn multi_query_equals_multi_head_with_copied_kv_heads() {
    let mq = tiny_palm();
    let (m1, s1) = build(&mq, 8);
    let mh = GptConfig {
        n_kv_head: None,
        ..mq.clone()
    };
    // Copy every weight; replicate the single K and V head rows n_head times.
    let hd = mq.head_dim();
    let src = VarStore::new_random(0, mh.init_policy());
    for (name, v, _) in s1.vars() {
        let t = v.as_tensor().clone();
        let t = if name.ends_with("attn.c_attn.weight") {
            let q = t.narrow(0, 0, 4 * hd).unwrap();
            let k = t.narrow(0, 4 * hd, hd).unwrap();
            let vv = t.narrow(0, 5 * hd, hd).unwrap();
            let ks = Tensor::cat(&[&k, &k, &k, &k], 0).unwrap();
            let vs = Tensor::cat(&[&vv, &vv, &vv, &vv], 0).unwrap();
            Tensor::cat(&[q, ks, vs], 0).unwrap()
        } else {
            t
        };
        let dst = src.tensor(&name, t.dims()).unwrap();
        Var::from_tensor(&dst).unwrap(); // shape check path
        src.get(&name).unwrap().set(&t).unwrap();
    }
    let m2 = Gpt::load(mh, &src).unwrap();
    let x = ids(&[1, 2, 3, 4, 5, 6]);
    let a = m1.forward_train(&x).unwrap().0;
    let b = m2.forward_train(&x).unwrap().0;
    assert_close(&a, &b, Tol::new(1e-6, 1e-5));
    // The KV cache of MQA holds 1/n_head of MHA's keys.
    let mut c1 = m1.new_cache();
    let mut c2 = m2.new_cache();
    m1.forward(&x, &mut c1, Positions::Last).unwrap();
    m2.forward(&x, &mut c2, Positions::Last).unwrap();
    let (k1, _) = c1.layers[0]
        .append(
            &Tensor::zeros((1, 1, 0, hd), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((1, 1, 0, hd), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    assert_eq!(k1.dims()[1], 1);
    let (k2, _) = c2.layers[0]
        .append(
            &Tensor::zeros((1, 4, 0, hd), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((1, 4, 0, hd), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    assert_eq!(k2.dims()[1], 4);
}

#[test]
fn tied_embedding_gradient_is_the_sum_of_input_and_output_gradients() {
    let tied = tiny(BlockStyle::PreLn);
    let untied = GptConfig {
        tie_embeddings: false,
        ..tied.clone()
    };
    let (m1, s1) = build(&tied, 4);
    let s2 = VarStore::new_random(0, untied.init_policy());
    for (name, v, _) in s1.vars() {
        s2.tensor(&name, v.dims()).unwrap();
        s2.get(&name).unwrap().set(v.as_tensor()).unwrap();
    }
    let wte = s1.get("wte.weight").unwrap();
    s2.tensor("lm_head.weight", wte.dims()).unwrap();
    s2.get("lm_head.weight")
        .unwrap()
        .set(wte.as_tensor())
        .unwrap();
    let m2 = Gpt::load(untied, &s2).unwrap();
    let x = ids(&[4, 8, 15, 16, 22, 2]);
    let loss = |m: &Gpt| {
        m.forward_train(&x)
            .unwrap()
            .0
            .narrow(D::Minus1, 0, 7)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let g1 = loss(&m1).backward().unwrap();
    let g2 = loss(&m2).backward().unwrap();
    let tied_g = g1.get(wte.as_tensor()).unwrap();
    let sum = (g2.get(s2.get("wte.weight").unwrap().as_tensor()).unwrap()
        + g2.get(s2.get("lm_head.weight").unwrap().as_tensor())
            .unwrap())
    .unwrap();
    assert_close(tied_g, &sum, Tol::new(1e-5, 1e-4));
}

#[test]
fn later_tokens_do_not_change_earlier_logits_with_moe_capacity_off() {
    // With capacity large enough that nothing is dropped, routing is per token and causal.
    let mut c = tiny_glam();
    if let Some(m) = c.moe.as_mut() {
        m.capacity_factor = 8.0;
    }
    let (m, _) = build(&c, 2);
    let a = m.forward_train(&ids(&[5, 6, 7, 8])).unwrap().0;
    let b = m.forward_train(&ids(&[5, 6, 7, 8, 9, 1])).unwrap().0;
    assert_close(&b.narrow(1, 0, 4).unwrap(), &a, Tol::F32);
}

#[test]
fn bad_configs_name_the_field() {
    let mut c = tiny(BlockStyle::PreLn);
    c.n_head = 5;
    let e = c.validate().unwrap_err();
    assert!(e.contains("n_head"), "{e}");
    c.n_head = 4;
    c.vocab_size = 0;
    assert!(c.validate().unwrap_err().contains("vocab_size"));
}

#[test]
fn dropout_acts_only_while_training_noise_is_seeded() {
    let cfg = GptConfig {
        dropout: 0.3,
        ..tiny(BlockStyle::PostLn)
    };
    let store = VarStore::new_random(3, cfg.init_policy());
    let m = Gpt::load(cfg, &store).unwrap();
    assert!(m.uses_noise());
    let x = ids(&[1, 2, 3, 4, 5]);
    let plain = to_vec(&m.forward_train(&x).unwrap().0);
    m.set_noise(Some(9));
    let a = to_vec(&m.forward_train(&x).unwrap().0);
    m.set_noise(Some(9));
    let b = to_vec(&m.forward_train(&x).unwrap().0);
    m.set_noise(None);
    let again = to_vec(&m.forward_train(&x).unwrap().0);
    assert_ne!(plain, a, "seeded dropout changes the output");
    assert_eq!(a, b, "the same seed repeats the masks");
    assert_eq!(
        plain, again,
        "unseeded (evaluation) is deterministic and dropout-free"
    );
}

/// The trainable path (weights tracked: fused ops with their backward, the tiled attention op)
/// equals the inference path (detached weights: inference kernels, attention over a KV cache)
/// for every block style, rotary and learned positions, grouped K/V heads and MoE.
#[test]
fn forward_train_equals_the_inference_path_for_every_preset() {
    let mut rotary_gqa = tiny(BlockStyle::PreLn);
    rotary_gqa.positions = PosKind::Rope;
    rotary_gqa.n_kv_head = Some(2);
    rotary_gqa.norm = NormKind::RmsNorm;
    for c in [
        tiny(BlockStyle::PreLn),
        tiny(BlockStyle::PostLn),
        tiny_palm(),
        tiny_glam(),
        rotary_gqa,
    ] {
        let (m, store) = build(&c, 3);
        let x = ids(&[1, 5, 2, 7, 3, 9, 4, 11, 6, 0, 8, 13]);
        let (train, _) = m.forward_train(&x).unwrap();
        assert!(train.track_op());
        let inf = Gpt::load(c.clone(), &crate::source::Detached(&store)).unwrap();
        let mut cache = inf.new_cache();
        let y = inf.forward(&x, &mut cache, Positions::All).unwrap();
        assert!(!y.track_op());
        assert_close(&train.detach(), &y, Tol::new(1e-4, 1e-4));
    }
}

/// nanoGPT's block in training (pre-LN, no biases, GELU MLP) reaches candle's backprop as a few
/// nodes per block: norm, QKV product, attention read from the packed projection, output
/// product, residual add, norm, the MLP as one op, residual add (and the views a `[b, t, d]`
/// tensor needs none of). Each node's inputs cost a zero-filled gradient and an add in the
/// backward, so a regression that splits these ops again shows here.
#[test]
fn a_nanogpt_block_is_seven_graph_nodes_in_training() {
    let nodes = |n_layer: usize| -> usize {
        let c = GptConfig {
            n_layer,
            bias: false,
            norm_bias: false,
            activation: Activation::Gelu,
            ..tiny(BlockStyle::PreLn)
        };
        let (m, _s) = build(&c, 5);
        let x = ids(&[1, 5, 7, 2, 9, 11, 3, 4, 20, 0, 13, 8]);
        let (logits, _) = m.forward_train(&x).unwrap();
        let loss = logits.sqr().unwrap().mean_all().unwrap();
        loss.sorted_nodes().len()
    };
    let per_block = nodes(3) - nodes(2);
    assert_eq!(per_block, 7 + 6, "nodes per block (7 ops + 6 parameters)");
}
