//! `canon_align::prm_eval` against PRM800K's evaluation loop run by Python itself
//! (`goldens/prm800k_eval/gen.py`): every trial's pass rate at every N must be equal, which holds
//! only if the shuffles draw exactly as Python's `random` does.

use std::path::PathBuf;

use canon_align::prm_eval::{Method, Protocol, evaluate, read_jsonl};

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../goldens/prm800k_eval")
}

#[test]
fn trials_equal_the_python_reference() {
    let dir = golden();
    let samples = read_jsonl(&dir.join("samples.jsonl")).unwrap();
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ns: Vec<usize> = serde_json::from_value(e["ns"].clone()).unwrap();
    let p = Protocol {
        ns: ns.clone(),
        trials: e["trials"].as_u64().unwrap() as usize,
        total: e["total"].as_u64().unwrap() as usize,
        seed: e["seed"].as_u64().unwrap(),
    };
    for (method, key) in [(Method::Prm, "prm"), (Method::Orm, "orm")] {
        let want: Vec<Vec<f64>> = serde_json::from_value(e[key].clone()).unwrap();
        let mut calls = 0;
        let got = evaluate(&samples, method, &p, &mut |_| calls += 1).unwrap();
        assert_eq!(calls, p.trials);
        assert_eq!(got.problems, 8);
        assert_eq!(got.trials.len(), want.len());
        for (t, (g, w)) in got.trials.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{key}: trial {t} differs (N = {ns:?})");
        }
        // The curve is not flat: the fixture exercises the subsampling.
        assert!(got.std.iter().any(|&s| s > 0.0), "{key}: {:?}", got.std);
    }
}
