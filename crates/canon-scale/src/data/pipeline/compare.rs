//! The inputs and the table of `canon data compare`: the filter's rows read back as arms and
//! evaluation sets.

use std::path::Path;

use super::SnippetRow;
use crate::data::experiment::{Arm, ArmResult, EvalSet};
use crate::{Result, ScaleError};

/// Reads `snippets.jsonl` written by `canon data filter`.
pub fn read_rows(path: &Path) -> Result<Vec<SnippetRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| ScaleError::Io {
        path: format!(
            "cannot read {} (run canon data filter first)",
            path.display()
        ),
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ScaleError::Io {
                path: format!("{} line {}: not a snippet row", path.display(), i + 1),
                message: e.to_string(),
            })
        })
        .collect()
}

/// The arms and held-out sets of `canon data compare` from a `canon data filter` folder:
/// unfiltered and filtered training pools, plus filtered + `synthetic.jsonl` when present; the
/// evaluation pool's textbook-labelled and whole parts.
pub fn compare_inputs(data: &Path) -> Result<(Vec<Arm>, Vec<EvalSet>)> {
    let rows = read_rows(&data.join("snippets.jsonl"))?;
    let texts = |f: &dyn Fn(&SnippetRow) -> bool| -> Vec<String> {
        rows.iter()
            .filter(|r| f(r))
            .map(|r| r.text.clone())
            .collect()
    };
    let mut arms = vec![
        Arm {
            name: "unfiltered".into(),
            docs: texts(&|r| r.pool == "train"),
        },
        Arm {
            name: "filtered".into(),
            docs: texts(&|r| r.pool == "train" && r.kept),
        },
    ];
    let synth_path = data.join("synthetic.jsonl");
    if synth_path.is_file() {
        let text = canon_fs::lines::read_text(&synth_path)?;
        let mut docs = texts(&|r| r.pool == "train" && r.kept);
        for (i, l) in text.lines().enumerate() {
            let item: crate::data::synth::SynthItem =
                serde_json::from_str(l).map_err(|e| ScaleError::Io {
                    path: format!(
                        "{} line {}: not a synthetic item",
                        synth_path.display(),
                        i + 1
                    ),
                    message: e.to_string(),
                })?;
            docs.push(item.text);
        }
        arms.push(Arm {
            name: "filtered+synthetic".into(),
            docs,
        });
    }
    let evals = vec![
        EvalSet {
            name: "eval-textbook".into(),
            docs: texts(&|r| r.pool == "eval" && r.label == 1),
        },
        EvalSet {
            name: "eval-all".into(),
            docs: texts(&|r| r.pool == "eval"),
        },
    ];
    Ok((arms, evals))
}

/// The evaluation sets of the table, in column order.
const SETS: [&str; 2] = ["eval-textbook", "eval-all"];

/// Mean and sample standard deviation (0 for one value).
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (m, 0.0);
    }
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

fn loss_of(r: &ArmResult, set: &str) -> Option<f64> {
    r.eval.iter().find(|(n, _)| n == set).map(|&(_, v)| v)
}

/// The Markdown of `compare.md`: one row per arm (with several seeds, each held-out loss as mean
/// ± standard deviation over the seeds, then every arm's difference from the unfiltered arm
/// trained with the same seed: mean ± standard deviation, and the seeds where the arm is ahead).
pub fn compare_table(res: &[ArmResult]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for r in res {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    let of = |name: &str| -> Vec<&ArmResult> { res.iter().filter(|r| r.name == name).collect() };
    if names.iter().all(|n| of(n).len() == 1) {
        return single_seed_table(res);
    }
    let mut md = String::from(
        "| training data | snippets | characters | tokens trained | seeds | eval-textbook loss | eval-all loss |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for name in &names {
        let runs = of(name);
        let cell = |set: &str| {
            let xs: Vec<f64> = runs.iter().filter_map(|r| loss_of(r, set)).collect();
            if xs.is_empty() {
                return "-".to_string();
            }
            let (m, sd) = mean_sd(&xs);
            format!("{m:.4} ± {sd:.4}")
        };
        let r0 = runs[0];
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            name,
            r0.train_docs,
            r0.train_tokens,
            r0.tokens_seen,
            runs.len(),
            cell(SETS[0]),
            cell(SETS[1])
        );
    }
    let base = of("unfiltered");
    if base.is_empty() {
        return md;
    }
    md += "\nDifference from unfiltered trained with the same seed (negative: lower loss than unfiltered):\n\n| training data | seeds | eval-textbook Δ | ahead on eval-textbook | eval-all Δ | ahead on eval-all |\n|---|---:|---:|---:|---:|---:|\n";
    for name in names.iter().filter(|n| **n != "unfiltered") {
        let mut row = format!("| {name} |");
        let mut cells = Vec::new();
        let mut paired = 0;
        for set in SETS {
            let d: Vec<f64> = of(name)
                .iter()
                .filter_map(|r| {
                    let b = base.iter().find(|b| b.seed == r.seed)?;
                    Some(loss_of(r, set)? - loss_of(b, set)?)
                })
                .collect();
            paired = paired.max(d.len());
            if d.is_empty() {
                cells.push("- | -".to_string());
                continue;
            }
            let (m, sd) = mean_sd(&d);
            let ahead = d.iter().filter(|x| **x < 0.0).count();
            cells.push(format!("{m:+.4} ± {sd:.4} | {ahead} of {}", d.len()));
        }
        row += &format!(" {paired} | {} |\n", cells.join(" | "));
        md += &row;
    }
    md
}

/// The one-seed table.
fn single_seed_table(res: &[ArmResult]) -> String {
    let mut md = String::from(
        "| training data | snippets | characters | tokens trained | eval-textbook loss | eval-all loss |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in res {
        let get = |k: &str| {
            r.eval
                .iter()
                .find(|(n, _)| n == k)
                .map_or("-".into(), |(_, v)| format!("{v:.4}"))
        };
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.train_docs,
            r.train_tokens,
            r.tokens_seen,
            get("eval-textbook"),
            get("eval-all")
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, seed: u64, textbook: f64, all: f64) -> ArmResult {
        ArmResult {
            name: name.into(),
            train_docs: 10,
            train_tokens: 1000,
            tokens_seen: 512,
            eval: vec![("eval-textbook".into(), textbook), ("eval-all".into(), all)],
            seconds: 1.0,
            seed,
        }
    }

    #[test]
    fn several_seeds_give_means_spreads_and_paired_differences() {
        // Three seeds; filtered is ahead on eval-textbook with seeds 1 and 2 only.
        let res = vec![
            run("unfiltered", 1, 2.0, 3.0),
            run("filtered", 1, 1.9, 3.1),
            run("unfiltered", 2, 2.2, 3.0),
            run("filtered", 2, 2.0, 3.2),
            run("unfiltered", 3, 2.1, 3.0),
            run("filtered", 3, 2.35, 3.3),
        ];
        let md = compare_table(&res);
        // Means and sample standard deviations: unfiltered textbook 2.1 ± 0.1.
        assert!(
            md.contains("| unfiltered | 10 | 1000 | 512 | 3 | 2.1000 ± 0.1000 | 3.0000 ± 0.0000 |"),
            "{md}"
        );
        // filtered − unfiltered by seed: −0.1, −0.2, +0.25 (mean −0.05/3); all: +0.1, +0.2, +0.3.
        let d = [-0.1f64, -0.2, 0.25];
        let m = d.iter().sum::<f64>() / 3.0;
        let sd = (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 2.0).sqrt();
        let want =
            format!("| filtered | 3 | {m:+.4} ± {sd:.4} | 2 of 3 | +0.2000 ± 0.1000 | 0 of 3 |");
        assert!(want.contains("-0.0167 ± 0.2363"), "{want}");
        assert!(md.contains(&want), "{md}\nwanted {want}");
        // One seed keeps the plain table.
        let one = compare_table(&res[..2]);
        assert!(
            one.contains("| filtered | 10 | 1000 | 512 | 1.9000 | 3.1000 |"),
            "{one}"
        );
        assert!(!one.contains("±"));
    }

    #[test]
    fn the_first_seed_keeps_the_one_seed_folder() {
        let out = Path::new("runs/c");
        assert_eq!(
            crate::data::experiment::arm_dir(out, "filtered", 0, 1337),
            out.join("filtered")
        );
        assert_eq!(
            crate::data::experiment::arm_dir(out, "filtered", 2, 1339),
            out.join("filtered-seed1339")
        );
    }
}
