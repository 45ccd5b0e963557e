use super::*;
use crate::VarStore;
use candle_core::Device;
use canon_testkit::{Tol, assert_close, randn, to_vec};

fn cfg(t_layers: usize, k_layers: usize) -> ErnieConfig {
    ErnieConfig {
        vocab_size: 30,
        hidden_size: 16,
        num_attention_heads: 2,
        intermediate_size: 24,
        t_layers,
        k_layers,
        entity_dim: 8,
        entity_heads: 2,
        max_position_embeddings: 12,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: Activation::Gelu,
    }
}

/// A store with BERT-like random weights (std 0.3 so that layers do visible work).
fn store(seed: u64) -> VarStore {
    VarStore::new_random(
        seed,
        Box::new(|name: &str, _s: &[usize]| ParamInfo {
            init: if name.contains("LayerNorm") && name.ends_with(".weight") {
                Init::Ones
            } else {
                Init::Normal { std: 0.3 }
            },
            decay: true,
        }),
    )
}

/// Serves `encoder.layer.{n+i}.*` from `kencoder.layer.{i}.*` of another source: a BERT whose
/// upper layers are the aggregators' token weights.
struct AsBert<'a> {
    inner: &'a VarStore,
    n: usize,
}
impl WeightSource for AsBert<'_> {
    fn describe(&self) -> String {
        "as-bert".into()
    }
    fn has(&self, _: &str) -> bool {
        true
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(rest) = name.strip_prefix("encoder.layer.") {
            let (i, tail) = rest.split_once('.').unwrap();
            let i: usize = i.parse().unwrap();
            if i >= self.n {
                return self
                    .inner
                    .tensor(&format!("kencoder.layer.{}.{tail}", i - self.n), shape);
            }
        }
        self.inner.tensor(name, shape)
    }
}

fn batch() -> (Tensor, Tensor) {
    let dev = &Device::Cpu;
    let ids: Vec<u32> = (0..2 * 10).map(|i| ((i * 7 + 5) % 30) as u32).collect();
    let mask: Vec<f32> = (0..20)
        .map(|i| f32::from(u8::from(i < 10 || i % 10 < 6)))
        .collect();
    (
        Tensor::from_vec(ids, (2, 10), dev).unwrap(),
        Tensor::from_vec(mask, (2, 10), dev).unwrap(),
    )
}

fn no_entities(b: usize, t: usize, k: usize) -> EntityInput {
    let table = Tensor::zeros((3, k), DType::F32, &Device::Cpu).unwrap();
    EntityInput::lookup(&table, &vec![-1; b * t], b, t).unwrap()
}

#[test]
fn without_entities_an_aggregator_is_a_plain_bert_layer() {
    let vs = store(1);
    let ernie = Ernie::load(cfg(1, 2), &vs).unwrap();
    // dense_ent's bias is set to random values: with the entity mask 0 it must not matter.
    let (ids, mask) = batch();
    let out = ernie.forward(&ids, &mask, &no_entities(2, 10, 8)).unwrap();
    let mut c = cfg(1, 2).bert();
    c.num_hidden_layers = 3;
    let bert = Bert::load(c, &AsBert { inner: &vs, n: 1 }).unwrap();
    let plain = bert.forward_composed(&ids, None, &mask).unwrap();
    assert_close(&out.tokens, &plain, Tol::new(1e-6, 1e-6));
    // And the entity stream stays zero.
    assert!(to_vec(&out.entities).iter().all(|v| *v == 0.0));
    // With an entity somewhere, the outputs differ (the test above could not pass vacuously).
    let table = randn(&[3, 8], 4);
    let mut ids_e = vec![-1i64; 20];
    ids_e[2] = 1;
    let ents = EntityInput::lookup(&table, &ids_e, 2, 10).unwrap();
    let with = ernie.forward(&ids, &mask, &ents).unwrap();
    let d: f32 = to_vec(&(with.tokens - &plain).unwrap().abs().unwrap())
        .iter()
        .sum();
    assert!(d > 1e-3, "{d}");
}

#[test]
fn an_entity_enters_at_its_first_token_only_and_spreads_downstream() {
    let vs = store(2);
    let one = Ernie::load(cfg(1, 1), &vs).unwrap();
    let two = Ernie::load(cfg(1, 2), &vs).unwrap();
    let (ids, mask) = batch();
    // Sequence 0: one entity aligned to token 3 (its mention spans tokens 3..6), one at token 7.
    let mut ent_ids = vec![-1i64; 20];
    ent_ids[3] = 0;
    ent_ids[7] = 2;
    let table_a = randn(&[3, 8], 5);
    // Table b differs in entity 0's vector only.
    let mut tb = to_vec(&table_a);
    for v in &mut tb[..8] {
        *v += 1.0;
    }
    let table_b = Tensor::from_vec(tb, (3, 8), &Device::Cpu).unwrap();
    let run = |m: &Ernie, table: &Tensor| {
        let e = EntityInput::lookup(table, &ent_ids, 2, 10).unwrap();
        assert_eq!(
            to_vec(&e.mask)[..10],
            [0., 0., 0., 1., 0., 0., 0., 1., 0., 0.]
        );
        to_vec(&m.forward(&ids, &mask, &e).unwrap().tokens)
    };
    let d = 16;
    let diff_rows = |a: &[f32], b: &[f32]| -> Vec<usize> {
        (0..20)
            .filter(|&r| {
                a[r * d..(r + 1) * d]
                    .iter()
                    .zip(&b[r * d..(r + 1) * d])
                    .any(|(x, y)| (x - y).abs() > 1e-6)
            })
            .collect()
    };
    // One aggregator: token attention runs before the fusion, so only token 3's output changes
    // (entity 0's vector also changes the entity attention, whose output is used at token 7).
    let changed = diff_rows(&run(&one, &table_a), &run(&one, &table_b));
    assert_eq!(changed, [3, 7]);
    // Two aggregators: the second layer's token attention spreads it over the whole sequence 0,
    // never to sequence 1.
    let changed = diff_rows(&run(&two, &table_a), &run(&two, &table_b));
    assert_eq!(changed, (0..10).collect::<Vec<_>>());
}

#[test]
fn dea_head_shapes_scaled_gold_and_permutation() {
    let dev = &Device::Cpu;
    // Unit-norm candidates, as TransE's entity vectors are.
    let (b, t, c, k) = (2, 3, 4, 32);
    let raw = randn(&[b, c, k], 6);
    let cands = raw
        .broadcast_div(&raw.sqr().unwrap().sum_keepdim(2).unwrap().sqrt().unwrap())
        .unwrap();
    let cmask = Tensor::from_vec(vec![1f32, 1., 1., 1., 1., 1., 1., 0.], (b, c), dev).unwrap();
    // Gold: seq 0 → candidates 2, (none), 0; seq 1 → 1, 2, (none).
    let gold: [i64; 6] = [2, -100, 0, 1, 2, -100];
    let cv = to_vec(&cands);
    let mut proj = vec![0f32; b * t * k];
    for (r, &g) in gold.iter().enumerate() {
        let s = r / t;
        let g = if g < 0 { 0 } else { g as usize };
        for j in 0..k {
            proj[r * k + j] = 50.0 * cv[(s * c + g) * k + j];
        }
    }
    let proj = Tensor::from_vec(proj, (b, t, k), dev).unwrap();
    let logits = dea_logits(&proj, &cands, &cmask).unwrap();
    assert_eq!(logits.dims(), [b, t, c]);
    let (loss, n) = dea_loss(&logits, &gold).unwrap();
    assert_eq!(n, 4, "unaligned positions never count");
    let l = loss.to_scalar::<f32>().unwrap();
    assert!(l < 1e-3, "{l}");
    assert_eq!(dea_accuracy(&logits, &gold).unwrap(), (4, 4));
    // Permuting the candidates permutes the logits.
    let perm = [3u32, 0, 2, 1];
    let idx = Tensor::new(&perm, dev).unwrap();
    let pc = cands.index_select(&idx, 1).unwrap();
    let pm = Tensor::ones((b, c), DType::F32, dev).unwrap();
    let ones = Tensor::ones((b, c), DType::F32, dev).unwrap();
    let pl = dea_logits(&proj, &pc, &pm).unwrap();
    let want = dea_logits(&proj, &cands, &ones)
        .unwrap()
        .index_select(&idx, 2)
        .unwrap();
    assert_close(&pl, &want, Tol::F32);
    // A hand-computed case: logits (1, 0) and (0, 0) against gold 0 → mean of
    // ln(1 + e^-1) and ln 2.
    let p = Tensor::new(&[[[1f32, 0.0], [0.0, 0.0]]], dev).unwrap();
    let cc = Tensor::new(&[[[1f32, 0.0], [0.0, 1.0]]], dev).unwrap();
    let lg = dea_logits(&p, &cc, &Tensor::ones((1, 2), DType::F32, dev).unwrap()).unwrap();
    let (l, _) = dea_loss(&lg, &[0, 0]).unwrap();
    let want = ((1.0 + (-1f64).exp()).ln() + 2f64.ln()) / 2.0;
    assert!((l.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
    // Padding candidates are never chosen.
    let lg = dea_logits(&p, &cc, &Tensor::new(&[[0f32, 1.0]], dev).unwrap()).unwrap();
    assert_eq!(
        to_vec(&lg.argmax(2).unwrap().to_dtype(DType::F32).unwrap()),
        [1.0, 1.0]
    );
}

#[test]
fn gradients_reach_every_parameter_and_bad_inputs_are_refused() {
    let vs = store(3);
    let ernie = Ernie::load(cfg(1, 1), &vs).unwrap();
    let (ids, mask) = batch();
    let table = randn(&[3, 8], 7);
    let mut ent_ids = vec![-1i64; 20];
    ent_ids[1] = 0;
    ent_ids[4] = 2;
    ent_ids[12] = 1;
    let ents = EntityInput::lookup(&table, &ent_ids, 2, 10).unwrap();
    let out = ernie.forward(&ids, &mask, &ents).unwrap();
    let h = out.tokens.reshape((20, 16)).unwrap();
    let mlm = ernie.mlm_logits(&h).unwrap();
    let proj = ernie.dea_project(&out.tokens).unwrap();
    let cands = table.unsqueeze(0).unwrap().repeat((2, 1, 1)).unwrap();
    let dl = dea_logits(
        &proj,
        &cands,
        &Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let total = (mlm.sqr().unwrap().mean_all().unwrap()
        + dl.sqr().unwrap().mean_all().unwrap()
        + out.entities.sqr().unwrap().mean_all().unwrap())
    .unwrap();
    let grads = total.backward().unwrap();
    let vars = vs.vars();
    assert!(vars.len() > 40);
    for (name, v, _) in &vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        // A key bias adds the same q·b to every score of a query, which softmax cancels: its
        // gradient is zero in exact arithmetic.
        if !name.ends_with("key.bias") {
            assert!(to_vec(g).iter().any(|x| *x != 0.0), "{name}: zero gradient");
        }
    }
    // Wrong entity shapes and ids are errors, not panics.
    assert!(EntityInput::lookup(&table, &[5; 20], 2, 10).is_err());
    assert!(EntityInput::lookup(&table, &[0; 19], 2, 10).is_err());
    let small = EntityInput::lookup(&table, &[0; 10], 1, 10).unwrap();
    let err = ernie.forward(&ids, &mask, &small).unwrap_err().to_string();
    assert!(err.contains("entity input"), "{err}");
    let mut bad = cfg(1, 1);
    bad.entity_heads = 3;
    assert!(
        Ernie::load(bad, &store(1))
            .unwrap_err()
            .to_string()
            .contains("entity_heads")
    );
}
