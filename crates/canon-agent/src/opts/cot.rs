//! `canon eval cot`'s settings (with the `cli` feature also its argument struct, the doc comments
//! being the `--help` text): their checks, the problems and demonstrations they select, the files
//! `--write-problems`/`--write-text` write, and the printed report of a run.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::json;

use crate::cot::{self, Problem};
use crate::cot_run::{CotRow, CotRun, CotSummary, summarize};
use crate::{AgentError, Result};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon eval cot --model smollm2 --generate 40 --steps 1-4 --samples 1,3,5,10
  canon eval cot --model smollm2 --problems problems.jsonl --shots 0 --json
  canon eval cot --generate 200 --steps 1-6 --write-problems data/cot/problems.jsonl
  canon eval cot --generate 20000 --steps 1-4 --seed 777 --write-text runs/cot-data/rationale.txt --text-format rationale
  canon eval cot --generate 20000 --steps 1-6 --max-value 20 --ops +,- --write-text runs/cot-data/direct.txt --text-format direct

Problems file: one {\"question\": \"...\", \"answer\": \"42\"} a line (answer compared as a number
where it parses as one). Without --problems, multi-step arithmetic word problems are generated
(seeded; demonstrations come from a disjoint seed).")
)]
pub struct CotArgs {
    /// Language model: an alias (smollm2), a .gguf file, or an HF-style folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Problems (JSONL); otherwise --generate N problems.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub problems: Option<PathBuf>,
    /// Generated problems when no --problems.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 40))]
    pub generate: usize,
    /// Steps of the generated problems, MIN-MAX.
    #[cfg_attr(feature = "cli", arg(long, default_value = "1-4"))]
    pub steps: String,
    /// Largest count a generated problem reaches (40..=999 for a model's evaluation; down to 5
    /// with --write-text/--write-problems or --ops; 20 with --ops +,- gives the arithmetic that
    /// the small trained GPTs of configs/cot-gpt*.toml learn).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = cot::DEFAULT_MAX_VALUE))]
    pub max_value: i64,
    /// Operations of the generated problems' steps, from +,-,*,/ (at least - and one of + or *).
    #[cfg_attr(feature = "cli", arg(long, default_value = "+,-,*,/"))]
    pub ops: String,
    /// Worked demonstrations in the prompt (0 = zero-shot "Let's think step by step").
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub shots: usize,
    /// Numbers of sampled rationales to vote over (the largest is sampled; smaller m use its first m).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "1,3,5,10", value_delimiter = ',')
    )]
    pub samples: Vec<usize>,
    /// Sampling temperature of the voted rationales.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.7))]
    pub temperature: f32,
    /// Longest rationale in tokens.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 160))]
    pub max_tokens: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seed: u64,
    /// Write the generated problems (with rationales) to FILE and stop.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub write_problems: Option<PathBuf>,
    /// Write the generated problems as a training text for `canon train` (`data.corpus`) and
    /// stop: `rationale` ("Q: ...\nA: Let's think step by step. <rationale>") or `direct`
    /// ("Q: ...\nA: The answer is N."), one blank line between problems; the prompts that
    /// `--shots 0` gives (zero-shot CoT and direct) are exactly these prefixes.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "FILE", requires = "text_format")
    )]
    pub write_text: Option<PathBuf>,
    /// The target of --write-text: rationale or direct.
    #[cfg_attr(feature = "cli", arg(long, value_name = "rationale|direct"))]
    pub text_format: Option<String>,
    /// One JSON object with every figure and the per-problem answers.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

/// What the settings ask for once checked: the problems, the demonstrations and the run, or the
/// file to write instead of running a model.
#[derive(Debug)]
pub struct CotPlan {
    pub problems: Vec<Problem>,
    pub demos: Vec<Problem>,
    pub run: CotRun,
    /// `--write-problems` or `--write-text`: the path and its contents (no model is run).
    pub write: Option<(PathBuf, String)>,
}

fn task(msg: String) -> AgentError {
    AgentError::Task(msg)
}

/// `MIN-MAX` (or one number) of `--steps`, 1 ≤ MIN ≤ MAX ≤ 12.
pub fn parse_steps(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let num = |x: &str| {
        x.trim().parse::<usize>().map_err(|e| {
            task(format!(
                "--steps: expected MIN-MAX such as 1-4, found '{s}': {e}"
            ))
        })
    };
    let (a, b) = (num(a)?, num(b)?);
    if a == 0 || b < a || b > 12 {
        return Err(task(format!(
            "--steps: expected 1 ≤ MIN ≤ MAX ≤ 12, found '{s}'"
        )));
    }
    Ok((a, b))
}

impl CotArgs {
    /// Checks the settings and reads or generates the problems and demonstrations.
    pub fn plan(&self) -> Result<CotPlan> {
        let a = self;
        let (lo, hi) = parse_steps(&a.steps)?;
        if a.samples.is_empty() || a.samples.contains(&0) || a.samples.iter().any(|&m| m > 64) {
            return Err(task(format!(
                "--samples: expected numbers between 1 and 64, found {:?}",
                a.samples
            )));
        }
        if !(a.temperature > 0.0 && a.temperature <= 2.0) {
            return Err(task(format!(
                "--temperature must be in (0, 2], found {}",
                a.temperature
            )));
        }
        if a.max_tokens == 0 || a.max_tokens > 2048 {
            return Err(task(format!(
                "--max-tokens must be between 1 and 2048, found {}",
                a.max_tokens
            )));
        }
        let ops = cot::GenOptions::parse_ops(&a.ops).map_err(|e| task(format!("--ops: {e}")))?;
        // Below 40 only for the generator's outputs or with the operations given (the generator
        // as the evaluation of a pretrained model sees it stays at 40 or more).
        let small_ok = a.write_text.is_some() || a.write_problems.is_some() || ops != cot::OPS;
        let min = if small_ok { cot::MIN_MAX_VALUE } else { 40 };
        if !(min..=cot::DEFAULT_MAX_VALUE).contains(&a.max_value) {
            return Err(task(format!(
                "--max-value: expected a number between {min} and {}{}, found {}",
                cot::DEFAULT_MAX_VALUE,
                if small_ok {
                    ""
                } else {
                    " (down to 5 with --write-text, --write-problems or --ops)"
                },
                a.max_value
            )));
        }
        let gen_opts = cot::GenOptions {
            max_value: a.max_value,
            ops,
        };
        gen_opts.check().map_err(|e| task(format!("--ops: {e}")))?;
        // Demonstrations come from another seed than the test problems, so none is tested.
        let demos = cot::generate_with(a.shots, lo, hi, &gen_opts, a.seed ^ 0xD3A0)
            .map_err(|e| task(e.to_string()))?;
        let problems: Vec<Problem> = match &a.problems {
            Some(p) => {
                let text = canon_fs::lines::read_text(p)?;
                cot::parse_problems(&text).map_err(|e| task(format!("{}: {e}", p.display())))?
            }
            None => {
                if a.generate == 0 {
                    return Err(task("--generate must be at least 1".into()));
                }
                cot::generate_with(a.generate, lo, hi, &gen_opts, a.seed)
                    .map_err(|e| task(e.to_string()))?
            }
        };
        let write = if let Some(out) = &a.write_problems {
            Some((out.clone(), problems_jsonl(&problems)))
        } else if let Some(out) = &a.write_text {
            let rationale = match a.text_format.as_deref() {
                Some("rationale") => true,
                Some("direct") => false,
                o => {
                    return Err(task(format!(
                        "--text-format: expected rationale or direct, found {o:?}"
                    )));
                }
            };
            Some((out.clone(), training_text(&problems, rationale)))
        } else {
            None
        };
        let run = CotRun {
            shots: a.shots,
            samples: *a.samples.iter().max().unwrap_or(&1),
            temperature: a.temperature,
            max_tokens: a.max_tokens,
            seed: a.seed,
        };
        Ok(CotPlan {
            problems,
            demos,
            run,
            write,
        })
    }

    /// The printed report of a run: one JSON object with `--json`, else the accuracy table.
    pub fn report(&self, rows: &[CotRow]) -> String {
        let a = self;
        let CotSummary {
            direct,
            greedy,
            vote,
            by_steps,
            cut_greedy,
            cut_sampled,
        } = summarize(rows, &a.samples);
        let sampled = rows.iter().map(|r| r.sampled.len()).sum::<usize>();
        if a.json {
            let per: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({"question": r.problem.question, "answer": r.problem.answer,
                        "steps": r.problem.steps, "direct": r.direct, "greedy_cot": r.greedy,
                        "sampled": r.sampled, "vote": cot::majority(&r.sampled),
                        "greedy_cot_text": r.texts[1],
                        "greedy_cot_cut": r.cut.get(1).copied().unwrap_or(false)})
                })
                .collect();
            let v = json!({
                "model": a.model, "problems": rows.len(), "shots": a.shots,
                "style": if a.shots == 0 { "zero-shot cot" } else { "few-shot cot" },
                "accuracy_direct": direct, "accuracy_greedy_cot": greedy,
                "accuracy_vote": vote.iter().map(|(m, v)| json!({"m": m, "accuracy": v})).collect::<Vec<_>>(),
                "by_steps": by_steps.iter().map(|(s, (k, d, c))| json!({"steps": s, "n": k, "direct": *d as f64 / *k as f64, "greedy_cot": *c as f64 / *k as f64})).collect::<Vec<_>>(),
                "cut_greedy_cot": cut_greedy, "cut_sampled": cut_sampled,
                "per_problem": per,
            });
            return format!("{v}\n");
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
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
        let _ = writeln!(
            s,
            "  direct answer (greedy)        {:5.1} %",
            100.0 * direct
        );
        let _ = writeln!(
            s,
            "  chain of thought (greedy)     {:5.1} %",
            100.0 * greedy
        );
        for (m, v) in &vote {
            let _ = writeln!(
                s,
                "  self-consistency, m = {m:<3}    {:5.1} %   (temperature {})",
                100.0 * v,
                a.temperature
            );
        }
        if cut_greedy + cut_sampled > 0 {
            let _ = writeln!(
                s,
                "  cut at the length limit (--max-tokens {} or the model's context): {cut_greedy} of {} greedy rationales, {cut_sampled} of {sampled} samples; their answers are read from what was written",
                a.max_tokens,
                rows.len()
            );
        }
        if by_steps.len() > 1 || by_steps.keys().any(|&s| s > 0) {
            let _ = writeln!(s, "  by steps: steps     n   direct      cot");
            for (st, (k, d, c)) in &by_steps {
                let _ = writeln!(
                    s,
                    "            {st:>5} {k:>5}  {:5.1} %  {:5.1} %",
                    100.0 * *d as f64 / *k as f64,
                    100.0 * *c as f64 / *k as f64
                );
            }
        }
        s
    }
}

/// The problems as JSONL, one object a line (what `--problems` reads).
pub fn problems_jsonl(problems: &[Problem]) -> String {
    let mut s = String::new();
    for p in problems {
        // A struct of strings and numbers always serialises.
        s.push_str(&serde_json::to_string(p).unwrap_or_default());
        s.push('\n');
    }
    s
}

/// The problems as a training text: "Q: ...\nA: Let's think step by step. <rationale>" or
/// "Q: ...\nA: The answer is N.", one blank line between problems.
pub fn training_text(problems: &[Problem], rationale: bool) -> String {
    let mut s = String::new();
    for p in problems {
        let target = if rationale {
            format!("Let's think step by step. {}", p.rationale)
        } else {
            format!("The answer is {}.", p.answer)
        };
        let _ = write!(s, "Q: {}\nA: {target}\n\n", p.question);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_check() {
        assert_eq!(parse_steps("1-4").unwrap(), (1, 4));
        assert_eq!(parse_steps("3").unwrap(), (3, 3));
        let e = parse_steps("0-2").unwrap_err().to_string();
        assert!(e.contains("1 ≤ MIN ≤ MAX ≤ 12"), "{e}");
        let e = parse_steps("a-2").unwrap_err().to_string();
        assert!(
            e.starts_with("--steps: expected MIN-MAX such as 1-4, found 'a-2': "),
            "{e}"
        );
    }

    #[test]
    fn training_text_formats() {
        let p = cot::generate(1, 1, 1, 5);
        let r = training_text(&p, true);
        assert!(
            r.starts_with("Q: ") && r.contains("\nA: Let's think step by step. "),
            "{r}"
        );
        assert!(r.ends_with("\n\n"));
        let d = training_text(&p, false);
        assert_eq!(
            d,
            format!(
                "Q: {}\nA: The answer is {}.\n\n",
                p[0].question, p[0].answer
            )
        );
        assert_eq!(problems_jsonl(&p).lines().count(), 1);
    }
}
