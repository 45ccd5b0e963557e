//! `canon align prm-eval`: PRM800K's best-of-N evaluation over a scored-samples file
//! (`canon_align::prm_eval`); this file holds the arguments, the progress bar and the table.

use std::path::PathBuf;

use anyhow::bail;
use canon_align::prm_eval::{self, Method, Protocol};
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Prm,
    Orm,
    Both,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # the paper's protocol (400 trials, N = 10 … 1860) on its released scored test samples
  canon align prm-eval --samples scored-test-samples.jsonl --total 1860
  # the samples `canon align prm` scored on its own test problems
  canon align prm-eval --samples runs/prm/scored_test_samples.jsonl --trials 100

Input: one JSON object per line with `problem`, `answer` (or `given_answer`; null = no answer),
`prm_score`, `orm_score` and `is_correct`. Each trial pads every problem with empty slots to
--total, shuffles (Python's `random`, seeded with --seed), keeps the first N, and picks the
highest score among answered samples; the table shows the mean and standard deviation over
trials of the fraction of problems solved.")]
pub struct PrmEvalArgs {
    /// Scored samples (JSONL).
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// Which score picks the sample.
    #[arg(long, value_enum, default_value = "both")]
    pub method: Which,
    /// Trials per N (the paper: 400).
    #[arg(long, default_value_t = prm_eval::PAPER_TRIALS)]
    pub trials: usize,
    /// Comma-separated N values [default: the paper's with --total 1860, else 1, 2, 4, … --total].
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub ns: Vec<usize>,
    /// Slots per problem before shuffling [default: the most samples any problem has].
    #[arg(long)]
    pub total: Option<usize>,
    /// Seed of the shuffles.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the curves (JSON) and the plot (PNG next to it).
    #[arg(long, value_name = "FILE", default_value = "prm_eval.json")]
    pub out: PathBuf,
}

pub fn run(a: PrmEvalArgs) -> anyhow::Result<()> {
    let samples = prm_eval::read_jsonl(&a.samples)?;
    let most = {
        let mut counts = std::collections::HashMap::new();
        for s in &samples {
            *counts.entry(s.problem.as_str()).or_insert(0usize) += 1;
        }
        counts.into_values().max().unwrap_or(0)
    };
    let total = a.total.unwrap_or(most);
    if total < most {
        bail!("--total {total} is below the {most} samples of the largest problem");
    }
    let ns = if a.ns.is_empty() {
        prm_eval::default_ns(total)
    } else {
        a.ns.clone()
    };
    if let Some(n) = ns.iter().find(|&&n| n == 0 || n > total) {
        bail!("each N must be between 1 and --total ({total}), found {n}");
    }
    let p = Protocol {
        ns,
        trials: a.trials,
        total,
        seed: a.seed,
    };
    let methods: &[Method] = match a.method {
        Which::Prm => &[Method::Prm],
        Which::Orm => &[Method::Orm],
        Which::Both => &[Method::Prm, Method::Orm],
    };
    let t = "{msg} [{bar:30}] {pos}/{len} trials ({eta})";
    let pb = crate::progress::bar(false, (a.trials * methods.len()) as u64, t);
    let mut curves = Vec::new();
    for (k, &m) in methods.iter().enumerate() {
        pb.set_message(m.key());
        let done = k * a.trials;
        let c = prm_eval::evaluate(&samples, m, &p, &mut |t| pb.set_position((done + t) as u64))?;
        curves.push(c);
    }
    pb.finish_and_clear();
    println!(
        "{} samples, {} problems, {} slots each, {} trials per N (seed {})",
        samples.len(),
        curves[0].problems,
        total,
        a.trials,
        a.seed
    );
    print!("{:>6}", "N");
    for c in &curves {
        print!("  {:>20}", format!("{} mean ± sd", c.method));
    }
    println!();
    for (i, n) in p.ns.iter().enumerate() {
        print!("{n:>6}");
        for c in &curves {
            print!("  {:>20}", format!("{:.4} ± {:.4}", c.mean[i], c.std[i]));
        }
        println!();
    }
    let png = a.out.with_extension("png");
    prm_eval::write_outputs(&curves, &a.out, &png)?;
    println!("curves: {}\nplot: {}", a.out.display(), png.display());
    Ok(())
}
