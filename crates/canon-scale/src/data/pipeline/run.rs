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
}

/// `canon data filter` from end to end: the corpus of `roots` (manifest.jsonl), a sample of its snippets,
/// decontamination against `benchmark()`'s (id, text) problems unless it is `None`
/// (contaminated.jsonl), heuristic labels, the classifier on `embed`'s vectors (snippets.jsonl,
/// classifier.json) and the report (filter-report.json), which it returns.
pub fn run_filter(
    o: &FilterOpts,
    roots: &[(PathBuf, crate::data::corpus::Origin)],
    benchmark: Option<Benchmark<'_>>,
    embed: Embed<'_>,
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
    let plan = LabelPlan::new(&sample, o.label_sample, &mut rng);
    let texts = plan.embed_texts(&sample, o.embed_chars);
    let mut emb = Vec::with_capacity(texts.len());
    on(FilterEvent::Embedded(0, texts.len()));
    for chunk in texts.chunks(64) {
        emb.extend(embed(chunk)?);
        on(FilterEvent::Embedded(emb.len(), texts.len()));
    }
    let cl = classify(&sample, &plan, &emb, o.threshold)?;
    on(FilterEvent::Note(format!(
        "classifier (logistic regression on {} embeddings): held-out accuracy {:.3} (majority class {:.3}), ROC-AUC {}, training accuracy {:.3}",
        o.embed_model,
        cl.heldout_accuracy,
        cl.majority,
        cl.roc_auc.map_or("-".into(), |v| format!("{v:.3}")),
        cl.train_accuracy
    )));
    write_jsonl(&o.out.join("snippets.jsonl"), &cl.rows)?;
    let report = filter_report(
        &c,
        all.len(),
        contaminated.len(),
        &plan,
        &cl,
        &o.embed_model,
        o.embed_chars,
        o.threshold,
    );
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
