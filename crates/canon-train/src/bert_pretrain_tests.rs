use super::*;
use crate::bert_data::train_wordpiece;
use crate::data::Corpus;
use crate::optim::OptimizerConfig;
use canon_models::VarStore;
use canon_models::bert_heads::{BertTrainConfig, bert_init_policy};
use canon_nn::Activation;

/// Documents of a tiny regular language: each sentence is "<subject> <verb> <object>." with the
/// verb determined by the subject, so masked verbs are predictable from context.
pub(crate) fn regular_corpus() -> Corpus {
    let subj = ["cats", "dogs", "birds", "fish"];
    let verb = ["chase", "bite", "watch", "follow"];
    let obj = ["mice", "sticks", "worms", "boats", "leaves"];
    let mut rng = SplitMix64::new(2);
    let docs = (0..24)
        .map(|_| {
            (0..8)
                .map(|_| {
                    let s = rng.below(4);
                    format!("{} {} {}.", subj[s], verb[s], obj[rng.below(5)])
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    Corpus {
        name: "regular".into(),
        docs,
    }
}

pub(crate) fn tiny_cfg(vocab: usize) -> canon_models::BertConfig {
    BertTrainConfig {
        vocab_size: vocab,
        n_layer: 1,
        n_head: 2,
        d_model: 32,
        d_ff: Some(64),
        max_seq_len: 32,
        type_vocab_size: 2,
        activation: Activation::Gelu,
        layer_norm_eps: 1e-12,
        init_std: 0.02,
    }
    .to_bert()
}

#[test]
fn mlm_and_nsp_losses_fall_and_eval_reports_every_metric() {
    let c = regular_corpus();
    let tok = train_wordpiece(&c.docs, 100).unwrap();
    let sp = Specials::of(&tok).unwrap();
    let data = SentenceData::encode(&tok, &c, 0.2).unwrap();
    let store = VarStore::new_random(1, bert_init_policy(0.02));
    let model = BertPretraining::load(tiny_cfg(tok.get_vocab_size(true)), &store, true).unwrap();
    let pairs = PairConfig {
        max_len: 32,
        short_seq_prob: 0.1,
        pairs: true,
    };
    let mut obj =
        BertPretrain::new(model, data, sp, pairs, MlmConfig::default(), 16, 2, 9).unwrap();
    let before = obj.eval_metrics().unwrap();
    let names: Vec<&str> = before.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "eval_loss",
            "eval_mlm_loss",
            "eval_mlm_accuracy",
            "eval_nsp_loss",
            "eval_nsp_accuracy"
        ]
    );
    // At initialisation the MLM loss is about log(vocab) and NSP about log 2.
    let v = obj.vocab as f64;
    assert!((before[1].1 - v.ln()).abs() < 0.5, "{before:?}");
    assert!((before[3].1 - 2f64.ln()).abs() < 0.2, "{before:?}");
    let params = params_of(&store);
    let mut opt = Optimizer::new(OptimizerConfig::default(), &params);
    let mut rng = SplitMix64::new(4);
    for _ in 0..60 {
        let mb = obj.micro_batch(&mut rng).unwrap();
        assert!(mb.tokens > 0 && mb.extra.len() == 2);
        optimizer_step(&mb.total, &params, &mut opt, 3e-3, Some(1.0)).unwrap();
    }
    let after = obj.eval_metrics().unwrap();
    assert!(after[1].1 < before[1].1 - 1.0, "{before:?} -> {after:?}");
    assert!(after[2].1 > 0.3, "{after:?}");
}
