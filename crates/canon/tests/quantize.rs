//! `canon quantize` and `canon eval perplexity` end to end on a tiny GGUF model written by the test
//! (no downloads): every method writes a file that `--model` loads, the quantized models score a
//! text close to the original, and bad input ends in one clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

fn canon(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .env("CANON_HOME", home)
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .output()
        .expect("run canon")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ppl(model: &Path, text: &Path, home: &Path, extra: &[&str]) -> f64 {
    let mut args = vec![
        "eval",
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--text-file",
        text.to_str().unwrap(),
        // Short windows keep the test quick on the tiny model.
        "--context",
        "12",
        "--stride",
        "6",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = canon(&args, home);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert!(v["tokens"].as_u64().unwrap() > 50);
    v["perplexity"].as_f64().unwrap()
}

#[test]
fn every_method_writes_a_model_that_loads_and_scores_like_the_original() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let base: PathBuf = h.join("base.gguf");
    write_tiny_llama(&base, &TinyLlama::default()).unwrap();
    let text = h.join("text.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(3),
    )
    .unwrap();
    let p0 = ppl(&base, &text, h, &["--f32"]);
    assert!(p0.is_finite() && p0 > 1.0, "{p0}");
    for (method, rel) in [("q8_0", 0.01), ("int8", 0.02), ("nf4", 0.10)] {
        let out = h.join(format!("m-{method}.gguf"));
        let o = canon(
            &[
                "quantize",
                "--model",
                base.to_str().unwrap(),
                "--method",
                method,
                "--out",
                out.to_str().unwrap(),
            ],
            h,
        );
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let report = String::from_utf8_lossy(&o.stdout);
        assert!(
            report.contains("bits/parameter") && report.contains(" s"),
            "{report}"
        );
        let p = ppl(&out, &text, h, &[]);
        assert!(
            (p - p0).abs() < rel * p0,
            "{method}: perplexity {p} vs {p0}"
        );
        // The quantized kernel computes what the dequantized weight computes (activations are
        // rounded to 8 bits for int8, so only NF4 is compared tightly).
        let pf = ppl(&out, &text, h, &["--f32"]);
        if method == "nf4" {
            assert!(
                (p - pf).abs() < 1e-4 * pf,
                "nf4 kernel {p} vs dequantized {pf}"
            );
        }
        // Generation works from the file (tokenizer and template came along).
        let g = canon(
            &[
                "generate",
                "--model",
                out.to_str().unwrap(),
                "--prompt",
                "the",
                "--max-tokens",
                "4",
                "--temperature",
                "0",
            ],
            h,
        );
        assert!(g.status.success(), "{method}: {}", stderr(&g));
    }
}

#[test]
fn bad_quantize_input_ends_in_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let base = h.join("base.gguf");
    write_tiny_llama(&base, &TinyLlama::default()).unwrap();
    let b = base.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "quantize", "--model", b, "--method", "int3", "--out", "x.gguf",
            ],
            "int3",
        ),
        (
            &[
                "quantize",
                "--model",
                "/no/such.gguf",
                "--method",
                "nf4",
                "--out",
                "x.gguf",
            ],
            "/no/such.gguf",
        ),
        (
            &[
                "quantize",
                "--model",
                b,
                "--method",
                "nf4",
                "--out",
                "/no/such/dir/x.gguf",
            ],
            "/no/such/dir",
        ),
    ];
    for (args, needle) in cases {
        let o = canon(args, h);
        let e = stderr(&o);
        assert!(!o.status.success() && !e.contains("panicked"), "{e}");
        assert!(
            e.lines()
                .any(|l| l.starts_with("error:") && l.contains(needle)),
            "{e}"
        );
    }
    let o = canon(
        &[
            "eval",
            "perplexity",
            "--model",
            b,
            "--text-file",
            "/no/such.txt",
        ],
        h,
    );
    assert!(stderr(&o).contains("/no/such.txt"), "{}", stderr(&o));
}
