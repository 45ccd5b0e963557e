//! LoRA and QLoRA over the tiny model: adapters start at the base and fit a record, settings are
//! checked, checkpointing replays the losses, and the 50-step curves match the recorded ones.

use candle_core::{DType, Device, Tensor};
use canon_models::{LoadedLm, Positions, WeightMode};
use canon_nn::SplitMix64;
use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};
use canon_testkit::{Tol, assert_close};

use super::lora::{LoraSpec, SftObjective, attach, parse_targets, requantize_nf4};
use super::tests::tiny_lm;
use super::*;
use crate::optim::{Optimizer, OptimizerConfig};

fn logits(lm: &LoadedLm, ids: &[u32]) -> Tensor {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    lm.model
        .forward(&x, &mut lm.model.new_cache(), Positions::All)
        .unwrap()
        .detach()
}

fn dense_weights(lm: &mut LoadedLm) -> Vec<Vec<f32>> {
    lm.model
        .linear_names()
        .iter()
        .map(|n| {
            lm.model
                .linear_mut(n)
                .unwrap()
                .weight
                .to_dense()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

/// Trains a few AdamW steps on one record and returns (first loss, last loss).
fn fit(obj: &mut SftObjective, steps: usize) -> (f64, f64) {
    let params = obj.lora.params();
    let mut opt = Optimizer::new(
        OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        &params,
    );
    let mut rng = SplitMix64::new(3);
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for s in 0..steps {
        let l = obj.train_loss(&mut rng).unwrap();
        if s == 0 {
            first = l.loss;
        }
        last = l.loss;
        let g = l.total.backward().unwrap();
        let grads: Vec<Vec<f32>> = params
            .iter()
            .map(|p| {
                g.get(p.var.as_tensor())
                    .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
                    .unwrap_or_else(|| vec![0.0; p.var.elem_count()])
            })
            .collect();
        opt.step(&params, &grads, 3e-2).unwrap();
    }
    (first, last)
}

#[test]
fn lora_starts_at_the_base_model_trains_only_adapters_and_fits_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny_lm(dir.path());
    let ids = [5u32, 9, 40, 3];
    let base = logits(&lm, &ids);
    let before = dense_weights(&mut lm);
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: parse_targets("q,v").unwrap(),
        seed: 1,
        dropout: 0.0,
    };
    let set = attach(lm.model.as_mut(), &spec).unwrap();
    // 2 layers × (q: 4·(16+16), v: 4·(16+8)).
    assert_eq!(set.modules.len(), 4);
    assert_eq!(set.num_params(), 2 * (4 * 32 + 4 * 24));
    // B = 0: the adapted model's logits equal the base model's.
    let adapted = logits(&lm, &ids);
    // (The adapters are variables, so the model runs its composed training path rather than the
    // fused inference kernels: equal within f32 rounding; Linear's own test checks bitwise.)
    assert_close(&adapted, &base, Tol::new(1e-5, 1e-5));
    let rec = Record::Completion {
        prompt: "Q: reverse abc".into(),
        completion: " A: cba".into(),
    };
    let ex = encode_record(&rec, &lm.tokenizer, None, 64)
        .unwrap()
        .unwrap();
    let mut obj = SftObjective {
        model: lm.model,
        lora: set,
        train: vec![ex.clone()],
        eval: vec![ex],
        batch_size: 2,
        pad: 0,
        eval_batches: 0,
    };
    // Gradients exist for A and B only: the base weights are not variables at all.
    let l = obj.train_loss(&mut SplitMix64::new(1)).unwrap();
    let g = l.total.backward().unwrap();
    for m in &obj.lora.modules {
        assert!(g.get(m.a.as_tensor()).is_some() && g.get(m.b.as_tensor()).is_some());
    }
    let e0 = obj.eval_loss().unwrap();
    assert!((e0 - l.loss).abs() < 1e-4, "{e0} vs {}", l.loss);
    let (first, last) = fit(&mut obj, 30);
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    assert!(obj.eval_loss().unwrap() < 0.8 * e0);
    // The base weights are bitwise unchanged.
    let mut lm2 = LoadedLm {
        model: obj.model,
        ..tiny_lm(dir.path())
    };
    assert_eq!(dense_weights(&mut lm2), before);
    // The adapter as PEFT writes it.
    let ad = obj.lora.to_adapter().unwrap();
    assert_eq!((ad.rank, ad.scale), (4, 2.0));
    assert!(ad.modules.contains_key("model.layers.1.self_attn.v_proj"));
}

#[test]
fn qlora_over_nf4_starts_at_the_quantized_base_and_fits_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny_lm(dir.path());
    let bytes = requantize_nf4(lm.model.as_mut()).unwrap();
    assert!(bytes > 0);
    let first = lm.model.linear_names()[0].clone();
    assert!(matches!(
        lm.model.linear_mut(&first).unwrap().weight,
        canon_nn::Weight::Nf4(_)
    ));
    let ids = [7u32, 8, 9];
    let base = logits(&lm, &ids);
    let spec = LoraSpec {
        rank: 2,
        alpha: 4.0,
        targets: parse_targets("all").unwrap(),
        seed: 2,
        dropout: 0.0,
    };
    let set = attach(lm.model.as_mut(), &spec).unwrap();
    assert_eq!(set.modules.len(), 14);
    let adapted = logits(&lm, &ids);
    // (The adapters are variables, so the model runs its composed training path rather than the
    // fused inference kernels: equal within f32 rounding; Linear's own test checks bitwise.)
    assert_close(&adapted, &base, Tol::new(1e-5, 1e-5));
    let rec = Record::Completion {
        prompt: "Q: reverse xyz".into(),
        completion: " A: zyx".into(),
    };
    let ex = encode_record(&rec, &lm.tokenizer, None, 64)
        .unwrap()
        .unwrap();
    let mut obj = SftObjective {
        model: lm.model,
        lora: set,
        train: vec![ex.clone()],
        eval: vec![ex],
        batch_size: 1,
        pad: 0,
        eval_batches: 0,
    };
    let (first, last) = fit(&mut obj, 30);
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    assert_eq!(
        obj.lora.modules[0].a.dtype(),
        DType::F32,
        "adapters stay in f32"
    );
}

#[test]
fn bad_adapter_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny_lm(dir.path());
    let e = parse_targets("q,zz").unwrap_err().to_string();
    assert!(e.contains("unknown module 'zz'"), "{e}");
    assert!(parse_targets(" , ").is_err());
    let spec = LoraSpec {
        rank: 0,
        alpha: 8.0,
        targets: vec!["q_proj".into()],
        seed: 1,
        dropout: 0.0,
    };
    let e = attach(lm.model.as_mut(), &spec).unwrap_err().to_string();
    assert!(e.contains("rank must be at least 1"), "{e}");
}

/// The per-step losses of `steps` AdamW steps (batches drawn from a fixed seed).
fn loss_curve(obj: &mut SftObjective, steps: usize) -> Vec<f64> {
    let params = obj.lora.params();
    let mut opt = Optimizer::new(
        OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        &params,
    );
    let mut rng = SplitMix64::new(5);
    let mut out = Vec::new();
    for _ in 0..steps {
        let l = obj.train_loss(&mut rng).unwrap();
        out.push(l.loss);
        let g = l.total.backward().unwrap();
        let grads: Vec<Vec<f32>> = params
            .iter()
            .map(|p| {
                let t = g
                    .get(p.var.as_tensor())
                    .expect("an adapter without a gradient");
                t.flatten_all().unwrap().to_vec1().unwrap()
            })
            .collect();
        opt.step(&params, &grads, 3e-2).unwrap();
    }
    out
}

/// `--checkpointing`: every block recomputed in the backward gives the losses of the ordinary
/// run, step after step (LoRA over f32, LoRA over the GGUF blocks kept quantized, QLoRA over
/// NF4), and refuses LoRA dropout, which it cannot replay.
#[test]
fn checkpointing_gives_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    write_tiny_llama(&p, &TinyLlama::default()).unwrap();
    let records = [
        ("Q: reverse abc", " A: cba"),
        ("Q: upper xy", " A: XY"),
        ("Q: double 7", " A: 14"),
    ];
    let run = |mode: WeightMode, nf4: bool, checkpointing: bool| -> Vec<f64> {
        let mut lm = canon_models::load::load_gguf_lm(&p, mode).unwrap();
        if nf4 {
            requantize_nf4(lm.model.as_mut()).unwrap();
        }
        let spec = LoraSpec {
            rank: 4,
            alpha: 8.0,
            targets: parse_targets("all").unwrap(),
            seed: 1,
            dropout: 0.0,
        };
        let set = attach(lm.model.as_mut(), &spec).unwrap();
        lm.model.set_checkpointing(checkpointing).unwrap();
        let train = records
            .iter()
            .map(|(p, c)| {
                let rec = Record::Completion {
                    prompt: (*p).into(),
                    completion: (*c).into(),
                };
                encode_record(&rec, &lm.tokenizer, None, 64)
                    .unwrap()
                    .unwrap()
            })
            .collect::<Vec<_>>();
        let mut obj = SftObjective {
            model: lm.model,
            lora: set,
            eval: train.clone(),
            train,
            batch_size: 2,
            pad: 0,
            eval_batches: 0,
        };
        let curve = loss_curve(&mut obj, 8);
        // Evaluation (no gradients) runs the blocks plainly.
        assert!(obj.eval_loss().unwrap().is_finite());
        curve
    };
    for (mode, nf4) in [
        (WeightMode::DequantizeF32, false),
        (WeightMode::KeepQuantized, false),
        (WeightMode::KeepQuantized, true),
    ] {
        let plain = run(mode, nf4, false);
        let ckpt = run(mode, nf4, true);
        assert!(plain[7] < plain[0], "{plain:?}");
        for (a, b) in plain.iter().zip(&ckpt) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "{plain:?} vs {ckpt:?}"
            );
        }
    }
    // LoRA dropout draws fresh noise each pass: refused.
    let mut lm = tiny_lm(dir.path());
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: parse_targets("q").unwrap(),
        seed: 1,
        dropout: 0.1,
    };
    let set = attach(lm.model.as_mut(), &spec).unwrap();
    set.noise.set(Some(3));
    lm.model.set_checkpointing(true).unwrap();
    let x = Tensor::new(&[[5u32, 9, 40, 3]], &Device::Cpu).unwrap();
    let e = lm
        .model
        .forward(&x, &mut lm.model.new_cache(), Positions::All)
        .unwrap_err();
    assert!(e.to_string().contains("cannot replay LoRA dropout"), "{e}");
}

/// 50 AdamW steps of LoRA (all seven projections) over the tiny model on a fixed seed: the base
/// dequantized to f32 and the base re-quantized to NF4 (QLoRA, whose input gradient runs through
/// the tiled dequantizing product). The curves must stay those of the implementation before the
/// speed work of issue 24 (recorded below from that build): the speed-ups change no arithmetic
/// beyond summation order, so every step's loss agrees to `CURVE_TOL` relative on a CPU of the
/// recording's kind, and the first `EXACT_STEPS` do on any (see `EXACT_STEPS`).
#[test]
fn fifty_step_loss_curves_match_the_recorded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    write_tiny_llama(&p, &TinyLlama::default()).unwrap();
    let records = [
        ("Q: reverse abc", " A: cba"),
        ("Q: upper xy", " A: XY"),
        ("Q: double 7", " A: 14"),
        ("Q: first of hello", " A: h"),
    ];
    let run = |mode: WeightMode, nf4: bool| -> Vec<f64> {
        let mut lm = canon_models::load::load_gguf_lm(&p, mode).unwrap();
        if nf4 {
            requantize_nf4(lm.model.as_mut()).unwrap();
        }
        let spec = LoraSpec {
            rank: 4,
            alpha: 8.0,
            targets: parse_targets("all").unwrap(),
            seed: 3,
            dropout: 0.0,
        };
        let set = attach(lm.model.as_mut(), &spec).unwrap();
        let train = records
            .iter()
            .map(|(p, c)| {
                let rec = Record::Completion {
                    prompt: (*p).into(),
                    completion: (*c).into(),
                };
                encode_record(&rec, &lm.tokenizer, None, 64)
                    .unwrap()
                    .unwrap()
            })
            .collect::<Vec<_>>();
        let mut obj = SftObjective {
            model: lm.model,
            lora: set,
            eval: train.clone(),
            train,
            batch_size: 2,
            pad: 0,
            eval_batches: 0,
        };
        loss_curve(&mut obj, 50)
    };
    let f32_curve = run(WeightMode::DequantizeF32, false);
    let nf4_curve = run(WeightMode::KeepQuantized, true);
    if std::env::var_os("CANON_PRINT_CURVES").is_some() {
        println!("f32 {f32_curve:?}\nnf4 {nf4_curve:?}");
    }
    for (name, got, want) in [
        ("f32", &f32_curve, &RECORDED_F32[..]),
        ("nf4", &nf4_curve, &RECORDED_NF4[..]),
    ] {
        assert_eq!(got.len(), want.len());
        assert!(
            got[49] < 0.7 * got[0],
            "{name}: the run did not learn: {got:?}"
        );
        let dev = |a: &f64, b: &f64| (a - b).abs() / b.abs().max(1.0);
        if std::env::var_os("CANON_PRINT_CURVES").is_some() {
            let worst = |r: std::ops::Range<usize>| {
                got[r.clone()]
                    .iter()
                    .zip(&want[r])
                    .map(|(a, b)| dev(a, b))
                    .fold(0.0f64, f64::max)
            };
            println!(
                "{name}: largest relative deviation {:.2e} over the first {EXACT_STEPS} steps, {:.2e} over all",
                worst(0..EXACT_STEPS),
                worst(0..got.len())
            );
        }
        for (step, (a, b)) in got.iter().zip(want).enumerate() {
            let tol = if step < EXACT_STEPS || recording_cpu() {
                CURVE_TOL
            } else {
                DRIFT_TOL
            };
            assert!(
                dev(a, b) <= tol,
                "{name} step {}: loss {a} against the recorded {b}",
                step + 1
            );
        }
    }
}

/// Relative tolerance of the first `EXACT_STEPS` steps (float summation order only).
const CURVE_TOL: f64 = 1e-4;
/// Steps held to `CURVE_TOL`. The curves were recorded on an AVX-512 VNNI CPU; elsewhere the f32
/// and quantized products take other kernels (another summation order). Those differ by ~1e-7 at
/// step 8, and 50 AdamW steps at this learning rate on a 4-record set amplify that: on an
/// AVX2-only CPU the f32 curve drifts ~1e-3 by the end and the NF4 curve ~8e-2. A change of
/// arithmetic (not of order) shows from the first step.
const EXACT_STEPS: usize = 10;
/// Relative band for the later steps, where the drift above accumulates.
const DRIFT_TOL: f64 = 0.15;

/// Whether this CPU takes the recording's kernels (AVX-512 VNNI): then every step is held to
/// `CURVE_TOL`.
fn recording_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
/// Recorded with `CANON_PRINT_CURVES=1` on an AVX-512 VNNI EPYC (Zen 4) after the norms' eight-lane
/// sums (Dec 6); the recording before (commit 9a3628e) agreed within 1.1e-7 over the first 10
/// steps and 5.9e-4 over all 50 (summation order only).
#[allow(clippy::excessive_precision)]
const RECORDED_F32: [f64; 50] = [
    5.759965419769287,
    5.21759033203125,
    4.979137420654297,
    4.823153972625732,
    4.755261421203613,
    4.651031494140625,
    4.420804023742676,
    4.6477580070495605,
    4.3057637214660645,
    4.420214653015137,
    4.1945481300354,
    4.159131050109863,
    4.127833366394043,
    4.554810523986816,
    4.282881736755371,
    4.081608295440674,
    4.40352725982666,
    4.080810546875,
    4.2405219078063965,
    4.240687847137451,
    4.323897838592529,
    4.006424903869629,
    3.9440271854400635,
    3.780618667602539,
    4.152933120727539,
    4.002185821533203,
    4.154747009277344,
    3.887254238128662,
    4.20496940612793,
    4.177849292755127,
    3.833885908126831,
    3.773336887359619,
    4.0970916748046875,
    3.9732933044433594,
    3.725895643234253,
    3.8095667362213135,
    3.6908791065216064,
    3.7804934978485107,
    3.6382946968078613,
    3.758481740951538,
    4.1229047775268555,
    3.943875551223755,
    3.8878655433654785,
    3.9146080017089844,
    3.8159444332122803,
    3.6866118907928467,
    3.641641855239868,
    3.647390365600586,
    3.717836618423462,
    3.6538937091827393,
];
#[allow(clippy::excessive_precision)]
const RECORDED_NF4: [f64; 50] = [
    5.76350736618042,
    5.2045793533325195,
    4.960313320159912,
    4.797924995422363,
    4.779829978942871,
    4.7218241691589355,
    4.510224342346191,
    4.715968608856201,
    4.386975288391113,
    4.427175521850586,
    4.2469000816345215,
    4.318606853485107,
    4.05729866027832,
    4.478970527648926,
    4.304744720458984,
    3.9986085891723633,
    4.219357490539551,
    4.088010311126709,
    4.1241679191589355,
    4.205458641052246,
    4.253190994262695,
    3.9141061305999756,
    3.8266408443450928,
    3.960756301879883,
    4.073359966278076,
    4.040040493011475,
    4.006363391876221,
    3.7387795448303223,
    4.0078229904174805,
    4.106664657592773,
    3.8053364753723145,
    3.7322466373443604,
    4.044157981872559,
    4.072982311248779,
    3.9197967052459717,
    3.8990864753723145,
    3.8462774753570557,
    3.6617467403411865,
    3.664425849914551,
    3.8510470390319824,
    4.513725280761719,
    3.880255699157715,
    3.945864677429199,
    4.260437488555908,
    3.834249258041382,
    3.789296865463257,
    3.7376253604888916,
    3.6911587715148926,
    3.7830588817596436,
    3.7111239433288574,
];
