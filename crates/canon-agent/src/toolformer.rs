//! Toolformer (Schick et al., 2023): the self-supervised pipeline that annotates text with API
//! calls a model finds useful.
//!
//! 1. **Sample positions**: under a few-shot prompt `P(x)`, `p_i = p_M(<API> | P(x), x_{1:i-1})` at
//!    every token position; keep the top `k` positions with `p_i > tau_s`. `<API>` is the token `[`
//!    (with or without a leading space: their probabilities are summed).
//! 2. **Sample calls**: at each kept position, up to `m` continuations of `P(x), x_{1:i-1} [`,
//!    each read as `Tool(arguments)`.
//! 3. **Execute** each call with the tool.
//! 4. **Filter**: with weights `w~_t = max(0, 1 - 0.2 t)` normalised over the positions scored,
//!    `L_i(z) = -sum_j w_{j-i} log p(x_j | z, x_{1:j-1})` with the call text `z` given as a prefix
//!    (the paper's choice for a model not yet trained on calls); `L+ = L_i(e(c, r))`,
//!    `L- = min(L_i(empty), L_i(e(c, empty)))`; keep the call iff `L- - L+ >= tau_f`.
//! 5. The kept calls are inserted inline, `x_{1:i-1} [Calculator(a + b) -> r] x_{i:n}`, as
//!    fine-tuning text.

use serde::{Deserialize, Serialize};

use crate::tools::Toolbox;
use crate::{AgentError, Result};

/// The paper's loss weights for `n` scored tokens: `max(0, 1 - 0.2 t)`, normalised to sum 1.
pub fn weights(n: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..n).map(|t| (1.0 - 0.2 * t as f64).max(0.0)).collect();
    let s: f64 = raw.iter().sum();
    if s == 0.0 {
        return raw;
    }
    raw.into_iter().map(|w| w / s).collect()
}

/// Tokens that carry weight (the rest need not be scored).
pub const WINDOW: usize = 5;

/// `-sum_t w_t log p_t` over the first tokens' log-probabilities.
pub fn weighted_loss(logprobs: &[f64]) -> f64 {
    let w = weights(logprobs.len().min(WINDOW));
    -logprobs.iter().zip(&w).map(|(lp, w)| lp * w).sum::<f64>()
}

/// The three losses of one call and the decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    /// `L_i(empty)`: no call.
    pub none: f64,
    /// `L_i(e(c, empty))`: the call without its result.
    pub no_result: f64,
    /// `L+ = L_i(e(c, r))`: the call with its result.
    pub with_result: f64,
}

impl Losses {
    /// `L- = min(L_i(empty), L_i(e(c, empty)))`.
    pub fn minus(&self) -> f64 {
        self.none.min(self.no_result)
    }
    /// `L- - L+ >= tau_f`.
    pub fn keep(&self, tau_f: f64) -> bool {
        self.minus() - self.with_result >= tau_f
    }
}

/// `[Tool(args) -> result]` or, without a result, `[Tool(args) -> ]`.
pub fn linearize(tool: &str, args: &str, result: Option<&str>) -> String {
    match result {
        Some(r) => format!("[{tool}({args}) -> {r}]"),
        None => format!("[{tool}({args}) -> ]"),
    }
}

/// A call read from sampled text: `Tool(args)` (anything after the closing parenthesis ignored).
pub fn parse_call(s: &str) -> Option<(String, String)> {
    let s = s.trim().trim_start_matches('[');
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    if close < open {
        return None;
    }
    let name = s[..open].trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some((name.to_string(), s[open + 1..close].trim().to_string()))
}

/// An annotated call inside a text: `(byte offset of '[', tool, args, result)`.
pub fn parse_annotated(text: &str) -> Vec<(usize, String, String, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find('[') {
        let at = from + rel;
        let Some(end_rel) = text[at..].find(']') else {
            break;
        };
        let inner = &text[at + 1..at + end_rel];
        if let Some((call, result)) = inner.split_once(" -> ")
            && let Some((tool, args)) = parse_call(call)
        {
            out.push((at, tool, args, result.to_string()));
        }
        from = at + end_rel + 1;
    }
    out
}

/// The model operations the pipeline needs; a real model or hand-set log-probabilities in tests.
pub trait Scorer {
    /// Tokenizes text (no special tokens).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// `log p(cont_j | context, cont_{<j})` for every token of `cont`.
    fn logprobs(&mut self, context: &[u32], cont: &[u32]) -> Result<Vec<f64>>;
    /// For `i` in `0..x.len()`: the probability that a token of `set` comes next after
    /// `context, x_{<i}` (i.e. before `x_i`).
    fn next_probs(&mut self, context: &[u32], x: &[u32], set: &[u32]) -> Result<Vec<f64>>;
}

/// Pipeline settings (the paper's defaults, `tau_f` tool-specific).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub tau_s: f64,
    pub k: usize,
    pub m: usize,
    pub tau_f: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tau_s: 0.05,
            k: 5,
            m: 5,
            tau_f: 1.0,
        }
    }
}

/// A kept position: the token index `i` in `x` and `p_i`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub token: usize,
    pub p: f64,
}

/// Stage 1: the top `k` positions with `p_i > tau_s`, in descending `p` (ties: earlier first).
/// Position 0 is never proposed (a call needs text before it to be about).
pub fn top_positions(p: &[f64], tau_s: f64, k: usize) -> Vec<Position> {
    let mut v: Vec<Position> = p
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, p)| **p > tau_s)
        .map(|(i, &p)| Position { token: i, p })
        .collect();
    v.sort_by(|a, b| b.p.total_cmp(&a.p).then(a.token.cmp(&b.token)));
    v.truncate(k);
    v
}

/// One candidate call and everything the stages learn about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub text_id: usize,
    pub position: Position,
    /// Byte offset in the text where the call goes (before token `position.token`).
    pub offset: usize,
    pub sampled: String,
    pub tool: Option<String>,
    pub args: Option<String>,
    pub result: Option<String>,
    pub losses: Option<Losses>,
    pub kept: bool,
    /// A control: the same call with a corrupted result, scored but never inserted.
    #[serde(default)]
    pub control: bool,
}

/// A control twin of an executed call: its result made wrong (a number plus 7, rounded as the
/// calculator rounds), to compare keep rates of right and corrupted results.
pub fn corrupted(c: &Candidate) -> Option<Candidate> {
    let r = c.result.as_ref()?;
    let v = crate::tools::evaluate(&format!("{r} + 7")).ok()?;
    Some(Candidate {
        result: Some(v.decimal(2)),
        control: true,
        losses: None,
        kept: false,
        ..c.clone()
    })
}

/// Counts per stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageCounts {
    pub texts: usize,
    pub positions: usize,
    pub sampled: usize,
    pub parsed: usize,
    pub executed: usize,
    pub kept: usize,
    pub texts_with_a_kept_call: usize,
}

/// Runs one call: the calculator (exact, rounded to `round_places`), `Calendar()` (the text's
/// `today` as `Thursday, March 9, 2023`), or a tool of `tools` by name.
pub fn run_call(
    tool: &str,
    args: &str,
    today: Option<chrono::NaiveDate>,
    tools: &Toolbox,
    round_places: u32,
) -> std::result::Result<String, String> {
    if tool.eq_ignore_ascii_case("calculator") {
        return crate::tools::evaluate(args)
            .map(|r| r.decimal(round_places))
            .map_err(|e| e.to_string());
    }
    if tool.eq_ignore_ascii_case("calendar") && args.trim().is_empty() {
        return today
            .map(crate::tools::long_date)
            .ok_or_else(|| "Calendar() needs the text's date, and this text has none".to_string());
    }
    let o = tools.call_text(tool, args);
    if o.ok { Ok(o.text) } else { Err(o.text) }
}

/// Stage 3: runs each parsed call (`today(text_id)` is the date `Calendar()` returns for that
/// text); a failing call has no result (and is dropped by the filter).
pub fn execute(
    cands: &mut [Candidate],
    tools: &Toolbox,
    round_places: u32,
    today: &dyn Fn(usize) -> Option<chrono::NaiveDate>,
) {
    for c in cands.iter_mut() {
        let (Some(tool), Some(args)) = (&c.tool, &c.args) else {
            continue;
        };
        c.result = run_call(tool, args, today(c.text_id), tools, round_places).ok();
    }
}

/// Stage 4: the three losses of each executed call; `kept` by `L- - L+ >= tau_f`.
pub fn filter(
    scorer: &mut dyn Scorer,
    texts: &[String],
    cands: &mut [Candidate],
    tau_f: f64,
) -> Result<()> {
    for c in cands.iter_mut() {
        let (Some(tool), Some(args), Some(result)) = (&c.tool, &c.args, &c.result) else {
            continue;
        };
        let text = texts.get(c.text_id).ok_or_else(|| {
            AgentError::Task(format!(
                "a candidate names text {}, but there are {} texts",
                c.text_id,
                texts.len()
            ))
        })?;
        let x = scorer.encode(text)?;
        let i = c.position.token;
        if i == 0 || i >= x.len() {
            return Err(AgentError::Task(format!(
                "position {i} is outside the text's {} tokens",
                x.len()
            )));
        }
        let end = (i + WINDOW).min(x.len());
        let cont = &x[i..end];
        let mut loss = |prefix: Option<String>| -> Result<f64> {
            let mut ctx = match prefix {
                Some(z) => scorer.encode(&format!("{z} "))?,
                None => Vec::new(),
            };
            ctx.extend_from_slice(&x[..i]);
            Ok(weighted_loss(&scorer.logprobs(&ctx, cont)?))
        };
        let l = Losses {
            none: loss(None)?,
            no_result: loss(Some(linearize(tool, args, None)))?,
            with_result: loss(Some(linearize(tool, args, Some(result))))?,
        };
        c.kept = l.keep(tau_f);
        c.losses = Some(l);
    }
    Ok(())
}

/// Stage 5: the text with its best kept call (lowest `L+`) inserted inline.
pub fn augment(text: &str, cands: &[&Candidate]) -> Option<String> {
    let best = cands
        .iter()
        .filter(|c| c.kept && !c.control)
        .min_by(|a, b| {
            let la = a.losses.map_or(f64::INFINITY, |l| l.with_result);
            let lb = b.losses.map_or(f64::INFINITY, |l| l.with_result);
            la.total_cmp(&lb)
        })?;
    let (tool, args, result) = (
        best.tool.as_ref()?,
        best.args.as_ref()?,
        best.result.as_ref()?,
    );
    let mut at = best.offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let (head, tail) = text.split_at(at);
    let sep = if head.ends_with(' ') || head.is_empty() {
        ""
    } else {
        " "
    };
    Some(format!(
        "{head}{sep}{} {}",
        linearize(tool, args, Some(result)),
        tail.trim_start()
    ))
}

/// Byte offset of the start of token `i` in `text` (the decoded length of the first `i` tokens).
pub fn token_offset(scorer: &dyn Scorer, ids: &[u32], i: usize) -> Result<usize> {
    Ok(scorer.decode(&ids[..i.min(ids.len())])?.len())
}

/// A real model as a [`Scorer`].
pub struct LmScorer<'a> {
    pub lm: &'a dyn canon_models::CausalLm,
    pub tok: &'a canon_text::Tokenizer,
}

impl Scorer for LmScorer<'_> {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tok
            .encode(text, false)
            .map_err(|e| AgentError::Text(e.to_string()))
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, false)
            .map_err(|e| AgentError::Text(e.to_string()))
    }
    fn logprobs(&mut self, context: &[u32], cont: &[u32]) -> Result<Vec<f64>> {
        let mut r = crate::fewshot::continuation_logprobs(self.lm, context, &[cont.to_vec()])?;
        Ok(r.pop().unwrap_or_default())
    }
    fn next_probs(&mut self, context: &[u32], x: &[u32], set: &[u32]) -> Result<Vec<f64>> {
        use candle_core::{Device, Tensor};
        let mut all = context.to_vec();
        all.extend_from_slice(x);
        if context.is_empty() || all.len() > self.lm.max_seq_len() {
            return Err(AgentError::Task(format!(
                "expected a non-empty prompt within the model's {} positions, found {} tokens",
                self.lm.max_seq_len(),
                all.len()
            )));
        }
        // the context once (last position only), then x on the same cache: only x's rows are
        // projected to the vocabulary
        let mut cache = self.lm.new_cache();
        let to_rows = |t: Tensor| -> Result<Vec<Vec<f32>>> {
            Ok(t.squeeze(0)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec2::<f32>()?)
        };
        let c = Tensor::new(context, &Device::Cpu)?.unsqueeze(0)?;
        let mut rows = to_rows(
            self.lm
                .forward(&c, &mut cache, canon_models::Positions::Last)?,
        )?;
        if x.len() > 1 {
            let t = Tensor::new(&x[..x.len() - 1], &Device::Cpu)?.unsqueeze(0)?;
            rows.extend(to_rows(self.lm.forward(
                &t,
                &mut cache,
                canon_models::Positions::All,
            )?)?);
        }
        // rows[i] predicts x_i
        let mut out = Vec::with_capacity(x.len());
        for row in rows.iter().take(x.len()) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let p: f64 = set
                .iter()
                .filter_map(|&s| row.get(s as usize))
                .map(|&v| (v as f64 - max).exp() / z)
                .sum();
            out.push(p);
        }
        Ok(out)
    }
}

/// One text of the arithmetic corpus: the number at its end is computed from numbers before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Text {
    pub id: String,
    pub split: String,
    pub text: String,
    /// The text up to the computed number (for held-out evaluation).
    pub prefix: String,
    pub answer: String,
    /// The expression that computes the answer (the call's arguments; empty for `Calendar()`).
    pub expression: String,
    /// The tool whose call the text needs: `Calculator` or `Calendar`.
    #[serde(default = "calculator_name")]
    pub tool: String,
    /// The text's "today" (`YYYY-MM-DD`), what `Calendar()` returns for it.
    #[serde(default)]
    pub date: Option<String>,
}

fn calculator_name() -> String {
    "Calculator".into()
}

impl Text {
    /// What follows the answer in the text (`" kB."`, `"."`, ...).
    pub fn suffix(&self) -> &str {
        self.text
            .get(self.prefix.len() + 1 + self.answer.len()..)
            .unwrap_or("")
    }
    /// The text's date, when it has one.
    pub fn today(&self) -> Option<chrono::NaiveDate> {
        self.date
            .as_deref()
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    }
    /// Whether a continuation of `prefix` states the answer: the first number for a numeric
    /// answer, else the continuation's start.
    pub fn states_answer(&self, continuation: &str) -> bool {
        let numeric = self
            .answer
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
        if numeric {
            first_number(continuation).as_deref() == Some(self.answer.as_str())
        } else {
            continuation.trim_start().starts_with(&self.answer)
        }
    }
}

/// Arithmetic-in-text sentences from the package database's installed sizes: sums, differences,
/// ratios (2 decimals) and means of packages' sizes. Split by the first package named (one in
/// `test_every` to test). `n` texts at most, in a seeded order.
pub fn arithmetic_texts(status: &str, n: usize, seed: u64, test_every: u64) -> Vec<Text> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let mut sizes: Vec<(String, i128)> = Vec::new();
    for block in status.split("\n\n") {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        if let (Some(p), Some(sz)) = (field("Package:"), field("Installed-Size:"))
            && let Ok(v) = sz.parse::<i128>()
            && v > 0
        {
            sizes.push((p, v));
        }
    }
    sizes.sort();
    sizes.dedup_by(|a, b| a.0 == b.0);
    let mut out = Vec::new();
    if sizes.len() < 3 {
        return out;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tries = 0;
    while out.len() < n && tries < n * 20 {
        tries += 1;
        let pick = |rng: &mut rand::rngs::StdRng| sizes[rng.random_range(0..sizes.len())].clone();
        let (a, sa) = pick(&mut rng);
        let (b, sb) = pick(&mut rng);
        if a == b {
            continue;
        }
        let kind = rng.random_range(0..4u8);
        let (prefix, answer, expression) = match kind {
            0 => (
                format!(
                    "The packages {a} and {b} take {sa} kB and {sb} kB once installed, so together they take"
                ),
                (sa + sb).to_string(),
                format!("{sa} + {sb}"),
            ),
            1 if sa > sb => (
                format!("Installed, {a} takes {sa} kB and {b} takes {sb} kB, so {a} is larger by"),
                (sa - sb).to_string(),
                format!("{sa} - {sb}"),
            ),
            2 if sa > sb => {
                let e = format!("{sa} / {sb}");
                let Ok(r) = crate::tools::evaluate(&e) else {
                    continue;
                };
                (
                    format!(
                        "{a} takes {sa} kB and {b} takes {sb} kB, so {a} is larger by a factor of"
                    ),
                    r.decimal(2),
                    e,
                )
            }
            3 => {
                let (c, sc) = pick(&mut rng);
                if c == a || c == b {
                    continue;
                }
                let e = format!("({sa} + {sb} + {sc}) / 3");
                let Ok(r) = crate::tools::evaluate(&e) else {
                    continue;
                };
                (
                    format!(
                        "The packages {a}, {b} and {c} take {sa}, {sb} and {sc} kB, so on average each takes"
                    ),
                    r.decimal(2),
                    e,
                )
            }
            _ => continue,
        };
        let unit = if kind == 2 { "." } else { " kB." };
        out.push(Text {
            id: format!("t{}", out.len()),
            split: crate::react_data::split_of(&a, test_every).into(),
            text: format!("{prefix} {answer}{unit}"),
            prefix,
            answer,
            expression,
            tool: calculator_name(),
            date: None,
        });
    }
    out.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 1));
    out
}

/// Texts whose continuation needs the date (the paper's Calendar API): each has its own "today"
/// (a seeded date in 2000–2029) and names a package from the package database; the continuation
/// is that day's date, weekday, year or month. `Calendar()` returns the date as
/// `Thursday, March 9, 2023`. Split by the package named (one in `test_every` to test).
pub fn calendar_texts(status: &str, n: usize, seed: u64, test_every: u64) -> Vec<Text> {
    use rand::{Rng, SeedableRng};
    let mut names: Vec<String> = status
        .split("\n\n")
        .filter_map(|b| {
            b.lines()
                .find_map(|l| l.strip_prefix("Package:").map(|v| v.trim().to_string()))
        })
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    if names.is_empty() {
        return out;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xca1e);
    let Some(base) = chrono::NaiveDate::from_ymd_opt(2000, 1, 1) else {
        return out;
    };
    for i in 0..n {
        let a = &names[rng.random_range(0..names.len())];
        let d = base + chrono::Duration::days(rng.random_range(0..10_957i64));
        let long = crate::tools::long_date(d);
        let (prefix, answer, suffix) = match rng.random_range(0..5u8) {
            0 => (
                format!("The package {a} was upgraded today,"),
                long,
                ".".to_string(),
            ),
            1 => (
                "Today is".to_string(),
                long,
                format!(", and {a} needs an update."),
            ),
            2 => (
                format!("I am writing this note about {a} on a"),
                d.format("%A").to_string(),
                ".".to_string(),
            ),
            3 => (
                format!("The package {a} was installed this year, in"),
                d.format("%Y").to_string(),
                ".".to_string(),
            ),
            _ => (
                format!("The changelog of {a} got a new entry this month, in"),
                d.format("%B").to_string(),
                ".".to_string(),
            ),
        };
        out.push(Text {
            id: format!("d{i}"),
            split: crate::react_data::split_of(a, test_every).into(),
            text: format!("{prefix} {answer}{suffix}"),
            prefix,
            answer,
            expression: String::new(),
            tool: "Calendar".into(),
            date: Some(d.format("%Y-%m-%d").to_string()),
        });
    }
    out
}

/// The few-shot annotation prompt `P(x)` for the text's tool: [`calculator_prompt`] or
/// [`calendar_prompt`].
pub fn annotation_prompt(tool: &str, demos: &[&Text], x: &str) -> String {
    if tool.eq_ignore_ascii_case("calendar") {
        calendar_prompt(demos, x)
    } else {
        calculator_prompt(demos, x)
    }
}

/// The few-shot annotation prompt `P(x)` for the calendar; demonstrations are train texts with
/// `[Calendar()]` inserted before the date (`demos`: at most 3 are used).
pub fn calendar_prompt(demos: &[&Text], x: &str) -> String {
    let mut s = String::from(
        "Add calls to a Calendar where the text needs today's date. \
Write [Calendar()] just before the part of the text that the date tells.\n\n",
    );
    for d in demos.iter().take(3) {
        s.push_str(&format!(
            "Input:\n{}\nOutput:\n{} [Calendar()] {}{}\n\n",
            d.text,
            d.prefix,
            d.answer,
            d.suffix()
        ));
    }
    s.push_str(&format!("Input:\n{x}\nOutput:\n"));
    s
}

/// The few-shot annotation prompt `P(x)` for the calculator; demonstrations are train texts with
/// their call inserted (`demos`: at most 3 are used).
pub fn calculator_prompt(demos: &[&Text], x: &str) -> String {
    let mut s = String::from(
        "Add calls to a Calculator where a number in the text is computed from numbers before it. \
Write [Calculator(expression)] just before the computed number, with the expression that gives it.\n\n",
    );
    for d in demos.iter().take(3) {
        s.push_str(&format!(
            "Input:\n{}\nOutput:\n{} [Calculator({})] {}{}\n\n",
            d.text,
            d.prefix,
            d.expression,
            d.answer,
            d.suffix()
        ));
    }
    s.push_str(&format!("Input:\n{x}\nOutput:\n"));
    s
}

/// What one inference did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inference {
    pub text: String,
    /// `(tool, args, result)` of the call made, if any.
    pub call: Option<(String, String, String)>,
}

/// Stage 5, inference: decode until the model writes `->` inside an open `[Tool(args)`, run the
/// call, insert ` -> result]` and continue; at most one call per input (a later `->` is left as
/// text). A call that fails inserts its error text as the result. Greedy: a call starts when `[`
/// is the most likely token (the paper's top-k start rule needs the logits and is not applied).
pub fn infer(
    lm: &mut dyn crate::react::AgentLm,
    prompt: &str,
    tools: &Toolbox,
    max_tokens: usize,
) -> Result<Inference> {
    let first = lm.complete(prompt, &["->".to_string()], max_tokens, None)?;
    let Some(open) = first.rfind('[') else {
        return Ok(Inference {
            text: first,
            call: None,
        });
    };
    let Some((tool, args)) = parse_call(&first[open..]) else {
        return Ok(Inference {
            text: first,
            call: None,
        });
    };
    let used = first.len();
    let result = if tool.eq_ignore_ascii_case("calculator") {
        crate::tools::evaluate(&args)
            .map(|r| r.decimal(2))
            .unwrap_or_else(|e| format!("error: {e}"))
    } else {
        tools.call_text(&tool, &args).text
    };
    let mut text = format!("{} -> {result}]", first.trim_end());
    let left = max_tokens.saturating_sub(used / 4 + 1).max(1);
    let rest = lm.complete(&format!("{prompt}{text}"), &[], left, None)?;
    text.push_str(&rest);
    Ok(Inference {
        text,
        call: Some((tool, args, result)),
    })
}

/// A model read one token at a time, with the whole next-token distribution (Toolformer's
/// decoding rule looks past the argmax).
pub trait StepLm {
    /// Tokenizes text (no special tokens).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Whether `id` ends a generation (end of text).
    fn is_end(&self, id: u32) -> bool;
    /// Forgets any context, reads `ids`, and returns the next token's logits.
    fn start(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
    /// Appends `id` to the context and returns the next token's logits.
    fn push(&mut self, id: u32) -> Result<Vec<f32>>;
}

/// How decoding treats the API-start token `[`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CallRule {
    /// Plain greedy decoding: `[` is text like any other and nothing is executed.
    Off,
    /// The API-start token is never generated (the paper's "Toolformer (disabled)").
    Disabled,
    /// The paper's rule: a call starts wherever an API-start token is among the `k` most likely
    /// next tokens (`k = 1`: only when it is the argmax), and runs when the model writes `->`.
    TopK(usize),
}

/// Whether `id` is among the `k` highest logits (ties rank in its favour).
pub fn in_top_k(logits: &[f32], id: u32, k: usize) -> bool {
    let Some(&v) = logits.get(id as usize) else {
        return false;
    };
    logits.iter().filter(|&&x| x > v).count() < k
}

fn argmax(logits: &[f32], banned: &[u32]) -> Option<u32> {
    logits
        .iter()
        .enumerate()
        .filter(|(i, _)| !banned.contains(&(*i as u32)))
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
}

/// Toolformer's inference: greedy decoding of `prompt` until a newline, the end token or
/// `max_tokens`, where under [`CallRule::TopK`] a call starts at the first step where an
/// API-start token (`api`: `[` and ` [`) is among the top k (the likelier of them is taken), the
/// model writes `Tool(args)` and `->`, then `run(tool, args)` is executed and ` -> result]`
/// inserted, and decoding goes on; one call per input (after it, or after an abandoned call — a
/// `]` or newline before `->`, or 48 tokens —, decoding is plain greedy). A failing call inserts
/// `error: ...` as its result.
pub fn decode_with_calls(
    lm: &mut dyn StepLm,
    prompt: &str,
    api: &[u32],
    rule: CallRule,
    max_tokens: usize,
    run: &mut dyn FnMut(&str, &str) -> String,
) -> Result<Inference> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Before,
        InCall { open: usize, tokens: usize },
        After,
    }
    let mut state = if matches!(rule, CallRule::TopK(k) if k > 0) {
        State::Before
    } else {
        State::After
    };
    let banned: &[u32] = if rule == CallRule::Disabled { api } else { &[] };
    let prompt_ids = lm.encode(prompt)?;
    if prompt_ids.is_empty() {
        return Err(AgentError::Task(
            "expected a non-empty prompt to continue, found an empty one".into(),
        ));
    }
    let mut logits = lm.start(&prompt_ids)?;
    // `fixed`: text settled by an executed call; `ids`: tokens generated since
    let (mut fixed, mut ids) = (String::new(), Vec::<u32>::new());
    let mut call = None;
    let mut text = String::new();
    for _ in 0..max_tokens {
        let next = match (&state, rule) {
            (State::Before, CallRule::TopK(k)) => api
                .iter()
                .copied()
                .filter(|&a| in_top_k(&logits, a, k))
                .max_by(|a, b| logits[*a as usize].total_cmp(&logits[*b as usize]))
                .or_else(|| argmax(&logits, &[])),
            _ => argmax(&logits, banned),
        };
        let Some(next) = next else {
            return Err(AgentError::Task(
                "the model gave no logits to decode from".into(),
            ));
        };
        if lm.is_end(next) {
            break;
        }
        ids.push(next);
        text = format!("{fixed}{}", lm.decode(&ids)?);
        match state {
            State::Before if api.contains(&next) => {
                let open = text.rfind('[').unwrap_or(text.len());
                state = State::InCall { open, tokens: 0 };
            }
            State::InCall { open, tokens } => {
                let inner = &text[(open + 1).min(text.len())..];
                if let Some(arrow) = inner.find("->") {
                    let before = &inner[..arrow];
                    state = State::After;
                    if let Some((tool, args)) = parse_call(before) {
                        let result = run(&tool, &args);
                        fixed = format!("{} -> {result}]", text[..open + 1 + arrow].trim_end());
                        ids.clear();
                        text = fixed.clone();
                        call = Some((tool, args, result));
                        logits = lm.start(&lm.encode(&format!("{prompt}{fixed}"))?)?;
                        continue;
                    }
                } else if inner.contains(']') || inner.contains('\n') || tokens + 1 >= 48 {
                    state = State::After;
                } else {
                    state = State::InCall {
                        open,
                        tokens: tokens + 1,
                    };
                }
            }
            _ => {}
        }
        if !matches!(state, State::InCall { .. })
            && let Some(nl) = text.find('\n')
        {
            text.truncate(nl);
            break;
        }
        logits = lm.push(next)?;
    }
    Ok(Inference { text, call })
}

/// A real model as a [`StepLm`] (a KV cache over the context).
pub struct LmStepper<'a> {
    pub lm: &'a dyn canon_models::CausalLm,
    pub tok: &'a canon_text::Tokenizer,
    cache: canon_models::Cache,
    len: usize,
}

impl<'a> LmStepper<'a> {
    pub fn new(lm: &'a dyn canon_models::CausalLm, tok: &'a canon_text::Tokenizer) -> Self {
        LmStepper {
            lm,
            tok,
            cache: lm.new_cache(),
            len: 0,
        }
    }

    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        use candle_core::{Device, Tensor};
        if self.len + ids.len() > self.lm.max_seq_len() {
            return Err(AgentError::Task(format!(
                "expected at most {} positions, found {}",
                self.lm.max_seq_len(),
                self.len + ids.len()
            )));
        }
        let t = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
        let out = self
            .lm
            .forward(&t, &mut self.cache, canon_models::Positions::Last)?;
        self.len += ids.len();
        Ok(out
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?)
    }
}

impl StepLm for LmStepper<'_> {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tok
            .encode(text, false)
            .map_err(|e| AgentError::Text(e.to_string()))
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, false)
            .map_err(|e| AgentError::Text(e.to_string()))
    }
    fn is_end(&self, id: u32) -> bool {
        self.tok.eog_ids.contains(&id)
    }
    fn start(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.cache = self.lm.new_cache();
        self.len = 0;
        self.feed(ids)
    }
    fn push(&mut self, id: u32) -> Result<Vec<f32>> {
        self.feed(&[id])
    }
}

/// The single-token ids of `[` and ` [` (the API-start token with or without a leading space).
pub fn api_tokens(tok: &canon_text::Tokenizer) -> Vec<u32> {
    ["[", " ["]
        .iter()
        .filter_map(|s| tok.encode(s, false).ok())
        .filter(|ids| ids.len() == 1)
        .map(|ids| ids[0])
        .collect()
}

/// The first number in `s` (digits with an optional sign and decimal point).
pub fn first_number(s: &str) -> Option<String> {
    let cs: Vec<char> = s.chars().collect();
    let start = cs.iter().position(|c| c.is_ascii_digit())?;
    let mut end = start;
    while end < cs.len()
        && (cs[end].is_ascii_digit()
            || cs[end] == '.' && cs.get(end + 1).is_some_and(|c| c.is_ascii_digit()))
    {
        end += 1;
    }
    let neg = start > 0 && cs[start - 1] == '-';
    let n: String = cs[start..end].iter().collect();
    Some(if neg { format!("-{n}") } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_the_papers() {
        let w = weights(8);
        let want = [
            1.0 / 3.0,
            4.0 / 15.0,
            1.0 / 5.0,
            2.0 / 15.0,
            1.0 / 15.0,
            0.0,
            0.0,
            0.0,
        ];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        // fewer tokens than the window: normalised over those present
        let w = weights(2);
        assert!((w[0] - 1.0 / 1.8).abs() < 1e-12 && (w[1] - 0.8 / 1.8).abs() < 1e-12);
        assert!((weighted_loss(&[-3.0; 9]) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn filter_decisions_on_known_losses() {
        // (a) the result makes the continuation likely: kept
        let a = Losses {
            none: 4.0,
            no_result: 3.8,
            with_result: 1.0,
        };
        assert!(a.keep(1.0));
        // (b) an irrelevant result: rejected
        let b = Losses {
            none: 4.0,
            no_result: 3.9,
            with_result: 3.6,
        };
        assert!(!b.keep(1.0));
        // (c) the call without its result already helps: L- takes that minimum and rejects it,
        // where L(empty) alone would keep it
        let c = Losses {
            none: 4.0,
            no_result: 2.0,
            with_result: 2.5,
        };
        assert!(4.0 - c.with_result >= 1.0 && !c.keep(1.0));
        assert_eq!(c.minus(), 2.0);
    }

    /// Characters are tokens; a hand-set table gives log p of the next character given whether
    /// the context holds a call with the right result, a call without it, or nothing.
    struct Fake;
    impl Scorer for Fake {
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            Ok(text.chars().map(|c| c as u32).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            Ok(ids.iter().filter_map(|&i| char::from_u32(i)).collect())
        }
        fn logprobs(&mut self, context: &[u32], cont: &[u32]) -> Result<Vec<f64>> {
            let ctx = self.decode(context)?;
            let lp = if ctx.contains("-> 42]") {
                -0.1
            } else if ctx.contains("-> ]") {
                -3.0
            } else if ctx.contains("->") {
                -3.5 // a wrong result
            } else {
                -3.2
            };
            Ok(vec![lp; cont.len()])
        }
        fn next_probs(&mut self, _: &[u32], x: &[u32], _: &[u32]) -> Result<Vec<f64>> {
            Ok((0..x.len())
                .map(|i| if i == 9 { 0.5 } else { 0.01 })
                .collect())
        }
    }

    fn cand(args: &str, result: &str) -> Candidate {
        Candidate {
            text_id: 0,
            position: Position { token: 9, p: 0.5 },
            offset: 9,
            sampled: format!("Calculator({args})"),
            tool: Some("Calculator".into()),
            args: Some(args.into()),
            result: Some(result.into()),
            losses: None,
            kept: false,
            control: false,
        }
    }

    #[test]
    fn the_filter_keeps_a_call_that_helps_and_drops_one_that_does_not() {
        let texts = vec!["6 * 7 is 42 exactly.".to_string()];
        let mut cs = vec![cand("6 * 7", "42"), cand("6 + 7", "13")];
        filter(&mut Fake, &texts, &mut cs, 1.0).unwrap();
        let l = cs[0].losses.unwrap();
        assert!((l.with_result - 0.1).abs() < 1e-9 && (l.minus() - 3.0).abs() < 1e-9);
        assert!(cs[0].kept && !cs[1].kept, "{cs:?}");
        // a corrupted control is scored (and here dropped) but never inserted
        let mut ctl = vec![corrupted(&cs[0]).unwrap()];
        assert_eq!(ctl[0].result.as_deref(), Some("49"));
        filter(&mut Fake, &texts, &mut ctl, 1.0).unwrap();
        assert!(!ctl[0].kept);
        ctl[0].kept = true;
        assert_eq!(augment(&texts[0], &[&ctl[0]]), None);
        let refs: Vec<&Candidate> = cs.iter().collect();
        assert_eq!(
            augment(&texts[0], &refs).unwrap(),
            "6 * 7 is [Calculator(6 * 7) -> 42] 42 exactly."
        );
        let p = Fake.next_probs(&[1], &[0; 20], &[]).unwrap();
        assert_eq!(top_positions(&p, 0.05, 5), [Position { token: 9, p: 0.5 }]);
    }

    #[test]
    fn positions_are_top_k_above_the_threshold_in_descending_order() {
        let p = [0.9, 0.2, 0.04, 0.3, 0.06, 0.3, 0.5];
        let v = top_positions(&p, 0.05, 3);
        let idx: Vec<usize> = v.iter().map(|x| x.token).collect();
        assert_eq!(idx, [6, 3, 5]);
        assert!(v.iter().all(|x| x.p > 0.05));
    }

    #[test]
    fn annotated_text_round_trips() {
        let t = format!(
            "Out of 1400, {} 400 passed.",
            linearize("Calculator", "400 / 1400", Some("0.29"))
        );
        assert_eq!(
            t,
            "Out of 1400, [Calculator(400 / 1400) -> 0.29] 400 passed."
        );
        let p = parse_annotated(&t);
        assert_eq!(
            p,
            [(13, "Calculator".into(), "400 / 1400".into(), "0.29".into())]
        );
        assert_eq!(
            parse_call("Calculator(2 * (3 + 4))] rest"),
            Some(("Calculator".into(), "2 * (3 + 4)".into()))
        );
        assert_eq!(parse_call("no call"), None);
    }

    #[test]
    fn arithmetic_texts_compute_their_answers() {
        let status = "Package: a\nInstalled-Size: 300\n\nPackage: b\nInstalled-Size: 120\n\nPackage: c\nInstalled-Size: 7\n";
        let ts = arithmetic_texts(status, 40, 1, 2);
        assert!(ts.len() >= 20, "{}", ts.len());
        for t in &ts {
            let v = crate::tools::evaluate(&t.expression).unwrap();
            assert!(v.decimal(2) == t.answer, "{t:?}");
            assert!(
                t.text.starts_with(&t.prefix) && t.text.contains(&format!(" {} ", t.answer))
                    || t.text.ends_with(&format!(" {}.", t.answer))
            );
        }
        let p = calculator_prompt(&[&ts[0]], "x");
        assert!(p.contains(&format!(
            "[Calculator({})] {}",
            ts[0].expression, ts[0].answer
        )));
        assert!(p.ends_with("Input:\nx\nOutput:\n"));
    }

    /// Word-level tokens with single characters as the fallback; the next token's logits depend
    /// on how the context ends (a table), so a test can place `[` at any rank.
    struct Steps {
        vocab: Vec<String>,
        rules: Vec<(&'static str, Vec<(&'static str, f32)>)>,
        ctx: Vec<u32>,
        starts: Vec<String>,
    }
    impl Steps {
        fn new(rules: Vec<(&'static str, Vec<(&'static str, f32)>)>) -> Steps {
            let mut vocab: Vec<String> = vec!["<end>".into(), "[".into(), " [".into()];
            for (_, outs) in &rules {
                for (t, _) in outs {
                    if !vocab.iter().any(|v| v == t) {
                        vocab.push(t.to_string());
                    }
                }
            }
            for c in 32u8..127 {
                let c = (c as char).to_string();
                if !vocab.contains(&c) {
                    vocab.push(c);
                }
            }
            vocab.push("\n".into());
            Steps {
                vocab,
                rules,
                ctx: vec![],
                starts: vec![],
            }
        }
        fn logits(&self) -> Result<Vec<f32>> {
            let text = self.decode(&self.ctx)?;
            // `[` and ` [` are unlikely unless a rule says otherwise
            let mut l = vec![0.0; self.vocab.len()];
            l[1] = -5.0;
            l[2] = -5.0;
            if let Some((_, outs)) = self.rules.iter().find(|(end, _)| text.ends_with(end)) {
                for (t, v) in outs {
                    l[self.vocab.iter().position(|x| x == t).unwrap()] = *v;
                }
            } else {
                l[0] = 1.0; // nothing matches: end
            }
            Ok(l)
        }
    }
    impl StepLm for Steps {
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            let mut ids = vec![];
            let mut rest = text;
            while !rest.is_empty() {
                let (i, v) = self
                    .vocab
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter(|(_, v)| rest.starts_with(v.as_str()))
                    .max_by_key(|(_, v)| v.len())
                    .unwrap();
                ids.push(i as u32);
                rest = &rest[v.len()..];
            }
            Ok(ids)
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            Ok(ids
                .iter()
                .map(|&i| self.vocab[i as usize].as_str())
                .collect())
        }
        fn is_end(&self, id: u32) -> bool {
            id == 0
        }
        fn start(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
            self.starts.push(self.decode(ids)?);
            self.ctx = ids.to_vec();
            self.logits()
        }
        fn push(&mut self, id: u32) -> Result<Vec<f32>> {
            self.ctx.push(id);
            self.logits()
        }
    }

    fn share_model() -> Steps {
        // after "a share of", ` [` is the 3rd most likely token; " 0.5" the argmax
        Steps::new(vec![
            (
                "a share of",
                vec![(" 0.5", 9.0), (" about", 8.5), (" [", 8.0), (" the", 1.0)],
            ),
            (" [", vec![("Calculator(400 / 1400)", 9.0)]),
            ("1400)", vec![(" ->", 9.0)]),
            ("0.29]", vec![(" 0.29", 9.0), (" [", 8.9)]),
            (" 0.29", vec![(" of them.", 9.0)]),
            (" 0.5", vec![(" of them.", 9.0)]),
            (" about", vec![(" half.", 9.0)]),
            ("them.", vec![("\n", 9.0)]),
            ("half.", vec![("\n", 9.0)]),
        ])
    }

    #[test]
    fn a_call_starts_where_the_api_token_is_in_the_top_k() {
        let api = [1u32, 2];
        let prompt = "Out of 1400, 400 passed: a share of";
        let mut calls = vec![];
        let mut run = |t: &str, a: &str| {
            calls.push(format!("{t}({a})"));
            run_call(t, a, None, &Toolbox::new(Default::default()), 2).unwrap()
        };
        // k = 10 (the paper's): ` [` ranks 3rd, so the call starts, runs once on `->`, and its
        // result is inserted; the second ` [` after the call is not a call
        let mut lm = share_model();
        let r = decode_with_calls(&mut lm, prompt, &api, CallRule::TopK(10), 40, &mut run).unwrap();
        assert_eq!(r.text, " [Calculator(400 / 1400) -> 0.29] 0.29 of them.");
        assert_eq!(
            r.call,
            Some(("Calculator".into(), "400 / 1400".into(), "0.29".into()))
        );
        assert_eq!(
            lm.starts[1],
            format!("{prompt} [Calculator(400 / 1400) -> 0.29]")
        );
        // k = 3 still starts it; k = 2 and k = 1 (greedy) do not
        let mut lm = share_model();
        let r = decode_with_calls(&mut lm, prompt, &api, CallRule::TopK(3), 40, &mut run).unwrap();
        assert!(r.call.is_some());
        for rule in [CallRule::TopK(2), CallRule::TopK(1), CallRule::Off] {
            let mut lm = share_model();
            let r = decode_with_calls(&mut lm, prompt, &api, rule, 40, &mut run).unwrap();
            assert_eq!(
                (r.text.as_str(), &r.call),
                (" 0.5 of them.", &None),
                "{rule:?}"
            );
        }
        // greedy with `[` the argmax starts a call at k = 1; disabled never writes `[`
        let top = || {
            Steps::new(vec![
                ("share of", vec![(" [", 9.0), (" about", 8.0)]),
                (" [", vec![("Calculator(400 / 1400)", 9.0)]),
                ("1400)", vec![(" ->", 9.0)]),
                ("0.29]", vec![(" 0.29", 9.0)]),
                (" about", vec![(" half.", 9.0)]),
            ])
        };
        let r = decode_with_calls(&mut top(), prompt, &api, CallRule::TopK(1), 40, &mut run);
        assert!(r.unwrap().call.is_some());
        let r = decode_with_calls(&mut top(), prompt, &api, CallRule::Disabled, 40, &mut run);
        assert_eq!(r.unwrap().text, " about half.");
        assert_eq!(calls.len(), 3);
        // a call closed without `->` is abandoned and not run
        let mut lm = Steps::new(vec![
            ("share of", vec![(" [", 9.0)]),
            (" [", vec![("Calculator(400 / 1400)", 9.0)]),
            ("1400)", vec![("]", 9.0)]),
            ("1400)]", vec![(" half.", 9.0)]),
        ]);
        let r = decode_with_calls(
            &mut lm,
            prompt,
            &api,
            CallRule::TopK(10),
            40,
            &mut |_, _| unreachable!(),
        )
        .unwrap();
        assert_eq!(
            (r.text.as_str(), r.call),
            (" [Calculator(400 / 1400)] half.", None)
        );
        assert!(in_top_k(&[1.0, 3.0, 2.0], 2, 2) && !in_top_k(&[1.0, 3.0, 2.0], 0, 2));
    }

    #[test]
    fn calendar_texts_state_their_date_and_the_calendar_returns_it() {
        let status = "Package: a\nInstalled-Size: 3\n\nPackage: b\nInstalled-Size: 1\n";
        let ts = calendar_texts(status, 40, 3, 2);
        assert_eq!(ts.len(), 40);
        let tb = Toolbox::new(Default::default());
        for t in &ts {
            let today = t.today().unwrap();
            let long = run_call("Calendar", "", Some(today), &tb, 2).unwrap();
            assert_eq!(long, crate::tools::long_date(today));
            // the answer is part of what the calendar says
            assert!(long.contains(&t.answer), "{t:?}");
            assert_eq!(t.text, format!("{} {}{}", t.prefix, t.answer, t.suffix()));
            assert!(t.states_answer(&format!(" {}{}", t.answer, t.suffix())));
            assert!(!t.states_answer(" never"));
        }
        assert!(ts.iter().any(|t| t.split == "test") && ts.iter().any(|t| t.split == "train"));
        assert!(run_call("Calendar", "", None, &tb, 2).is_err());
        let p = annotation_prompt("Calendar", &[&ts[0]], "x");
        assert!(p.contains(&format!("{} [Calendar()] {}", ts[0].prefix, ts[0].answer)));
        // a Calendar candidate executes with its text's date
        let mut c = cand("", "");
        c.tool = Some("Calendar".into());
        c.result = None;
        let mut cs = vec![c];
        execute(&mut cs, &tb, 2, &|_| ts[0].today());
        assert_eq!(
            cs[0].result,
            Some(crate::tools::long_date(ts[0].today().unwrap()))
        );
        let numeric = Text {
            answer: "12.5".into(),
            ..ts[0].clone()
        };
        assert!(numeric.states_answer(" about 12.5 kB") && !numeric.states_answer(" 12.6"));
    }

    struct Script(Vec<String>, Vec<String>);
    impl crate::react::AgentLm for Script {
        fn complete(
            &mut self,
            prompt: &str,
            stop: &[String],
            _: usize,
            _: Option<&[String]>,
        ) -> Result<String> {
            self.1.push(prompt.to_string());
            let mut o = if self.0.is_empty() {
                String::new()
            } else {
                self.0.remove(0)
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
    fn inference_runs_the_call_on_the_arrow_once() {
        let tb = Toolbox::new(Default::default());
        let mut lm = Script(
            vec![
                " [Calculator(400 / 1400) -> 0.5] and more".into(),
                " 0.29 of them. [Calculator(1 + 1) -> 3] stays text".into(),
            ],
            vec![],
        );
        let r = infer(&mut lm, "Out of 1400, 400 passed: a share of", &tb, 40).unwrap();
        assert_eq!(
            r.call,
            Some(("Calculator".into(), "400 / 1400".into(), "0.29".into()))
        );
        assert_eq!(
            lm.1[1],
            "Out of 1400, 400 passed: a share of [Calculator(400 / 1400) -> 0.29]"
        );
        assert_eq!(
            r.text,
            " [Calculator(400 / 1400) -> 0.29] 0.29 of them. [Calculator(1 + 1) -> 3] stays text"
        );
        let mut lm = Script(vec![" 12 kB.".into()], vec![]);
        let r = infer(&mut lm, "x", &tb, 40).unwrap();
        assert!(r.call.is_none() && r.text == " 12 kB.");
        assert_eq!(first_number(" about -12.5 kB."), Some("-12.5".into()));
        assert_eq!(first_number(" 7."), Some("7".into()));
        assert_eq!(first_number("none"), None);
    }

    #[test]
    fn execution_rounds_calculator_results_and_drops_failures() {
        let tb = Toolbox::new(Default::default());
        let mut cs = vec![cand("400 / 1400", ""), cand("1 / 0", "")];
        cs.iter_mut().for_each(|c| c.result = None);
        execute(&mut cs, &tb, 2, &|_| None);
        assert_eq!(cs[0].result.as_deref(), Some("0.29"));
        assert_eq!(cs[1].result, None);
    }
}
