//! Tests of AutoPrompt's search and fact readers.

use super::hotflip::with_row;
use super::*;
use candle_core::D;

#[test]
fn templates_parse_render_and_reject_missing_markers() {
    let t = Template::parse("[X] [T] [T] is in [P] .").unwrap();
    assert_eq!(
        t.parts,
        vec![
            Part::Subject,
            Part::Trigger,
            Part::Trigger,
            Part::Text("is in".into()),
            Part::Slot,
            Part::Text(".".into())
        ]
    );
    assert_eq!(t.triggers(), 2);
    assert_eq!(t.render(&["a".into(), "b".into()]), "[X] a b is in [P] .");
    assert!(Template::parse("[T] [P]").is_err());
    assert!(Template::parse("[X] [P] [P]").is_err());
}

/// A masked toy LM over `V` tokens: the slot's logits are `Σ_pos x_pos · A_vᵀ` (a linear
/// read-out of every input vector), so a row of `A` planted on one token's embedding makes
/// that token, anywhere in the prompt, push the slot towards the row's label.
struct Toy {
    table: Tensor,
    a: Tensor,
}

impl SlotLm for Toy {
    fn vocab_size(&self) -> usize {
        self.table.dim(0).unwrap()
    }
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self
            .table
            .index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?)
    }
    fn slot_log_probs(&self, x: &Tensor, _slot: usize) -> Result<Tensor> {
        let s = x.sum(1)?; // [b, d]
        Ok(log_softmax_last(&s.matmul(&self.a.t()?)?)?)
    }
    fn mask_id(&self) -> Option<u32> {
        Some(0)
    }
    fn frame(&self) -> (Vec<u32>, Vec<u32>) {
        (vec![1], vec![2])
    }
}

fn unit_rows(v: usize, d: usize, seed: u64) -> Tensor {
    let t = canon_testkit::randn(&[v, d], seed);
    let n = t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    t.broadcast_div(&n).unwrap()
}

#[test]
fn a_planted_trigger_is_found_and_makes_the_toy_mlm_predict_the_label() {
    let (v, d) = (60usize, 24usize);
    let label = 5u32;
    let planted = 42u32;
    let table = unit_rows(v, d, 3);
    // Every read-out row small and random, except the label's: it points at the planted token.
    let mut a = (canon_testkit::randn(&[v, d], 4) * 0.3).unwrap();
    let e_planted = table.get(planted as usize).unwrap();
    let rows: Vec<Tensor> = (0..v)
        .map(|i| {
            if i == label as usize {
                (&e_planted * 6.0).unwrap()
            } else {
                a.get(i).unwrap()
            }
        })
        .collect();
    a = Tensor::stack(&rows, 0).unwrap();
    let lm = Toy { table, a };
    let template = Template::parse("[X] [T] [T] [P] .").unwrap();
    let encode =
        |s: &str, _: bool| -> Result<Vec<u32>> { Ok(if s == "." { vec![3] } else { vec![] }) };
    let prompt = compile(&template, &lm, &encode).unwrap();
    // Subjects are tokens 10..40; every fact's object is the label.
    let facts: Vec<EncodedFact> = (10..40)
        .map(|s| EncodedFact {
            subject: vec![s],
            label,
        })
        .collect();
    let (train, dev, test) = (&facts[..16], &facts[16..20], &facts[20..]);
    let exclude: BTreeSet<u32> = [0, 1, 2, 3, label].into_iter().collect();
    let init = [0u32, 0];
    let objects: Vec<u32> = (4..10).collect();
    let before = precision_at_1(&lm, &prompt, test, &init, &objects, &mut |_| {}).unwrap();
    let cfg = SearchConfig {
        steps: 4,
        batch_size: 4,
        accumulation: 2,
        candidates: 5,
        seed: 0,
    };
    let r = search(&lm, &prompt, train, dev, &init, &exclude, &cfg, &mut |_| {}).unwrap();
    // The dev set picked the triggers returned: the best dev log-likelihood of the steps that
    // changed a trigger, and no dev score on a step that changed nothing.
    let devs: Vec<f64> = r.history.iter().filter_map(|s| s.dev).collect();
    assert!(!devs.is_empty());
    assert_eq!(r.dev, devs.iter().copied().reduce(f64::max));
    assert!(
        r.history
            .iter()
            .all(|s| s.dev.is_some() == (s.from != s.to))
    );
    let dev_ll = mean_log_likelihood(&lm, &prompt, dev, &r.triggers).unwrap();
    assert!((dev_ll - r.dev.unwrap()).abs() < 1e-9);
    assert!(
        r.triggers.contains(&planted),
        "triggers {:?} miss the planted token {planted}",
        r.triggers
    );
    for s in &r.history {
        assert!(
            s.after >= s.before,
            "a step lowered the batch likelihood: {s:?}"
        );
        // A rejected step leaves the trigger as it was.
        if s.after == s.before {
            assert_eq!(s.from, s.to, "{s:?}");
        }
    }
    let after = precision_at_1(&lm, &prompt, test, &r.triggers, &objects, &mut |_| {}).unwrap();
    assert!(
        before.vocabulary < 1.0,
        "the label wins without the trigger"
    );
    assert_eq!(after.vocabulary, 1.0);
    assert_eq!(after.objects, 1.0);
}

fn tiny_llama() -> Box<dyn canon_models::TrainableLm> {
    use canon_models::family::{LlamaTrainConfig, ModelConfig};
    let cfg = ModelConfig::Llama(LlamaTrainConfig {
        vocab_size: 40,
        n_layer: 2,
        n_head: 4,
        n_kv_head: Some(2),
        d_model: 16,
        d_ff: None,
        multiple_of: Some(8),
        max_seq_len: 32,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_embeddings: false,
        init_std: 0.3,
    });
    cfg.build(&canon_models::VarStore::new_random(11, cfg.init_policy()))
        .unwrap()
}

#[test]
fn running_from_input_embeddings_equals_running_from_ids() {
    let ids = Tensor::new(&[[3u32, 9, 1, 30, 7]], &Device::Cpu).unwrap();
    // LLaMA (SmolLM2's family), through the causal slot.
    let m = tiny_llama();
    let by_ids = m.forward(&ids, &mut m.new_cache(), Positions::All).unwrap();
    let x = m.embed(&ids).unwrap();
    let by_x = m
        .forward_embeds(&x, &mut m.new_cache(), Positions::All)
        .unwrap();
    canon_testkit::assert_close(&by_x, &by_ids, canon_testkit::Tol::EXACT);
    // BERT with its MLM head, through the masked slot.
    let cfg = canon_models::BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        hidden_act: canon_nn::Activation::Gelu,
        layer_norm_eps: 1e-12,
        max_position_embeddings: 16,
        type_vocab_size: 2,
    };
    let store =
        canon_models::VarStore::new_random(5, canon_models::bert_heads::bert_init_policy(0.02));
    let bert = BertPretraining::load(cfg, &store, false).unwrap();
    let mask = Tensor::ones((1, 5), DType::U32, &Device::Cpu).unwrap();
    let by_ids = bert.bert.forward_composed(&ids, None, &mask).unwrap();
    let lm = MaskedSlot {
        model: &bert,
        cls: 1,
        sep: 2,
        mask: 3,
    };
    let x = lm.embed(&[3, 9, 1, 30, 7]).unwrap().unsqueeze(0).unwrap();
    let by_x = bert.bert.forward_embeds(&x, None, &mask).unwrap();
    canon_testkit::assert_close(&by_x, &by_ids, canon_testkit::Tol::EXACT);
    let lp = lm.slot_log_probs(&x, 2).unwrap();
    let direct = bert
        .mlm
        .forward(&by_ids.narrow(1, 2, 1).unwrap().reshape((1, 16)).unwrap())
        .unwrap();
    let p: f32 = lp.exp().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!((p - 1.0).abs() < 1e-5);
    let (a, b) = (
        lp.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap(),
        direct.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap(),
    );
    assert_eq!(a, b);
}

/// A toy whose label log-likelihood is exactly linear in the input vectors (no
/// normalisation): `score_v = Σ_pos x_pos · A_v`.
struct Linear {
    table: Tensor,
    a: Tensor,
}

impl SlotLm for Linear {
    fn vocab_size(&self) -> usize {
        self.table.dim(0).unwrap()
    }
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self
            .table
            .index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?)
    }
    fn slot_log_probs(&self, x: &Tensor, _slot: usize) -> Result<Tensor> {
        Ok(x.sum(1)?.matmul(&self.a.t()?)?)
    }
    fn mask_id(&self) -> Option<u32> {
        Some(0)
    }
    fn frame(&self) -> (Vec<u32>, Vec<u32>) {
        (vec![], vec![])
    }
}

#[test]
fn on_a_linear_toy_the_top_candidate_is_the_exact_best_and_the_sign_matters() {
    let lm = Linear {
        table: canon_testkit::randn(&[30, 8], 21),
        a: canon_testkit::randn(&[30, 8], 22),
    };
    let prompt = compile(
        &Template::parse("[X] [T] [P]").unwrap(),
        &lm,
        &|_: &str, _: bool| Ok(vec![]),
    )
    .unwrap();
    let facts = [
        EncodedFact {
            subject: vec![4],
            label: 7,
        },
        EncodedFact {
            subject: vec![9],
            label: 7,
        },
    ];
    let batch: Vec<&EncodedFact> = facts.iter().collect();
    let (g, _) = trigger_gradient(&lm, &prompt, &batch, &[1], 0).unwrap();
    let table = embedding_table(&lm).unwrap();
    let scores = first_order_scores(&table, 1, &g).unwrap();
    let all: Vec<u32> = (0..30).collect();
    let exact = score_options(&lm, &prompt, &batch, &[1], 0, &all).unwrap();
    let argmax = |v: &[f64]| (0..v.len()).max_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap() as u32;
    let argmin = |v: &[f64]| (0..v.len()).min_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap() as u32;
    let none = BTreeSet::new();
    // The exact best replacement (the current token 1 is not a candidate; it is not the best
    // here) is the top HotFlip candidate.
    assert_ne!(argmax(&exact), 1);
    assert_eq!(top_candidates(&scores, 1, &none, 1), vec![argmax(&exact)]);
    // The opposite sign (descending the likelihood) selects the exact worst instead.
    let flipped: Vec<f32> = scores.iter().map(|x| -x).collect();
    assert_eq!(top_candidates(&flipped, 1, &none, 1), vec![argmin(&exact)]);
}

#[test]
fn capitalised_pieces_are_recognised_for_the_filter() {
    assert!(is_capitalised(" Hello"));
    assert!(is_capitalised("ĠHello"));
    assert!(is_capitalised("World"));
    assert!(!is_capitalised(" hello"));
    assert!(!is_capitalised("##ing"));
    assert!(!is_capitalised("('.')"));
}

#[test]
fn candidate_ranking_equals_an_explicit_first_order_estimate_on_a_tiny_causal_lm() {
    let model = tiny_llama();
    let lm = CausalSlot(model.as_ref());
    let template = Template::parse("[X] [T] is [P]").unwrap();
    let encode = |_: &str, _: bool| -> Result<Vec<u32>> { Ok(vec![7]) };
    let prompt = compile(&template, &lm, &encode).unwrap();
    let facts = [
        EncodedFact {
            subject: vec![12, 13],
            label: 30,
        },
        EncodedFact {
            subject: vec![21],
            label: 31,
        },
    ];
    let batch: Vec<&EncodedFact> = facts.iter().collect();
    let triggers = [5u32];
    let (g, ll) = trigger_gradient(&lm, &prompt, &batch, &triggers, 0).unwrap();
    let table = embedding_table(&lm).unwrap();
    let scores = first_order_scores(&table, 5, &g).unwrap();
    // The explicit estimate: the directional derivative of the mean log-likelihood along
    // e_w − e_cur by central differences, with the trigger's input vector moved by hand.
    let mean_ll = |v: &Tensor| -> f64 {
        let mut s = 0.0;
        for f in &facts {
            let a = prompt.assemble(&lm, f, &triggers);
            let emb = lm.embed(&a.ids).unwrap();
            let x = with_row(&emb, a.trigger_pos[0], v)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let lp = lm.slot_log_probs(&x, a.slot).unwrap();
            s += lp
                .get(0)
                .unwrap()
                .get(f.label as usize)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
        }
        s / facts.len() as f64
    };
    let e_cur = table.narrow(0, 5, 1).unwrap();
    assert!((mean_ll(&e_cur) - ll).abs() < 1e-5);
    let h = 3e-3;
    let mut explicit = Vec::new();
    for w in 0..40usize {
        let dir = (table.narrow(0, w, 1).unwrap() - &e_cur).unwrap();
        let plus = (&e_cur + (&dir * h).unwrap()).unwrap();
        let minus = (&e_cur - (&dir * h).unwrap()).unwrap();
        explicit.push(((mean_ll(&plus) - mean_ll(&minus)) / (2.0 * h)) as f32);
    }
    canon_testkit::assert_close(
        &Tensor::new(scores.as_slice(), &Device::Cpu).unwrap(),
        &Tensor::new(explicit.as_slice(), &Device::Cpu).unwrap(),
        canon_testkit::Tol::new(5e-3, 1e-2),
    );
    let none = BTreeSet::new();
    let k = 8;
    assert_eq!(
        top_candidates(&scores, k, &none, 5),
        top_candidates(&explicit, k, &none, 5)
    );
    // Excluded ids and the current trigger are never candidates.
    let ex: BTreeSet<u32> = top_candidates(&scores, 2, &none, 5).into_iter().collect();
    let rest = top_candidates(&scores, k, &ex, 5);
    assert!(rest.iter().all(|i| !ex.contains(i) && *i != 5));
}

#[test]
fn stdlib_and_man_facts_are_read_and_ambiguous_names_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("alpha.py"),
        "def load(x):\n    pass\ndef _hidden():\n    def inner(): pass\ndef shared(): pass\n",
    )
    .unwrap();
    std::fs::write(p.join("beta.py"), "def shared(): pass\ndef dump(a, b):\n").unwrap();
    std::fs::write(p.join("_private.py"), "def secret(): pass\n").unwrap();
    let f = stdlib_function_facts(p).unwrap();
    let pairs: Vec<(&str, &str)> = f
        .iter()
        .map(|f| (f.subject.as_str(), f.object.as_str()))
        .collect();
    assert_eq!(pairs, vec![("dump", "beta"), ("load", "alpha")]);
    let man = p.join("man");
    std::fs::create_dir_all(man.join("man1")).unwrap();
    std::fs::create_dir_all(man.join("man8")).unwrap();
    std::fs::write(man.join("man1/ls.1.gz"), "").unwrap();
    std::fs::write(man.join("man8/mount.8.gz"), "").unwrap();
    std::fs::write(man.join("man1/both.1.gz"), "").unwrap();
    std::fs::write(man.join("man8/both.8.gz"), "").unwrap();
    let m = man_section_facts(&man).unwrap();
    let pairs: Vec<(&str, &str)> = m
        .iter()
        .map(|f| (f.subject.as_str(), f.object.as_str()))
        .collect();
    assert_eq!(pairs, vec![("ls", "1"), ("mount", "8")]);
    assert!(man_section_facts(&p.join("nowhere")).is_err());
}

#[test]
fn split_is_by_fact_balanced_and_seeded() {
    let facts: Vec<EncodedFact> = (0..50)
        .map(|i| EncodedFact {
            subject: vec![i],
            label: if i < 40 { 1 } else { 2 },
        })
        .collect();
    let (tr, te) = balance_and_split(&facts, |f| f.label, 10, 0.25, 7);
    assert_eq!(tr.len() + te.len(), 20);
    assert_eq!(te.len(), 5);
    assert!(tr.iter().all(|f| !te.contains(f)));
    assert_eq!(balance_and_split(&facts, |f| f.label, 10, 0.25, 7).1, te);
}

#[test]
fn causal_templates_must_end_at_the_slot() {
    struct C;
    impl SlotLm for C {
        fn vocab_size(&self) -> usize {
            4
        }
        fn embed(&self, _: &[u32]) -> Result<Tensor> {
            unreachable!()
        }
        fn slot_log_probs(&self, _: &Tensor, _: usize) -> Result<Tensor> {
            unreachable!()
        }
        fn mask_id(&self) -> Option<u32> {
            None
        }
        fn frame(&self) -> (Vec<u32>, Vec<u32>) {
            (vec![], vec![])
        }
    }
    let enc = |_: &str, _: bool| -> Result<Vec<u32>> { Ok(vec![1]) };
    let t = Template::parse("[X] [T] [P] .").unwrap();
    assert!(compile(&t, &C, &enc).is_err());
    let t = Template::parse("[X] [T] is [P]").unwrap();
    let p = compile(&t, &C, &enc).unwrap();
    let a = p.assemble(
        &C,
        &EncodedFact {
            subject: vec![2, 3],
            label: 0,
        },
        &[9],
    );
    assert_eq!(a.ids, vec![2, 3, 9, 1]);
    assert_eq!(a.trigger_pos, vec![2]);
    assert_eq!(a.slot, 3);
}

#[test]
fn batches_of_prompts_compute_what_fact_by_fact_runs_compute() {
    let model = tiny_llama();
    let lm = CausalSlot(model.as_ref());
    let template = Template::parse("[X] [T] is [T] [P]").unwrap();
    let encode = |_: &str, _: bool| -> Result<Vec<u32>> { Ok(vec![7]) };
    let prompt = compile(&template, &lm, &encode).unwrap();
    // Two lengths of subject, so two groups, one of them of several facts, in mixed order.
    let subjects: [&[u32]; 6] = [&[12, 13], &[21], &[14, 15], &[22], &[16, 17], &[23]];
    let facts: Vec<EncodedFact> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| EncodedFact {
            subject: s.to_vec(),
            label: 30 + i as u32,
        })
        .collect();
    let batch: Vec<&EncodedFact> = facts.iter().collect();
    let triggers = [5u32, 9];
    let options = [9u32, 33, 34, 5];
    let tol = canon_testkit::Tol::new(1e-5, 1e-4);
    let (g, ll) = trigger_gradients(&lm, &prompt, &batch, &triggers).unwrap();
    let lls = score_options(&lm, &prompt, &batch, &triggers, 1, &options).unwrap();
    let scores = evaluate(&lm, &prompt, &facts, &triggers, &[30, 31, 32], &mut |_| {}).unwrap();
    let (mut g1, mut ll1, mut lls1) = (Vec::new(), 0.0, vec![0.0; options.len()]);
    for (i, f) in facts.iter().enumerate() {
        let (gi, li) = trigger_gradients(&lm, &prompt, &[f], &triggers).unwrap();
        g1.push(gi);
        ll1 += li / facts.len() as f64;
        let o = score_options(&lm, &prompt, &[f], &triggers, 1, &options).unwrap();
        for (t, v) in lls1.iter_mut().zip(o) {
            *t += v / facts.len() as f64;
        }
        // Each fact's score lands in its own place, whatever group it ran in.
        let one = evaluate(
            &lm,
            &prompt,
            &facts[i..=i],
            &triggers,
            &[30, 31, 32],
            &mut |_| {},
        );
        let one = one.unwrap()[0];
        assert!((one.log_prob - scores[i].log_prob).abs() < 1e-4, "fact {i}");
        assert_eq!(
            (one.vocabulary, one.objects),
            (scores[i].vocabulary, scores[i].objects)
        );
    }
    let mean_g = (Tensor::stack(&g1, 0).unwrap().sum(0).unwrap() / facts.len() as f64).unwrap();
    assert_eq!(g.dims(), &[2, 16]);
    canon_testkit::assert_close(&g, &mean_g, tol);
    assert!((ll - ll1).abs() < 1e-4, "{ll} vs {ll1}");
    for (a, b) in lls.iter().zip(&lls1) {
        assert!((a - b).abs() < 1e-4, "{lls:?} vs {lls1:?}");
    }
    // The current trigger's option is the mean log-likelihood itself.
    assert!((lls[0] - ll).abs() < 1e-4);
    let m = mean_log_likelihood(&lm, &prompt, &facts, &triggers).unwrap();
    assert!((m - ll).abs() < 1e-4);
}
