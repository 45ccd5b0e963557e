// TEMPORARY (not for commit): full greedy HumanEval run of SmolLM2 for the README numbers.
use canon_eval::humaneval;
use canon_eval::{Sandbox, SandboxConfig};
use canon_infer::{LmGenerator, TextGenerator};
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let temp: f32 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let problems = humaneval::load_default(&canon_assets::Quiet).unwrap();
    let spec = canon_models::ModelSpec::parse("smollm2").unwrap();
    let lm = canon_models::load_causal_lm(
        &spec,
        canon_models::WeightMode::DequantizeF32,
        &canon_assets::Quiet,
    )
    .unwrap();
    let mut g: Box<dyn TextGenerator> = Box::new(LmGenerator::new(lm));
    let opts = humaneval::GenerationOptions {
        samples_per_task: n,
        max_tokens: 384,
        temperature: temp,
        top_p: Some(0.95),
        seed: 0,
    };
    let t = std::time::Instant::now();
    let samples =
        humaneval::generate_completions(g.as_mut(), &problems, &opts, &mut |d, tot, _| {
            if d % 20 == 0 {
                eprintln!("{d}/{tot} {:.0}s", t.elapsed().as_secs_f64());
            }
            true
        })
        .unwrap();
    let gen_s = t.elapsed().as_secs_f64();
    let mut out = String::new();
    for s in &samples {
        out.push_str(&serde_json::to_string(s).unwrap());
        out.push('\n');
    }
    std::fs::write(format!("/tmp/smollm2_n{n}_t{temp}.jsonl"), out).unwrap();
    let sb = Sandbox::new(SandboxConfig::default()).unwrap();
    let t = std::time::Instant::now();
    let r = humaneval::score(&sb, &problems, &samples, 2, &|_| {}).unwrap();
    let ks: Vec<usize> = [1, 2, 5, 10].into_iter().filter(|&k| k <= n).collect();
    let s = humaneval::summarize(&r, &ks, t.elapsed().as_secs_f64()).unwrap();
    println!("{} generation_s={gen_s:.0}", s.to_json());
}
