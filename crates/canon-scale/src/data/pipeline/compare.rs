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

/// The Markdown table of `compare.md`.
pub fn compare_table(res: &[ArmResult]) -> String {
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
