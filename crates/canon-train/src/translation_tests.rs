use super::*;
use crate::engine::{Engine, step_on_loss};
use crate::optim::{Optimizer, OptimizerConfig, Param};
use crate::schedule::Schedule;
use candle_core::Device;
use canon_models::VarStore;
use canon_models::transformer::TransformerConfig;
use canon_nn::IGNORE_INDEX;

use canon_testkit::write_mo;

fn sample_entries(charset: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let header = format!("Project-Id-Version: x\nContent-Type: text/plain; charset={charset}\n");
    vec![
        (b"".to_vec(), header.into_bytes()),
        (
            b"File not found".to_vec(),
            "Datei nicht gefunden".as_bytes().to_vec(),
        ),
        (b"menu\x04_Open".to_vec(), "Ö_ffnen".as_bytes().to_vec()),
        (
            b"%d file\0%d files".to_vec(),
            b"%d Datei\0%d Dateien".to_vec(),
        ),
        (b"Untranslated".to_vec(), b"".to_vec()),
        (
            b"Usage:  %s\n   [OPTION]".to_vec(),
            b"Aufruf:  %s [OPTION]".to_vec(),
        ),
        (b"snake_case and _x".to_vec(), b"_y".to_vec()),
    ]
}

#[test]
fn mo_files_parse_in_both_byte_orders_and_become_clean_pairs() {
    let e = sample_entries("UTF-8");
    let refs: Vec<(&[u8], &[u8])> = e
        .iter()
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    let want = vec![
        (
            "File not found".to_string(),
            "Datei nicht gefunden".to_string(),
        ),
        ("Open".into(), "Öffnen".into()),
        ("%d file".into(), "%d Datei".into()),
        ("Usage: %s [OPTION]".into(), "Aufruf: %s [OPTION]".into()),
        ("snake_case and _x".into(), "_y".into()),
    ];
    for little in [true, false] {
        let bytes = write_mo(&refs, little);
        assert_eq!(parse_mo(&bytes, "t.mo").unwrap().len(), 7);
        assert_eq!(catalog_pairs(&bytes, "t.mo").unwrap(), want);
    }
}

#[test]
fn latin1_catalogs_decode_by_their_header() {
    let e = vec![
        (
            b"".to_vec(),
            b"Content-Type: text/plain; charset=ISO-8859-1\n".to_vec(),
        ),
        (b"Size".to_vec(), b"Gr\xf6\xdfe".to_vec()),
    ];
    let refs: Vec<(&[u8], &[u8])> = e
        .iter()
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    let pairs = catalog_pairs(&write_mo(&refs, true), "l.mo").unwrap();
    assert_eq!(pairs, vec![("Size".to_string(), "Größe".to_string())]);
    // The same bytes declared UTF-8 are an error naming the file.
    let mut e2 = e.clone();
    e2[0].1 = b"Content-Type: text/plain; charset=UTF-8\n".to_vec();
    let refs: Vec<(&[u8], &[u8])> = e2
        .iter()
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    let err = catalog_pairs(&write_mo(&refs, true), "l.mo")
        .unwrap_err()
        .to_string();
    assert!(err.contains("l.mo") && err.contains("utf-8"), "{err}");
}

#[test]
fn broken_catalogs_are_errors_naming_the_file_and_byte() {
    let e = sample_entries("UTF-8");
    let refs: Vec<(&[u8], &[u8])> = e
        .iter()
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    let good = write_mo(&refs, true);
    let mut bad_magic = good.clone();
    bad_magic[0] = 0;
    let err = parse_mo(&bad_magic, "a.mo").unwrap_err().to_string();
    assert!(
        err.contains("a.mo: byte 0") && err.contains("magic"),
        "{err}"
    );
    let err = parse_mo(&good[..10], "b.mo").unwrap_err().to_string();
    assert!(err.contains("b.mo: byte 8"), "{err}");
    // Cut inside the strings: the first entry whose string runs past the end is named.
    let err = parse_mo(&good[..good.len() - 20], "c.mo")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c.mo: byte ") && err.contains("past the end"),
        "{err}"
    );
    // A table that does not fit.
    let mut huge = good.clone();
    huge[8..12].copy_from_slice(&1_000_000u32.to_le_bytes());
    let err = parse_mo(&huge, "d.mo").unwrap_err().to_string();
    assert!(err.contains("d.mo: byte 8"), "{err}");
    assert!(
        parse_mo(&[], "e.mo")
            .unwrap_err()
            .to_string()
            .contains("e.mo")
    );
}

#[test]
fn splits_are_a_stable_function_of_the_source() {
    // FNV-1a 64 reference values.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    let srcs: Vec<String> = (0..4000).map(|i| format!("sentence {i}")).collect();
    let split: Vec<Split> = srcs.iter().map(|s| split_of(s, 0.05, 0.05)).collect();
    let test = split.iter().filter(|s| **s == Split::Test).count();
    let valid = split.iter().filter(|s| **s == Split::Valid).count();
    assert!(
        (140..260).contains(&test) && (140..260).contains(&valid),
        "{test} {valid}"
    );
    assert_eq!(split_of("sentence 7", 0.05, 0.05), split[7]);
}

#[test]
fn the_catalog_directory_reads_when_present_and_missing_is_an_error() {
    let cfg = TranslationDataConfig {
        locale_dir: "/usr/share/locale".into(),
        language: "de".into(),
        exclude: vec!["iso_".into()],
        vocab_size: 1000,
        valid_fraction: 0.05,
        test_fraction: 0.05,
    };
    if cfg.catalog_dir().is_dir() {
        let c = load_pairs(&cfg).unwrap();
        assert!(c.len() > 100, "{} pairs", c.len());
        assert!(c.catalogs.iter().all(|(n, _)| !n.starts_with("iso_")));
        let srcs: HashSet<&String> = c.train.iter().map(|p| &p.0).collect();
        assert!(c.test.iter().all(|p| !srcs.contains(&p.0)));
    }
    let mut missing = cfg.clone();
    missing.language = "xx-nowhere".into();
    let err = load_pairs(&missing).unwrap_err().to_string();
    assert!(err.contains("xx-nowhere"), "{err}");
}

#[test]
fn inverse_sqrt_schedule_gives_the_papers_values() {
    // docs/papers/01-transformer.md: d = 512, warmup = 4000; our schedule is peak-scaled with
    // step s = index + 1.
    let peak = 512f64.powf(-0.5) * 4000f64.powf(-0.5);
    let s = Schedule::InverseSqrt { warmup: 4000 };
    for (step, want) in [
        (1u64, 1.746928e-07),
        (1000, 1.746928e-04),
        (4000, 6.987712e-04),
        (8000, 4.941059e-04),
        (16000, 3.493856e-04),
    ] {
        let got = s.lr(step - 1, 100_000, peak);
        assert!(
            (got - want).abs() < 1e-6 * want + 1e-12,
            "step {step}: {got} vs {want}"
        );
    }
}

/// Adam(0.9, 0.98, 1e-9) without weight decay, the paper's optimizer.
fn paper_adam(params: &[Param]) -> Optimizer {
    Optimizer::new(
        OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-9,
            weight_decay: 0.0,
        },
        params,
    )
}

fn pairs_for(n: usize) -> Vec<(String, String)> {
    // A tiny "language": German words for digits, in order.
    let en = ["zero", "one", "two", "three", "four", "five"];
    let de = ["null", "eins", "zwei", "drei", "vier", "fünf"];
    let mut rng = SplitMix64::new(3);
    (0..n)
        .map(|_| {
            let k = 1 + rng.below(4);
            let idx: Vec<usize> = (0..k).map(|_| rng.below(6)).collect();
            (
                idx.iter().map(|&i| en[i]).collect::<Vec<_>>().join(" "),
                idx.iter().map(|&i| de[i]).collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

#[test]
fn batches_pad_and_shift_the_target() {
    let tok = train_shared_bpe(&pairs_for(200), 300).unwrap();
    let (pad, bos, eos) = check_specials(&tok).unwrap();
    assert_eq!((pad, bos, eos), (0, 1, 2));
    let (enc, dropped) = encode_pairs(&tok, &pairs_for(50), 64).unwrap();
    assert_eq!((enc.len(), dropped), (50, 0));
    let (_, dropped) = encode_pairs(&tok, &pairs_for(50), 3).unwrap();
    assert!(dropped > 0);
    let items = [
        &Encoded {
            src: vec![5, 6, 2],
            tgt: vec![7, 2],
        },
        &Encoded {
            src: vec![8, 2],
            tgt: vec![9, 10, 11, 2],
        },
    ];
    let b = make_batch(&items, pad, bos).unwrap();
    assert_eq!(
        b.src.to_vec2::<u32>().unwrap(),
        vec![vec![5, 6, 2], vec![8, 2, 0]]
    );
    assert_eq!(
        b.src_mask.to_vec2::<u32>().unwrap(),
        vec![vec![1, 1, 1], vec![1, 1, 0]]
    );
    assert_eq!(
        b.tgt_in.to_vec2::<u32>().unwrap(),
        vec![vec![1, 7, 0, 0], vec![1, 9, 10, 11]]
    );
    let ig = IGNORE_INDEX;
    assert_eq!(b.labels, vec![7, 2, ig, ig, 9, 10, 11, 2]);
    assert_eq!(b.tokens, 11);
    // Length buckets hold neighbours of similar length.
    let lb = LengthBuckets::new(enc);
    let lens: Vec<usize> = lb
        .items
        .iter()
        .map(|e| e.src.len().max(e.tgt.len()))
        .collect();
    assert!(lens.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(lb.sample(&mut SplitMix64::new(1), 8).len(), 8);
}

#[test]
fn a_tiny_transformer_learns_word_translation_with_adam_and_the_warmup() {
    let pairs = pairs_for(300);
    let tok = train_shared_bpe(&pairs, 300).unwrap();
    let (pad, bos, eos) = check_specials(&tok).unwrap();
    let (enc, _) = encode_pairs(&tok, &pairs, 32).unwrap();
    let data = LengthBuckets::new(enc);
    let cfg = TransformerConfig {
        family: Default::default(),
        vocab_size: tok.get_vocab_size(true),
        n_encoder_layers: 1,
        n_decoder_layers: 1,
        d_model: 32,
        n_head: 4,
        d_ff: 64,
        max_seq_len: 32,
        dropout: 0.1,
        norm_eps: 1e-6,
        pad_id: pad,
        bos_id: bos,
        eos_id: eos,
    };
    let store = VarStore::new_random(7, cfg.init_policy());
    let model = Transformer::load(cfg, &store).unwrap();
    let params = Engine::params_of(&store);
    let mut opt = paper_adam(&params);
    let sched = Schedule::InverseSqrt { warmup: 20 };
    let eval: Vec<Batch> = data
        .chunks(64)
        .map(|c| make_batch(&c, pad, bos).unwrap())
        .collect();
    let eval_loss = |m: &Transformer| -> f64 {
        let (mut sum, mut n) = (0.0, 0);
        for b in &eval {
            let (_, ce, k) = batch_loss(m, b, 0.1).unwrap();
            sum += ce * k as f64;
            n += k;
        }
        sum / n as f64
    };
    let before = eval_loss(&model);
    let mut rng = SplitMix64::new(11);
    for step in 0..60 {
        let batch = make_batch(&data.sample(&mut rng, 16), pad, bos).unwrap();
        model.set_noise(Some(rng.next_u64()));
        let (loss, _, _) = batch_loss(&model, &batch, 0.1).unwrap();
        model.set_noise(None);
        step_on_loss(&loss, &params, &mut opt, sched.lr(step, 60, 3e-3), None).unwrap();
    }
    let after = eval_loss(&model);
    assert!(before > 3.0, "untrained loss {before}");
    assert!(after < 0.6 * before, "loss {before} -> {after}");
}

/// Trains a 2+2-layer, d = 64 Transformer on the copy task (random length-10 sequences over 8
/// symbols; vocabulary 11 with pad, bos, eos) and returns (last training loss, greedy sequence
/// accuracy, greedy token accuracy) on 200 fresh sequences.
fn copy_task(unmasked: bool, steps: usize) -> (f64, f64, f64) {
    use canon_models::{Cache, Seq2SeqLm};
    let (pad, bos, eos) = (0u32, 1u32, 2u32);
    let seq = |rng: &mut SplitMix64| -> Vec<u32> {
        let mut s: Vec<u32> = (0..10).map(|_| 3 + rng.below(8) as u32).collect();
        s.push(eos);
        s
    };
    let cfg = TransformerConfig {
        family: Default::default(),
        vocab_size: 11,
        n_encoder_layers: 2,
        n_decoder_layers: 2,
        d_model: 64,
        n_head: 4,
        d_ff: 128,
        max_seq_len: 16,
        dropout: 0.0,
        norm_eps: 1e-6,
        pad_id: pad,
        bos_id: bos,
        eos_id: eos,
    };
    let store = VarStore::new_random(5, cfg.init_policy());
    let mut model = Transformer::load(cfg, &store).unwrap();
    if unmasked {
        model = model.without_causal_mask();
    }
    let params = Engine::params_of(&store);
    let mut opt = paper_adam(&params);
    let sched = Schedule::InverseSqrt { warmup: 100 };
    let mut rng = SplitMix64::new(17);
    let mut last = f64::NAN;
    for step in 0..steps {
        let items: Vec<Encoded> = (0..32)
            .map(|_| {
                let s = seq(&mut rng);
                Encoded {
                    src: s.clone(),
                    tgt: s,
                }
            })
            .collect();
        let refs: Vec<&Encoded> = items.iter().collect();
        let batch = make_batch(&refs, pad, bos).unwrap();
        let (loss, ce, _) = batch_loss(&model, &batch, 0.0).unwrap();
        last = ce;
        step_on_loss(
            &loss,
            &params,
            &mut opt,
            sched.lr(step as u64, steps as u64, 2e-3),
            None,
        )
        .unwrap();
    }
    // Greedy decoding with the KV cache, one sequence at a time.
    let dev = Device::Cpu;
    let (mut exact, mut tok_ok, mut toks) = (0, 0, 0);
    for _ in 0..200 {
        let s = seq(&mut rng);
        let src = Tensor::new(s.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = Tensor::ones((1, s.len()), candle_core::DType::U32, &dev).unwrap();
        let enc = model.encode(&src, &mask).unwrap();
        let mut cache: Cache = model.new_cache();
        let (mut next, mut out) = (bos, Vec::new());
        for _ in 0..s.len() {
            let inp = Tensor::new(&[[next]], &dev).unwrap();
            let logits = model.decode(&enc, &mask, &inp, &mut cache).unwrap();
            let row: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
            next = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap() as u32;
            out.push(next);
            if next == eos {
                break;
            }
        }
        exact += usize::from(out == s);
        tok_ok += out.iter().zip(&s).filter(|(a, b)| a == b).count();
        toks += s.len();
    }
    (last, exact as f64 / 200.0, tok_ok as f64 / toks as f64)
}

/// Paper 1's tier-3 smoke (`cargo test -p canon-train -- --ignored copy_task --nocapture`): the
/// copy task is learned to > 99 % token accuracy, and the negative control without the decoder's
/// causal mask "cheats": its teacher-forced loss falls as low or lower, yet greedy decoding fails.
#[test]
#[ignore]
fn copy_task_is_learned_and_the_unmasked_decoder_cheats() {
    let (loss, seq_acc, tok_acc) = copy_task(false, 600);
    eprintln!(
        "masked:   train loss {loss:.4}, greedy sequence accuracy {seq_acc:.3}, token accuracy {tok_acc:.4}"
    );
    assert!(tok_acc > 0.99, "token accuracy {tok_acc}");
    let (c_loss, c_seq, c_tok) = copy_task(true, 600);
    eprintln!(
        "unmasked: train loss {c_loss:.4}, greedy sequence accuracy {c_seq:.3}, token accuracy {c_tok:.4}"
    );
    assert!(
        c_loss < 0.05,
        "the unmasked decoder should copy its input: loss {c_loss}"
    );
    // Greedy decoding fails without the mask: whole sequences are almost never right (the
    // position-wise token matches stay high, since the model copies some prefix correctly).
    assert!(
        c_seq < 0.2 && c_seq < seq_acc - 0.5,
        "greedy decoding should fail without the mask: sequences {c_seq}, tokens {c_tok}"
    );
}
