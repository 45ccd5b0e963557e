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
//!
//! The stages are here; the corpus texts and their few-shot prompts are `texts`, inference with
//! calls (stage 5 and the top-k start rule) `decode`.

use serde::{Deserialize, Serialize};

use crate::tools::Toolbox;
use crate::{AgentError, Result};

mod decode;
#[cfg(test)]
mod tests;
mod texts;

pub use decode::{
    CallRule, Inference, LmStepper, StepLm, api_tokens, decode_with_calls, first_number, in_top_k,
    infer,
};
pub use texts::{
    Text, annotation_prompt, arithmetic_texts, calculator_prompt, calendar_prompt, calendar_texts,
};

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
