//! ReAct (Yao et al., 2023): interleaved `Thought i:` / `Action i:` / `Observation i:` steps over
//! a local encyclopedia, with the Act-only and CoT-only baselines.
//!
//! The environment follows the paper's Wikipedia API: `Search[entity]` answers the first five
//! sentences of the page whose title matches exactly (case-insensitive), or
//! `Could not find [entity]. Similar: [...]` with the five most similar titles (BM25 over titles);
//! `Lookup[keyword]` answers the next sentence of the current page containing the keyword, as
//! `(Result k / N) sentence`, or `No more results.`; `Finish[answer]` ends the episode. Pages are
//! split into paragraphs on newlines and paragraphs into sentences on `". "`. Search and lookup are
//! [`Tool`]s sharing one page cursor, and any other tool of the [`Toolbox`] (a calculator, say) can
//! be called as `Name[text]`; an unknown action gives `Invalid action: ...`, a failing tool its
//! error, and the loop goes on.
//!
//! The loop (the paper's reference notebook): generate from `Thought i:` stopping at
//! `\nObservation i:`, split at `\nAction i: `; when the split fails keep the thought's first line
//! and re-query `Thought i: t\nAction i:` stopping at a newline. With `constrained` on, the thought
//! is generated up to its end of line and the action under an [`ActionConstraint`], so the model
//! can only write `Name[argument]` with a known name. After `max_steps` without `Finish`, the
//! answer is empty (the paper's forced `finish[]`).

use std::sync::Arc;

use serde::Serialize;

use crate::react_data::Question;
use crate::tools::{Tool, Toolbox};
use crate::{AgentError, Result};

mod constraint;
#[cfg(test)]
mod tests;
mod wiki;

pub use constraint::*;
pub use wiki::*;

/// The text generator the loop drives: the model (through the batched engine) or a scripted fake.
pub trait AgentLm {
    /// Continues `prompt` greedily until one of `stop` (excluded from the result) or `max_tokens`.
    /// With `actions`, the continuation must be one action `Name[argument]` with a name from the
    /// list (constrained decoding); a fake may ignore it.
    fn complete(
        &mut self,
        prompt: &str,
        stop: &[String],
        max_tokens: usize,
        actions: Option<&[String]>,
    ) -> Result<String>;
}

// ---------------------------------------------------------------------------------------------
// Actions.

/// A parsed action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Finish(String),
    Call { name: String, arg: String },
    Invalid(String),
}

/// Parses `Name[argument]` (the paper lower-cases the first letter; names here match any case).
pub fn parse_action(s: &str) -> Action {
    let t = s.trim();
    let Some(open) = t.find('[') else {
        return Action::Invalid(t.to_string());
    };
    if !t.ends_with(']') {
        return Action::Invalid(t.to_string());
    }
    let name = &t[..open];
    let arg = &t[open + 1..t.len() - 1];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Action::Invalid(t.to_string());
    }
    if name.eq_ignore_ascii_case("finish") {
        Action::Finish(arg.trim().to_string())
    } else {
        Action::Call {
            name: name.to_string(),
            arg: arg.to_string(),
        }
    }
}

/// Runs an action: the observation and whether the episode ended (with its answer).
pub fn step(tools: &Toolbox, action: &str) -> (String, Option<String>) {
    match parse_action(action) {
        Action::Finish(a) => (format!("Episode finished, answer: {a}"), Some(a)),
        Action::Invalid(a) => (format!("Invalid action: {a}"), None),
        Action::Call { name, arg } => match tools.get(&name) {
            None => (format!("Invalid action: {}", action.trim()), None),
            Some(_) => {
                let o = tools.call_text(&name, &arg);
                (
                    o.text.split_whitespace().collect::<Vec<_>>().join(" "),
                    None,
                )
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Prompts and the loop.

/// ReAct, Act-only or CoT-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    React,
    Act,
    Cot,
}

impl std::str::FromStr for Mode {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "react" => Ok(Mode::React),
            "act" => Ok(Mode::Act),
            "cot" => Ok(Mode::Cot),
            o => Err(AgentError::Task(format!(
                "expected a mode react, act or cot, found '{o}'"
            ))),
        }
    }
}

const INSTRUCTION_ACT: &str = "Answer the question about the software installed on this computer by taking steps. \
An Action is one of: Search[entity], which answers the first sentences of the page about the package or command \
named entity, or similar titles when there is no such page; Lookup[keyword], which answers the next sentence of \
the current page that contains keyword; Finish[answer], which gives the answer and ends the task.";

/// The instruction line of a mode's prompt.
pub fn instruction(mode: Mode) -> String {
    match mode {
        Mode::React => format!(
            "{INSTRUCTION_ACT} Before each Action, a Thought reasons about what is known and what to do next."
        ),
        Mode::Act => INSTRUCTION_ACT.to_string(),
        Mode::Cot => "Answer the question about the software installed on this computer. Think step by step, \
then end with \"So the answer is\" and the answer."
            .to_string(),
    }
}

/// An oracle trajectory of `q` in a mode's format (observations from the environment), used for
/// the few-shot demonstrations and for fine-tuning data.
pub fn demonstration(q: &Question, env: &WikiEnv, mode: Mode) -> String {
    let mut s = format!("Question: {}\n", q.question);
    if mode == Mode::Cot {
        let facts: Vec<&str> = q.facts.iter().skip(1).map(String::as_str).collect();
        let text = facts
            .join(" ")
            .replace(" I need to look up depends.", "")
            .replace("The dependencies of", "I look at the dependencies of");
        s.push_str(&format!("Thought: {text}\nAnswer: {}\n", q.answer));
        return s;
    }
    let tools = Toolbox::new(Default::default());
    let tools = env.tools().into_iter().fold(tools, |t, x| t.with(x));
    for (i, a) in q.path.iter().enumerate() {
        let n = i + 1;
        if mode == Mode::React {
            s.push_str(&format!("Thought {n}: {}\n", q.facts[i]));
        }
        let (obs, _) = step(&tools, a);
        s.push_str(&format!("Action {n}: {a}\nObservation {n}: {obs}\n"));
    }
    s
}

/// The few-shot prompt prefix: instruction and demonstrations, then `Question: ...`.
pub fn prompt(mode: Mode, demos: &[String], question: &str) -> String {
    let mut s = instruction(mode);
    s.push_str("\n\n");
    for d in demos {
        s.push_str(d);
        s.push('\n');
    }
    s.push_str(&format!("Question: {question}\n"));
    s
}

/// One step of an episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub thought: Option<String>,
    pub action: String,
    pub observation: String,
}

/// One episode's transcript (a JSONL line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    pub id: String,
    pub mode: Mode,
    pub question: String,
    pub answer: String,
    pub prediction: String,
    pub exact_match: bool,
    pub finished: bool,
    pub steps: Vec<Step>,
    /// CoT's reasoning text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

/// Loop settings.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub mode: Mode,
    pub max_steps: usize,
    /// Tokens per generation call (the paper: 100).
    pub max_tokens: usize,
    /// Constrain actions to `Name[argument]` with the toolbox's names and `Finish`.
    pub constrained: bool,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            mode: Mode::React,
            max_steps: 7,
            max_tokens: 100,
            constrained: true,
        }
    }
}

/// SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_punctuation() { ' ' } else { c })
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn exact_match(pred: &str, gold: &str) -> bool {
    normalize_answer(pred) == normalize_answer(gold)
}

/// CoT's answer: the text after the last `answer is` / `Answer:`, up to the end of its line.
pub fn cot_answer(text: &str) -> String {
    // ASCII lower-casing keeps byte offsets, so they index `text` too
    let lower = text.to_ascii_lowercase();
    let at = ["answer:", "answer is"]
        .iter()
        .filter_map(|k| lower.rfind(k).map(|i| i + k.len()))
        .max();
    let Some(at) = at else { return String::new() };
    text[at..]
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches('.')
        .trim()
        .to_string()
}

/// Token budget of a constrained action (the argument is at most 60 characters).
pub const ACTION_TOKENS: usize = 80;

/// Runs one episode.
pub fn run_episode(
    lm: &mut dyn AgentLm,
    tools: &Toolbox,
    demos: &[String],
    q: &Question,
    cfg: &LoopConfig,
) -> Result<Episode> {
    let mut p = prompt(cfg.mode, demos, &q.question);
    let mut ep = Episode {
        id: q.id.clone(),
        mode: cfg.mode,
        question: q.question.clone(),
        answer: q.answer.clone(),
        prediction: String::new(),
        exact_match: false,
        finished: false,
        steps: Vec::new(),
        reasoning: None,
    };
    if cfg.mode == Mode::Cot {
        p.push_str("Thought:");
        let out = lm.complete(&p, &["\nQuestion:".to_string()], cfg.max_tokens * 2, None)?;
        ep.prediction = cot_answer(&out);
        ep.finished = !ep.prediction.is_empty();
        ep.reasoning = Some(out.trim().to_string());
        ep.exact_match = exact_match(&ep.prediction, &q.answer);
        return Ok(ep);
    }
    let mut names: Vec<String> = tools.specs().into_iter().map(|s| s.name).collect();
    names.push("Finish".into());
    for i in 1..=cfg.max_steps {
        let obs_stop = format!("\nObservation {i}:");
        let (thought, action) = match (cfg.mode, cfg.constrained) {
            (Mode::React, false) => {
                let out = lm.complete(
                    &format!("{p}Thought {i}:"),
                    std::slice::from_ref(&obs_stop),
                    cfg.max_tokens,
                    None,
                )?;
                match out.split_once(&format!("\nAction {i}: ")) {
                    Some((t, a)) => (Some(t.trim().to_string()), a.trim().to_string()),
                    None => {
                        let t = out.trim().lines().next().unwrap_or("").trim().to_string();
                        let a = lm.complete(
                            &format!("{p}Thought {i}: {t}\nAction {i}:"),
                            &["\n".to_string()],
                            cfg.max_tokens,
                            None,
                        )?;
                        (Some(t), a.trim().to_string())
                    }
                }
            }
            (Mode::React, true) => {
                let t = lm.complete(
                    &format!("{p}Thought {i}:"),
                    &["\n".to_string()],
                    cfg.max_tokens,
                    None,
                )?;
                let t = t.trim().to_string();
                let a = lm.complete(
                    &format!("{p}Thought {i}: {t}\nAction {i}:"),
                    &["\n".to_string()],
                    ACTION_TOKENS,
                    Some(&names),
                )?;
                (Some(t), a.trim().to_string())
            }
            (_, constrained) => {
                let a = lm.complete(
                    &format!("{p}Action {i}:"),
                    &[obs_stop.clone(), "\n".to_string()],
                    if constrained {
                        ACTION_TOKENS
                    } else {
                        cfg.max_tokens
                    },
                    constrained.then_some(names.as_slice()),
                )?;
                (None, a.trim().to_string())
            }
        };
        // the paper lower-cases the action's first letter; names here match in any case
        let (obs, done) = step(tools, &action);
        if let Some(t) = &thought {
            p.push_str(&format!("Thought {i}: {t}\n"));
        }
        p.push_str(&format!("Action {i}: {action}\nObservation {i}: {obs}\n"));
        ep.steps.push(Step {
            thought,
            action,
            observation: obs,
        });
        if let Some(a) = done {
            ep.prediction = a;
            ep.finished = true;
            break;
        }
    }
    ep.exact_match = exact_match(&ep.prediction, &q.answer);
    Ok(ep)
}

/// A toolbox with the episode's `Search` and `Lookup` plus `extra` tools.
pub fn episode_tools(
    env: &WikiEnv,
    extra: &[Arc<dyn Tool>],
    limits: crate::tools::Limits,
) -> Toolbox {
    let mut tb = Toolbox::new(limits);
    for t in env.tools().into_iter().chain(extra.iter().cloned()) {
        tb = tb.with(t);
    }
    tb
}
