//! `canon agent webgpt`: WebGPT's browsing task on the encyclopedia (`canon_agent::webgpt`):
//! oracle demonstrations for behaviour cloning, and the evaluation of a model that browses.

use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_agent::browse_run::{EngineCommandLm, PromptStyle};
use canon_agent::browser::BrowserConfig;
use canon_agent::react_data::{self, Page, Question};
use canon_agent::webgpt;
use clap::{Args, ValueEnum};

use super::write_atomic;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Style {
    FewShot,
    Plain,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # behaviour-cloning records from the oracle, then LoRA on them
  canon agent webgpt --oracle --split train --limit 300 --out runs/webgpt
  canon finetune --model smollm2 --method lora --data runs/webgpt/demos.jsonl --out runs/webgpt/lora
  # accuracy and citation correctness at best-of-1, 4 and 16
  canon agent webgpt --model smollm2 --split test --limit 30 --out runs/webgpt/prompted
  canon --lora runs/webgpt/lora agent webgpt --model smollm2 --style plain --out runs/webgpt/cloned

The site is the encyclopedia of `canon agent questions` (one HTML page per package and command,
one sentence per line). The oracle follows each question's lookup path: Search, click the result
with the entity's title, quote the line naming the next entity (or the answer), End: Answer,
then answer citing the quote. The model browses greedily under a grammar built from the state,
then 16 answers are sampled (temperature 0.8); best-of-n keeps the one the heuristic scorer
prefers among the first n. Accurate: the answer contains the gold answer. Supported: accurate,
and it cites a collected quote holding the answer and no missing reference.")]
pub struct WebgptArgs {
    /// Folder with pages.jsonl and questions.jsonl (`canon agent questions`).
    #[arg(long, value_name = "DIR", default_value = "data/react")]
    pub data: PathBuf,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Questions (round-robin over the kinds).
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
    /// Write the oracle's behaviour-cloning records (OUT/demos.jsonl) instead of evaluating.
    #[arg(long, conflicts_with = "model")]
    pub oracle: bool,
    /// The model that browses and answers.
    #[arg(long)]
    pub model: Option<String>,
    /// Command prompt: few-shot (instruction + example turns) for a prompted model, plain
    /// (instruction only) for a model cloned on the oracle's records.
    #[arg(long, value_enum, default_value = "few-shot")]
    pub style: Style,
    /// Comma-separated n of best-of-n (the largest is the number of answers sampled).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub n: Vec<usize>,
    /// Action budget per episode.
    #[arg(long, default_value_t = 12)]
    pub max_actions: usize,
    /// Lines per window.
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 32)]
    pub answer_tokens: usize,
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(a: WebgptArgs, ctx: &crate::Ctx) -> anyhow::Result<()> {
    if a.limit == 0 || a.max_actions == 0 || a.window == 0 {
        bail!("--limit, --max-actions and --window must be at least 1");
    }
    if a.n.is_empty() || a.n.iter().any(|&n| n == 0 || n > 64) {
        bail!("each --n must be between 1 and 64, found {:?}", a.n);
    }
    if !a.oracle && a.model.is_none() {
        bail!("expected --model (to evaluate) or --oracle (to write demonstrations)");
    }
    let pages: Vec<Page> = react_data::from_jsonl(&a.data.join("pages.jsonl"))?;
    let qs: Vec<Question> = react_data::from_jsonl(&a.data.join("questions.jsonl"))?;
    let picked = webgpt::pick(&qs, &a.split, a.limit);
    if picked.is_empty() {
        bail!(
            "expected questions of split {:?} in {}, found none",
            a.split,
            a.data.join("questions.jsonl").display()
        );
    }
    let site = webgpt::site(&pages)?;
    let cfg = BrowserConfig {
        window: a.window,
        max_actions: a.max_actions,
        ..Default::default()
    };
    let style = match a.style {
        Style::FewShot => PromptStyle::FewShot,
        Style::Plain => PromptStyle::Plain,
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    if a.oracle {
        let (mut demos, mut skipped) = (Vec::new(), Vec::new());
        for q in &picked {
            match webgpt::oracle(&site, q, cfg, PromptStyle::Plain) {
                Ok(d) => demos.push(d),
                Err(e) => skipped.push(e),
            }
        }
        let path = a.out.join("demos.jsonl");
        let recs = webgpt::records(&demos);
        write_atomic(&path, &recs)?;
        println!(
            "{} demonstrations ({} records) in {}; {} questions skipped",
            demos.len(),
            recs.lines().count(),
            path.display(),
            skipped.len()
        );
        for s in skipped.iter().take(5) {
            println!("  skipped: {s}");
        }
        return Ok(());
    }
    let model = a.model.as_deref().unwrap_or_default();
    let nmax = a.n.iter().copied().max().unwrap_or(1);
    let engine = canon_infer::Engine::start(
        crate::model_gen::load_lm(model, ctx)?,
        canon_infer::EngineConfig {
            slots: nmax.min(16),
            ..Default::default()
        },
    )?;
    let mut lm = EngineCommandLm::new(&engine)?;
    let t = "webgpt [{bar:30}] {pos}/{len} questions ({eta})";
    let pb = crate::progress::bar(false, picked.len() as u64, t);
    let mut outcomes = Vec::new();
    let mut lines = String::new();
    for q in &picked {
        let ec = webgpt::EvalConfig {
            browser: cfg,
            style,
            n: nmax,
            answer_tokens: a.answer_tokens,
        };
        let o = webgpt::evaluate_one(&site, q, ec, &mut lm, &engine)?;
        lines.push_str(&serde_json::to_string(&o)?);
        lines.push('\n');
        outcomes.push(o);
        pb.inc(1);
    }
    pb.finish_and_clear();
    engine.shutdown();
    let rows = webgpt::summarize(&outcomes, &a.n)?;
    let found = outcomes.iter().filter(|o| o.found).count() as f64 / outcomes.len() as f64;
    let actions: f64 =
        outcomes.iter().map(|o| o.turns.len() as f64).sum::<f64>() / outcomes.len() as f64;
    write_atomic(&a.out.join("outcomes.jsonl"), &lines)?;
    let summary = serde_json::json!({
        "model": model, "lora": ctx.lora, "style": style, "split": a.split,
        "questions": outcomes.len(), "quoted_the_answer": found,
        "turns_per_episode": actions, "best_of_n": rows,
    });
    write_atomic(
        &a.out.join("summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    println!(
        "{} questions ({}), {:.1} turns per episode, an episode quoted the answer in {:.0} %",
        outcomes.len(),
        a.split,
        actions,
        100.0 * found
    );
    println!("{:>4}  {:>9}  {:>9}", "n", "accurate", "supported");
    for r in &rows {
        println!(
            "{:>4}  {:>8.1}%  {:>8.1}%",
            r.n,
            100.0 * r.accurate,
            100.0 * r.supported
        );
    }
    let png = a.out.join("webgpt.png");
    let pts = |f: &dyn Fn(&webgpt::Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.n as f64, 100.0 * f(r))).collect()
    };
    canon_plot::Figure::new("WebGPT miniature: best-of-n")
        .x_title("n (answers sampled)")
        .y_title("% of questions")
        .log_x()
        .y_range(0.0, 100.0)
        .series(canon_plot::Series::line_points(
            "accurate",
            pts(&|r| r.accurate),
        ))
        .series(canon_plot::Series::line_points(
            "supported by a cited quote",
            pts(&|r| r.supported),
        ))
        .footnote(&format!(
            "{model}{}, {} {} questions, {} prompt",
            if ctx.lora.is_some() { " + LoRA" } else { "" },
            outcomes.len(),
            a.split,
            match style {
                PromptStyle::FewShot => "few-shot",
                PromptStyle::Plain => "plain",
            }
        ))
        .save(&png)?;
    println!(
        "outcomes: {}\nplot: {}",
        a.out.join("outcomes.jsonl").display(),
        png.display()
    );
    Ok(())
}
