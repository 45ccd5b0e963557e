//! `canon agent webgpt`'s settings (with the `cli` feature also its argument struct, the doc
//! comments being the `--help` text): their checks, the questions and site they select, the
//! oracle's demonstrations, and the files and text of an evaluation (outcomes, summary, plot).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{create_dir, write};
use crate::browse_run::PromptStyle;
use crate::browser::{BrowserConfig, Site};
use crate::react_data::{self, Page, Question};
use crate::webgpt::{self, EvalConfig, Outcome, Row};
use crate::{AgentError, Result};

#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Style {
    FewShot,
    Plain,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
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
and it cites a collected quote holding the answer and no missing reference.")
)]
pub struct WebgptArgs {
    /// Folder with pages.jsonl and questions.jsonl (`canon agent questions`).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DIR", default_value = "data/react")
    )]
    pub data: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value = "test"))]
    pub split: String,
    /// Questions (round-robin over the kinds).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 30))]
    pub limit: usize,
    /// Write the oracle's behaviour-cloning records (OUT/demos.jsonl) instead of evaluating.
    #[cfg_attr(feature = "cli", arg(long, conflicts_with = "model"))]
    pub oracle: bool,
    /// The model that browses and answers.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: Option<String>,
    /// Command prompt: few-shot (instruction + example turns) for a prompted model, plain
    /// (instruction only) for a model cloned on the oracle's records.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "few-shot"))]
    pub style: Style,
    /// Comma-separated n of best-of-n (the largest is the number of answers sampled).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', default_value = "1,4,16")
    )]
    pub n: Vec<usize>,
    /// Action budget per episode.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 12))]
    pub max_actions: usize,
    /// Lines per window.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub window: usize,
    /// Tokens per answer.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub answer_tokens: usize,
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub out: PathBuf,
}

/// The checked settings: the site, the picked questions, the browser and the prompt style.
pub struct WebgptTask {
    pub site: Site,
    pub questions: Vec<Question>,
    pub browser: BrowserConfig,
    pub style: PromptStyle,
}

impl WebgptArgs {
    /// Checks the settings, reads the pages and questions, picks the questions and creates --out.
    pub fn task(&self) -> Result<WebgptTask> {
        let a = self;
        let task = |m: String| Err(AgentError::Task(m));
        if a.limit == 0 || a.max_actions == 0 || a.window == 0 {
            return task("--limit, --max-actions and --window must be at least 1".into());
        }
        if a.n.is_empty() || a.n.iter().any(|&n| n == 0 || n > 64) {
            return task(format!(
                "each --n must be between 1 and 64, found {:?}",
                a.n
            ));
        }
        if !a.oracle && a.model.is_none() {
            return task(
                "expected --model (to evaluate) or --oracle (to write demonstrations)".into(),
            );
        }
        let pages: Vec<Page> = react_data::from_jsonl(&a.data.join("pages.jsonl"))?;
        let qs: Vec<Question> = react_data::from_jsonl(&a.data.join("questions.jsonl"))?;
        let questions: Vec<Question> = webgpt::pick(&qs, &a.split, a.limit)
            .into_iter()
            .cloned()
            .collect();
        if questions.is_empty() {
            return task(format!(
                "expected questions of split {:?} in {}, found none",
                a.split,
                a.data.join("questions.jsonl").display()
            ));
        }
        let site = webgpt::site(&pages)?;
        let browser = BrowserConfig {
            window: a.window,
            max_actions: a.max_actions,
            ..Default::default()
        };
        let style = match a.style {
            Style::FewShot => PromptStyle::FewShot,
            Style::Plain => PromptStyle::Plain,
        };
        create_dir(&a.out)?;
        Ok(WebgptTask {
            site,
            questions,
            browser,
            style,
        })
    }

    /// `--oracle`: writes OUT/demos.jsonl and gives the text that says what was written.
    pub fn write_oracle(&self, t: &WebgptTask) -> Result<String> {
        let (mut demos, mut skipped) = (Vec::new(), Vec::new());
        for q in &t.questions {
            match webgpt::oracle(&t.site, q, t.browser, PromptStyle::Plain) {
                Ok(d) => demos.push(d),
                Err(e) => skipped.push(e),
            }
        }
        let path = self.out.join("demos.jsonl");
        let recs = webgpt::records(&demos);
        write(&path, &recs)?;
        let mut s = format!(
            "{} demonstrations ({} records) in {}; {} questions skipped\n",
            demos.len(),
            recs.lines().count(),
            path.display(),
            skipped.len()
        );
        for e in skipped.iter().take(5) {
            let _ = writeln!(s, "  skipped: {e}");
        }
        Ok(s)
    }

    /// The largest n of best-of-n: the answers sampled per question.
    pub fn n_max(&self) -> usize {
        self.n.iter().copied().max().unwrap_or(1)
    }

    /// One episode's evaluation settings.
    pub fn eval_config(&self, t: &WebgptTask) -> EvalConfig {
        EvalConfig {
            browser: t.browser,
            style: t.style,
            n: self.n_max(),
            answer_tokens: self.answer_tokens,
        }
    }

    /// Writes outcomes.jsonl, summary.json and webgpt.png under --out and gives the printed
    /// report (`lora`: the adapter attached to `model`, if any).
    pub fn write_results(
        &self,
        model: &str,
        lora: Option<&Path>,
        style: PromptStyle,
        outcomes: &[Outcome],
    ) -> Result<String> {
        let a = self;
        let mut lines = String::new();
        for o in outcomes {
            lines.push_str(&serde_json::to_string(o).unwrap_or_default());
            lines.push('\n');
        }
        let rows = webgpt::summarize(outcomes, &a.n)?;
        let found = outcomes.iter().filter(|o| o.found).count() as f64 / outcomes.len() as f64;
        let actions: f64 =
            outcomes.iter().map(|o| o.turns.len() as f64).sum::<f64>() / outcomes.len() as f64;
        write(&a.out.join("outcomes.jsonl"), &lines)?;
        let summary = serde_json::json!({
            "model": model, "lora": lora, "style": style, "split": a.split,
            "questions": outcomes.len(), "quoted_the_answer": found,
            "turns_per_episode": actions, "best_of_n": rows,
        });
        write(
            &a.out.join("summary.json"),
            &serde_json::to_string_pretty(&summary).unwrap_or_default(),
        )?;
        let mut s = format!(
            "{} questions ({}), {:.1} turns per episode, an episode quoted the answer in {:.0} %\n",
            outcomes.len(),
            a.split,
            actions,
            100.0 * found
        );
        s.push_str(&best_of_n_table(&rows));
        let png = a.out.join("webgpt.png");
        let footnote = format!(
            "{model}{}, {} {} questions, {} prompt",
            if lora.is_some() { " + LoRA" } else { "" },
            outcomes.len(),
            a.split,
            match style {
                PromptStyle::FewShot => "few-shot",
                PromptStyle::Plain => "plain",
            }
        );
        plot(&rows, &footnote, &png)?;
        let _ = writeln!(
            s,
            "outcomes: {}\nplot: {}",
            a.out.join("outcomes.jsonl").display(),
            png.display()
        );
        Ok(s)
    }
}

/// Accuracy and support per n, one line each under a header.
pub fn best_of_n_table(rows: &[Row]) -> String {
    let mut s = format!("{:>4}  {:>9}  {:>9}\n", "n", "accurate", "supported");
    for r in rows {
        let _ = writeln!(
            s,
            "{:>4}  {:>8.1}%  {:>8.1}%",
            r.n,
            100.0 * r.accurate,
            100.0 * r.supported
        );
    }
    s
}

fn plot(rows: &[Row], footnote: &str, png: &Path) -> Result<()> {
    let pts = |f: &dyn Fn(&Row) -> f64| -> Vec<(f64, f64)> {
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
        .footnote(footnote)
        .save(png)
        .map_err(|e| AgentError::Task(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines() {
        let rows = [Row {
            n: 4,
            accurate: 0.5,
            supported: 0.25,
        }];
        assert_eq!(
            best_of_n_table(&rows),
            "   n   accurate  supported\n   4      50.0%      25.0%\n"
        );
    }
}
