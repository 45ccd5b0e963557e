//! `canon data`: Phi-1's data pipeline (textbook-quality code). `filter` builds the corpus, labels,
//! classifier and filtered set; `compare` trains the same small model on unfiltered and filtered
//! data for the same number of tokens and compares held-out losses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use canon_nn::SplitMix64;
use canon_scale::data::classify::{Logistic, accuracy, filter_indices, roc_auc};
use canon_scale::data::corpus::{self, Origin};
use canon_scale::data::dedup::Decontaminator;
use canon_scale::data::experiment::{Arm, CompareConfig, EvalSet, compare};
use canon_scale::data::quality::{self, HEURISTIC_METHOD};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::write_atomic;
use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Corpus (stdlib + site-packages, dedup, licence manifest), quality labels, a classifier on
    /// MiniLM embeddings, decontamination against HumanEval, and the filtered set.
    Filter(FilterArgs),
    /// Synthetic textbook passages and exercises from a generating model, decontaminated.
    Synth(SynthArgs),
    /// Train one small model per data set for the same number of tokens; compare held-out loss.
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon data filter --out runs/phi1
  canon data filter --out runs/phi1 --max-snippets 2000 --label-sample 800 --threshold 0.6

Writes manifest.jsonl (one line per kept file: path, origin, distribution, licence, sha256),
snippets.jsonl (id, pool, heuristic label, classifier probability, kept), contaminated.jsonl,
classifier.json and filter-report.md into --out.")]
pub struct FilterArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Snippets sampled from the corpus (seeded) for labelling, embedding and filtering.
    #[arg(long, default_value_t = 3000)]
    pub max_snippets: usize,
    /// Labelled snippets the classifier learns from (80 % train, 20 % held out).
    #[arg(long, default_value_t = 1200)]
    pub label_sample: usize,
    /// Keep snippets whose probability of being educational is at least this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Characters of each snippet the embedding model sees (its head, cut at a character
    /// boundary); MiniLM truncates at 256 tokens anyway, and shorter inputs embed much faster.
    #[arg(long, default_value_t = 400)]
    pub embed_chars: usize,
    /// Sentence-embedding model.
    #[arg(long, default_value = "minilm")]
    pub embed_model: String,
    /// Site-packages folder (default: what python3 reports).
    #[arg(long)]
    pub site_packages: Option<PathBuf>,
    /// Skip decontamination against HumanEval (when the asset cannot be fetched).
    #[arg(long)]
    pub no_decontaminate: bool,
    #[arg(long, default_value_t = 28)]
    pub seed: u64,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon data synth --out runs/phi1 --model smollm2 --n 24 --max-tokens 200

Writes synthetic.jsonl (kept items: index, kind, topic, text) and synth-report.json (counts of
duplicates, empty outputs and generations that matched a HumanEval problem) into --out;
`canon data compare` then adds a filtered+synthetic arm.")]
pub struct SynthArgs {
    /// The folder of `canon data filter` (the synthetic set is written beside it).
    #[arg(long)]
    pub out: PathBuf,
    /// The generating model (a chat model: its template wraps each prompt).
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Items to generate (topics and kinds rotate).
    #[arg(long, default_value_t = 24)]
    pub n: usize,
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 28)]
    pub seed: u64,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon data compare --data runs/phi1 --config configs/phi1.toml --out runs/phi1/compare

Arms: unfiltered (every training-pool snippet) and filtered (the classifier's kept snippets),
each trained for train.max_steps steps of the same batch; evaluation sets: held-out files'
snippets labelled educational (eval-textbook) and all held-out snippets (eval-all).")]
pub struct CompareArgs {
    /// The folder `canon data filter` wrote.
    #[arg(long)]
    pub data: PathBuf,
    /// [model] and [train] of the small model.
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
}

/// One line of snippets.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnippetRow {
    id: String,
    /// `train` (may be trained on) or `eval` (held-out files).
    pool: String,
    label: u8,
    score: i32,
    method: String,
    /// Classifier probability (training pool only).
    prob: Option<f64>,
    kept: bool,
    /// In the classifier's labelled sample: `fit` or `heldout`.
    sample: Option<String>,
    text: String,
}

fn site_packages_dir(arg: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.clone());
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .context("cannot run python3 to find site-packages; pass --site-packages DIR")?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !p.is_dir() {
        bail!("python3 did not report a site-packages folder; pass --site-packages DIR");
    }
    Ok(p)
}

fn jsonl<T: Serialize>(path: &Path, rows: &[T]) -> anyhow::Result<()> {
    let mut s = String::new();
    for r in rows {
        s += &serde_json::to_string(r)?;
        s.push('\n');
    }
    write_atomic(path, &s)
}

pub fn run(a: DataArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.command {
        DataCommand::Filter(f) => filter(f, ctx),
        DataCommand::Compare(c) => compare_cmd(c, ctx),
        DataCommand::Synth(s) => synth_cmd(s, ctx),
    }
}

fn synth_cmd(a: SynthArgs, ctx: &Ctx) -> anyhow::Result<()> {
    use canon_scale::data::synth;
    if a.n == 0 || a.max_tokens == 0 {
        bail!("--n and --max-tokens must be positive");
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let problems = canon_eval::humaneval::load_default(ctx.progress())
        .context("cannot load HumanEval for decontamination")?;
    let texts: Vec<String> = problems
        .iter()
        .map(|p| format!("{}{}", p.prompt, p.canonical_solution))
        .collect();
    let deco = Decontaminator::with_defaults(&texts);
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let tmpl = lm
        .chat_template
        .clone()
        .with_context(|| format!("{} has no chat template; synth needs a chat model", a.model))?;
    let wrap = move |user: &str| -> Result<String, String> {
        tmpl.render(&[canon_text::chat::Message::new("user", user)], true)
            .map_err(|e| format!("chat template: {e}"))
    };
    let mut generator = canon_infer::LmGenerator::new(lm);
    let bar = if ctx.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(a.n as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("generating {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = std::time::Instant::now();
    let rep = synth::generate(
        &mut generator,
        &wrap,
        a.n,
        a.max_tokens,
        a.seed,
        &deco,
        &mut |_| bar.inc(1),
    )?;
    bar.finish_and_clear();
    jsonl(&a.out.join("synthetic.jsonl"), &rep.kept)?;
    let summary = serde_json::json!({
        "model": a.model, "requested": a.n, "kept": rep.kept.len(),
        "duplicates": rep.duplicates, "empty": rep.empty,
        "contaminated": rep.contaminated.iter()
            .map(|(i, p)| serde_json::json!({"index": i, "task_id": problems[*p].task_id}))
            .collect::<Vec<_>>(),
        "characters": rep.kept.iter().map(|k| k.text.len()).sum::<usize>(),
        "seconds": t0.elapsed().as_secs_f64(),
    });
    write_atomic(
        &a.out.join("synth-report.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn filter(a: FilterArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&a.threshold) {
        bail!("--threshold must be in [0, 1], found {}", a.threshold);
    }
    if a.embed_chars == 0 {
        bail!("--embed-chars must be positive");
    }
    if a.label_sample < 10 || a.max_snippets < a.label_sample {
        bail!(
            "expected 10 ≤ --label-sample ≤ --max-snippets, found {} and {}",
            a.label_sample,
            a.max_snippets
        );
    }
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let stdlib = super::train::python_stdlib_dir()?;
    let site = site_packages_dir(&a.site_packages)?;
    let c = corpus::collect(
        &[(stdlib, Origin::Stdlib), (site, Origin::SitePackages)],
        200_000,
    )?;
    let unknown = c.manifest.iter().filter(|m| m.licence == "unknown").count();
    say(format!(
        "corpus: {} files kept ({:.1} MB), {} exact duplicates dropped, {} unreadable; licence unknown for {}",
        c.manifest.len(),
        c.texts.iter().map(String::len).sum::<usize>() as f64 / 1e6,
        c.duplicates,
        c.unreadable,
        unknown
    ));
    jsonl(&a.out.join("manifest.jsonl"), &c.manifest)?;
    let all = corpus::snippets(&c, 4, 2000);
    // A seeded sample, in corpus order.
    let mut idx: Vec<usize> = (0..all.len()).collect();
    let mut rng = SplitMix64::new(a.seed);
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    idx.truncate(a.max_snippets);
    idx.sort_unstable();
    let mut sample: Vec<corpus::Snippet> = idx.into_iter().map(|i| all[i].clone()).collect();
    say(format!(
        "{} snippets in the corpus; {} sampled",
        all.len(),
        sample.len()
    ));
    // Decontamination against HumanEval prompts + canonical solutions.
    let mut contaminated = Vec::new();
    if !a.no_decontaminate {
        let problems = canon_eval::humaneval::load_default(ctx.progress()).context(
            "cannot load HumanEval for decontamination (use --no-decontaminate to skip)",
        )?;
        let texts: Vec<String> = problems
            .iter()
            .map(|p| format!("{}{}", p.prompt, p.canonical_solution))
            .collect();
        let d = Decontaminator::with_defaults(&texts);
        sample.retain(|s| match d.check(&s.text) {
            Some(m) => {
                contaminated.push(serde_json::json!({
                    "id": s.id, "task_id": problems[m.problem].task_id, "match": m.kind
                }));
                false
            }
            None => true,
        });
        say(format!(
            "decontamination against {} HumanEval problems: {} snippets dropped",
            problems.len(),
            contaminated.len()
        ));
    }
    jsonl(&a.out.join("contaminated.jsonl"), &contaminated)?;
    // Held-out files: every tenth kept file (by manifest index) never trains any arm.
    let is_eval = |s: &corpus::Snippet| s.file.is_multiple_of(10);
    let labels: Vec<quality::Assessment> =
        sample.iter().map(|s| quality::assess(&s.text)).collect();
    let train_idx: Vec<usize> = (0..sample.len())
        .filter(|&i| !is_eval(&sample[i]))
        .collect();
    // The labelled sample: the first label_sample training-pool snippets in a seeded order.
    let mut lab = train_idx.clone();
    for i in (1..lab.len()).rev() {
        lab.swap(i, rng.below(i + 1));
    }
    lab.truncate(a.label_sample);
    let n_fit = lab.len() * 4 / 5;
    let (fit_idx, held_idx) = lab.split_at(n_fit);

    let enc = model_gen::load_encoder(&a.embed_model, ctx)?;
    let texts: Vec<String> = train_idx
        .iter()
        .map(|&i| sample[i].text.chars().take(a.embed_chars).collect())
        .collect();
    let bar = if ctx.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(texts.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("embedding {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut emb = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        emb.extend(enc.embedder.embed(chunk, 16)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    // Position of each sample index within train_idx (for its embedding).
    let pos = |i: usize| train_idx.binary_search(&i).ok();
    let gather = |ids: &[usize]| -> (Vec<Vec<f32>>, Vec<u8>) {
        ids.iter()
            .filter_map(|&i| pos(i).map(|p| (emb[p].clone(), labels[i].educational as u8)))
            .unzip()
    };
    let (xf, yf) = gather(fit_idx);
    let (xh, yh) = gather(held_idx);
    let model = Logistic::fit(&xf, &yf, 1e-3, 400)?;
    let ph: Vec<f64> = xh.iter().map(|x| model.prob(x)).collect();
    let pf: Vec<f64> = xf.iter().map(|x| model.prob(x)).collect();
    let acc = accuracy(&ph, &yh);
    let auc = roc_auc(&ph, &yh);
    let majority = {
        let pos = yh.iter().filter(|&&y| y == 1).count() as f64 / yh.len().max(1) as f64;
        pos.max(1.0 - pos)
    };
    say(format!(
        "classifier (logistic regression on {} embeddings): held-out accuracy {:.3} (majority class {:.3}), ROC-AUC {}, training accuracy {:.3}",
        a.embed_model,
        acc,
        majority,
        auc.map_or("-".into(), |v| format!("{v:.3}")),
        accuracy(&pf, &yf)
    ));
    let probs: Vec<f64> = emb.iter().map(|x| model.prob(x)).collect();
    let kept: std::collections::HashSet<usize> = filter_indices(&probs, a.threshold)
        .into_iter()
        .map(|p| train_idx[p])
        .collect();
    let rows: Vec<SnippetRow> = sample
        .iter()
        .enumerate()
        .map(|(i, s)| SnippetRow {
            id: s.id.clone(),
            pool: if is_eval(s) { "eval" } else { "train" }.into(),
            label: labels[i].educational as u8,
            score: labels[i].score,
            method: HEURISTIC_METHOD.into(),
            prob: pos(i).map(|p| probs[p]),
            kept: kept.contains(&i),
            sample: if fit_idx.contains(&i) {
                Some("fit".into())
            } else if held_idx.contains(&i) {
                Some("heldout".into())
            } else {
                None
            },
            text: s.text.clone(),
        })
        .collect();
    jsonl(&a.out.join("snippets.jsonl"), &rows)?;
    let report = serde_json::json!({
        "files": c.manifest.len(), "duplicates": c.duplicates, "licence_unknown": unknown,
        "snippets_in_corpus": all.len(), "sampled": rows.len() + contaminated.len(),
        "contaminated": contaminated.len(),
        "train_pool": train_idx.len(), "eval_pool": rows.len() - train_idx.len(),
        "label_method": HEURISTIC_METHOD,
        "labelled": lab.len(), "labelled_positive_fraction":
            lab.iter().filter(|&&i| labels[i].educational).count() as f64 / lab.len().max(1) as f64,
        "classifier": "logistic regression (L2 1e-3, balanced classes, Adam 400 epochs)",
        "embedding_model": a.embed_model, "embedded_characters_per_snippet": a.embed_chars,
        "heldout_accuracy": acc, "heldout_majority_baseline": majority, "heldout_roc_auc": auc,
        "threshold": a.threshold, "kept": kept.len(),
    });
    write_atomic(
        &a.out.join("classifier.json"),
        &serde_json::to_string_pretty(&serde_json::json!({"model": model, "report": report}))?,
    )?;
    write_atomic(
        &a.out.join("filter-report.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    say(format!(
        "filter (p ≥ {}): kept {} of {} training-pool snippets; files in {}",
        a.threshold,
        kept.len(),
        train_idx.len(),
        a.out.display()
    ));
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<SnippetRow>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (run canon data filter first)",
            path.display()
        )
    })?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a snippet row", path.display(), i + 1))
        })
        .collect()
}

fn compare_cmd(a: CompareArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("cannot read config {}", a.config.display()))?;
    let cfg = CompareConfig::parse(&text, &a.config.display().to_string())?;
    let rows = read_rows(&a.data.join("snippets.jsonl"))?;
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
    let synth_path = a.data.join("synthetic.jsonl");
    if synth_path.is_file() {
        let text = canon_fs::lines::read_text(&synth_path)?;
        let mut docs = texts(&|r| r.pool == "train" && r.kept);
        for (i, l) in text.lines().enumerate() {
            let item: canon_scale::data::synth::SynthItem =
                serde_json::from_str(l).with_context(|| {
                    format!(
                        "{} line {}: not a synthetic item",
                        synth_path.display(),
                        i + 1
                    )
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
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let bar = std::cell::RefCell::new(ProgressBar::hidden());
    let quiet = ctx.quiet;
    let res = compare(
        &cfg,
        &arms,
        &evals,
        &a.out,
        &stop,
        &mut |name, steps| {
            let b = if quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(steps)
            };
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_prefix(name.to_string());
            bar.replace(b).finish_and_clear();
        },
        &mut |r| {
            let b = bar.borrow();
            b.set_position(r.step);
            b.set_message(format!("loss {:.3}", r.loss));
        },
    )?;
    bar.borrow().finish_and_clear();
    let Some(res) = res else {
        eprintln!("canon: interrupted; run the same command again to continue");
        return Ok(());
    };
    let mut md = String::from(
        "| training data | snippets | characters | tokens trained | eval-textbook loss | eval-all loss |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in &res {
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
    write_atomic(&a.out.join("compare.md"), &md)?;
    println!("{md}");
    Ok(())
}
