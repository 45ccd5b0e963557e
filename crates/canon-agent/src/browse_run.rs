//! A language model drives WebGPT's text browser (paper 17).
//!
//! Each turn the model sees the paper's rendering of the state (question, quotes so far, past
//! actions, the open page's window, actions left) after a short instruction and a few hand-written
//! example turns, and writes one command after `Next action:`. The command is decoded under a
//! regular expression built from the state, so a small model cannot write one the browser would
//! reject: `Clicked on link` takes only the ids on the open page, `Quote:` only a whole visible
//! line (link markers removed; WebGPT's interface selects a quote by its start and end on the
//! screen, which a line is the simplest case of), `Back` only when there is a page to go back to,
//! and nothing but `Search` or `End: Answer` before a page is open. The episode ends at
//! `End: ...`, at the action budget or at the quote budget; then the answer prompt (question and
//! numbered references) is completed `n` times and the highest-scoring answer is kept
//! ([`crate::browser::heuristic_score`], best-of-n).

use canon_infer::{Engine, Grammar, GrammarCompiler, Request, SamplingConfig};
use serde::Serialize;

use crate::browser::{Browser, best_of_n, heuristic_score};
use crate::{AgentError, Result};

/// What the model reads before the state.
pub const INSTRUCTION: &str = "You browse a small web site to find the answer to a question. \
Each turn shows the question, the quotes collected, the past actions and the open page; write \
one command: Search <query>, Clicked on link <id>, Find in page: <text>, Quote: <text>, \
Scrolled down <1-3>, Scrolled up <1-3>, Top, Back, or End: Answer once the quotes answer the \
question.";

/// Hand-written example turns (state, command), rendered as the browser renders its own, latest
/// first: the turn nearest the live state is the opening one (small models copy the nearest
/// example; with the closing turn last, SmolLM2-135M ended every episode at once).
pub const EXAMPLES: &str = "Question:
What does the tac command print?

Quotes:
[1] From tac (tac.html):
tac - concatenate and print files in reverse

Past actions:
Search tac command
Clicked on link 0
Quote: tac - concatenate and print files in reverse

Title: tac
URL: tac.html
Lines 1-2 of 2:
tac
tac - concatenate and print files in reverse

Actions left: 17
Next action: End: Answer

Question:
What does the tac command print?

Quotes:
(none)

Past actions:
Search tac command
Clicked on link 0

Title: tac
URL: tac.html
Lines 1-2 of 2:
tac
tac - concatenate and print files in reverse

Actions left: 18
Next action: Quote: tac - concatenate and print files in reverse

Question:
What does the tac command print?

Quotes:
(none)

Past actions:
Search tac command

Title: Search results for 'tac command'
URL: search?q=tac command
Lines 1-2 of 2:
【0†tac】 tac.html
tac - concatenate and print files in reverse

Actions left: 19
Next action: Clicked on link 0

Question:
What does the tac command print?

Quotes:
(none)

Past actions:
(none)

No page is open.

Actions left: 20
Next action: Search tac command";

/// Longest text a free-form argument (search query, find text) may take, in characters.
pub const MAX_QUERY_CHARS: usize = 60;
/// Longest quote, in characters (a longer line is offered by its first this many characters).
pub const MAX_QUOTE_CHARS: usize = 300;

/// Escapes regular-expression metacharacters.
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The commands the browser accepts in its current state, as one regular expression (an optional
/// leading space, the command, an optional newline).
pub fn command_regex(b: &Browser) -> String {
    let q = MAX_QUERY_CHARS;
    let mut alts = vec![format!("Search [^\\n]{{1,{q}}}")];
    if b.has_page() {
        let links = b.link_count();
        if links > 0 {
            let ids: Vec<String> = (0..links).map(|i| i.to_string()).collect();
            alts.push(format!("Clicked on link ({})", ids.join("|")));
        }
        alts.push(format!("Find in page: [^\\n]{{1,{}}}", q.min(40)));
        // A line already quoted from this page is left out: quoting it again would only spend
        // an action (the browser keeps a quote once).
        let mut lines: Vec<String> = b
            .visible_lines()
            .into_iter()
            .map(|l| l.chars().take(MAX_QUOTE_CHARS).collect::<String>())
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty() && !b.is_quoted(l))
            .collect();
        lines.dedup();
        if !lines.is_empty() {
            let ls: Vec<String> = lines.iter().map(|l| regex_escape(l)).collect();
            alts.push(format!("Quote: ({})", ls.join("|")));
        }
        alts.push("Scrolled (down|up) [1-3]".into());
        alts.push("Top".into());
        if b.can_go_back() {
            alts.push("Back".into());
        }
    }
    alts.push("End: Answer".into());
    format!(" ?({})\\n?", alts.join("|"))
}

/// How the command prompt is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// The instruction, the example turns, the state: for a model that was not trained to browse.
    #[default]
    FewShot,
    /// The instruction and the state: what behaviour cloning trains on (shorter, cheaper).
    Plain,
}

/// The whole prompt for the next command.
pub fn command_prompt(b: &Browser, style: PromptStyle) -> String {
    match style {
        PromptStyle::FewShot => format!("{INSTRUCTION}\n\n{EXAMPLES}\n\n{}", b.render()),
        PromptStyle::Plain => format!("{INSTRUCTION}\n\n{}", b.render()),
    }
}

/// What writes the next command: the model through the engine, or a scripted fake in tests.
pub trait CommandLm {
    /// Continues `prompt` with text matching the regular expression `grammar`.
    fn command(&mut self, prompt: &str, grammar: &str) -> Result<String>;
}

/// The model behind the batched engine, decoding under the state's command grammar.
pub struct EngineCommandLm<'e> {
    pub engine: &'e Engine,
    compiler: GrammarCompiler,
    pub sampling: SamplingConfig,
    /// Token budget of one command (enough for the longest quote at one token per character).
    pub max_tokens: usize,
}

impl<'e> EngineCommandLm<'e> {
    /// Greedy commands (`sampling` at its default, temperature 0) from `engine`'s model.
    pub fn new(engine: &'e Engine) -> Result<Self> {
        let compiler = GrammarCompiler::new(engine.tokenizer())
            .map_err(|e| AgentError::Task(e.to_string()))?;
        Ok(EngineCommandLm {
            engine,
            compiler,
            sampling: SamplingConfig::default(),
            max_tokens: MAX_QUOTE_CHARS + 32,
        })
    }
}

impl CommandLm for EngineCommandLm<'_> {
    fn command(&mut self, prompt: &str, grammar: &str) -> Result<String> {
        let ids = crate::react::encode_fitting(
            self.engine,
            prompt,
            self.max_tokens,
            "the browser prompt",
            "use a smaller --window",
        )?;
        let constraint = self
            .compiler
            .compile(&Grammar::Regex(grammar.to_string()))
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let mut req = Request::new(ids, self.max_tokens);
        req.sampling = self.sampling.clone();
        req.stop = vec!["\n".into()];
        req.constraint = Some(Box::new(constraint));
        let h = self
            .engine
            .submit(req)
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let c = h.wait().map_err(|e| AgentError::Task(e.to_string()))?;
        Ok(c.text)
    }
}

/// One turn of an episode.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Turn {
    pub command: String,
    pub observation: String,
}

/// Lets `lm` browse until the episode ends. A command the browser rejects (a fake's, or a quote
/// cut by the token budget) is kept as a turn with its error and does not count as an action; after
/// `max_actions` rejected commands in a row the episode is ended with `End: Answer`.
pub fn drive(b: &mut Browser, lm: &mut dyn CommandLm, style: PromptStyle) -> Result<Vec<Turn>> {
    let mut turns = Vec::new();
    let mut rejected = 0usize;
    while b.ended.is_none() {
        let prompt = command_prompt(b, style);
        let out = lm.command(&prompt, &command_regex(b))?;
        let command = out.trim().to_string();
        let before = b.actions.len();
        let observation = b.step(&command);
        turns.push(Turn {
            command,
            observation,
        });
        if b.actions.len() == before && b.ended.is_none() {
            rejected += 1;
            if rejected >= b.config().max_actions {
                let observation = b.step("End: Answer");
                turns.push(Turn {
                    command: "End: Answer".into(),
                    observation,
                });
            }
        } else {
            rejected = 0;
        }
    }
    Ok(turns)
}

/// Sampled answers, their scores and the pick.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Answers {
    pub answers: Vec<String>,
    pub scores: Vec<f64>,
    pub best: Option<usize>,
}

impl Answers {
    /// The pick among the first `n` answers only (best-of-n for every n ≤ the number sampled).
    pub fn best_of_first(&self, n: usize) -> Option<usize> {
        best_of_n(&self.scores[..n.min(self.scores.len())])
    }
}

/// `n` answers to the answer prompt (temperature 0.8 with seeds 0..n when n > 1 or `sample`,
/// greedy otherwise), scored by the heuristic; stops at a new `Question:` or line.
pub fn answer(
    engine: &Engine,
    prompt: &str,
    references: usize,
    n: usize,
    max_tokens: usize,
    sample: bool,
) -> Result<Answers> {
    let ids = crate::react::encode_fitting(engine, prompt, max_tokens, "the answer prompt", "")?;
    let reqs = (0..n)
        .map(|i| {
            let mut r = Request::new(ids.clone(), max_tokens);
            r.sampling = SamplingConfig {
                temperature: if n == 1 && !sample { 0.0 } else { 0.8 },
                seed: i as u64,
                ..Default::default()
            };
            r.stop = vec!["\nQuestion:".into(), "\n\n".into()];
            r
        })
        .collect();
    let outs = engine
        .generate_batch(reqs)
        .map_err(|e| AgentError::Task(e.to_string()))?;
    let answers: Vec<String> = outs
        .into_iter()
        .map(|c| c.text.trim().to_string())
        .collect();
    let scores: Vec<f64> = answers
        .iter()
        .map(|t| heuristic_score(t, references))
        .collect();
    let best = best_of_n(&scores);
    Ok(Answers {
        answers,
        scores,
        best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::{BrowserConfig, Site};

    fn site() -> Site {
        Site::from_texts(vec![
            (
                "index.html".into(),
                "<html><head><title>Home</title></head><body><p>Tools: <a href=\"tac.html\">tac</a> and <a href=\"cat.html\">cat</a>.</p></body></html>".into(),
            ),
            (
                "tac.html".into(),
                "<html><head><title>tac</title></head><body><p>tac prints files in reverse (last line first).</p><p>See <a href=\"cat.html\">cat</a>.</p></body></html>".into(),
            ),
            (
                "cat.html".into(),
                "<html><head><title>cat</title></head><body><p>cat (1+1) concatenates files [and] prints them.</p></body></html>".into(),
            ),
        ])
        .unwrap()
    }

    /// Replays commands and records the grammars it was given.
    struct Script {
        commands: Vec<String>,
        grammars: Vec<String>,
    }

    impl CommandLm for Script {
        fn command(&mut self, prompt: &str, grammar: &str) -> Result<String> {
            assert!(prompt.starts_with(INSTRUCTION) && prompt.ends_with("Next action:"));
            self.grammars.push(grammar.to_string());
            Ok(if self.commands.is_empty() {
                "Top".into()
            } else {
                self.commands.remove(0)
            })
        }
    }

    #[test]
    fn grammar_follows_the_state() {
        let s = site();
        let mut b = Browser::new(&s, "What does tac print?", BrowserConfig::default());
        let g0 = command_regex(&b);
        assert!(g0.contains("Search") && g0.contains("End: Answer"));
        assert!(!g0.contains("Clicked") && !g0.contains("Quote") && !g0.contains("Back"));
        b.step("Search tac reverse");
        let g1 = command_regex(&b);
        let n = b.link_count();
        assert!(n >= 1, "{}", b.render());
        assert!(
            g1.contains(&format!(
                "Clicked on link ({})",
                (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join("|")
            )),
            "{g1}"
        );
        assert!(!g1.contains("Back"), "{g1}");
        b.step("Clicked on link 0");
        let g2 = command_regex(&b);
        assert!(g2.contains("Back") && g2.contains("Quote: ("), "{g2}");
        // A quoted line leaves the grammar; the page's other lines stay.
        let alt = |g: &str, l: &str| {
            let e = regex_escape(l);
            [
                format!("({e}|"),
                format!("|{e}|"),
                format!("|{e})"),
                format!("({e})"),
            ]
            .iter()
            .any(|p| g.contains(p.as_str()))
        };
        let first = b.visible_lines()[0].clone();
        assert!(alt(&g2, &first), "{g2}");
        b.step(&format!("Quote: {first}"));
        assert!(b.is_quoted(&first));
        let g3 = command_regex(&b);
        assert!(!alt(&g3, &first), "{g3}");
        if let Some(other) = b.visible_lines().iter().find(|l| **l != first) {
            assert!(alt(&g3, other), "{g3}");
        }
        // Metacharacters of a visible line are escaped.
        let mut c = Browser::new(&s, "q", BrowserConfig::default());
        c.step("Search cat concatenates");
        let ids: Vec<usize> = (0..c.link_count()).collect();
        let cat = ids
            .into_iter()
            .find(|&i| {
                let mut d = Browser::new(&s, "q", BrowserConfig::default());
                d.step("Search cat concatenates");
                d.step(&format!("Clicked on link {i}"));
                d.render().contains("Title: cat")
            })
            .unwrap();
        c.step(&format!("Clicked on link {cat}"));
        let g = command_regex(&c);
        assert!(
            g.contains(r"cat \(1\+1\) concatenates files \[and\] prints them\."),
            "{g}"
        );
    }

    #[test]
    fn a_scripted_episode_collects_quotes_and_ends() {
        let s = site();
        let mut b = Browser::new(&s, "What does tac print?", BrowserConfig::default());
        let mut lm = Script {
            commands: vec![
                " Search tac reverse\n".into(),
                "Clicked on link 9".into(), // rejected: no such link
                "Clicked on link 0".into(),
                "Quote: tac prints files in reverse (last line first).".into(),
                "End: Answer".into(),
            ],
            grammars: Vec::new(),
        };
        let turns = drive(&mut b, &mut lm, PromptStyle::FewShot).unwrap();
        assert_eq!(turns.len(), 5);
        assert!(
            turns[1].observation.starts_with("error:"),
            "{}",
            turns[1].observation
        );
        assert_eq!(b.ended.as_deref(), Some("Answer"));
        assert_eq!(b.quotes.len(), 1);
        assert_eq!(b.actions.len(), 4);
        assert!(b.answer_prompt().contains("[1] tac"));
    }

    #[test]
    fn a_policy_that_never_acts_is_ended() {
        let s = site();
        let cfg = BrowserConfig {
            max_actions: 3,
            ..Default::default()
        };
        let mut b = Browser::new(&s, "q", cfg);
        // "Top" before any page is open is rejected every time.
        let mut lm = Script {
            commands: Vec::new(),
            grammars: Vec::new(),
        };
        let turns = drive(&mut b, &mut lm, PromptStyle::FewShot).unwrap();
        assert_eq!(turns.len(), 4);
        assert_eq!(b.ended.as_deref(), Some("Answer"));
    }

    #[test]
    fn the_budget_ends_a_wandering_policy() {
        let s = site();
        let cfg = BrowserConfig {
            max_actions: 4,
            ..Default::default()
        };
        let mut b = Browser::new(&s, "q", cfg);
        let mut lm = Script {
            commands: vec!["Search tac".into(); 10],
            grammars: Vec::new(),
        };
        let turns = drive(&mut b, &mut lm, PromptStyle::FewShot).unwrap();
        assert_eq!(turns.len(), 4);
        assert_eq!(b.actions.len(), 4);
        assert!(b.ended.is_some());
    }
}
