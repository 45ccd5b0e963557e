//! `canon agent browse`'s settings (with the `cli` feature also its argument struct, the doc
//! comments being the `--help` text): the checks, the browser's configuration and the text
//! printed at the end of an episode.

use std::path::PathBuf;

use crate::browser::BrowserConfig;
use crate::{AgentError, Result};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon agent browse --site ./site --question 'When was Rust first released?' --commands cmds.txt
  canon agent browse --site ./site --question 'Q?' --commands cmds.txt --model smollm2 --n 4   # best-of-4 answer
  printf 'Search rust release\\nClicked on link 0\\nFind in page: released\\nQuote: first released in 2015\\nEnd: Answer\\n' \\
    | canon agent browse --site ./site --question 'When was Rust first released?'
  # the model browses by itself, then answers (best of 4)
  canon agent browse --site ./site --question 'When was Rust first released?' --model smollm2 --drive --n 4

The site is a folder of .html/.htm/.txt pages (links between them are followed; others are shown
but lead nowhere); a BM25 engine serves `Search`. Commands, one per line: Search <query>,
Clicked on link <id>, Find in page: <text>, Quote: <text>, Scrolled down <1-3>, Scrolled up <1-3>,
Top, Back, End: Answer | Nonsense | Controversial. After each command the page state is printed as
the model would see it; at the end, the answer prompt with the quotes as numbered references.
A malformed or failing command prints an error line and leaves the state unchanged.
With --drive the model writes the commands: each turn it reads an instruction, example turns and
the rendered state, and writes one command under a grammar built from the state (link ids of the
open page, whole visible lines as quotes, Back only when there is a page to go back to).")
)]
pub struct BrowseArgs {
    /// Folder of pages.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub site: PathBuf,
    #[cfg_attr(feature = "cli", arg(long))]
    pub question: String,
    /// Commands, one per line (standard input when omitted).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub commands: Option<PathBuf>,
    /// Lines shown per window (one scroll step).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub window: usize,
    /// Action budget; the episode ends with a forced `End: Answer` when it is spent.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 20))]
    pub max_actions: usize,
    /// Quote characters beyond which the episode ends.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2000))]
    pub max_quote_chars: usize,
    /// Print one JSON object (observations, quotes, answer prompt) instead of the states.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
    /// After browsing, answer with this model from the answer prompt (best-of-n with --n).
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: Option<String>,
    /// Let --model write the commands (instead of --commands or standard input).
    #[cfg_attr(
        feature = "cli",
        arg(long, requires = "model", conflicts_with = "commands")
    )]
    pub drive: bool,
    /// Answers sampled (greedy when 1, else temperature 0.8, seeds 0..n); the one the heuristic scorer prefers is kept
    /// (+1 per distinct valid citation [k], -1 per citation of a missing reference; ties: the
    /// first).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub n: usize,
    /// Tokens per answer.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 128))]
    pub answer_tokens: usize,
}

impl BrowseArgs {
    /// Checks the window, the action budget and `--n`, and gives the browser's configuration.
    pub fn browser_config(&self) -> Result<BrowserConfig> {
        if self.window == 0 || self.max_actions == 0 {
            return Err(AgentError::Task(
                "--window and --max-actions must be at least 1".into(),
            ));
        }
        if self.n == 0 || self.n > 64 {
            return Err(AgentError::Task(format!(
                "--n must be between 1 and 64, found {}",
                self.n
            )));
        }
        Ok(BrowserConfig {
            window: self.window,
            max_actions: self.max_actions,
            max_quote_chars: self.max_quote_chars,
            ..Default::default()
        })
    }
}

/// The end of an episode as text: the answer prompt, then the best of the sampled answers
/// (`answers` as `browse_run::answer` serialises; `Null` without a model) with its score.
pub fn episode_end_text(answer_prompt: &str, answers: &serde_json::Value, n: usize) -> String {
    let mut s = format!("--- answer prompt\n{answer_prompt}\n");
    if let Some(best) = answers.get("best") {
        let i = best.as_u64().unwrap_or(0) as usize;
        s.push_str(&format!(
            "--- best of {n} (heuristic score {}):\n{}\n",
            answers["scores"][i],
            answers["answers"][i].as_str().unwrap_or("")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episode_end_names_the_best_answer() {
        let answers = serde_json::json!({"best": 1, "scores": [0, 2], "answers": ["a", "b [1]"]});
        assert_eq!(
            episode_end_text("P", &answers, 2),
            "--- answer prompt\nP\n--- best of 2 (heuristic score 2):\nb [1]\n"
        );
        assert_eq!(
            episode_end_text("P", &serde_json::Value::Null, 1),
            "--- answer prompt\nP\n"
        );
    }
}
