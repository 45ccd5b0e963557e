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
use crate::webgpt_rm::{self, Trained};
use crate::{AgentError, Result};

#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Style {
    FewShot,
    Plain,
}

/// What picks among the sampled answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ScorerArg {
    /// The documented heuristic: +1 per valid citation, −1 per missing one, −1 if empty.
    Heuristic,
    /// The reward model of --reward-model DIR.
    RewardModel,
}

impl ScorerArg {
    pub fn name(self) -> &'static str {
        match self {
            ScorerArg::Heuristic => "heuristic",
            ScorerArg::RewardModel => "reward model",
        }
    }
}

/// Who browses an evaluated question (`webgpt::Episodes`).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum EpisodesArg {
    Model,
    OracleWide,
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
  # a reward model from comparisons of a training-split evaluation's answers, then best-of-n by it
  canon agent webgpt --model smollm2 --episodes oracle-wide --answer-chat --split train --limit 40 --n 16 --out runs/webgpt/rm-data
  canon agent webgpt --model smollm2 --train-reward-model runs/webgpt/rm-data --out runs/webgpt/rm
  canon agent webgpt --model smollm2 --rescore runs/webgpt/eval --scorer reward-model --reward-model runs/webgpt/rm --out runs/webgpt/eval-rm

The site is the encyclopedia of `canon agent questions` (one HTML page per package and command,
one sentence per line). The oracle follows each question's lookup path: Search, click the result
with the entity's title, quote the line naming the next entity (or the answer), End: Answer,
then answer citing the quote. The model browses greedily under a grammar built from the state,
then 16 answers are sampled (temperature 0.8); best-of-n keeps the one the scorer
prefers among the first n (--scorer: the heuristic by default, or the reward model; with
--reward-model both scorers are reported on the same samples). Accurate: the answer contains the gold answer. Supported: accurate,
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
    /// Who browses: the model (greedy, under the command grammar) or the oracle's path quoting
    /// every visible line of each page it opens (the answer step alone is then evaluated).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "model"))]
    pub episodes: EpisodesArg,
    /// Wrap the answer prompt in the model's chat template (as a user turn) before sampling
    /// answers: for an instruction-tuned model without a behaviour-cloning adapter.
    #[cfg_attr(feature = "cli", arg(long))]
    pub answer_chat: bool,
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
    /// The scorer whose pick is kept in OUT/outcomes.jsonl (the default: heuristic).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "heuristic"))]
    pub scorer: ScorerArg,
    /// A reward model's folder (`--train-reward-model`'s --out): best-of-n is reported for both
    /// scorers on the same sampled answers.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub reward_model: Option<PathBuf>,
    /// Train a reward model on comparisons of the answers in DIR/outcomes.jsonl (an evaluation of
    /// the training split) with the written ones; writes OUT/comparisons.jsonl and
    /// OUT/reward_model.json. --model gives the frozen features.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DIR", conflicts_with_all = ["oracle", "rescore"])
    )]
    pub train_reward_model: Option<PathBuf>,
    /// Score the answers of DIR/outcomes.jsonl again (no browsing or sampling).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DIR", conflicts_with = "oracle")
    )]
    pub rescore: Option<PathBuf>,
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
        if a.scorer == ScorerArg::RewardModel && a.reward_model.is_none() {
            return task("--scorer reward-model: expected --reward-model DIR, found none".into());
        }
        if let Some(d) = &a.reward_model {
            webgpt_rm::RewardModel::load(d)?;
        }
        for d in a.train_reward_model.iter().chain(&a.rescore) {
            let f = d.join("outcomes.jsonl");
            if !f.is_file() {
                return task(format!(
                    "expected an evaluation's outcomes at {}, found no such file",
                    f.display()
                ));
            }
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

    /// The outcomes an evaluation wrote in `dir`.
    pub fn read_outcomes(&self, dir: &Path) -> Result<Vec<Outcome>> {
        let o: Vec<Outcome> = react_data::from_jsonl(&dir.join("outcomes.jsonl"))?;
        if o.is_empty() {
            return Err(AgentError::Task(format!(
                "expected outcomes in {}, found none",
                dir.join("outcomes.jsonl").display()
            )));
        }
        Ok(o)
    }

    /// `--train-reward-model`: writes OUT/comparisons.jsonl, OUT/reward_model.json and
    /// OUT/rm-loss.png and gives the report.
    pub fn write_reward_model(&self, t: &Trained) -> Result<String> {
        let mut lines = String::new();
        for c in &t.comparisons {
            lines.push_str(&serde_json::to_string(c).unwrap_or_default());
            lines.push('\n');
        }
        write(&self.out.join("comparisons.jsonl"), &lines)?;
        t.model.save(&self.out)?;
        let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1} %", 100.0 * v));
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for c in &t.comparisons {
            match kinds.iter_mut().find(|k| k.0 == c.how) {
                Some(k) => k.1 += 1,
                None => kinds.push((c.how.clone(), 1)),
            }
        }
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        let mut s = format!(
            "{} comparisons in {}\n",
            t.comparisons.len(),
            self.out.join("comparisons.jsonl").display()
        );
        for (how, n) in &kinds {
            let _ = writeln!(s, "  {n:>5}  {how}");
        }
        let m = &t.model;
        let _ = writeln!(
            s,
            "pairwise accuracy: train {} ({} pairs), held out {} ({} pairs), held-out sample vs sample {} ({} pairs)",
            pct(m.train_accuracy),
            m.train_pairs,
            pct(m.heldout_accuracy),
            m.heldout_pairs,
            pct(m.heldout_sample_accuracy),
            m.heldout_sample_pairs
        );
        let pts: Vec<(f64, f64)> = t
            .losses
            .iter()
            .enumerate()
            .map(|(i, l)| (i as f64 + 1.0, *l))
            .collect();
        let png = self.out.join("rm-loss.png");
        canon_plot::Figure::new("WebGPT reward model: pairwise loss")
            .x_title("step (full batch)")
            .y_title("-log sigmoid(r+ - r-) + L2")
            .series(canon_plot::Series::line("train", pts))
            .footnote(&format!(
                "{} train pairs, linear head over frozen {}",
                m.train_pairs, m.model
            ))
            .save(&png)
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let _ = writeln!(
            s,
            "reward model: {}\nloss: {}",
            self.out.join(webgpt_rm::FILE).display(),
            png.display()
        );
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
            episodes: match self.episodes {
                EpisodesArg::Model => webgpt::Episodes::Model,
                EpisodesArg::OracleWide => webgpt::Episodes::OracleWide,
            },
            n: self.n_max(),
            answer_tokens: self.answer_tokens,
        }
    }

    /// Writes outcomes.jsonl, summary.json and webgpt.png under --out and gives the printed
    /// report (`lora`: the adapter attached to `model`, if any).
    ///
    /// `scored`: the same outcomes scored by each scorer, the chosen one (`--scorer`) first; its
    /// picks are the ones written.
    pub fn write_results(
        &self,
        model: &str,
        lora: Option<&Path>,
        style: PromptStyle,
        scored: &[(&str, Vec<Outcome>)],
    ) -> Result<String> {
        let a = self;
        let Some((_, outcomes)) = scored.first() else {
            return Err(AgentError::Task("no scored outcomes to write".into()));
        };
        let mut lines = String::new();
        for o in outcomes {
            lines.push_str(&serde_json::to_string(o).unwrap_or_default());
            lines.push('\n');
        }
        let rows = webgpt::summarize(outcomes, &a.n)?;
        let mut by_scorer = Vec::new();
        let mut pair_acc = serde_json::Map::new();
        for (name, o) in scored {
            by_scorer.push((name.to_string(), webgpt::summarize(o, &a.n)?));
            if let Some((acc, pairs)) = webgpt::sample_pair_accuracy(o) {
                pair_acc.insert(
                    name.to_string(),
                    serde_json::json!({"accuracy": acc, "pairs": pairs}),
                );
            }
        }
        let found = outcomes.iter().filter(|o| o.found).count() as f64 / outcomes.len() as f64;
        let actions: f64 =
            outcomes.iter().map(|o| o.turns.len() as f64).sum::<f64>() / outcomes.len() as f64;
        write(&a.out.join("outcomes.jsonl"), &lines)?;
        let summary = serde_json::json!({
            "model": model, "lora": lora, "style": style, "split": a.split,
            "questions": outcomes.len(), "quoted_the_answer": found,
            "turns_per_episode": actions, "scorer": scored[0].0, "best_of_n": rows,
            "sample_pair_accuracy": pair_acc,
            "by_scorer": by_scorer.iter().map(|(k, r)| (k.clone(), serde_json::json!(r))).collect::<serde_json::Map<_, _>>(),
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
        for (name, r) in &by_scorer {
            if by_scorer.len() > 1 {
                let _ = writeln!(s, "best-of-n by the {name}:");
            }
            s.push_str(&best_of_n_table(r));
            if let Some(p) = pair_acc.get(name.as_str()) {
                let _ = writeln!(
                    s,
                    "the {name} ranks an accurate sample above an inaccurate one in {:.1} % of {} pairs",
                    100.0 * p["accuracy"].as_f64().unwrap_or(0.0),
                    p["pairs"]
                );
            }
        }
        let png = a.out.join("webgpt.png");
        let browsing = match a.episodes {
            EpisodesArg::Model => match style {
                PromptStyle::FewShot => "few-shot prompt",
                PromptStyle::Plain => "plain prompt",
            },
            EpisodesArg::OracleWide => "oracle-wide episodes",
        };
        let footnote = format!(
            "{model}{}, {} {} questions, {browsing}{}",
            if lora.is_some() { " + LoRA" } else { "" },
            outcomes.len(),
            a.split,
            if a.answer_chat {
                ", chat-template answers"
            } else {
                ""
            }
        );
        plot(&by_scorer, &footnote, &png)?;
        let _ = writeln!(
            s,
            "outcomes: {}\nplot: {}",
            a.out.join("outcomes.jsonl").display(),
            png.display()
        );
        Ok(s)
    }
}

/// Accuracy and support per n (± standard error), one line each under a header.
pub fn best_of_n_table(rows: &[Row]) -> String {
    let mut s = format!("{:>4}  {:>15}  {:>15}\n", "n", "accurate", "supported");
    for r in rows {
        let _ = writeln!(
            s,
            "{:>4}  {:>6.1} ± {:>4.1}%  {:>6.1} ± {:>4.1}%",
            r.n,
            100.0 * r.accurate,
            100.0 * r.accurate_se,
            100.0 * r.supported,
            100.0 * r.supported_se
        );
    }
    s
}

fn plot(by_scorer: &[(String, Vec<Row>)], footnote: &str, png: &Path) -> Result<()> {
    let pts = |rows: &[Row], f: &dyn Fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.n as f64, 100.0 * f(r))).collect()
    };
    let mut fig = canon_plot::Figure::new("WebGPT miniature: best-of-n")
        .x_title("n (answers sampled)")
        .y_title("% of questions")
        .log_x()
        .y_range(0.0, 100.0);
    let several = by_scorer.len() > 1;
    for (name, rows) in by_scorer {
        let tag = |what: &str| {
            if several {
                format!("{what} ({name})")
            } else {
                what.to_string()
            }
        };
        if several {
            let band: Vec<(f64, f64, f64)> = rows
                .iter()
                .map(|r| {
                    let (p, e) = (100.0 * r.accurate, 100.0 * r.accurate_se);
                    (r.n as f64, p - e, p + e)
                })
                .collect();
            fig = fig.series(canon_plot::Series::band(&tag("accurate ± s.e."), band).alpha(0.15));
        }
        fig = fig
            .series(canon_plot::Series::line_points(
                &tag("accurate"),
                pts(rows, &|r| r.accurate),
            ))
            .series(canon_plot::Series::line_points(
                &tag("supported by a cited quote"),
                pts(rows, &|r| r.supported),
            ));
    }
    fig.footnote(footnote)
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
            accurate_se: webgpt::std_err(0.5, 16),
            supported_se: webgpt::std_err(0.25, 16),
        }];
        assert_eq!(
            best_of_n_table(&rows),
            "   n         accurate        supported\n   4    50.0 ± 12.5%    25.0 ± 10.8%\n"
        );
    }
}
