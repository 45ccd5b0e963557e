//! `canon agent browse`: WebGPT's text browser (paper 17) over a local site, driven by commands.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use canon_agent::browser::{Browser, BrowserConfig, Site};
use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon agent browse --site ./site --question 'When was Rust first released?' --commands cmds.txt
  printf 'Search rust release\\nClicked on link 0\\nFind in page: released\\nQuote: first released in 2015\\nEnd: Answer\\n' \\
    | canon agent browse --site ./site --question 'When was Rust first released?'

The site is a folder of .html/.htm/.txt pages (links between them are followed; others are shown
but lead nowhere); a BM25 engine serves `Search`. Commands, one per line: Search <query>,
Clicked on link <id>, Find in page: <text>, Quote: <text>, Scrolled down <1-3>, Scrolled up <1-3>,
Top, Back, End: Answer | Nonsense | Controversial. After each command the page state is printed as
the model would see it; at the end, the answer prompt with the quotes as numbered references.
A malformed or failing command prints an error line and leaves the state unchanged.")]
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
}

pub fn run(a: BrowseArgs, _ctx: &crate::Ctx) -> anyhow::Result<()> {
    if a.window == 0 || a.max_actions == 0 {
        bail!("--window and --max-actions must be at least 1");
    }
    let site = Site::load(&a.site).with_context(|| format!("--site {}", a.site.display()))?;
    let lines: Vec<String> = match &a.commands {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => std::io::stdin().lock().lines().collect::<Result<_, _>>()?,
    };
    let cfg = BrowserConfig {
        window: a.window,
        max_actions: a.max_actions,
        max_quote_chars: a.max_quote_chars,
        ..Default::default()
    };
    let mut b = Browser::new(&site, &a.question, cfg);
    let mut steps = Vec::new();
    for l in lines.iter().filter(|l| !l.trim().is_empty()) {
        if b.ended.is_some() {
            break;
        }
        let obs = b.step(l);
        if !a.json {
            println!("> {l}\n{obs}\n");
        }
        steps.push(json!({"command": l, "observation": obs}));
    }
    if a.json {
        println!(
            "{}",
            json!({"question": a.question, "steps": steps, "quotes": b.quotes,
                "ended": b.ended, "answer_prompt": b.answer_prompt()})
        );
    } else {
        println!("--- answer prompt\n{}", b.answer_prompt());
    }
    Ok(())
}
