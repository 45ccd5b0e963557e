//! `canon eval cot`: chain-of-thought prompting and self-consistency (paper 18) on any model:
//! greedy answers with and without rationales, then m sampled rationales per problem and their
//! majority vote, for every m asked.

use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_agent::cot::{self, Problem};
use canon_agent::cot_run::{CotRun, CotSummary, run_cot, summarize};
use clap::Args;
use serde_json::json;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon eval cot --model smollm2 --generate 40 --steps 1-4 --samples 1,3,5,10
  canon eval cot --model smollm2 --problems problems.jsonl --shots 0 --json
  canon eval cot --generate 200 --steps 1-6 --write-problems data/cot/problems.jsonl
  canon eval cot --generate 20000 --steps 1-4 --seed 777 --write-text runs/cot-data/rationale.txt --text-format rationale
  canon eval cot --generate 20000 --steps 1-6 --max-value 20 --ops +,- --write-text runs/cot-data/direct.txt --text-format direct

Problems file: one {\"question\": \"...\", \"answer\": \"42\"} a line (answer compared as a number
where it parses as one). Without --problems, multi-step arithmetic word problems are generated
(seeded; demonstrations come from a disjoint seed).")]
pub struct CotArgs {
    /// Language model: an alias (smollm2), a .gguf file, or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Problems (JSONL); otherwise --generate N problems.
    #[arg(long, value_name = "FILE")]
    pub problems: Option<PathBuf>,
    /// Generated problems when no --problems.
    #[arg(long, default_value_t = 40)]
    pub generate: usize,
    /// Steps of the generated problems, MIN-MAX.
    #[arg(long, default_value = "1-4")]
    pub steps: String,
    /// Largest count a generated problem reaches (40..=999 for a model's evaluation; down to 5
    /// with --write-text/--write-problems or --ops; 20 with --ops +,- gives the arithmetic that
    /// the small trained GPTs of configs/cot-gpt*.toml learn).
    #[arg(long, default_value_t = cot::DEFAULT_MAX_VALUE)]
    pub max_value: i64,
    /// Operations of the generated problems' steps, from +,-,*,/ (at least - and one of + or *).
    #[arg(long, default_value = "+,-,*,/")]
    pub ops: String,
    /// Worked demonstrations in the prompt (0 = zero-shot "Let's think step by step").
    #[arg(long, default_value_t = 4)]
    pub shots: usize,
    /// Numbers of sampled rationales to vote over (the largest is sampled; smaller m use its first m).
    #[arg(long, default_value = "1,3,5,10", value_delimiter = ',')]
    pub samples: Vec<usize>,
    /// Sampling temperature of the voted rationales.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Longest rationale in tokens.
    #[arg(long, default_value_t = 160)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the generated problems (with rationales) to FILE and stop.
    #[arg(long, value_name = "FILE")]
    pub write_problems: Option<PathBuf>,
    /// Write the generated problems as a training text for `canon train` (`data.corpus`) and
    /// stop: `rationale` ("Q: ...\nA: Let's think step by step. <rationale>") or `direct`
    /// ("Q: ...\nA: The answer is N."), one blank line between problems; the prompts that
    /// `--shots 0` gives (zero-shot CoT and direct) are exactly these prefixes.
    #[arg(long, value_name = "FILE", requires = "text_format")]
    pub write_text: Option<PathBuf>,
    /// The target of --write-text: rationale or direct.
    #[arg(long, value_name = "rationale|direct")]
    pub text_format: Option<String>,
    /// One JSON object with every figure and the per-problem answers.
    #[arg(long)]
    pub json: bool,
}

fn parse_steps(s: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (usize, usize) = (
        a.trim()
            .parse()
            .with_context(|| format!("--steps: expected MIN-MAX such as 1-4, found '{s}'"))?,
        b.trim()
            .parse()
            .with_context(|| format!("--steps: expected MIN-MAX such as 1-4, found '{s}'"))?,
    );
    if a == 0 || b < a || b > 12 {
        bail!("--steps: expected 1 ≤ MIN ≤ MAX ≤ 12, found '{s}'");
    }
    Ok((a, b))
}

pub fn run(a: CotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (lo, hi) = parse_steps(&a.steps)?;
    if a.samples.is_empty() || a.samples.contains(&0) || a.samples.iter().any(|&m| m > 64) {
        bail!(
            "--samples: expected numbers between 1 and 64, found {:?}",
            a.samples
        );
    }
    if !(a.temperature > 0.0 && a.temperature <= 2.0) {
        bail!("--temperature must be in (0, 2], found {}", a.temperature);
    }
    if a.max_tokens == 0 || a.max_tokens > 2048 {
        bail!(
            "--max-tokens must be between 1 and 2048, found {}",
            a.max_tokens
        );
    }
    let ops = cot::GenOptions::parse_ops(&a.ops).map_err(|e| anyhow::anyhow!("--ops: {e}"))?;
    // Below 40 only for the generator's outputs or with the operations given (the generator as
    // the evaluation of a pretrained model sees it stays at 40 or more).
    let small_ok = a.write_text.is_some() || a.write_problems.is_some() || ops != cot::OPS;
    let min = if small_ok { cot::MIN_MAX_VALUE } else { 40 };
    if !(min..=cot::DEFAULT_MAX_VALUE).contains(&a.max_value) {
        bail!(
            "--max-value: expected a number between {min} and {}{}, found {}",
            cot::DEFAULT_MAX_VALUE,
            if small_ok {
                ""
            } else {
                " (down to 5 with --write-text, --write-problems or --ops)"
            },
            a.max_value
        );
    }
    let gen_opts = cot::GenOptions {
        max_value: a.max_value,
        ops,
    };
    gen_opts
        .check()
        .map_err(|e| anyhow::anyhow!("--ops: {e}"))?;
    // Demonstrations come from another seed than the test problems, so none is tested.
    let demos = cot::generate_with(a.shots, lo, hi, &gen_opts, a.seed ^ 0xD3A0)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let problems: Vec<Problem> = match &a.problems {
        Some(p) => {
            let text = canon_fs::lines::read_text(p)?;
            cot::parse_problems(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => {
            if a.generate == 0 {
                bail!("--generate must be at least 1");
            }
            cot::generate_with(a.generate, lo, hi, &gen_opts, a.seed)
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    if let Some(out) = &a.write_problems {
        let mut s = String::new();
        for p in &problems {
            s.push_str(&serde_json::to_string(p)?);
            s.push('\n');
        }
        super::write_atomic(out, &s)?;
        println!("wrote {} problems to {}", problems.len(), out.display());
        return Ok(());
    }
    if let Some(out) = &a.write_text {
        let rationale = match a.text_format.as_deref() {
            Some("rationale") => true,
            Some("direct") => false,
            o => anyhow::bail!("--text-format: expected rationale or direct, found {o:?}"),
        };
        let mut s = String::new();
        for p in &problems {
            let target = if rationale {
                format!("Let's think step by step. {}", p.rationale)
            } else {
                format!("The answer is {}.", p.answer)
            };
            s.push_str(&format!("Q: {}\nA: {target}\n\n", p.question));
        }
        super::write_atomic(out, &s)?;
        println!("wrote {} problems to {}", problems.len(), out.display());
        return Ok(());
    }
    let o = CotRun {
        shots: a.shots,
        samples: *a.samples.iter().max().unwrap_or(&1),
        temperature: a.temperature,
        max_tokens: a.max_tokens,
        seed: a.seed,
    };
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let engine = canon_infer::Engine::start(
        lm,
        canon_infer::EngineConfig {
            slots: o.engine_slots(),
            ..Default::default()
        },
    )?;
    let pb = crate::progress::bar(
        a.json || ctx.quiet,
        problems.len() as u64,
        "{bar:30} {pos}/{len} problems, {elapsed} (eta {eta})",
    );
    let rows = run_cot(&engine, &problems, &demos, &o, &mut || pb.inc(1));
    pb.finish_and_clear();
    engine.shutdown();
    let rows = rows?;
    let CotSummary {
        direct,
        greedy,
        vote,
        by_steps,
    } = summarize(&rows, &a.samples);
    if a.json {
        let per: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"question": r.problem.question, "answer": r.problem.answer,
                    "steps": r.problem.steps, "direct": r.direct, "greedy_cot": r.greedy,
                    "sampled": r.sampled, "vote": cot::majority(&r.sampled),
                    "greedy_cot_text": r.texts[1]})
            })
            .collect();
        println!(
            "{}",
            json!({
                "model": a.model, "problems": rows.len(), "shots": a.shots,
                "style": if a.shots == 0 { "zero-shot cot" } else { "few-shot cot" },
                "accuracy_direct": direct, "accuracy_greedy_cot": greedy,
                "accuracy_vote": vote.iter().map(|(m, v)| json!({"m": m, "accuracy": v})).collect::<Vec<_>>(),
                "by_steps": by_steps.iter().map(|(s, (k, d, c))| json!({"steps": s, "n": k, "direct": *d as f64 / *k as f64, "greedy_cot": *c as f64 / *k as f64})).collect::<Vec<_>>(),
                "per_problem": per,
            })
        );
        return Ok(());
    }
    println!(
        "{} problems, {} ({} shots), model {}",
        rows.len(),
        if a.shots == 0 {
            "zero-shot \"Let's think step by step\""
        } else {
            "few-shot chain of thought"
        },
        a.shots,
        a.model
    );
    println!("  direct answer (greedy)        {:5.1} %", 100.0 * direct);
    println!("  chain of thought (greedy)     {:5.1} %", 100.0 * greedy);
    for (m, v) in &vote {
        println!(
            "  self-consistency, m = {m:<3}    {:5.1} %   (temperature {})",
            100.0 * v,
            a.temperature
        );
    }
    if by_steps.len() > 1 || by_steps.keys().any(|&s| s > 0) {
        println!("  by steps: steps  n  direct  cot");
        for (s, (k, d, c)) in &by_steps {
            println!(
                "            {s:>5} {k:>2}  {:5.1} % {:5.1} %",
                100.0 * *d as f64 / *k as f64,
                100.0 * *c as f64 / *k as f64
            );
        }
    }
    Ok(())
}
