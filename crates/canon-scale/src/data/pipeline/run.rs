//! The whole of `canon data filter`: its settings, the events it reports and `run_filter`, which
//! calls the stages in order.

use std::path::PathBuf;

use canon_nn::SplitMix64;

use super::*;
use crate::{Result, ScaleError};

/// Settings of `canon data filter`.
#[derive(Debug, Clone)]
pub struct FilterOpts {
    /// Output folder (created).
    pub out: PathBuf,
    pub max_snippets: usize,
    pub label_sample: usize,
    pub threshold: f64,
    pub embed_chars: usize,
    /// The embedding model's name, as reported.
    pub embed_model: String,
    /// The classifier that filters (both are fitted and reported).
    pub classifier: crate::data::classify::ClassifierKind,
    /// With a judge: `P(yes) ≥ judge_threshold` is educational.
    pub judge_threshold: f64,
    pub seed: u64,
}

impl FilterOpts {
    /// The settings are in range (checked before anything is read).
    pub fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(ScaleError::Msg(format!(
                "--threshold must be in [0, 1], found {}",
                self.threshold
            )));
        }
        if self.embed_chars == 0 {
            return Err(ScaleError::Msg("--embed-chars must be positive".into()));
        }
        if self.label_sample < 10 || self.max_snippets < self.label_sample {
            return Err(ScaleError::Msg(format!(
                "expected 10 ≤ --label-sample ≤ --max-snippets, found {} and {}",
                self.label_sample, self.max_snippets
            )));
        }
        Ok(())
    }
}

/// The labelled sample's embeddings and labels (`fit` and `heldout`, each `{x, y}`), for comparing
/// classifiers on the same features outside this program (`scripts/phi1_classifiers.py`).
pub fn write_labelled_embeddings(
    path: &std::path::Path,
    plan: &LabelPlan,
    emb: &[Vec<f32>],
) -> Result<()> {
    let part = |ids: &[usize]| {
        let (x, y): (Vec<&Vec<f32>>, Vec<u8>) = ids
            .iter()
            .filter_map(|&i| plan.pos(i).map(|p| (&emb[p], plan.label(i))))
            .unzip();
        serde_json::json!({"x": x, "y": y})
    };
    let v = serde_json::json!({
        "label_method": plan.sample_method(),
        "fit": part(plan.fit_idx()),
        "heldout": part(plan.held_idx()),
    });
    write_text(path, &v.to_string())
}

/// The benchmark problems to decontaminate against, as (id, text), read when needed.
pub type Benchmark<'a> = &'a mut dyn FnMut() -> Result<Vec<(String, String)>>;

/// Embeds a batch of texts.
pub type Embed<'a> = &'a mut dyn FnMut(&[String]) -> Result<Vec<Vec<f32>>>;

/// What `run_filter` reports along the way.
pub enum FilterEvent {
    /// A line for the log.
    Note(String),
    /// Snippets embedded so far, of the total.
    Embedded(usize, usize),
    /// Snippets judged so far, of the total.
    Judged(usize, usize),
}

/// `canon data filter` from end to end: the corpus of `roots` (manifest.jsonl), a sample of its snippets,
/// decontamination against `benchmark()`'s (id, text) problems unless it is `None`
/// (contaminated.jsonl), heuristic labels, the classifier on `embed`'s vectors (snippets.jsonl,
/// classifier.json) and the report (filter-report.json), which it returns. With a `judge`, the
/// labelled sample's labels are the judge's (judge-labels.jsonl, with the agreement with the
/// heuristic labels in the report) and the classifiers learn from them.
pub fn run_filter(
    o: &FilterOpts,
    roots: &[(PathBuf, crate::data::corpus::Origin)],
    benchmark: Option<Benchmark<'_>>,
    embed: Embed<'_>,
    judge: Option<&mut dyn crate::data::judge::Judge>,
    on: &mut dyn FnMut(FilterEvent),
) -> Result<serde_json::Value> {
    use crate::data::corpus;
    o.check()?;
    std::fs::create_dir_all(&o.out).map_err(|e| ScaleError::Io {
        path: format!("cannot create {}", o.out.display()),
        message: e.to_string(),
    })?;
    let c = corpus::collect(roots, 200_000)?;
    let unknown = c.manifest.iter().filter(|m| m.licence == "unknown").count();
    on(FilterEvent::Note(format!(
        "corpus: {} files kept ({:.1} MB), {} exact duplicates dropped, {} unreadable; licence unknown for {}",
        c.manifest.len(),
        c.texts.iter().map(String::len).sum::<usize>() as f64 / 1e6,
        c.duplicates,
        c.unreadable,
        unknown
    )));
    write_jsonl(&o.out.join("manifest.jsonl"), &c.manifest)?;
    let all = corpus::snippets(&c, 4, 2000);
    let mut rng = SplitMix64::new(o.seed);
    let mut sample = sample_snippets(&all, o.max_snippets, &mut rng);
    on(FilterEvent::Note(format!(
        "{} snippets in the corpus; {} sampled",
        all.len(),
        sample.len()
    )));
    let mut contaminated = Vec::new();
    if let Some(benchmark) = benchmark {
        let texts = benchmark()?;
        contaminated = decontaminate(&mut sample, &texts);
        on(FilterEvent::Note(format!(
            "decontamination against {} HumanEval problems: {} snippets dropped",
            texts.len(),
            contaminated.len()
        )));
    }
    write_jsonl(&o.out.join("contaminated.jsonl"), &contaminated)?;
    let mut plan = LabelPlan::new(&sample, o.label_sample, &mut rng);
    let mut judged = None;
    if let Some(j) = judge {
        use crate::data::judge::{agreement, judge_all, prompt_hash};
        let items: Vec<(String, String, u8)> = plan
            .labelled
            .iter()
            .map(|&i| {
                (
                    sample[i].id.clone(),
                    sample[i].text.clone(),
                    plan.labels[i].educational as u8,
                )
            })
            .collect();
        let n = items.len();
        on(FilterEvent::Judged(0, n));
        let t0 = std::time::Instant::now();
        let labels = judge_all(j, &items, o.judge_threshold, &mut |k| {
            on(FilterEvent::Judged(k, n))
        })?;
        let secs = t0.elapsed().as_secs_f64();
        for (&i, l) in plan.labelled.iter().zip(&labels) {
            plan.overrides.insert(i, l.label);
        }
        let name = labels.first().map_or(String::new(), |l| l.judge.clone());
        plan.override_method = Some(format!(
            "judge {name} (prompt sha256 {}, P(yes) ≥ {})",
            prompt_hash(),
            o.judge_threshold
        ));
        write_jsonl(&o.out.join("judge-labels.jsonl"), &labels)?;
        let ag = agreement(&labels);
        on(FilterEvent::Note(format!(
            "judge {name}: {n} snippets in {secs:.0} s ({:.2} s each); {:.1} % educational (heuristics {:.1} %); agreement with the heuristic labels {:.3}, Cohen's κ {}, AUC of P(yes) against them {}",
            secs / n.max(1) as f64,
            100.0 * ag.judge_positive_fraction,
            100.0 * ag.heuristic_positive_fraction,
            ag.agreement,
            ag.cohen_kappa.map_or("-".into(), |v| format!("{v:.3}")),
            ag.p_yes_auc.map_or("-".into(), |v| format!("{v:.3}")),
        )));
        judged = Some(serde_json::json!({
            "judge": name, "prompt_sha256": prompt_hash(), "threshold": o.judge_threshold,
            "seconds": secs, "seconds_per_snippet": secs / n.max(1) as f64,
            "agreement_with_heuristics": ag,
        }));
    }
    let texts = plan.embed_texts(&sample, o.embed_chars);
    let mut emb = Vec::with_capacity(texts.len());
    on(FilterEvent::Embedded(0, texts.len()));
    for chunk in texts.chunks(64) {
        emb.extend(embed(chunk)?);
        on(FilterEvent::Embedded(emb.len(), texts.len()));
    }
    let cl = classify(&sample, &plan, &emb, o.threshold, o.classifier, o.seed)?;
    if let Some(j) = judged.as_mut() {
        // The same classifiers on the same snippets with the heuristic labels, for comparison.
        let mut heur = plan.clone();
        heur.overrides.clear();
        heur.override_method = None;
        let h = classify(&sample, &heur, &emb, o.threshold, o.classifier, o.seed)?;
        for s in &h.scores {
            on(FilterEvent::Note(format!(
                "classifier {} on the same sample with heuristic labels: held-out accuracy {:.3}, ROC-AUC {}",
                s.classifier.name(),
                s.heldout_accuracy,
                s.heldout_roc_auc.map_or("-".into(), |v| format!("{v:.3}")),
            )));
        }
        j["classifiers_on_heuristic_labels"] = serde_json::json!(h.scores);
    }
    for s in &cl.scores {
        on(FilterEvent::Note(format!(
            "classifier {} on {} embeddings: held-out accuracy {:.3} (majority class {:.3}), ROC-AUC {}, training accuracy {:.3}{}",
            s.classifier.name(),
            o.embed_model,
            s.heldout_accuracy,
            cl.majority,
            s.heldout_roc_auc.map_or("-".into(), |v| format!("{v:.3}")),
            s.train_accuracy,
            if s.classifier == cl.kind {
                " (filters)"
            } else {
                ""
            }
        )));
    }
    write_jsonl(&o.out.join("snippets.jsonl"), &cl.rows)?;
    write_labelled_embeddings(&o.out.join("labelled-embeddings.json"), &plan, &emb)?;
    let mut report = filter_report(
        &c,
        all.len(),
        contaminated.len(),
        &plan,
        &cl,
        &o.embed_model,
        o.embed_chars,
        o.threshold,
    );
    if let Some(j) = judged {
        report["judge"] = j;
    }
    let pretty = |v: &serde_json::Value| {
        serde_json::to_string_pretty(v).map_err(|e| ScaleError::Msg(e.to_string()))
    };
    write_text(
        &o.out.join("classifier.json"),
        &pretty(&serde_json::json!({"model": cl.model, "report": report}))?,
    )?;
    write_text(&o.out.join("filter-report.json"), &pretty(&report)?)?;
    on(FilterEvent::Note(format!(
        "filter (p ≥ {}): kept {} of {} training-pool snippets; files in {}",
        o.threshold,
        cl.kept,
        plan.train_idx.len(),
        o.out.display()
    )));
    Ok(report)
}
