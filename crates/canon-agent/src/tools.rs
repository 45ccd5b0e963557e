//! The tool seam shared by the agent papers (ReAct, Toolformer, WebGPT) and meant for an
//! OpenAI-style tool-calling server: a [`Tool`] has a name, a description and a JSON-schema object
//! of arguments, and is called with JSON arguments under a time and output limit
//! ([`call_tool`]). A tool that fails, panics, times out or returns too much gives an
//! [`Observation`] with `ok: false` (or a truncated text): the caller's loop goes on.
//!
//! Built-ins: [`Calculator`] (exact rational arithmetic over `i128`), [`Calendar`] (today's date
//! and date arithmetic), [`IndexSearch`] (BM25 search over a `canon index` folder) and [`Python`]
//! (a program in the HumanEval sandbox; its standard output is the observation).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

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

// ---------------------------------------------------------------------------------------------
// Calculator: exact rationals.

/// A reduced fraction `num / den` with `den > 0`, over `i128` with overflow checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    pub num: i128,
    pub den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

const OVERFLOW: &str = "the result is too large for exact arithmetic (128-bit)";

impl Rational {
    pub fn new(num: i128, den: i128) -> Result<Rational, ToolError> {
        if den == 0 {
            return Err(ToolError::new("division by zero"));
        }
        let g = gcd(num, den).max(1);
        let (mut n, mut d) = (num / g, den / g);
        if d < 0 {
            n = n.checked_neg().ok_or_else(|| ToolError::new(OVERFLOW))?;
            d = d.checked_neg().ok_or_else(|| ToolError::new(OVERFLOW))?;
        }
        Ok(Rational { num: n, den: d })
    }
    pub fn int(n: i128) -> Rational {
        Rational { num: n, den: 1 }
    }
    fn ovf<T>(x: Option<T>) -> Result<T, ToolError> {
        x.ok_or_else(|| ToolError::new(OVERFLOW))
    }
    pub fn plus(self, o: Rational) -> Result<Rational, ToolError> {
        let g = gcd(self.den, o.den);
        let l = self.den / g;
        let a = Self::ovf(self.num.checked_mul(o.den / g))?;
        let b = Self::ovf(o.num.checked_mul(l))?;
        Rational::new(
            Self::ovf(a.checked_add(b))?,
            Self::ovf(l.checked_mul(o.den))?,
        )
    }
    pub fn negate(self) -> Result<Rational, ToolError> {
        Ok(Rational {
            num: Self::ovf(self.num.checked_neg())?,
            den: self.den,
        })
    }
    pub fn minus(self, o: Rational) -> Result<Rational, ToolError> {
        self.plus(o.negate()?)
    }
    pub fn times(self, o: Rational) -> Result<Rational, ToolError> {
        let g1 = gcd(self.num, o.den).max(1);
        let g2 = gcd(o.num, self.den).max(1);
        Rational::new(
            Self::ovf((self.num / g1).checked_mul(o.num / g2))?,
            Self::ovf((self.den / g2).checked_mul(o.den / g1))?,
        )
    }
    pub fn over(self, o: Rational) -> Result<Rational, ToolError> {
        if o.num == 0 {
            return Err(ToolError::new("division by zero"));
        }
        self.times(Rational::new(o.den, o.num)?)
    }
    pub fn pow(self, e: i128) -> Result<Rational, ToolError> {
        if e.abs() > 4096 {
            return Err(ToolError::new(format!(
                "expected an exponent between -4096 and 4096, found {e}"
            )));
        }
        let mut r = Rational::int(1);
        for _ in 0..e.abs() {
            r = r.times(self)?;
        }
        if e < 0 {
            Rational::int(1).over(r)
        } else {
            Ok(r)
        }
    }
    /// `p/q` or the integer.
    pub fn exact(&self) -> String {
        if self.den == 1 {
            self.num.to_string()
        } else {
            format!("{}/{}", self.num, self.den)
        }
    }
    /// Decimal with `places` digits, rounded half away from zero, trailing zeros removed; exact
    /// integer arithmetic.
    pub fn decimal(&self, places: u32) -> String {
        let neg = self.num < 0;
        let n = self.num.unsigned_abs();
        let d = self.den.unsigned_abs();
        let scale = 10u128.saturating_pow(places);
        let (int, rem) = (n / d, n % d);
        // fraction digits, rounded: floor((rem*scale*2 + d) / (2d)), with overflow fallback.
        let frac = rem
            .checked_mul(scale)
            .and_then(|x| x.checked_mul(2))
            .and_then(|x| x.checked_add(d))
            .map(|x| x / (2 * d));
        let (mut int, mut frac) = match frac {
            Some(f) => (int, f),
            None => (int, 0),
        };
        if frac >= scale {
            int += 1;
            frac -= scale;
        }
        let mut s = int.to_string();
        if places > 0 && frac > 0 {
            let digits = format!("{frac:0width$}", width = places as usize);
            s.push('.');
            s.push_str(digits.trim_end_matches('0'));
        }
        if neg && (int > 0 || frac > 0) {
            s.insert(0, '-');
        }
        s
    }
}

/// Parses and evaluates `+ - * / ^`, parentheses, unary minus, integers and decimals exactly.
pub fn evaluate(expr: &str) -> Result<Rational, ToolError> {
    let toks = lex(expr)?;
    if toks.is_empty() {
        return Err(ToolError::new(
            "expected an arithmetic expression, found nothing",
        ));
    }
    let mut p = Parser { toks, pos: 0 };
    let v = p.expr(0)?;
    if p.pos != p.toks.len() {
        return Err(ToolError::new(format!(
            "expected an operator or the end, found '{}'",
            p.toks[p.pos].text()
        )));
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Rational),
    Op(char),
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Num(r) => r.exact(),
            Tok::Op(c) => c.to_string(),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Tok>, ToolError> {
    let cs: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            let mut num: i128 = 0;
            let mut den: i128 = 1;
            let mut seen_dot = false;
            let mut any = false;
            while i < cs.len() {
                let d = cs[i];
                if d.is_ascii_digit() {
                    any = true;
                    num = num
                        .checked_mul(10)
                        .and_then(|x| x.checked_add(i128::from(d as u8 - b'0')))
                        .ok_or_else(|| ToolError::new(OVERFLOW))?;
                    if seen_dot {
                        den = den
                            .checked_mul(10)
                            .ok_or_else(|| ToolError::new(OVERFLOW))?;
                    }
                } else if d == '.' && !seen_dot {
                    seen_dot = true;
                } else if d == ',' && !seen_dot && any && digits_follow(&cs, i) {
                    // a thousands separator: `1,000`
                } else {
                    break;
                }
                i += 1;
            }
            if !any {
                return Err(ToolError::new("expected a number, found '.'"));
            }
            out.push(Tok::Num(Rational::new(num, den)?));
            continue;
        }
        let op = match c {
            '+' | '-' | '*' | '/' | '^' | '(' | ')' => c,
            '×' | 'x' => '*',
            '÷' => '/',
            '−' => '-',
            _ => {
                return Err(ToolError::new(format!(
                    "expected a number, an operator (+ - * / ^) or a parenthesis, found '{c}'"
                )));
            }
        };
        out.push(Tok::Op(op));
        i += 1;
    }
    Ok(out)
}

/// `,` followed by exactly three digits (then no digit): a thousands separator.
fn digits_follow(cs: &[char], i: usize) -> bool {
    (1..=3).all(|k| cs.get(i + k).is_some_and(|c| c.is_ascii_digit()))
        && !cs.get(i + 4).is_some_and(|c| c.is_ascii_digit())
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    /// Precedence climbing: `+ -` < `* /` < unary minus < `^` (right-associative).
    fn expr(&mut self, min: u8) -> Result<Rational, ToolError> {
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(op)) = self.peek().cloned() {
            let prec = match op {
                '+' | '-' => 1,
                '*' | '/' => 2,
                _ => break,
            };
            if prec < min.max(1) {
                break;
            }
            self.pos += 1;
            let rhs = self.expr(prec + 1)?;
            lhs = match op {
                '+' => lhs.plus(rhs)?,
                '-' => lhs.minus(rhs)?,
                '*' => lhs.times(rhs)?,
                _ => lhs.over(rhs)?,
            };
        }
        Ok(lhs)
    }
    fn unary(&mut self) -> Result<Rational, ToolError> {
        match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                self.unary()?.negate()
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }
    fn power(&mut self) -> Result<Rational, ToolError> {
        let base = self.atom()?;
        if let Some(Tok::Op('^')) = self.peek() {
            self.pos += 1;
            let e = self.unary()?;
            if e.den != 1 {
                return Err(ToolError::new(format!(
                    "expected an integer exponent, found {}",
                    e.exact()
                )));
            }
            return base.pow(e.num);
        }
        Ok(base)
    }
    fn atom(&mut self) -> Result<Rational, ToolError> {
        match self.peek().cloned() {
            Some(Tok::Num(r)) => {
                self.pos += 1;
                Ok(r)
            }
            Some(Tok::Op('(')) => {
                self.pos += 1;
                let v = self.expr(0)?;
                match self.peek() {
                    Some(Tok::Op(')')) => {
                        self.pos += 1;
                        Ok(v)
                    }
                    other => Err(ToolError::new(format!(
                        "expected ')', found {}",
                        other.map_or("the end".into(), |t| format!("'{}'", t.text()))
                    ))),
                }
            }
            other => Err(ToolError::new(format!(
                "expected a number or '(', found {}",
                other.map_or("the end".into(), |t| format!("'{}'", t.text()))
            ))),
        }
    }
}

/// Exact rational arithmetic. Answers `p/q (≈ decimal)`, or the integer.
pub struct Calculator;

impl Tool for Calculator {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "calculator".into(),
            description: "Exact arithmetic on integers and decimals: + - * / ^ and parentheses. \
                          Answers an integer or a reduced fraction with its decimal value."
                .into(),
            parameters: json!({"type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. (400 / 1400) * 3"}},
                "required": ["expression"]}),
        }
    }
    fn call(&self, args: &Value) -> Result<String, ToolError> {
        let e = args["expression"].as_str().unwrap_or("");
        let r = evaluate(e)?;
        Ok(if r.den == 1 {
            r.exact()
        } else {
            format!("{} (= {})", r.exact(), r.decimal(6))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Calendar.

/// Today's date and date arithmetic (proleptic Gregorian calendar, UTC).
pub struct Calendar {
    /// The date "today" is; `None` reads the clock (fixed in tests and reproducible runs).
    pub today: Option<chrono::NaiveDate>,
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, ToolError> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| {
        ToolError::new(format!(
            "expected a date as YYYY-MM-DD, found {:?}",
            s.trim()
        ))
    })
}

/// `Friday, December 4, 2026`.
pub fn long_date(d: chrono::NaiveDate) -> String {
    d.format("%A, %B %-d, %Y").to_string()
}

impl Calendar {
    pub fn today(&self) -> chrono::NaiveDate {
        self.today
            .unwrap_or_else(|| chrono::Utc::now().date_naive())
    }
}

impl Tool for Calendar {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "calendar".into(),
            description: "Dates. op=today: today's date; op=weekday: the weekday of `date`; \
                          op=add_days: `date` plus `days` (negative to go back); op=days_between: \
                          days from `date` to `other`. Dates are YYYY-MM-DD."
                .into(),
            parameters: json!({"type": "object",
                "properties": {
                    "op": {"type": "string", "enum": ["today", "weekday", "add_days", "days_between"]},
                    "date": {"type": "string"}, "other": {"type": "string"},
                    "days": {"type": "integer"}},
                "required": ["op"]}),
        }
    }
    fn call(&self, args: &Value) -> Result<String, ToolError> {
        let op = args["op"]
            .as_str()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let date = || {
            args["date"]
                .as_str()
                .ok_or_else(|| ToolError::new(format!("op={op} expects argument 'date'")))
                .and_then(parse_date)
        };
        match op.as_str() {
            "today" | "" => Ok(format!("Today is {}.", long_date(self.today()))),
            "weekday" => Ok(date()?.format("%A").to_string()),
            "add_days" => {
                let n = args["days"]
                    .as_i64()
                    .ok_or_else(|| ToolError::new("op=add_days expects an integer 'days'"))?;
                let d = date()?;
                let r = chrono::Duration::try_days(n)
                    .and_then(|dd| d.checked_add_signed(dd))
                    .ok_or_else(|| ToolError::new("the date is out of range"))?;
                Ok(r.format("%Y-%m-%d").to_string())
            }
            "days_between" => {
                let o = parse_date(args["other"].as_str().unwrap_or(""))?;
                Ok((o - date()?).num_days().to_string())
            }
            other => Err(ToolError::new(format!(
                "expected op today, weekday, add_days or days_between, found {other:?}"
            ))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Search over a canon index (BM25: no embedding model needed at call time).

pub struct IndexSearch {
    pub index: canon_rag::index::Index,
    pub k: usize,
}

impl Tool for IndexSearch {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "search".into(),
            description: format!(
                "Keyword (BM25) search over a local document index of {} passages; answers the \
                 top {} passages with their source.",
                self.index.meta.chunks, self.k
            ),
            parameters: json!({"type": "object",
                "properties": {"query": {"type": "string"}}, "required": ["query"]}),
        }
    }
    fn call(&self, args: &Value) -> Result<String, ToolError> {
        let q = args["query"].as_str().unwrap_or("");
        let hits = self
            .index
            .search(q, None, canon_rag::index::Mode::Bm25, self.k)
            .map_err(|e| ToolError::new(e.to_string()))?;
        if hits.is_empty() {
            return Ok(format!("No passage matches {q:?}."));
        }
        Ok(hits
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let text = h
                    .chunk
                    .text
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("[{}] {}: {}", i + 1, h.chunk.page, text)
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

// ---------------------------------------------------------------------------------------------
// Python in the HumanEval sandbox.

/// Runs a Python program in the sandbox; the observation is what it printed. The sandbox reports
/// only a verdict string, so the program runs wrapped: its output is captured and raised back as
/// one JSON-escaped exception message, which the wrapper then decodes.
pub struct Python {
    pub sandbox: Arc<canon_eval::Sandbox>,
}

const PY_MARK: &str = "CanonToolOutput";

impl Python {
    /// The program as the sandbox runs it.
    pub fn wrap(code: &str) -> String {
        let src = serde_json::to_string(code).unwrap_or_else(|_| "\"\"".into());
        format!(
            "import io, json, sys, traceback\n\
             class {PY_MARK}(Exception):\n    pass\n\
             _buf = io.StringIO()\n_old = sys.stdout\nsys.stdout = _buf\n_err = None\n\
             try:\n    exec(compile({src}, '<tool>', 'exec'), {{'__name__': '__main__'}})\n\
             except BaseException as e:\n    _err = type(e).__name__ + ': ' + str(e)\n\
             sys.stdout = _old\n\
             raise {PY_MARK}(json.dumps({{'out': _buf.getvalue()[-1500:], 'err': _err}}))\n"
        )
    }
}

impl Tool for Python {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "python".into(),
            description: "Runs a Python 3 program in a sandbox (no network, no files outside a \
                          private folder, a few seconds) and answers what it printed."
                .into(),
            parameters: json!({"type": "object",
                "properties": {"code": {"type": "string"}}, "required": ["code"]}),
        }
    }
    fn call(&self, args: &Value) -> Result<String, ToolError> {
        let code = args["code"].as_str().unwrap_or("");
        let out = self
            .sandbox
            .run(&Self::wrap(code))
            .map_err(|e| ToolError::new(e.to_string()))?;
        match out {
            canon_eval::Outcome::TimedOut => Err(ToolError::new("the program timed out")),
            canon_eval::Outcome::Passed => Err(ToolError::new(
                "the program ended the interpreter before its output was collected",
            )),
            canon_eval::Outcome::Failed(msg) => {
                let Some(json) = msg.strip_prefix(PY_MARK).and_then(|m| m.strip_prefix(": "))
                else {
                    return Err(ToolError::new(format!("the program failed: {msg}")));
                };
                let v: Value = serde_json::from_str(json).map_err(|_| {
                    ToolError::new("the program's output was cut (more than ~1500 characters)")
                })?;
                let out = v["out"].as_str().unwrap_or("").trim_end().to_string();
                match v["err"].as_str() {
                    Some(e) => Err(ToolError::new(if out.is_empty() {
                        e.to_string()
                    } else {
                        format!("{out}\n{e}")
                    })),
                    None => Ok(out),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calc(e: &str) -> Result<String, ToolError> {
        evaluate(e).map(|r| r.exact())
    }

    #[test]
    fn calculator_is_exact() {
        assert_eq!(calc("1/3 + 1/6").unwrap(), "1/2");
        assert_eq!(calc("0.1 + 0.2").unwrap(), "3/10");
        assert_eq!(calc("2^10 - 3*(4+5)").unwrap(), "997");
        assert_eq!(calc("-2^2").unwrap(), "-4");
        assert_eq!(calc("2^-2").unwrap(), "1/4");
        assert_eq!(calc("7 - 2 - 1").unwrap(), "4");
        assert_eq!(calc("12 / 4 / 3").unwrap(), "1");
        assert_eq!(calc("1,000 * 3").unwrap(), "3000");
        assert_eq!(evaluate("400 / 1400").unwrap().decimal(2), "0.29");
        assert_eq!(evaluate("-2/3").unwrap().decimal(3), "-0.667");
        assert_eq!(evaluate("19/2").unwrap().decimal(0), "10");
    }

    #[test]
    fn calculator_errors_name_the_problem() {
        assert!(calc("1/0").unwrap_err().0.contains("division by zero"));
        assert!(calc("2 +").unwrap_err().0.contains("found the end"));
        assert!(calc("(1").unwrap_err().0.contains("expected ')'"));
        assert!(calc("sqrt(2)").unwrap_err().0.contains("found 's'"));
        assert!(calc("10^100").unwrap_err().0.contains("too large"));
        assert!(calc("2^(1/2)").unwrap_err().0.contains("integer exponent"));
        assert!(calc("").is_err());
    }

    #[test]
    fn calendar_arithmetic() {
        let c = Calendar {
            today: chrono::NaiveDate::from_ymd_opt(2026, 12, 4),
        };
        assert_eq!(
            c.call(&json!({"op": "today"})).unwrap(),
            "Today is Friday, December 4, 2026."
        );
        assert_eq!(
            c.call(&json!({"op": "add_days", "date": "2024-02-28", "days": 2}))
                .unwrap(),
            "2024-03-01"
        );
        assert_eq!(
            c.call(&json!({"op": "days_between", "date": "2024-01-01", "other": "2025-01-01"}))
                .unwrap(),
            "366"
        );
        assert_eq!(
            c.call(&json!({"op": "weekday", "date": "1969-07-20"}))
                .unwrap(),
            "Sunday"
        );
        assert!(
            c.call(&json!({"op": "weekday", "date": "20-07-1969"}))
                .is_err()
        );
    }

    struct Slow;
    impl Tool for Slow {
        fn spec(&self) -> ToolSpec {
            ToolSpec {
                name: "slow".into(),
                description: "sleeps".into(),
                parameters: json!({"type": "object", "properties": {}}),
            }
        }
        fn call(&self, _: &Value) -> Result<String, ToolError> {
            std::thread::sleep(Duration::from_secs(3));
            Ok("late".into())
        }
    }
    struct Panics;
    impl Tool for Panics {
        fn spec(&self) -> ToolSpec {
            ToolSpec {
                name: "panics".into(),
                description: "panics".into(),
                parameters: json!({"type": "object", "properties": {}}),
            }
        }
        fn call(&self, _: &Value) -> Result<String, ToolError> {
            panic!("boom")
        }
    }
    struct Chatty;
    impl Tool for Chatty {
        fn spec(&self) -> ToolSpec {
            ToolSpec {
                name: "chatty".into(),
                description: "talks".into(),
                parameters: json!({"type": "object", "properties": {}}),
            }
        }
        fn call(&self, _: &Value) -> Result<String, ToolError> {
            Ok("x".repeat(10_000))
        }
    }

    #[test]
    fn failures_become_observations() {
        let limits = Limits {
            timeout: Duration::from_millis(200),
            max_output_chars: 50,
        };
        let tb = Toolbox::new(limits)
            .with(Arc::new(Slow))
            .with(Arc::new(Panics))
            .with(Arc::new(Chatty))
            .with(Arc::new(Calculator));
        let o = tb.call_json("slow", "{}");
        assert!(
            !o.ok && o.text.contains("did not answer within 0.2 s"),
            "{o:?}"
        );
        // the others get all the time they need: only the slow tool's outcome depends on time
        let tb = Toolbox {
            limits: Limits {
                timeout: Duration::from_secs(60),
                max_output_chars: 50,
            },
            ..tb
        };
        let o = tb.call_json("panics", "{}");
        assert!(!o.ok && o.text.contains("crashed"), "{o:?}");
        let o = tb.call_json("chatty", "{}");
        assert!(o.ok && o.truncated && o.text.chars().count() == 56, "{o:?}");
        let o = tb.call_json("nope", "{}");
        assert!(!o.ok && o.text.contains("unknown tool 'nope'"));
        let o = tb.call_json("calculator", "{\"expression\": 3}");
        assert!(
            !o.ok && o.text.contains("expected argument 'expression'"),
            "{o:?}"
        );
        let o = tb.call_json("calculator", "not json");
        assert!(!o.ok && o.text.contains("expected JSON arguments"));
        let o = tb.call_text("Calculator", "6 * 7");
        assert!(o.ok && o.text == "42", "{o:?}");
        let spec = tb.specs()[3].openai();
        assert_eq!(spec["function"]["name"], "calculator");
        assert_eq!(spec["function"]["parameters"]["required"][0], "expression");
    }

    #[test]
    fn python_runs_in_the_sandbox() {
        let sb = canon_eval::Sandbox::new(canon_eval::SandboxConfig {
            timeout: Duration::from_secs(2),
            report_missing: false,
            ..Default::default()
        })
        .expect("the HumanEval sandbox (python3) is needed by this test");
        let tb = Toolbox::new(Limits {
            timeout: Duration::from_secs(30),
            max_output_chars: 200,
        })
        .with(Arc::new(Python {
            sandbox: Arc::new(sb),
        }));
        let o = tb.call_text("python", "print(sum(range(10)))\nprint('a\\nb')");
        assert!(o.ok && o.text == "45\na\nb", "{o:?}");
        let o = tb.call_text("python", "print('partial')\n1/0");
        assert!(
            !o.ok && o.text == "error: partial\nZeroDivisionError: division by zero",
            "{o:?}"
        );
        let o = tb.call_text("python", "while True: pass");
        assert!(!o.ok && o.text.contains("timed out"), "{o:?}");
        let o = tb.call_text(
            "python",
            "import socket; socket.create_connection(('1.1.1.1', 80), timeout=1)",
        );
        assert!(!o.ok, "no network in the sandbox: {o:?}");
    }

    #[test]
    fn index_search_answers_passages_by_bm25() {
        use canon_rag::chunk::Chunk;
        use canon_rag::index::{FORMAT, Index, Meta, VERSION, write_index};
        let d = tempfile::tempdir().unwrap();
        let chunk = |page: &str, text: &str| Chunk {
            path: format!("/man/{page}.1"),
            page: page.into(),
            section: "NAME".into(),
            line_start: 1,
            line_end: 1,
            text: text.into(),
        };
        let chunks = vec![
            chunk("ls(1)", "ls - list directory contents"),
            chunk(
                "cat(1)",
                "cat - concatenate files and print on the standard output",
            ),
        ];
        let meta = Meta {
            format: FORMAT.into(),
            version: VERSION,
            model: "none".into(),
            dim: 1,
            chunks: 2,
            man_rendered: false,
            roots: vec![],
            files: vec![],
            stats: Default::default(),
        };
        let dir = d.path().join("ix");
        write_index(&dir, &meta, &chunks, &[1.0, 1.0]).unwrap();
        let tool = IndexSearch {
            index: Index::open(&dir, None).unwrap(),
            k: 3,
        };
        let out = tool.call(&json!({"query": "list the directory"})).unwrap();
        assert!(
            out.starts_with("[1] ls(1): ls - list directory contents"),
            "{out}"
        );
        assert!(
            tool.call(&json!({"query": "zebra"}))
                .unwrap()
                .starts_with("No passage")
        );
        assert!(tool.call(&json!({"query": "  "})).is_err());
    }

    #[test]
    fn python_wrapper_is_valid_python_shape() {
        let w = Python::wrap("print('a\"b')\n");
        assert!(w.contains("exec(compile(\"print('a\\\"b')\\n\""), "{w}");
    }
}
