//! The tool seam shared by the agent papers (ReAct, Toolformer, WebGPT) and meant for an
//! OpenAI-style tool-calling server: a [`Tool`] has a name, a description and a JSON-schema object
//! of arguments, and is called with JSON arguments under a time and output limit
//! ([`call_tool`]). A tool that fails, panics, times out or returns too much gives an
//! [`Observation`] with `ok: false` (or a truncated text): the caller's loop goes on.
//!
//! Built-ins: [`Calculator`] (exact rational arithmetic over `i128`), [`Calendar`] (today's date
//! and date arithmetic), [`IndexSearch`] (BM25 search over a `canon index` folder) and [`Python`]
//! (a program in the HumanEval sandbox; its standard output is the observation), one module each.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

mod calculator;
mod calendar;
mod python;
mod search;
#[cfg(test)]
mod tests;

pub use calculator::{Calculator, Rational, evaluate};
pub use calendar::{Calendar, long_date};
pub use python::Python;
pub use search::IndexSearch;

/// What a tool says when a call cannot be answered; it becomes an error observation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

impl ToolError {
    pub fn new(s: impl Into<String>) -> Self {
        ToolError(s.into())
    }
}

/// A tool's public description, as an OpenAI `tools` entry lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON schema of type `object` (properties, required).
    pub parameters: Value,
}

impl ToolSpec {
    /// The OpenAI chat-completions `tools` entry: `{"type": "function", "function": {...}}`.
    pub fn openai(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}})
    }

    /// The first required argument: the one a bracket action `name[text]` fills.
    pub fn primary_arg(&self) -> Option<String> {
        self.parameters["required"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }
}

/// A callable tool. `call` may block; [`call_tool`] bounds its time and output.
pub trait Tool: Send + Sync {
    fn spec(&self) -> ToolSpec;
    fn call(&self, args: &Value) -> Result<String, ToolError>;
}

/// Per-call limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    /// Longest observation in characters; longer ones are cut and marked.
    pub max_output_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            max_output_chars: 2000,
        }
    }
}

/// The result of one call, success or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    pub tool: String,
    pub ok: bool,
    pub text: String,
    pub truncated: bool,
    pub elapsed_ms: f64,
}

/// Checks `args` against the object schema's `required` names and the `type` of each property
/// given (`string`, `integer`, `number`, `boolean`); unknown arguments are refused.
pub fn check_args(schema: &Value, args: &Value) -> Result<(), ToolError> {
    let Some(obj) = args.as_object() else {
        return Err(ToolError::new(format!(
            "expected a JSON object of arguments, found {args}"
        )));
    };
    let props = schema["properties"].as_object();
    for r in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = r.as_str()
            && !obj.contains_key(name)
        {
            return Err(ToolError::new(format!(
                "expected argument '{name}', found none"
            )));
        }
    }
    for (k, v) in obj {
        let Some(p) = props.and_then(|p| p.get(k)) else {
            return Err(ToolError::new(format!("unexpected argument '{k}'")));
        };
        let want = p["type"].as_str().unwrap_or("");
        let ok = match want {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
        if !ok {
            return Err(ToolError::new(format!(
                "expected argument '{k}' of type {want}, found {v}"
            )));
        }
    }
    Ok(())
}

/// Calls `tool` on another thread under `limits`. A panic, an error, an invalid argument or a
/// timeout is an observation with `ok: false`; a timed-out in-process call is left to finish on its
/// detached thread (the Python tool's process is killed by the sandbox's own limit).
pub fn call_tool(tool: Arc<dyn Tool>, args: Value, limits: Limits) -> Observation {
    let spec = tool.spec();
    let t0 = Instant::now();
    let done = |ok: bool, text: String| {
        let (text, truncated) = truncate(&text, limits.max_output_chars);
        Observation {
            tool: spec.name.clone(),
            ok,
            text,
            truncated,
            elapsed_ms: t0.elapsed().as_secs_f64() * 1e3,
        }
    };
    if let Err(e) = check_args(&spec.parameters, &args) {
        return done(false, format!("error: {e}"));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("tool-{}", spec.name))
        .spawn(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| tool.call(&args)));
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return done(false, format!("error: cannot start the tool: {e}"));
    }
    match rx.recv_timeout(limits.timeout) {
        Ok(Ok(Ok(text))) => done(true, text),
        Ok(Ok(Err(e))) => done(false, format!("error: {e}")),
        Ok(Err(_)) => done(false, "error: the tool crashed".into()),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => done(
            false,
            format!(
                "error: the tool did not answer within {:.1} s",
                limits.timeout.as_secs_f64()
            ),
        ),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            done(false, "error: the tool ended without an answer".into())
        }
    }
}

/// Cuts `s` to at most `max` characters, marking the cut.
pub fn truncate(s: &str, max: usize) -> (String, bool) {
    if s.chars().count() <= max {
        return (s.to_string(), false);
    }
    let mut out: String = s.chars().take(max).collect();
    out.push_str(" [...]");
    (out, true)
}

/// A set of tools looked up by name (case-insensitive).
#[derive(Clone, Default)]
pub struct Toolbox {
    pub tools: Vec<Arc<dyn Tool>>,
    pub limits: Limits,
}

impl Toolbox {
    pub fn new(limits: Limits) -> Self {
        Toolbox {
            tools: Vec::new(),
            limits,
        }
    }
    pub fn with(mut self, t: Arc<dyn Tool>) -> Self {
        self.tools.push(t);
        self
    }
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools
            .iter()
            .find(|t| t.spec().name.eq_ignore_ascii_case(name))
            .cloned()
    }
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| t.spec()).collect()
    }
    /// Calls a tool by name with JSON arguments (an OpenAI tool call's `arguments` string).
    pub fn call_json(&self, name: &str, arguments: &str) -> Observation {
        let Some(t) = self.get(name) else {
            return unknown(name);
        };
        match serde_json::from_str::<Value>(arguments) {
            Ok(v) => call_tool(t, v, self.limits),
            Err(e) => Observation {
                tool: name.to_string(),
                ok: false,
                text: format!("error: expected JSON arguments, found {arguments:?} ({e})"),
                truncated: false,
                elapsed_ms: 0.0,
            },
        }
    }
    /// Calls a tool by name with one text argument (`name[text]` actions): the text fills the
    /// tool's first required argument.
    pub fn call_text(&self, name: &str, text: &str) -> Observation {
        let Some(t) = self.get(name) else {
            return unknown(name);
        };
        let Some(arg) = t.spec().primary_arg() else {
            return call_tool(t, json!({}), self.limits);
        };
        call_tool(t, json!({ arg: text }), self.limits)
    }
}

fn unknown(name: &str) -> Observation {
    Observation {
        tool: name.to_string(),
        ok: false,
        text: format!("error: unknown tool '{name}'"),
        truncated: false,
        elapsed_ms: 0.0,
    }
}

/// The built-in tools, as one toolbox (what `canon agent tools` lists and a server can offer):
/// calculator, calendar, python (when the sandbox starts on this machine) and, with an index
/// folder, search. Returns the toolbox and a note for each tool that could not be set up.
pub fn builtin_toolbox(
    index: Option<&std::path::Path>,
    limits: Limits,
    report_missing_sandbox_facilities: bool,
) -> Result<(Toolbox, Vec<String>), ToolError> {
    let mut notes = Vec::new();
    let mut tb = Toolbox::new(limits)
        .with(Arc::new(Calculator))
        .with(Arc::new(Calendar { today: None }));
    let cfg = canon_eval::SandboxConfig {
        timeout: limits
            .timeout
            .saturating_sub(Duration::from_millis(500))
            .max(Duration::from_secs(1)),
        report_missing: report_missing_sandbox_facilities,
        ..Default::default()
    };
    match canon_eval::Sandbox::new(cfg) {
        Ok(sb) => {
            tb = tb.with(Arc::new(Python {
                sandbox: Arc::new(sb),
            }))
        }
        Err(e) => notes.push(format!("the python tool is unavailable: {e}")),
    }
    if let Some(dir) = index {
        let ix = canon_rag::index::Index::open(dir, None)
            .map_err(|e| ToolError::new(format!("index {}: {e}", dir.display())))?;
        tb = tb.with(Arc::new(IndexSearch { index: ix, k: 3 }));
    }
    Ok((tb, notes))
}
