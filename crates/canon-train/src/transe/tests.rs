//! TransE's tests: the loss and corruption, training and its run in a folder, the saved table.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::trainer::{Outcome, RunFiles};

fn tr(h: u32, r: u32, t: u32) -> Triple {
    Triple { h, r, t }
}

#[test]
fn loss_on_a_hand_computed_case() {
    let dev = &Device::Cpu;
    let m = |v: Vec<f32>, r: usize| {
        Var::from_tensor(&Tensor::from_vec(v, (r, 2), dev).unwrap()).unwrap()
    };
    for norm in [Norm::L1, Norm::L2] {
        let te = TransE {
            // e0 = (1, 0), e1 = (0, 1), e2 = (1, 1); r0 = (−1, 1).
            entities: m(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3),
            relations: m(vec![-1.0, 1.0], 1),
            norm,
            margin: 0.5,
        };
        // True (0, r, 1): e0 + r − e1 = (0, 0) → d = 0.
        // Corrupt (0, r, 2): (−1, 0) → d = 1 for L1 and L2 → [0.5 + 0 − 1]₊ = 0.
        // True (2, r, 1): (0, 1) → d = 1.  Corrupt (2, r, 0): (−1, 2) → L1 3, L2 √5.
        // Second pair: [0.5 + 1 − 3]₊ = 0 (L1), [0.5 + 1 − √5]₊ = 0.
        // Third: true (1, r, 2): (−2, 1): L1 3, L2 √5; corrupt (1, r, 1): (−1, 1): L1 2, L2 √2.
        // → L1: [0.5 + 3 − 2]₊ = 1.5; L2: 0.5 + √5 − √2.
        let pos = [tr(0, 0, 1), tr(2, 0, 1), tr(1, 0, 2)];
        let neg = [tr(0, 0, 2), tr(2, 0, 0), tr(1, 0, 1)];
        let d: Vec<f32> = te.distance(&pos).unwrap().to_vec1().unwrap();
        let l = te.loss(&pos, &neg).unwrap().to_scalar::<f32>().unwrap();
        let want = match norm {
            Norm::L1 => {
                assert_eq!(d, vec![0.0, 1.0, 3.0]);
                1.5 / 3.0
            }
            Norm::L2 => {
                assert!((d[2] - 5f32.sqrt()).abs() < 1e-6);
                (0.5 + 5f32.sqrt() - 2f32.sqrt()) / 3.0
            }
        };
        assert!((l - want).abs() < 1e-6, "{norm:?}: {l} vs {want}");
    }
    assert!(
        TransE::new(3, 1, &TransEConfig::default(), 1)
            .unwrap()
            .loss(&[tr(0, 0, 1)], &[])
            .is_err()
    );
}

#[test]
fn corruption_changes_exactly_one_side_to_a_different_entity() {
    let triples: Vec<Triple> = (0..4000).map(|i| tr(i % 7, 0, (i + 3) % 7)).collect();
    let neg = TransE::corrupt(&triples, 7, &mut SplitMix64::new(3));
    let mut heads = 0;
    for (a, b) in triples.iter().zip(&neg) {
        assert_eq!(a.r, b.r);
        assert!((a.h != b.h) ^ (a.t != b.t), "{a:?} {b:?}");
        assert!(b.h < 7 && b.t < 7);
        heads += usize::from(a.h != b.h);
    }
    let f = heads as f64 / 4000.0;
    assert!((f - 0.5).abs() < 0.03, "{f}");
}

#[test]
fn a_run_in_a_folder_writes_its_files_and_resumes_exactly_after_a_stop() {
    let mut triples: Vec<Triple> = (4..20).map(|f| tr(f, 0, f % 4)).collect();
    triples.extend((0..4).map(|m| tr(m, 1, (m + 1) % 4)));
    let cfg = TransEConfig {
        dim: 8,
        steps: 30,
        batch_size: 16,
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let files = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        RunFiles::in_dir(&dir)
    };
    let go = AtomicBool::new(false);
    // Uninterrupted, and as `train` (no folder): the same tables.
    let whole = TransE::new(20, 2, &cfg, 3).unwrap();
    let (rep, out) = whole
        .train_run(&triples, &cfg, 5, &files("whole"), &go, &mut |_, _| {})
        .unwrap();
    assert_eq!(out, Outcome::Finished);
    assert!(rep.last_loss < rep.first_loss, "{rep:?}");
    let plain = TransE::new(20, 2, &cfg, 3).unwrap();
    plain.train(&triples, &cfg, 5, &mut |_, _| {}).unwrap();
    let table = |t: &TransE| {
        t.entity_table()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(table(&whole), table(&plain));
    let f = files("whole");
    assert!(f.checkpoint.is_file() && f.plot.is_file());
    assert_eq!(crate::metrics::read_lines(&f.metrics).unwrap().len(), 30);
    // Stopped after step 12 (the Ctrl-C path), then resumed from the checkpoint by fresh tables.
    let stop = AtomicBool::new(false);
    let cut = TransE::new(20, 2, &cfg, 3).unwrap();
    let (_, out) = cut
        .train_run(&triples, &cfg, 5, &files("cut"), &stop, &mut |s, _| {
            if s == 12 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
    assert_eq!(out, Outcome::Interrupted);
    let resumed = TransE::new(20, 2, &cfg, 99).unwrap();
    let mut steps = Vec::new();
    let (rep2, out) = resumed
        .train_run(&triples, &cfg, 5, &files("cut"), &go, &mut |s, _| {
            steps.push(s)
        })
        .unwrap();
    assert_eq!(out, Outcome::Finished);
    assert_eq!(steps.first(), Some(&13));
    assert_eq!(table(&resumed), table(&whole));
    assert_eq!(rep2.first_loss, rep.first_loss);
    assert_eq!(rep2.last_loss, rep.last_loss);
    assert_eq!(
        crate::metrics::read_lines(&files("cut").metrics)
            .unwrap()
            .len(),
        30
    );
}

#[test]
fn after_training_true_triples_score_better_than_corrupted_ones() {
    // 4 modules (0..4), 16 functions (4..20): f defined_in module f % 4 (relation 0); each
    // module imports the next (relation 1).
    let mut triples: Vec<Triple> = (4..20).map(|f| tr(f, 0, f % 4)).collect();
    triples.extend((0..4).map(|m| tr(m, 1, (m + 1) % 4)));
    for norm in [Norm::L1, Norm::L2] {
        let cfg = TransEConfig {
            dim: 16,
            steps: 300,
            batch_size: 32,
            lr: 0.02,
            norm,
            ..Default::default()
        };
        let te = TransE::new(20, 2, &cfg, 7).unwrap();
        let neg_before = TransE::corrupt(&triples, 20, &mut SplitMix64::new(9));
        let before = te
            .loss(&triples, &neg_before)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let rep = te.train(&triples, &cfg, 11, &mut |_, _| {}).unwrap();
        assert!(rep.last_loss < rep.first_loss);
        let after = te
            .loss(&triples, &neg_before)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(after < 0.2 * before, "{norm:?}: {before} -> {after}");
        // Every function's true module is the nearest of the four modules.
        for f in 4..20u32 {
            let cands: Vec<Triple> = (0..4).map(|m| tr(f, 0, m)).collect();
            let d: Vec<f32> = te.distance(&cands).unwrap().to_vec1().unwrap();
            let best = (0..4).min_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap();
            assert_eq!(best as u32, f % 4, "{norm:?} f{f}: {d:?}");
        }
        let (mr, hits) = te.link_prediction(&triples).unwrap();
        assert!(
            mr < 6.0 && hits > 0.8,
            "{norm:?}: mean rank {mr}, hits@10 {hits}"
        );
        // Entities stay on the unit sphere.
        let n: Vec<f32> = te
            .entity_table()
            .sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(n.iter().all(|x| (x - 1.0).abs() < 1e-4));
    }
}

#[test]
fn saved_table_round_trips_and_a_wrong_shape_is_named() {
    let te = TransE::new(
        5,
        2,
        &TransEConfig {
            dim: 4,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("transe.safetensors");
    te.save(&p).unwrap();
    let e = TransE::load_entities(&p, 5, 4).unwrap();
    assert_eq!(
        e.to_vec2::<f32>().unwrap(),
        te.entity_table().to_vec2::<f32>().unwrap()
    );
    let err = TransE::load_entities(&p, 6, 4).unwrap_err().to_string();
    assert!(
        err.contains("[6, 4]") && err.contains("transe.safetensors"),
        "{err}"
    );
}
