//! Tier 3 (slow, `cargo test -p canon --release --test slow_training -- --ignored`): every shipped
//! training config learns on the real corpus of this machine through `canon train`, and the papers'
//! training-time claims hold on real text: Transformer-XL's memory lowers held-out loss; GLaM's
//! auxiliary loss keeps the experts balanced. Each run takes one to a few minutes on 2 cores.

use std::path::Path;
use std::process::Command;

fn canon(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(["-q", "--threads", "2"])
        .args(args)
        .output()
        .expect("run canon");
    assert!(
        o.status.success(),
        "canon {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn config(name: &str) -> String {
    format!("{}/../../configs/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// Trains `config` for `steps` and returns (loss of step 1, last held-out loss, last metrics line).
fn train(config: &str, steps: u64, dir: &Path) -> (f64, f64, serde_json::Value) {
    let out = dir.join("run");
    canon(&[
        "train",
        "--config",
        config,
        "--max-steps",
        &steps.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let m = metrics(&out);
    let first = m[0]["loss"].as_f64().unwrap();
    let last = m.last().unwrap().clone();
    (first, last["eval_loss"].as_f64().unwrap(), last)
}

fn learns(name: &str, steps: u64, drop: f64) {
    let dir = tempfile::tempdir().unwrap();
    let (first, eval, _) = train(&config(name), steps, dir.path());
    assert!(
        eval < first - drop,
        "{name}: held-out loss {eval:.3} after {steps} steps, first training loss {first:.3}"
    );
}

#[test]
#[ignore = "tier 3: minutes of training"]
fn gpt1_learns() {
    learns("gpt1", 100, 1.0);
}

#[test]
#[ignore = "tier 3: minutes of training"]
fn gpt2_learns() {
    learns("gpt2", 100, 1.0);
}

#[test]
#[ignore = "tier 3: minutes of training"]
fn llama_learns() {
    learns("llama", 100, 1.0);
}

#[test]
#[ignore = "tier 3: minutes of training"]
fn palm_learns() {
    learns("palm", 100, 1.0);
}

#[test]
#[ignore = "tier 3: minutes of training"]
fn nanogpt_bench_learns() {
    learns("nanogpt-bench", 100, 1.0);
}

#[test]
#[ignore = "tier 3: minutes of training"]
fn transformer_xl_memory_lowers_held_out_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (first, eval, last) = train(&config("transformer-xl"), 300, dir.path());
    assert!(eval < first - 1.0, "{eval} vs {first}");
    let no_mem = last["eval_loss_no_mem"].as_f64().unwrap();
    assert!(eval < no_mem, "with memory {eval:.4}, without {no_mem:.4}");
}

/// Largest expert share of the last logged step, over the MoE layers.
fn max_load(line: &serde_json::Value) -> f64 {
    line["expert_load"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "tier 3: minutes of training"]
fn glam_aux_loss_keeps_experts_balanced() {
    let dir = tempfile::tempdir().unwrap();
    let (first, eval, with) = train(&config("glam"), 100, dir.path());
    assert!(eval < first - 1.0, "{eval} vs {first}");
    assert!(with["moe_aux_loss"].as_f64().is_some());
    let text = std::fs::read_to_string(config("glam")).unwrap();
    assert!(text.contains("moe_aux_weight = 0.01"));
    let off = dir.path().join("glam-no-aux.toml");
    std::fs::write(
        &off,
        text.replace("moe_aux_weight = 0.01", "moe_aux_weight = 0.0"),
    )
    .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let (_, _, without) = train(off.to_str().unwrap(), 100, dir2.path());
    let (a, b) = (max_load(&with), max_load(&without));
    assert!(
        a < 0.5,
        "with the aux loss the busiest expert takes {a:.3} (without: {b:.3})"
    );
    assert!(
        with["moe_aux_loss"].as_f64().unwrap() <= without["moe_aux_loss"].as_f64().unwrap(),
        "aux loss with the term {with} vs without {without}"
    );
}
