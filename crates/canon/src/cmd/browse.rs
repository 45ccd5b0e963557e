//! `canon agent browse`: WebGPT's text browser (paper 17) over a local site, driven by commands.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_agent::browse_run;
use canon_agent::browser::{Browser, BrowserConfig, Site};
use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
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
open page, whole visible lines as quotes, Back only when there is a page to go back to).")]
pub struct BrowseArgs {
    /// Folder of pages.
    #[arg(long, value_name = "DIR")]
    pub site: PathBuf,
    #[arg(long)]
    pub question: String,
    /// Commands, one per line (standard input when omitted).
    #[arg(long, value_name = "FILE")]
    pub commands: Option<PathBuf>,
    /// Lines shown per window (one scroll step).
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// Action budget; the episode ends with a forced `End: Answer` when it is spent.
    #[arg(long, default_value_t = 20)]
    pub max_actions: usize,
    /// Quote characters beyond which the episode ends.
    #[arg(long, default_value_t = 2000)]
    pub max_quote_chars: usize,
    /// Print one JSON object (observations, quotes, answer prompt) instead of the states.
    #[arg(long)]
    pub json: bool,
    /// After browsing, answer with this model from the answer prompt (best-of-n with --n).
    #[arg(long)]
    pub model: Option<String>,
    /// Let --model write the commands (instead of --commands or standard input).
    #[arg(long, requires = "model", conflicts_with = "commands")]
    pub drive: bool,
    /// Answers sampled (greedy when 1, else temperature 0.8, seeds 0..n); the one the heuristic scorer prefers is kept
    /// (+1 per distinct valid citation [k], -1 per citation of a missing reference; ties: the
    /// first).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 128)]
    pub answer_tokens: usize,
}

pub fn run(a: BrowseArgs, ctx: &crate::Ctx) -> anyhow::Result<()> {
    if a.window == 0 || a.max_actions == 0 {
        bail!("--window and --max-actions must be at least 1");
    }
    if a.n == 0 || a.n > 64 {
        bail!("--n must be between 1 and 64, found {}", a.n);
    }
    let site = Site::load(&a.site).with_context(|| format!("--site {}", a.site.display()))?;
    let cfg = BrowserConfig {
        window: a.window,
        max_actions: a.max_actions,
        max_quote_chars: a.max_quote_chars,
        ..Default::default()
    };
    let engine = match &a.model {
        Some(m) => Some(canon_infer::Engine::start(
            crate::model_gen::load_lm(m, ctx)?,
            canon_infer::EngineConfig {
                slots: a.n.min(15),
                ..Default::default()
            },
        )?),
        None => None,
    };
    let mut b = Browser::new(&site, &a.question, cfg);
    let mut steps = Vec::new();
    let mut show = |command: &str, obs: &str| {
        if !a.json {
            println!("> {command}\n{obs}\n");
        }
        steps.push(json!({"command": command, "observation": obs}));
    };
    match (&engine, a.drive) {
        (Some(e), true) => {
            let mut lm = browse_run::EngineCommandLm::new(e)?;
            for t in browse_run::drive(&mut b, &mut lm, browse_run::PromptStyle::FewShot)? {
                show(&t.command, &t.observation);
            }
        }
        _ => {
            let lines: Vec<String> = match &a.commands {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .lines()
                    .map(str::to_string)
                    .collect(),
                None => std::io::stdin().lock().lines().collect::<Result<_, _>>()?,
            };
            for l in lines.iter().filter(|l| !l.trim().is_empty()) {
                if b.ended.is_some() {
                    break;
                }
                let obs = b.step(l);
                show(l, &obs);
            }
        }
    }
    let answers = match &engine {
        Some(e) => serde_json::to_value(browse_run::answer(
            e,
            &b.answer_prompt(),
            b.quotes.len(),
            a.n,
            a.answer_tokens,
            false,
        )?)?,
        None => serde_json::Value::Null,
    };
    if let Some(e) = &engine {
        e.shutdown();
    }
    if a.json {
        println!(
            "{}",
            json!({"question": a.question, "steps": steps, "quotes": b.quotes,
                "ended": b.ended, "answer_prompt": b.answer_prompt(), "answers": answers})
        );
    } else {
        println!("--- answer prompt\n{}", b.answer_prompt());
        if let Some(best) = answers.get("best") {
            println!(
                "--- best of {} (heuristic score {}):\n{}",
                a.n,
                answers["scores"][best.as_u64().unwrap_or(0) as usize],
                answers["answers"][best.as_u64().unwrap_or(0) as usize]
                    .as_str()
                    .unwrap_or("")
            );
        }
    }
    Ok(())
}
