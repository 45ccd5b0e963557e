//! Corpus BLEU and the 13a tokenizer against sacreBLEU 2.6.0 (`golden/bleu.py` made `golden/bleu.json`).

use canon_eval::bleu::{corpus_bleu_multi, tokenize_13a};

fn golden() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bleu.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tokenizer_13a_matches_sacrebleu() {
    let g = golden();
    for case in g["tokenize_13a"].as_array().unwrap() {
        let line = case["line"].as_str().unwrap();
        assert_eq!(
            tokenize_13a(line),
            strings(&case["tokens"]),
            "line {line:?}"
        );
    }
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let g = golden();
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let hyps = strings(&c["hyps"]);
        let refs: Vec<Vec<String>> = c["refs"].as_array().unwrap().iter().map(strings).collect();
        let b = corpus_bleu_multi(&hyps, &refs).unwrap();
        let n = |k: &str| c[k].as_u64().unwrap() as usize;
        assert_eq!(
            (b.stats.sys_len, b.stats.ref_len),
            (n("sys_len"), n("ref_len")),
            "{name}"
        );
        let counts: Vec<usize> = c["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let totals: Vec<usize> = c["totals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(b.stats.correct.to_vec(), counts, "{name}");
        assert_eq!(b.stats.total.to_vec(), totals, "{name}");
        let want = c["score"].as_f64().unwrap();
        assert!(
            (b.score - want).abs() < 1e-9,
            "{name}: {} vs {want}",
            b.score
        );
        assert!(
            (b.brevity_penalty - c["bp"].as_f64().unwrap()).abs() < 1e-12,
            "{name}"
        );
    }
}
