//! Let's Verify Step by Step (Lightman et al., 2023, paper 21) in miniature: process vs outcome
//! supervision for best-of-N on multi-step sums.
//!
//! Problem: four addends in `[1, 20]`, prompt `"07+11+03+20="`. A solution writes one running sum
//! per step and then the answer: `"7+11=18;18+3=21;21+20=41;ans 41."`. The generator (a tiny GPT)
//! is trained on demonstrations in which each step's sum is wrong with probability
//! `PLANTED_ERROR` (later steps carry the wrong value on), so its samples contain real mistakes.
//!
//! Labels are programmatic. A step `x+y=z;` is correct iff `x` is the previous written sum (the
//! first addend for step 1), `y` is the next addend, and `z = x + y`; the final `ans N.` step is
//! correct iff all sums were written and `N` is the last of them. The outcome label is the final
//! answer's correctness. The PRM is the generator's trunk with a binary head read at every step's
//! end (`;`, and the last token for the answer step), trained on step labels; the ORM is the same
//! with one read at the last token, trained on outcome labels; both see the same solutions, steps
//! and optimizer budget. Solution scores: PRM `Σ_s log σ(z_s)` = log of the product of step
//! probabilities (the paper's rule); ORM `log σ(z_last)`.
//!
//! Best-of-N: for each test problem 64 samples; for each N, `trials` random subsets of N samples
//! (without replacement), the pick of each selector, the fraction of problems whose pick is correct.
//! Samples without a parsable answer are excluded before selection.
//!
//! The parts: `task` (the sums, demonstrations, the checker and the labels), `verifier` (the PRM
//! and ORM heads' objective and scores); the settings, best-of-N and the run are here.

mod task;
mod verifier;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use canon_nn::SplitMix64;
use canon_plot::{Figure, Series};
use canon_train::trainer::RunFiles;
use canon_train::{Engine, OptimizerConfig, Schedule, StepReport, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::lm::{Lm, ScalarHead, tiny_config};
use crate::losses::{best_of_n, majority};
use crate::pipeline::Report;
use crate::sft::{Example, SftObjective, mean_nll};
use crate::task::{CharVocab, response_ids, response_text};
use crate::{Result, TrainError, data_err};

pub use task::{
    Chain, Checked, Labeled, MAX_SOLUTION, MAX_TERM, PLANTED_ERROR, Supervision, TERMS, chains,
    check, demonstration, label,
};
use verifier::accuracy;
pub use verifier::{VerifierObjective, log_scores};

// PRM experiment settings (with the `cli` feature also `canon align prm`'s flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct PrmOpts {
    /// Generator training steps (SFT on demonstrations with planted step errors).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1500))]
    pub gen_steps: u64,
    /// Training steps of each verifier (PRM and ORM get the same budget).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 600))]
    pub verifier_steps: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2000))]
    pub train_problems: usize,
    /// Sampled solutions per training problem (the verifiers' data).
    #[cfg_attr(
        feature = "cli",
        arg(long = "samples", value_name = "SAMPLES", default_value_t = 4)
    )]
    pub samples_per_train_problem: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub test_problems: usize,
    /// Largest N of best-of-N (N = 1, 2, 4, …); also the samples per test problem.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub max_n: usize,
    /// Random subsets per N.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub trials: usize,
    /// Reuse the generator a previous run left in DIR/generator (retrain only the verifiers).
    #[cfg_attr(feature = "cli", arg(long))]
    pub reuse_generator: bool,
}

impl PrmOpts {
    /// Step and problem counts in range (the message names the flags).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.gen_steps == 0 || self.verifier_steps == 0 || self.train_problems < 10 {
            return Err(
                "--gen-steps and --verifier-steps must be at least 1, --train-problems at least 10"
                    .into(),
            );
        }
        if self.test_problems == 0 {
            return Err("--test-problems must be at least 1".into());
        }
        Ok(())
    }
}

/// Solve rates of the three selectors at one N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestOfN {
    pub n: usize,
    pub prm: f64,
    pub orm: f64,
    pub majority: f64,
}

/// One sample: (answer, correct, PRM log-score, ORM log-score).
type Sample = (Option<i64>, bool, f64, f64);
/// Per test problem, its samples.
type Scored = Vec<Vec<Sample>>;

/// The best-of-N curve over `ns` with `trials` seeded subsets per N.
pub fn best_of_n_curve(scored: &Scored, ns: &[usize], trials: usize, seed: u64) -> Vec<BestOfN> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for &n in ns {
        let (mut p, mut o, mut m, mut count) = (0.0, 0.0, 0.0, 0.0);
        for samples in scored {
            let k = samples.len();
            if k < n {
                continue;
            }
            let reps = if n == k { 1 } else { trials };
            for _ in 0..reps {
                let mut idx: Vec<usize> = (0..k).collect();
                for i in 0..n {
                    let j = i + rng.below(k - i);
                    idx.swap(i, j);
                }
                let sub: Vec<&Sample> = idx[..n].iter().map(|&i| &samples[i]).collect();
                let pick = |f: &dyn Fn(&Sample) -> f64| {
                    let s: Vec<Option<f64>> = sub.iter().map(|x| x.0.map(|_| f(x))).collect();
                    best_of_n(&s).is_some_and(|i| sub[i].1) as u8 as f64
                };
                p += pick(&|x| x.2);
                o += pick(&|x| x.3);
                let answers: Vec<Option<i64>> = sub.iter().map(|x| x.0).collect();
                let maj = majority(&answers);
                let truth = sub.iter().find(|x| x.1).and_then(|x| x.0);
                m += (maj.is_some() && maj == truth) as u8 as f64;
                count += 1.0;
            }
        }
        if count > 0.0 {
            out.push(BestOfN {
                n,
                prm: p / count,
                orm: o / count,
                majority: m / count,
            });
        }
    }
    out
}

fn train_config(steps: u64, lr: f64, seed: u64) -> TrainConfig {
    TrainConfig {
        batch_size: 1,
        block_size: 1,
        grad_accum: 1,
        max_steps: steps,
        lr,
        schedule: Schedule::Cosine {
            warmup: (steps / 20).min(50),
            min_lr_ratio: 0.1,
        },
        optimizer: OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        grad_clip: Some(1.0),
        eval_every: (steps / 4).max(1),
        eval_batches: 1,
        log_every: 10,
        checkpoint_every: steps.max(1),
        seed,
        z_loss: 0.0,
        moe_aux_weight: 0.0,
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn sample_all(g: &Lm, problems: &[Chain], k: usize, seed: u64) -> Result<Vec<Vec<Vec<u32>>>> {
    let mut out = Vec::with_capacity(problems.len());
    for (c, chunk) in problems.chunks((256 / k).max(1)).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.prompt_ids(), k))
            .collect();
        let r = g.sample(&prompts, MAX_SOLUTION, 1.0, seed ^ (c as u64 * 31 + 7))?;
        for i in 0..chunk.len() {
            out.push(r[i * k..(i + 1) * k].to_vec());
        }
    }
    Ok(out)
}

/// The whole experiment into `dir`: generator, sampled and labelled solutions, PRM and ORM, the
/// best-of-N curve (`best_of_n.json`, `best_of_n.png`), and the scored test samples in PRM800K's
/// shape (`scored_test_samples.jsonl`, for [`crate::prm_eval`]).
pub fn run(
    dir: &Path,
    seed: u64,
    o: &PrmOpts,
    on_step: &mut dyn FnMut(&str, &StepReport),
) -> Result<(Report, Vec<BestOfN>)> {
    let t0 = Instant::now();
    if o.max_n == 0 || o.trials == 0 || o.samples_per_train_problem == 0 {
        return Err(data_err(
            "--max-n, --trials and --samples must be at least 1",
        ));
    }
    let (train, test) = chains(seed, o.train_problems, o.test_problems);
    // 1. The generator.
    let mut rng = SplitMix64::new(seed ^ 0xD3);
    let mut demos = Vec::new();
    for c in &train {
        for _ in 0..2 {
            let mut ids = c.prompt_ids();
            let pl = ids.len();
            ids.extend(response_ids(&demonstration(c, &mut rng))?);
            demos.push(Example {
                ids,
                prompt_len: pl,
            });
        }
    }
    let val: Vec<Example> = test
        .iter()
        .take(200)
        .map(|c| {
            let mut ids = c.prompt_ids();
            let pl = ids.len();
            ids.extend(response_ids(&demonstration(c, &mut rng))?);
            Ok(Example {
                ids,
                prompt_len: pl,
            })
        })
        .collect::<Result<_>>()?;
    let gdir = dir.join("generator");
    let stop = AtomicBool::new(false);
    let g = if o.reuse_generator {
        Lm::load(&gdir)?
    } else {
        let g = Lm::new_random(tiny_config(CharVocab.size(), 2, 64, 64), seed)?;
        std::fs::create_dir_all(&gdir).map_err(|e| io(&gdir, e))?;
        let mut e = Engine::new(g.params(), train_config(o.gen_steps, 3e-3, seed))?;
        let mut obj = SftObjective {
            lm: &g,
            train: &demos,
            val: &val,
            batch: 64,
        };
        e.run(
            &mut obj,
            o.gen_steps,
            &stop,
            &RunFiles::in_dir(&gdir),
            &mut |r| on_step("generator", r),
        )?;
        g.save(&gdir)?;
        g
    };
    let gen_nll = mean_nll(&g, &val, 256)?;
    // 2. Sampled solutions for the verifiers, labelled by the checker.
    let samples = sample_all(&g, &train, o.samples_per_train_problem, seed ^ 0x5A)?;
    let mut prm_data = Vec::new();
    let mut orm_data = Vec::new();
    let mut correct_train = 0usize;
    for (c, rs) in train.iter().zip(&samples) {
        for r in rs {
            prm_data.push(label(c, r, Supervision::Process));
            let l = label(c, r, Supervision::Outcome);
            correct_train += (l.targets[0].1 > 0.5) as usize;
            orm_data.push(l);
        }
    }
    let n_val = (prm_data.len() / 10).max(1);
    let prm_val = prm_data.split_off(prm_data.len() - n_val);
    let orm_val = orm_data.split_off(orm_data.len() - n_val);
    // 3. PRM and ORM from the generator's trunk, same solutions, same budget.
    let mut verifiers = Vec::new();
    for (name, data, vdata) in [("prm", &prm_data, &prm_val), ("orm", &orm_data, &orm_val)] {
        let mut v = Lm::load(&gdir)?;
        v.head = Some(ScalarHead::zeros(v.cfg.d_model)?);
        let vd = dir.join(name);
        std::fs::create_dir_all(&vd).map_err(|e| io(&vd, e))?;
        let mut e = Engine::new(v.params(), train_config(o.verifier_steps, 1e-3, seed))?;
        let mut obj = VerifierObjective {
            v: &v,
            train: data,
            val: vdata,
            batch: 32,
        };
        e.run(
            &mut obj,
            o.verifier_steps,
            &stop,
            &RunFiles::in_dir(&vd),
            &mut |r| on_step(name, r),
        )?;
        let (acc, _) = accuracy(&v, vdata)?;
        v.save(&vd)?;
        verifiers.push((v, acc));
    }
    // 4. Best-of-N on the test problems.
    let test_samples = sample_all(&g, &test, o.max_n, seed ^ 0x7E)?;
    let mut scored: Scored = Vec::with_capacity(test.len());
    let mut lines = String::new();
    let mut any_correct = 0usize;
    let mut frac_correct = 0.0;
    for (c, rs) in test.iter().zip(&test_samples) {
        let pl: Vec<Labeled> = rs
            .iter()
            .map(|r| label(c, r, Supervision::Process))
            .collect();
        let ol: Vec<Labeled> = rs
            .iter()
            .map(|r| label(c, r, Supervision::Outcome))
            .collect();
        let ps = log_scores(&verifiers[0].0, &pl)?;
        let os = log_scores(&verifiers[1].0, &ol)?;
        let row: Vec<Sample> = rs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let ch = check(c, &response_text(r));
                (ch.answer, ch.correct, ps[i], os[i])
            })
            .collect();
        for x in &row {
            // PRM800K's scored-samples shape: scores as probabilities (product of the steps'
            // for the PRM), `answer` null when the solution gave none.
            let o = serde_json::json!({
                "problem": c.prompt(),
                "answer": x.0.map(|a| a.to_string()),
                "prm_score": x.2.exp(),
                "orm_score": x.3.exp(),
                "is_correct": x.1,
            });
            lines.push_str(&o.to_string());
            lines.push('\n');
        }
        let k = row.iter().filter(|x| x.1).count();
        any_correct += (k > 0) as usize;
        frac_correct += k as f64 / row.len().max(1) as f64;
        scored.push(row);
    }
    let ns: Vec<usize> = (0..)
        .map(|i| 1usize << i)
        .take_while(|&n| n <= o.max_n)
        .collect();
    let curve = best_of_n_curve(&scored, &ns, o.trials, seed ^ 0xB0);
    let sj = dir.join("scored_test_samples.jsonl");
    canon_plot::write_atomic(&sj, lines.as_bytes()).map_err(|e| io(&sj, e))?;
    let cj = dir.join("best_of_n.json");
    let text = serde_json::to_string_pretty(&curve).map_err(|e| io(&cj, e))?;
    canon_plot::write_atomic(&cj, text.as_bytes()).map_err(|e| io(&cj, e))?;
    let pts = |f: &dyn Fn(&BestOfN) -> f64| -> Vec<(f64, f64)> {
        curve.iter().map(|b| (b.n as f64, 100.0 * f(b))).collect()
    };
    let png = dir.join("best_of_n.png");
    Figure::new("Best-of-N on 4-term sums: process vs outcome supervision")
        .x_title("N (solutions per problem)")
        .y_title("% of test problems solved")
        .log_x()
        .series(Series::line_points(
            "PRM (product of step probabilities)",
            pts(&|b| b.prm),
        ))
        .series(Series::line_points(
            "ORM (final-answer classifier)",
            pts(&|b| b.orm),
        ))
        .series(Series::line_points("majority vote", pts(&|b| b.majority)))
        .footnote(&format!(
            "{} test problems × {} samples, {} subsets per N; generator: 2-layer GPT, {} steps",
            test.len(),
            o.max_n,
            o.trials,
            o.gen_steps
        ))
        .save(&png)
        .map_err(|e| io(&png, e))?;
    let nt = test.len().max(1) as f64;
    let mut figures = vec![
        ("generator_held_out_nll".into(), gen_nll),
        (
            "train_solutions".into(),
            (prm_data.len() + prm_val.len()) as f64,
        ),
        (
            "train_solutions_correct".into(),
            correct_train as f64 / (orm_data.len() + orm_val.len()).max(1) as f64,
        ),
        ("prm_held_out_step_accuracy".into(), verifiers[0].1),
        ("orm_held_out_outcome_accuracy".into(), verifiers[1].1),
        ("test_sample_accuracy".into(), frac_correct / nt),
        ("test_pass_at_max_n".into(), any_correct as f64 / nt),
    ];
    for b in &curve {
        figures.push((format!("best_of_{}_prm", b.n), b.prm));
        figures.push((format!("best_of_{}_orm", b.n), b.orm));
        figures.push((format!("best_of_{}_majority", b.n), b.majority));
    }
    Ok((
        Report {
            stage: "prm".into(),
            params: g.num_params(),
            steps: o.gen_steps + 2 * o.verifier_steps,
            seconds: t0.elapsed().as_secs_f64(),
            figures,
        },
        curve,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_labels_steps_and_outcome() {
        let c = Chain {
            terms: [7, 11, 3, 20],
        };
        let good = check(&c, "7+11=18;18+3=21;21+20=41;ans 41.");
        assert!(good.correct);
        assert_eq!(
            good.steps.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![true; 4]
        );
        assert_eq!(good.steps[0].0, 7); // the ';' after "7+11=18"
        // A wrong sum in step 2, carried on consistently: only step 2 is wrong; the answer is wrong.
        let bad = check(&c, "7+11=18;18+3=22;22+20=42;ans 42.");
        assert_eq!(
            bad.steps.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![true, false, true, true]
        );
        assert!(!bad.correct);
        // A right answer after a missing step: the final step is wrong.
        let skip = check(&c, "7+11=18;18+3=21;ans 41.");
        assert!(skip.correct);
        assert!(!skip.steps.last().unwrap().1);
        let none = check(&c, "7+11=18;?");
        assert_eq!(none.answer, None);
    }

    #[test]
    fn planted_demonstrations_check_as_labelled() {
        let mut rng = SplitMix64::new(5);
        let (tr, _) = chains(1, 50, 10);
        let mut wrong = 0;
        for c in &tr {
            for _ in 0..20 {
                let d = demonstration(c, &mut rng);
                let ch = check(c, &d);
                // The answer step is always consistent in a demonstration.
                assert!(ch.steps.last().unwrap().1, "{d}");
                // All steps right implies the right answer; the converse can fail when two
                // planted errors cancel (a right answer for wrong reasons).
                let all = ch.steps.iter().all(|s| s.1);
                assert!(!all || ch.correct, "{d}");
                wrong += (!all) as usize;
            }
        }
        let rate = wrong as f64 / 1000.0;
        let want = 1.0 - (1.0 - PLANTED_ERROR).powi(3);
        assert!((rate - want).abs() < 0.05, "{rate} vs {want}");
    }

    #[test]
    fn best_of_n_curve_on_a_fixture() {
        // One problem, 4 samples: PRM prefers the correct one, ORM a wrong one, the majority
        // answer is wrong.
        let s: Scored = vec![vec![
            (Some(5), false, -3.0, -0.1),
            (Some(5), false, -2.0, -0.2),
            (Some(7), true, -0.5, -0.9),
            (None, false, 0.0, 0.0),
        ]];
        let c = best_of_n_curve(&s, &[4], 1, 1);
        assert_eq!(
            c,
            vec![BestOfN {
                n: 4,
                prm: 1.0,
                orm: 0.0,
                majority: 0.0
            }]
        );
        // N = 1 over many trials: every selector solves at the rate of correct samples (1/4).
        let c1 = best_of_n_curve(&s, &[1], 4000, 2);
        assert!((c1[0].prm - 0.25).abs() < 0.03 && (c1[0].majority - 0.25).abs() < 0.03);
    }
}
