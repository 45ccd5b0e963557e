//! The stages of `canon data filter` and the inputs of `canon data compare`, in the order the
//! command runs them: sample snippets from the corpus, decontaminate them, label them and split the
//! labelled sample, fit the classifier on their embeddings (computed by the caller, which owns the
//! encoder and the progress bar), keep the snippets above the threshold, and write the rows.
//!
//! The parts: `compare` (reading the rows back for `canon data compare`) and `run` (the whole
//! filter with its settings and events); the stages and the row files are here.

mod compare;
mod run;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};

use super::classify::{ClassifierKind, QualityModel, accuracy, filter_indices, roc_auc};
use super::corpus::{CodeCorpus, Snippet};
use super::dedup::Decontaminator;
use super::quality::{self, Assessment, HEURISTIC_METHOD};
use crate::{Result, ScaleError};

pub use compare::*;
pub use run::*;

/// One line of `snippets.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnippetRow {
    pub id: String,
    /// `train` (may be trained on) or `eval` (held-out files).
    pub pool: String,
    pub label: u8,
    pub score: i32,
    pub method: String,
    /// Classifier probability (training pool only).
    pub prob: Option<f64>,
    pub kept: bool,
    /// In the classifier's labelled sample: `fit` or `heldout`.
    pub sample: Option<String>,
    pub text: String,
}

/// Where pip installs pure-Python packages: `arg` if given, else what `python3` reports.
pub fn site_packages_dir(arg: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.clone());
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .map_err(|e| ScaleError::Io {
            path: "cannot run python3 to find site-packages; pass --site-packages DIR".into(),
            message: e.to_string(),
        })?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !p.is_dir() {
        return Err(ScaleError::Msg(
            "python3 did not report a site-packages folder; pass --site-packages DIR".into(),
        ));
    }
    Ok(p)
}

/// Writes one JSON object per line, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut s = String::new();
    for r in rows {
        s += &serde_json::to_string(r).map_err(|e| ScaleError::Msg(e.to_string()))?;
        s.push('\n');
    }
    write_text(path, &s)
}

/// Writes `text` atomically ("cannot write PATH: ..." on failure).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    canon_fs::write_atomic(path, text.as_bytes()).map_err(|e| ScaleError::Io {
        path: format!("cannot write {}", path.display()),
        message: e.to_string(),
    })
}

/// A seeded sample of at most `max` snippets, in corpus order.
pub fn sample_snippets(all: &[Snippet], max: usize, rng: &mut SplitMix64) -> Vec<Snippet> {
    let mut idx: Vec<usize> = (0..all.len()).collect();
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    idx.truncate(max);
    idx.sort_unstable();
    idx.into_iter().map(|i| all[i].clone()).collect()
}

/// Drops the snippets that match a problem (`(task_id, prompt + canonical solution)`); returns one
/// JSON record per dropped snippet (`id`, `task_id`, `match`).
pub fn decontaminate(
    sample: &mut Vec<Snippet>,
    problems: &[(String, String)],
) -> Vec<serde_json::Value> {
    let texts: Vec<String> = problems.iter().map(|(_, t)| t.clone()).collect();
    let d = Decontaminator::with_defaults(&texts);
    let mut contaminated = Vec::new();
    sample.retain(|s| match d.check(&s.text) {
        Some(m) => {
            contaminated.push(serde_json::json!({
                "id": s.id, "task_id": problems[m.problem].0, "match": m.kind
            }));
            false
        }
        None => true,
    });
    contaminated
}

/// Held-out files: every tenth kept file (by manifest index) never trains any arm.
pub fn is_eval(s: &Snippet) -> bool {
    s.file.is_multiple_of(10)
}

/// The labels of a sample and its split: the training pool, and the labelled sample (the first
/// `label_sample` training-pool snippets in a seeded order) cut 4:1 into fit and held-out parts.
#[derive(Clone)]
pub struct LabelPlan {
    pub labels: Vec<Assessment>,
    /// Sample indices of the training pool, ascending.
    pub train_idx: Vec<usize>,
    /// The labelled sample (sample indices).
    pub labelled: Vec<usize>,
    pub n_fit: usize,
    /// Labels that replace the heuristic ones (a judge's), by sample index, with how they were
    /// made.
    pub overrides: std::collections::HashMap<usize, u8>,
    pub override_method: Option<String>,
}

impl LabelPlan {
    pub fn new(sample: &[Snippet], label_sample: usize, rng: &mut SplitMix64) -> Self {
        let labels: Vec<Assessment> = sample.iter().map(|s| quality::assess(&s.text)).collect();
        let train_idx: Vec<usize> = (0..sample.len())
            .filter(|&i| !is_eval(&sample[i]))
            .collect();
        let mut lab = train_idx.clone();
        for i in (1..lab.len()).rev() {
            lab.swap(i, rng.below(i + 1));
        }
        lab.truncate(label_sample);
        let n_fit = lab.len() * 4 / 5;
        LabelPlan {
            labels,
            train_idx,
            labelled: lab,
            n_fit,
            overrides: Default::default(),
            override_method: None,
        }
    }

    /// Snippet `i`'s label: the override if there is one, else the heuristic label.
    pub fn label(&self, i: usize) -> u8 {
        self.overrides
            .get(&i)
            .copied()
            .unwrap_or(self.labels[i].educational as u8)
    }

    /// How snippet `i`'s label was made.
    pub fn method(&self, i: usize) -> String {
        match (&self.override_method, self.overrides.contains_key(&i)) {
            (Some(m), true) => m.clone(),
            _ => HEURISTIC_METHOD.into(),
        }
    }

    /// How the labelled sample's labels were made.
    pub fn sample_method(&self) -> String {
        self.override_method
            .clone()
            .unwrap_or_else(|| HEURISTIC_METHOD.into())
    }

    pub fn fit_idx(&self) -> &[usize] {
        &self.labelled[..self.n_fit]
    }

    pub fn held_idx(&self) -> &[usize] {
        &self.labelled[self.n_fit..]
    }

    /// The texts to embed: each training-pool snippet's first `chars` characters.
    pub fn embed_texts(&self, sample: &[Snippet], chars: usize) -> Vec<String> {
        self.train_idx
            .iter()
            .map(|&i| sample[i].text.chars().take(chars).collect())
            .collect()
    }

    /// Position of a sample index within the training pool (for its embedding).
    pub(crate) fn pos(&self, i: usize) -> Option<usize> {
        self.train_idx.binary_search(&i).ok()
    }
}

/// One classifier's figures on the labelled sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierScore {
    pub classifier: ClassifierKind,
    pub heldout_accuracy: f64,
    pub heldout_roc_auc: Option<f64>,
    pub train_accuracy: f64,
}

/// The fitted classifier, its held-out figures and the filtered rows.
pub struct Classified {
    /// The classifier that filtered.
    pub model: QualityModel,
    pub kind: ClassifierKind,
    pub heldout_accuracy: f64,
    pub majority: f64,
    pub roc_auc: Option<f64>,
    pub train_accuracy: f64,
    /// Every classifier's figures (forest and logistic, fitted on the same rows).
    pub scores: Vec<ClassifierScore>,
    pub rows: Vec<SnippetRow>,
    pub kept: usize,
}

/// Fits both classifiers on the fit part's embeddings (`emb[p]` is training-pool snippet `p`'s),
/// scores the held-out part, and keeps the training-pool snippets to which the `kind` classifier
/// gives probability ≥ `threshold`.
pub fn classify(
    sample: &[Snippet],
    plan: &LabelPlan,
    emb: &[Vec<f32>],
    threshold: f64,
    kind: ClassifierKind,
    seed: u64,
) -> Result<Classified> {
    let gather = |ids: &[usize]| -> (Vec<Vec<f32>>, Vec<u8>) {
        ids.iter()
            .filter_map(|&i| plan.pos(i).map(|p| (emb[p].clone(), plan.label(i))))
            .unzip()
    };
    let (xf, yf) = gather(plan.fit_idx());
    let (xh, yh) = gather(plan.held_idx());
    let mut chosen = None;
    let mut scores = Vec::new();
    for k in ClassifierKind::ALL {
        let model = QualityModel::fit(k, &xf, &yf, seed)?;
        let ph: Vec<f64> = xh.iter().map(|x| model.prob(x)).collect();
        let pf: Vec<f64> = xf.iter().map(|x| model.prob(x)).collect();
        scores.push(ClassifierScore {
            classifier: k,
            heldout_accuracy: accuracy(&ph, &yh),
            heldout_roc_auc: roc_auc(&ph, &yh),
            train_accuracy: accuracy(&pf, &yf),
        });
        if k == kind {
            chosen = Some((model, scores.len() - 1));
        }
    }
    let Some((model, si)) = chosen else {
        return Err(ScaleError::Msg(format!(
            "classifier {} was not fitted",
            kind.name()
        )));
    };
    let majority = {
        let pos = yh.iter().filter(|&&y| y == 1).count() as f64 / yh.len().max(1) as f64;
        pos.max(1.0 - pos)
    };
    let probs: Vec<f64> = emb.iter().map(|x| model.prob(x)).collect();
    let kept: HashSet<usize> = filter_indices(&probs, threshold)
        .into_iter()
        .map(|p| plan.train_idx[p])
        .collect();
    let rows: Vec<SnippetRow> = sample
        .iter()
        .enumerate()
        .map(|(i, s)| SnippetRow {
            id: s.id.clone(),
            pool: if is_eval(s) { "eval" } else { "train" }.into(),
            label: plan.label(i),
            score: plan.labels[i].score,
            method: plan.method(i),
            prob: plan.pos(i).map(|p| probs[p]),
            kept: kept.contains(&i),
            sample: if plan.fit_idx().contains(&i) {
                Some("fit".into())
            } else if plan.held_idx().contains(&i) {
                Some("heldout".into())
            } else {
                None
            },
            text: s.text.clone(),
        })
        .collect();
    let s = &scores[si];
    Ok(Classified {
        heldout_accuracy: s.heldout_accuracy,
        roc_auc: s.heldout_roc_auc,
        train_accuracy: s.train_accuracy,
        majority,
        kind,
        scores,
        model,
        rows,
        kept: kept.len(),
    })
}

/// The figures of `filter-report.json`.
#[allow(clippy::too_many_arguments)]
pub fn filter_report(
    c: &CodeCorpus,
    snippets_in_corpus: usize,
    contaminated: usize,
    plan: &LabelPlan,
    cl: &Classified,
    embed_model: &str,
    embed_chars: usize,
    threshold: f64,
) -> serde_json::Value {
    let unknown = c.manifest.iter().filter(|m| m.licence == "unknown").count();
    let lab = &plan.labelled;
    serde_json::json!({
        "files": c.manifest.len(), "duplicates": c.duplicates, "licence_unknown": unknown,
        "snippets_in_corpus": snippets_in_corpus, "sampled": cl.rows.len() + contaminated,
        "contaminated": contaminated,
        "train_pool": plan.train_idx.len(), "eval_pool": cl.rows.len() - plan.train_idx.len(),
        "label_method": plan.sample_method(),
        "labelled": lab.len(), "labelled_positive_fraction":
            lab.iter().filter(|&&i| plan.label(i) == 1).count() as f64 / lab.len().max(1) as f64,
        "classifier": cl.kind.describe(), "classifiers": cl.scores,
        "embedding_model": embed_model, "embedded_characters_per_snippet": embed_chars,
        "heldout_accuracy": cl.heldout_accuracy, "heldout_majority_baseline": cl.majority,
        "heldout_roc_auc": cl.roc_auc, "threshold": threshold, "kept": cl.kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snippet(file: usize, text: &str) -> Snippet {
        Snippet {
            id: format!("f{file}.py#0"),
            file,
            text: text.to_string(),
        }
    }

    #[test]
    fn sampling_is_seeded_and_keeps_corpus_order() {
        let all: Vec<Snippet> = (0..50).map(|i| snippet(i, &format!("x = {i}"))).collect();
        let a = sample_snippets(&all, 10, &mut SplitMix64::new(3));
        let b = sample_snippets(&all, 10, &mut SplitMix64::new(3));
        assert_eq!(a.len(), 10);
        assert_eq!(
            a.iter().map(|s| &s.id).collect::<Vec<_>>(),
            b.iter().map(|s| &s.id).collect::<Vec<_>>()
        );
        assert!(a.windows(2).all(|w| w[0].file < w[1].file));
    }

    #[test]
    fn every_tenth_file_is_held_out_and_never_labelled() {
        let sample: Vec<Snippet> = (0..40)
            .map(|i| snippet(i, "def f():\n    pass\n"))
            .collect();
        let plan = LabelPlan::new(&sample, 20, &mut SplitMix64::new(1));
        assert_eq!(plan.train_idx.len(), 36);
        assert_eq!(plan.labelled.len(), 20);
        assert_eq!(plan.fit_idx().len(), 16);
        assert!(plan.labelled.iter().all(|&i| !is_eval(&sample[i])));
    }

    #[test]
    fn the_classifier_keeps_what_scores_above_the_threshold_and_rows_record_it() {
        // Documented functions (educational) against bare assignments, embedded on one axis.
        let good = "def gcd(a, b):\n    \"\"\"Greatest common divisor of a and b by Euclid's algorithm.\n\n    Each step replaces (a, b) by (b, a mod b); the remainder shrinks,\n    so the loop ends, and the last non-zero value divides both.\n    \"\"\"\n    while b:\n        # The pair keeps the same divisors.\n        a, b = b, a % b\n    return a\n";
        let bad = "x=1\ny=2\nz=3\nw=4\n";
        let sample: Vec<Snippet> = (0..60)
            .map(|i| snippet(i, if i % 2 == 0 { good } else { bad }))
            .collect();
        let plan = LabelPlan::new(&sample, 40, &mut SplitMix64::new(5));
        let emb: Vec<Vec<f32>> = plan
            .train_idx
            .iter()
            .map(|&i| {
                let e = plan.labels[i].educational as u8 as f32;
                vec![e * 2.0 - 1.0, 0.5]
            })
            .collect();
        let positives = plan
            .train_idx
            .iter()
            .filter(|&&i| plan.labels[i].educational)
            .count();
        assert!(
            positives > 0 && positives < plan.train_idx.len(),
            "both labels occur"
        );
        let cl = classify(&sample, &plan, &emb, 0.5, ClassifierKind::Logistic, 1).expect("fit");
        assert_eq!(cl.rows.len(), sample.len());
        assert_eq!(cl.kept, positives);
        assert!(cl.heldout_accuracy > 0.99);
        assert!(
            cl.rows
                .iter()
                .all(|r| r.kept == (r.pool == "train" && r.label == 1))
        );
        assert!(
            cl.rows
                .iter()
                .filter(|r| r.pool == "eval")
                .all(|r| r.prob.is_none())
        );
    }

    #[test]
    fn compare_inputs_reads_the_filter_folder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let row = |pool: &str, label: u8, kept: bool, text: &str| SnippetRow {
            id: text.into(),
            pool: pool.into(),
            label,
            score: 0,
            method: "m".into(),
            prob: None,
            kept,
            sample: None,
            text: text.into(),
        };
        let rows = vec![
            row("train", 1, true, "a"),
            row("train", 0, false, "b"),
            row("eval", 1, false, "c"),
            row("eval", 0, false, "d"),
        ];
        write_jsonl(&tmp.path().join("snippets.jsonl"), &rows).expect("write");
        let (arms, evals) = compare_inputs(tmp.path()).expect("read");
        assert_eq!(arms.len(), 2);
        assert_eq!(arms[0].docs, ["a", "b"]);
        assert_eq!(arms[1].docs, ["a"]);
        assert_eq!(evals[0].docs, ["c"]);
        assert_eq!(evals[1].docs, ["c", "d"]);
        let e = compare_inputs(&tmp.path().join("missing"))
            .err()
            .expect("no folder");
        assert!(e.to_string().contains("run canon data filter first"), "{e}");
    }
}
