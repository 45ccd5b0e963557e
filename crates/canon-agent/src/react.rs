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

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};

use crate::react_data::{Page, Question};
use crate::tools::{Tool, ToolError, ToolSpec, Toolbox};
use crate::{AgentError, Result};

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
// The encyclopedia environment.

/// The pages and a title index.
pub struct Wiki {
    pub pages: Vec<Page>,
    by_title: std::collections::HashMap<String, usize>,
    titles: canon_rag::bm25::Bm25,
}

impl Wiki {
    pub fn new(pages: Vec<Page>) -> Wiki {
        let by_title = pages
            .iter()
            .enumerate()
            .map(|(i, p)| (p.title.to_lowercase(), i))
            .collect();
        let docs: Vec<String> = pages.iter().map(|p| title_terms(&p.title)).collect();
        let titles = canon_rag::bm25::Bm25::build(docs.iter().map(String::as_str));
        Wiki {
            pages,
            by_title,
            titles,
        }
    }
}

/// A title as BM25 terms: its words and their character trigrams (padded with `_`), so `libc`
/// is similar to `libc6`.
pub fn title_terms(title: &str) -> String {
    let mut out = Vec::new();
    for w in title
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        out.push(w.to_string());
        let cs: Vec<char> = std::iter::once('_')
            .chain(w.chars())
            .chain(std::iter::once('_'))
            .collect();
        for g in cs.windows(3) {
            out.push(g.iter().collect::<String>());
        }
    }
    out.join(" ")
}

/// The paper's sentence split: paragraphs on newlines, sentences on `". "`, each re-terminated.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split('\n').map(str::trim).filter(|p| !p.is_empty()) {
        for s in para.split(". ").map(str::trim).filter(|s| !s.is_empty()) {
            let s = s.trim_end_matches('.');
            out.push(format!("{s}."));
        }
    }
    out
}

#[derive(Default)]
struct Cursor {
    page: Option<usize>,
    keyword: String,
    results: Vec<String>,
    next: usize,
}

/// One episode's state: the current page and the lookup cursor (reset by each search).
#[derive(Clone)]
pub struct WikiEnv {
    wiki: Arc<Wiki>,
    cursor: Arc<Mutex<Cursor>>,
}

impl WikiEnv {
    pub fn new(wiki: Arc<Wiki>) -> Self {
        WikiEnv {
            wiki,
            cursor: Arc::new(Mutex::new(Cursor::default())),
        }
    }

    pub fn search(&self, entity: &str) -> String {
        let entity = entity.trim();
        let mut c = match self.cursor.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        *c = Cursor::default();
        if let Some(&i) = self.wiki.by_title.get(&entity.to_lowercase()) {
            c.page = Some(i);
            return sentences(&self.wiki.pages[i].text)
                .into_iter()
                .take(5)
                .collect::<Vec<_>>()
                .join(" ");
        }
        let similar: Vec<String> = self
            .wiki
            .titles
            .search(&title_terms(entity), 5)
            .into_iter()
            .map(|(i, _)| format!("'{}'", self.wiki.pages[i].title))
            .collect();
        format!(
            "Could not find [{entity}]. Similar: [{}].",
            similar.join(", ")
        )
    }

    pub fn lookup(&self, keyword: &str) -> String {
        let keyword = keyword.trim();
        let mut c = match self.cursor.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let Some(page) = c.page else {
            return "No page is open: search for an entity first.".into();
        };
        if c.keyword != keyword {
            let k = keyword.to_lowercase();
            c.results = sentences(&self.wiki.pages[page].text)
                .into_iter()
                .filter(|s| s.to_lowercase().contains(&k))
                .collect();
            c.keyword = keyword.to_string();
            c.next = 0;
        }
        if c.next >= c.results.len() {
            return "No more results.".into();
        }
        let r = format!(
            "(Result {} / {}) {}",
            c.next + 1,
            c.results.len(),
            c.results[c.next]
        );
        c.next += 1;
        r
    }

    /// The `Search` and `Lookup` tools over this episode's cursor.
    pub fn tools(&self) -> Vec<Arc<dyn Tool>> {
        vec![
            Arc::new(WikiTool {
                env: self.clone(),
                lookup: false,
            }),
            Arc::new(WikiTool {
                env: self.clone(),
                lookup: true,
            }),
        ]
    }
}

struct WikiTool {
    env: WikiEnv,
    lookup: bool,
}

impl Tool for WikiTool {
    fn spec(&self) -> ToolSpec {
        if self.lookup {
            ToolSpec {
                name: "Lookup".into(),
                description: "The next sentence of the current page that contains the keyword."
                    .into(),
                parameters: json!({"type": "object",
                    "properties": {"keyword": {"type": "string"}}, "required": ["keyword"]}),
            }
        } else {
            ToolSpec {
                name: "Search".into(),
                description: "The first sentences of the page about an entity, or similar titles."
                    .into(),
                parameters: json!({"type": "object",
                    "properties": {"entity": {"type": "string"}}, "required": ["entity"]}),
            }
        }
    }
    fn call(&self, args: &Value) -> std::result::Result<String, ToolError> {
        if self.lookup {
            Ok(self.env.lookup(args["keyword"].as_str().unwrap_or("")))
        } else {
            Ok(self.env.search(args["entity"].as_str().unwrap_or("")))
        }
    }
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
// Constrained action syntax.

/// The decoded text of every token id (empty for special tokens and partial characters, which
/// an action never uses).
pub struct TokenTexts(pub Vec<String>);

impl TokenTexts {
    pub fn new(tok: &canon_text::Tokenizer) -> Self {
        TokenTexts(
            (0..tok.vocab_size() as u32)
                .map(|id| {
                    tok.decode(&[id], true)
                        .ok()
                        .filter(|s| !s.contains('\u{FFFD}'))
                        .unwrap_or_default()
                })
                .collect(),
        )
    }
}

/// Whether `s` can begin (or is) ` Name[argument]` with a known name, an argument of at most
/// `max_arg` characters without `]` or a newline, and nothing after `]`. Returns
/// `Some(complete)`, or `None` when no continuation can make it an action.
pub fn action_prefix(s: &str, names: &[String], max_arg: usize) -> Option<bool> {
    let s = s.strip_prefix(' ').unwrap_or(s);
    if s.is_empty() {
        return Some(false);
    }
    for n in names {
        // first letter in either case
        let mut want = String::new();
        let mut cs = n.chars();
        let first = cs.next()?;
        let rest: String = cs.collect();
        for f in [first.to_ascii_uppercase(), first.to_ascii_lowercase()] {
            want.clear();
            want.push(f);
            want.push_str(&rest);
            want.push('[');
            if want.starts_with(s) {
                return Some(false);
            }
            if let Some(tail) = s.strip_prefix(want.as_str()) {
                if let Some(close) = tail.find(']') {
                    let arg = &tail[..close];
                    let ok = close + 1 == tail.len()
                        && !arg.contains('\n')
                        && arg.chars().count() <= max_arg
                        && !arg.trim().is_empty();
                    return ok.then_some(true);
                }
                return (!tail.contains('\n') && tail.chars().count() <= max_arg).then_some(false);
            }
        }
    }
    None
}

/// Constrains one generation to ` Name[argument]`, then ends it.
pub struct ActionConstraint {
    pub texts: Arc<TokenTexts>,
    pub names: Vec<String>,
    pub max_arg: usize,
    pub text: String,
    pub ids: Vec<u32>,
}

impl canon_infer::TokenConstraint for ActionConstraint {
    fn allowed(&mut self) -> std::result::Result<canon_infer::Allowed, String> {
        if action_prefix(&self.text, &self.names, self.max_arg) == Some(true) {
            return Ok(canon_infer::Allowed::End);
        }
        let n = self.texts.0.len();
        let mut bits = vec![0u64; n.div_ceil(64)];
        let mut any = false;
        let mut buf = String::with_capacity(self.text.len() + 32);
        for (id, t) in self.texts.0.iter().enumerate() {
            if t.is_empty() {
                continue;
            }
            buf.clear();
            buf.push_str(&self.text);
            buf.push_str(t);
            if action_prefix(&buf, &self.names, self.max_arg).is_some() {
                bits[id / 64] |= 1 << (id % 64);
                any = true;
            }
        }
        if !any {
            return Err(format!(
                "no token continues the action {:?} (expected Name[argument])",
                self.text
            ));
        }
        Ok(canon_infer::Allowed::Mask(bits))
    }
    fn commit(&mut self, token: u32) -> std::result::Result<(), String> {
        let t = self
            .texts
            .0
            .get(token as usize)
            .ok_or_else(|| format!("token {token} is outside the vocabulary"))?;
        self.text.push_str(t);
        self.ids.push(token);
        Ok(())
    }
}

/// [`AgentLm`] over the batched engine (greedy), with [`ActionConstraint`] for actions.
#[derive(Clone)]
pub struct EngineLm {
    pub engine: canon_infer::Engine,
    pub texts: Arc<TokenTexts>,
}

/// `prompt`'s token ids, or an error naming `what` when they and `new_tokens` more would not fit
/// the engine's context (`hint`, when not empty, says what to change).
pub(crate) fn encode_fitting(
    engine: &canon_infer::Engine,
    prompt: &str,
    new_tokens: usize,
    what: &str,
    hint: &str,
) -> Result<Vec<u32>> {
    let ids = engine
        .tokenizer()
        .encode(prompt, false)
        .map_err(|e| AgentError::Text(e.to_string()))?;
    let max_len = engine.max_len();
    if ids.len() + new_tokens >= max_len {
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        };
        return Err(AgentError::Task(format!(
            "{what} has {} tokens; with {new_tokens} new ones it exceeds the context of {max_len}{hint}",
            ids.len()
        )));
    }
    Ok(ids)
}

impl AgentLm for EngineLm {
    fn complete(
        &mut self,
        prompt: &str,
        stop: &[String],
        max_tokens: usize,
        actions: Option<&[String]>,
    ) -> Result<String> {
        let ids = encode_fitting(&self.engine, prompt, max_tokens, "the prompt", "")?;
        let mut req = canon_infer::Request::new(ids, max_tokens);
        req.stop = stop.to_vec();
        if let Some(names) = actions {
            req.constraint = Some(Box::new(ActionConstraint {
                texts: self.texts.clone(),
                names: names.to_vec(),
                max_arg: 60,
                text: String::new(),
                ids: Vec::new(),
            }));
        }
        let h = self
            .engine
            .submit(req)
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let c = h.wait().map_err(|e| AgentError::Task(e.to_string()))?;
        Ok(c.text)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wiki() -> Arc<Wiki> {
        Arc::new(Wiki::new(vec![
            Page {
                title: "coreutils".into(),
                text: "coreutils is a Debian package: GNU core utilities. Its version is 9.1-1. It is maintained by Michael Stone. It belongs to section utils. Its priority is required. It depends on libc6, libacl1. It provides the commands cat, ls.".into(),
            },
            Page {
                title: "libc6".into(),
                text: "libc6 is a Debian package: GNU C Library. Its version is 2.36-9. It is maintained by GNU Libc Maintainers.".into(),
            },
            Page {
                title: "ls".into(),
                text: "ls is a command: list directory contents. The command ls is provided by the package coreutils.".into(),
            },
        ]))
    }

    fn question() -> Question {
        Question {
            id: "dep_version:coreutils".into(),
            split: "test".into(),
            kind: "dep_version".into(),
            entity: "coreutils".into(),
            question: "What is the version of the first package that coreutils depends on?".into(),
            answer: "2.36-9".into(),
            path: vec![
                "Search[coreutils]".into(),
                "Lookup[depends]".into(),
                "Search[libc6]".into(),
                "Finish[2.36-9]".into(),
            ],
            facts: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        }
    }

    /// Answers each call with the next scripted text; records the prompts.
    struct Scripted {
        outs: Vec<String>,
        prompts: Vec<String>,
    }
    impl AgentLm for Scripted {
        fn complete(
            &mut self,
            prompt: &str,
            stop: &[String],
            _: usize,
            _: Option<&[String]>,
        ) -> Result<String> {
            self.prompts.push(prompt.to_string());
            let mut o = if self.outs.is_empty() {
                String::new()
            } else {
                self.outs.remove(0)
            };
            for s in stop {
                if let Some(i) = o.find(s.as_str()) {
                    o.truncate(i);
                }
            }
            Ok(o)
        }
    }

    #[test]
    fn environment_matches_the_paper_api() {
        let env = WikiEnv::new(wiki());
        assert_eq!(
            env.search("Coreutils"),
            "coreutils is a Debian package: GNU core utilities. Its version is 9.1-1. It is maintained by Michael Stone. It belongs to section utils. Its priority is required."
        );
        assert_eq!(
            env.lookup("depends"),
            "(Result 1 / 1) It depends on libc6, libacl1."
        );
        assert_eq!(env.lookup("depends"), "No more results.");
        assert_eq!(
            env.lookup("version"),
            "(Result 1 / 1) Its version is 9.1-1."
        );
        assert!(
            env.search("libc")
                .starts_with("Could not find [libc]. Similar: ['libc6'"),
            "{}",
            env.search("libc")
        );
        assert_eq!(
            env.lookup("version"),
            "No page is open: search for an entity first."
        );
    }

    #[test]
    fn scripted_model_reaches_finish_with_the_paper_format() {
        let env = WikiEnv::new(wiki());
        let tools = episode_tools(&env, &[], Default::default());
        let mut lm = Scripted {
            outs: vec![
                " I need coreutils.\nAction 1: Search[coreutils]\nObservation 1: hallucinated"
                    .into(),
                " Dependencies are further down.\nAction 2: lookup[depends]".into(),
                " The first is libc6.\nAction 3: Search[libc6]".into(),
                " So the answer is 2.36-9.\nAction 4: Finish[2.36-9]".into(),
            ],
            prompts: vec![],
        };
        let cfg = LoopConfig {
            constrained: false,
            ..Default::default()
        };
        let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
        assert!(ep.finished && ep.exact_match, "{ep:?}");
        assert_eq!(ep.steps.len(), 4);
        assert_eq!(
            ep.steps[1].observation,
            "(Result 1 / 1) It depends on libc6, libacl1."
        );
        assert_eq!(
            ep.steps[2].observation,
            "libc6 is a Debian package: GNU C Library. Its version is 2.36-9. It is maintained by GNU Libc Maintainers."
        );
        // the model's own "Observation 1:" was cut by the stop string; the environment's replaced it
        let last = lm.prompts.last().unwrap();
        assert!(last.contains("Thought 1: I need coreutils.\nAction 1: Search[coreutils]\nObservation 1: coreutils is a Debian package"), "{last}");
        assert!(last.ends_with("Observation 3: libc6 is a Debian package: GNU C Library. Its version is 2.36-9. It is maintained by GNU Libc Maintainers.\nThought 4:"), "{last}");
        assert!(!last.contains("hallucinated"));
    }

    #[test]
    fn malformed_and_unknown_actions_are_observations_and_the_step_cap_holds() {
        let env = WikiEnv::new(wiki());
        let tools = episode_tools(&env, &[], Default::default());
        let mut lm = Scripted {
            outs: vec![
                " no action here".into(),              // split fails: re-query the action
                "Search coreutils".into(),             // the re-queried action is malformed
                " hm\nAction 2: Browse[libc6]".into(), // unknown tool
                " again\nAction 3: Search[ls]".into(),
            ],
            prompts: vec![],
        };
        let cfg = LoopConfig {
            constrained: false,
            max_steps: 3,
            ..Default::default()
        };
        let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
        assert!(
            lm.prompts[1].ends_with("Thought 1: no action here\nAction 1:"),
            "{}",
            lm.prompts[1]
        );
        assert_eq!(ep.steps[0].observation, "Invalid action: Search coreutils");
        assert_eq!(ep.steps[1].observation, "Invalid action: Browse[libc6]");
        assert!(ep.steps[2].observation.starts_with("ls is a command"));
        assert!(!ep.finished && !ep.exact_match && ep.prediction.is_empty() && ep.steps.len() == 3);
    }

    struct Hangs;
    impl Tool for Hangs {
        fn spec(&self) -> ToolSpec {
            ToolSpec {
                name: "Wait".into(),
                description: "never answers in time".into(),
                parameters: json!({"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}),
            }
        }
        fn call(&self, _: &Value) -> std::result::Result<String, ToolError> {
            std::thread::sleep(Duration::from_secs(2));
            Ok("late".into())
        }
    }

    #[test]
    fn a_tool_timeout_is_an_observation_and_the_loop_goes_on() {
        let env = WikiEnv::new(wiki());
        let limits = crate::tools::Limits {
            timeout: Duration::from_millis(100),
            max_output_chars: 500,
        };
        let tools = episode_tools(
            &env,
            &[Arc::new(Hangs), Arc::new(crate::tools::Calculator)],
            limits,
        );
        let mut lm = Scripted {
            outs: vec![
                " wait\nAction 1: Wait[1]".into(),
                " compute\nAction 2: calculator[2 * (3 + 4)]".into(),
                " bad\nAction 3: calculator[2 +]".into(),
                " done\nAction 4: Finish[2.36-9]".into(),
            ],
            prompts: vec![],
        };
        let cfg = LoopConfig {
            constrained: false,
            ..Default::default()
        };
        let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
        assert_eq!(
            ep.steps[0].observation,
            "error: the tool did not answer within 0.1 s"
        );
        assert_eq!(ep.steps[1].observation, "14");
        assert!(
            ep.steps[2]
                .observation
                .starts_with("error: expected a number"),
            "{:?}",
            ep.steps[2]
        );
        assert!(ep.finished && ep.exact_match);
    }

    #[test]
    fn act_and_cot_modes() {
        let env = WikiEnv::new(wiki());
        let tools = episode_tools(&env, &[], Default::default());
        let mut lm = Scripted {
            outs: vec![" Search[libc6]".into(), " Finish[2.36-9]".into()],
            prompts: vec![],
        };
        let cfg = LoopConfig {
            mode: Mode::Act,
            constrained: false,
            ..Default::default()
        };
        let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
        assert!(ep.exact_match && ep.steps.iter().all(|s| s.thought.is_none()));
        assert!(lm.prompts[1].ends_with("Action 1: Search[libc6]\nObservation 1: libc6 is a Debian package: GNU C Library. Its version is 2.36-9. It is maintained by GNU Libc Maintainers.\nAction 2:"));
        let mut lm = Scripted {
            outs: vec![" It is libc6 at 2.36-9.\nAnswer: 2.36-9\nQuestion: next".into()],
            prompts: vec![],
        };
        let cfg = LoopConfig {
            mode: Mode::Cot,
            ..Default::default()
        };
        let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
        assert_eq!(ep.prediction, "2.36-9");
        assert!(ep.exact_match && ep.steps.is_empty());
    }

    #[test]
    fn demonstrations_replay_the_oracle_path() {
        let env = WikiEnv::new(wiki());
        let d = demonstration(&question(), &env, Mode::React);
        assert!(d.starts_with("Question: What is the version of the first package that coreutils depends on?\nThought 1: a\nAction 1: Search[coreutils]\nObservation 1: coreutils is a Debian"));
        assert!(d.contains("Thought 2: b\nAction 2: Lookup[depends]\nObservation 2: (Result 1 / 1) It depends on libc6, libacl1.\n"));
        assert!(
            d.ends_with(
                "Action 4: Finish[2.36-9]\nObservation 4: Episode finished, answer: 2.36-9\n"
            ),
            "{d}"
        );
        let a = demonstration(&question(), &env, Mode::Act);
        assert!(!a.contains("Thought"));
    }

    #[test]
    fn answers_are_normalised_like_squad() {
        assert!(exact_match("The  Eiffel Tower.", "eiffel tower"));
        assert!(exact_match("2.36-9", "2.36-9."));
        assert!(!exact_match("2.36-8", "2.36-9"));
        assert_eq!(cot_answer("x. So the answer is 9.1-1.\nmore"), "9.1-1");
        assert_eq!(cot_answer("nothing"), "");
    }

    #[test]
    fn action_grammar_prefixes() {
        let names: Vec<String> = ["Search", "Lookup", "Finish"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(action_prefix(" Sea", &names, 10), Some(false));
        assert_eq!(action_prefix(" search[ls", &names, 10), Some(false));
        assert_eq!(action_prefix(" Search[ls]", &names, 10), Some(true));
        assert_eq!(action_prefix(" Search[ls] x", &names, 10), None);
        assert_eq!(action_prefix(" Search[]", &names, 10), None);
        assert_eq!(action_prefix(" Browse[", &names, 10), None);
        assert_eq!(action_prefix(" Search[a\nb", &names, 10), None);
        assert_eq!(action_prefix(" Search[0123456789a", &names, 10), None);
    }

    #[test]
    fn constraint_masks_tokens_and_ends_after_the_bracket() {
        use canon_infer::{Allowed, TokenConstraint};
        let texts = Arc::new(TokenTexts(
            [
                " Search", "[", "ls", "]", "\n", " hello", "Finish", "]\n", "",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ));
        let mut c = ActionConstraint {
            texts,
            names: vec!["Search".into(), "Finish".into()],
            max_arg: 20,
            text: String::new(),
            ids: vec![],
        };
        let Allowed::Mask(m) = c.allowed().unwrap() else {
            panic!()
        };
        let allowed: Vec<usize> = (0..9).filter(|i| m[0] >> i & 1 == 1).collect();
        assert_eq!(allowed, [0, 6]);
        for t in [0, 1, 2] {
            c.commit(t).unwrap();
        }
        let Allowed::Mask(m) = c.allowed().unwrap() else {
            panic!()
        };
        let allowed: Vec<usize> = (0..9).filter(|i| m[0] >> i & 1 == 1).collect();
        assert_eq!(
            allowed,
            [0, 1, 2, 3, 5, 6],
            "the argument takes any text but a newline"
        );
        c.commit(3).unwrap();
        assert_eq!(c.allowed().unwrap(), Allowed::End);
    }
}
