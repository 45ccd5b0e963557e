//! Toolformer's pipeline over a work folder (`canon toolformer`): `texts.jsonl`,
//! `candidates.jsonl` (every call with its position, probability, result, losses and decision),
//! `augmented.jsonl` and `counts.json`; each stage reads what the previous one wrote, so each can
//! be rerun alone.

use std::path::Path;

use canon_models::LoadedLm;
use serde_json::json;

use crate::react_data::{from_jsonl, to_jsonl};
use crate::toolformer::{
    self, Candidate, LmScorer, Position, Scorer, StageCounts, Text, top_positions,
};
use crate::tools::Toolbox;
use crate::{AgentError, Result};

/// Writes `text` atomically ("cannot write PATH: ..." on failure).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    canon_fs::write_atomic(path, text.as_bytes()).map_err(|e| AgentError::Io {
        path: format!("cannot write {}", path.display()),
        error: e,
    })
}

fn infer_err(e: canon_infer::InferError) -> AgentError {
    AgentError::Task(e.to_string())
}

/// Writes `texts.jsonl`: `n` arithmetic texts and `calendar` date texts from the package
/// database at `status`, interleaved in a seeded order; returns how many texts and how many of
/// them are test texts.
pub fn write_texts(
    work: &Path,
    status: &Path,
    n: usize,
    calendar: usize,
    seed: u64,
) -> Result<(usize, usize)> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let text = std::fs::read_to_string(status).map_err(|e| AgentError::Io {
        path: format!("cannot read the package database {}", status.display()),
        error: e,
    })?;
    let mut texts = toolformer::arithmetic_texts(&text, n, seed, 4);
    if calendar > 0 && !texts.is_empty() {
        texts.extend(toolformer::calendar_texts(&text, calendar, seed, 4));
        texts.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 2));
    }
    if texts.is_empty() {
        return Err(AgentError::Task(format!(
            "{}: expected packages with Installed-Size fields, found too few",
            status.display()
        )));
    }
    std::fs::create_dir_all(work).map_err(|e| AgentError::Io {
        path: format!("cannot create {}", work.display()),
        error: e,
    })?;
    write_text(&work.join("texts.jsonl"), &to_jsonl(&texts))?;
    let test = texts.iter().filter(|t| t.split == "test").count();
    Ok((texts.len(), test))
}

/// Reads `texts.jsonl` of a work folder.
pub fn load_texts(work: &Path) -> Result<Vec<Text>> {
    let p = work.join("texts.jsonl");
    if !p.exists() {
        return Err(AgentError::Task(format!(
            "expected {} (run `canon toolformer data --work {}` first), found no file",
            p.display(),
            work.display()
        )));
    }
    from_jsonl(&p)
}

/// Reads `candidates.jsonl` of a work folder.
pub fn load_cands(work: &Path) -> Result<Vec<Candidate>> {
    let p = work.join("candidates.jsonl");
    if !p.exists() {
        return Err(AgentError::Task(format!(
            "expected {} (run `canon toolformer sample` first), found no file",
            p.display()
        )));
    }
    from_jsonl(&p)
}

/// How many texts of each tool the sampling stage annotates (those [`sample_positions`] picks).
fn annotated_per_tool(texts: &[Text], limit: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    let mut out: std::collections::BTreeMap<String, usize> = Default::default();
    let mut n = 0;
    for t in texts.iter().filter(|t| t.split == "train") {
        let s = seen.entry(t.tool.clone()).or_default();
        if *s < 3 {
            *s += 1;
        } else if n < limit {
            n += 1;
            *out.entry(t.tool.clone()).or_default() += 1;
        }
    }
    out
}

/// A scored API position of a text: (text index, position, byte offset in the text, prompt).
pub type ApiPosition = (usize, Position, usize, String);

/// Stage 1: for the training texts after the three demonstrations (at most `limit`), the positions
/// where the model puts the most probability on `[` (at most `k` per text, p ≥ `tau_s`). Returns
/// how many texts were scored and the positions. `on_text(done, total)` follows the texts.
pub fn sample_positions(
    lm: &LoadedLm,
    texts: &[Text],
    limit: usize,
    tau_s: f64,
    k: usize,
    on_text: &mut dyn FnMut(usize, usize),
) -> Result<(usize, Vec<ApiPosition>)> {
    // each tool's first three train texts are its demonstrations
    let mut demos: std::collections::BTreeMap<&str, Vec<&Text>> = Default::default();
    let mut todo: Vec<(usize, &Text)> = Vec::new();
    for (i, t) in texts.iter().enumerate().filter(|(_, t)| t.split == "train") {
        let d = demos.entry(t.tool.as_str()).or_default();
        if d.len() < 3 {
            d.push(t);
        } else if todo.len() < limit {
            todo.push((i, t));
        }
    }
    if todo.is_empty() {
        return Err(AgentError::Task(format!(
            "expected train texts beyond each tool's 3 demonstrations, found {} train texts",
            texts.iter().filter(|t| t.split == "train").count()
        )));
    }
    let api = toolformer::api_tokens(&lm.tokenizer);
    if api.is_empty() {
        return Err(AgentError::Task(
            "the tokenizer has no single token for '[': cannot score API positions".into(),
        ));
    }
    let mut positions = Vec::new();
    let mut sc = LmScorer {
        lm: lm.model.as_ref(),
        tok: &lm.tokenizer,
    };
    on_text(0, todo.len());
    for (n, (id, t)) in todo.iter().enumerate() {
        let p = toolformer::annotation_prompt(&t.tool, &demos[t.tool.as_str()], &t.text);
        let c = sc.encode(&p)?;
        let x = sc.encode(&t.text)?;
        let probs = sc.next_probs(&c, &x, &api)?;
        for pos in top_positions(&probs, tau_s, k) {
            let offset = toolformer::token_offset(&sc, &x, pos.token)?;
            positions.push((*id, pos, offset, p.clone()));
        }
        on_text(n + 1, todo.len());
    }
    Ok((todo.len(), positions))
}

/// Stage 2: `m` sampled calls per position through the batched engine (temperature, seeds
/// `seed + j`), deduplicated per position and parsed. `on_position(done, total)` follows them.
pub fn sample_calls(
    engine: &canon_infer::Engine,
    texts: &[Text],
    positions: &[ApiPosition],
    m: usize,
    temperature: f32,
    seed: u64,
    on_position: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Candidate>> {
    let mut cands = Vec::new();
    on_position(0, positions.len());
    for (n, (id, pos, offset, prompt)) in positions.iter().enumerate() {
        let head = texts[*id].text[..*offset].trim_end();
        let p = format!("{prompt}{head} [");
        let ids = engine
            .tokenizer()
            .encode(&p, false)
            .map_err(|e| AgentError::Text(e.to_string()))?;
        let reqs = (0..m)
            .map(|j| {
                let mut r = canon_infer::Request::new(ids.clone(), 24);
                r.sampling = canon_infer::SamplingConfig {
                    temperature,
                    seed: seed.wrapping_add(j as u64),
                    ..Default::default()
                };
                r.stop = vec!["]".into(), "->".into(), "\n".into()];
                r
            })
            .collect();
        let outs = engine.generate_batch(reqs).map_err(infer_err)?;
        let mut seen = std::collections::HashSet::new();
        for o in outs {
            let sampled = o.text.trim().to_string();
            if !seen.insert(sampled.clone()) {
                continue;
            }
            let parsed = toolformer::parse_call(&sampled);
            cands.push(Candidate {
                text_id: *id,
                position: *pos,
                offset: *offset,
                sampled,
                tool: parsed.as_ref().map(|p| p.0.clone()),
                args: parsed.map(|p| p.1),
                result: None,
                losses: None,
                kept: false,
                control: false,
            });
        }
        on_position(n + 1, positions.len());
    }
    Ok(cands)
}

/// Writes `counts.json` (the stage counts and the settings that produced them).
pub fn write_counts(work: &Path, c: &StageCounts, settings: &serde_json::Value) -> Result<()> {
    let v = json!({"counts": c, "settings": settings});
    let text = serde_json::to_string_pretty(&v).map_err(|e| AgentError::Task(e.to_string()))?;
    write_text(&work.join("counts.json"), &text)
}

/// `counts.json` (empty counts when there is none yet).
pub fn read_counts(work: &Path) -> (StageCounts, serde_json::Value) {
    let v: serde_json::Value = std::fs::read_to_string(work.join("counts.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let c = serde_json::from_value(v["counts"].clone()).unwrap_or_default();
    (c, v["settings"].clone())
}

/// The stage counts per tool of the texts (`Calculator`, `Calendar`): texts and positions as the
/// sampling stage recorded them in `before`, the rest counted from the candidates.
pub fn by_tool(
    texts: &[Text],
    cands: &[Candidate],
    before: &serde_json::Value,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut tools: Vec<&str> = texts.iter().map(|t| t.tool.as_str()).collect();
    tools.sort();
    tools.dedup();
    for tool in tools {
        let mine: Vec<&Candidate> = cands
            .iter()
            .filter(|c| !c.control && texts.get(c.text_id).is_some_and(|t| t.tool == tool))
            .collect();
        let prev: StageCounts = serde_json::from_value(before[tool].clone()).unwrap_or_default();
        let c = StageCounts {
            texts: prev.texts,
            positions: prev.positions,
            sampled: mine.len(),
            parsed: mine.iter().filter(|c| c.tool.is_some()).count(),
            executed: mine.iter().filter(|c| c.result.is_some()).count(),
            kept: mine.iter().filter(|c| c.kept).count(),
            texts_with_a_kept_call: {
                let mut ids: Vec<usize> =
                    mine.iter().filter(|c| c.kept).map(|c| c.text_id).collect();
                ids.sort();
                ids.dedup();
                ids.len()
            },
        };
        out.insert(tool.to_string(), json!(c));
    }
    serde_json::Value::Object(out)
}

/// Stage 3: runs every parsed call (the calculator, `Calendar()` with the text's date); returns
/// (executed, calls).
pub fn execute_calls(work: &Path) -> Result<(usize, usize)> {
    let mut cands = load_cands(work)?;
    let texts = load_texts(work)?;
    check_candidates(&texts, &cands)?;
    let tb = Toolbox::new(Default::default()).with(std::sync::Arc::new(crate::tools::Calculator));
    toolformer::execute(&mut cands, &tb, 2, &|i| texts.get(i).and_then(Text::today));
    write_text(&work.join("candidates.jsonl"), &to_jsonl(&cands))?;
    let (mut c, mut s) = read_counts(work);
    c.executed = cands.iter().filter(|c| c.result.is_some()).count();
    s["by_tool"] = by_tool(&texts, &cands, &s["by_tool"]);
    write_counts(work, &c, &s)?;
    Ok((c.executed, cands.len()))
}

/// Checks that every candidate names a text of `texts.jsonl`.
pub fn check_candidates(texts: &[Text], cands: &[Candidate]) -> Result<()> {
    if let Some(c) = cands.iter().find(|c| c.text_id >= texts.len()) {
        return Err(AgentError::Task(format!(
            "candidates.jsonl names text {} but texts.jsonl has {}",
            c.text_id,
            texts.len()
        )));
    }
    Ok(())
}

/// Stage 4: scores every executed call and a corrupted control per call with `lm`, keeps those
/// with L⁻ − L⁺ ≥ `tau_f`, writes `candidates.jsonl`, `augmented.jsonl` and `counts.json`, and
/// returns the summary (kept rates of calls with the right result, another result, and controls).
pub fn filter_calls(
    work: &Path,
    texts: &[Text],
    mut cands: Vec<Candidate>,
    lm: &LoadedLm,
    tau_f: f64,
) -> Result<serde_json::Value> {
    let mut sc = LmScorer {
        lm: lm.model.as_ref(),
        tok: &lm.tokenizer,
    };
    let strings: Vec<String> = texts.iter().map(|t| t.text.clone()).collect();
    cands.retain(|c| !c.control);
    let controls: Vec<Candidate> = cands.iter().filter_map(toolformer::corrupted).collect();
    cands.extend(controls);
    toolformer::filter(&mut sc, &strings, &mut cands, tau_f)?;
    write_text(&work.join("candidates.jsonl"), &to_jsonl(&cands))?;
    let mut recs = String::new();
    let mut with_call = 0;
    for (i, t) in texts.iter().enumerate() {
        let mine: Vec<&Candidate> = cands.iter().filter(|c| c.text_id == i).collect();
        if let Some(aug) = toolformer::augment(&t.text, &mine) {
            with_call += 1;
            recs.push_str(&json!({"prompt": "", "completion": aug}).to_string());
            recs.push('\n');
        }
    }
    write_text(&work.join("augmented.jsonl"), &recs)?;
    let (mut c, mut s) = read_counts(work);
    c.kept = cands.iter().filter(|c| c.kept && !c.control).count();
    c.texts_with_a_kept_call = with_call;
    s["tau_f"] = json!(tau_f);
    s["by_tool"] = by_tool(texts, &cands, &s["by_tool"]);
    write_counts(work, &c, &s)?;
    // correct vs corrupted: how often calls whose result equals the text's answer pass
    let correct = |c: &&Candidate| c.result.as_deref() == Some(texts[c.text_id].answer.as_str());
    let scored: Vec<&Candidate> = cands
        .iter()
        .filter(|c| c.losses.is_some() && !c.control)
        .collect();
    let ctrl: Vec<&Candidate> = cands
        .iter()
        .filter(|c| c.control && c.losses.is_some())
        .collect();
    let (right, wrong): (Vec<&Candidate>, Vec<&Candidate>) =
        scored.iter().copied().partition(|c| correct(c));
    let rate = |v: &[&Candidate]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().filter(|c| c.kept).count() as f64 / v.len() as f64
        }
    };
    Ok(json!({"counts": c, "by_tool": s["by_tool"], "tau_f": tau_f,
        "calls_with_the_right_result": right.len(), "kept_rate_right": rate(&right),
        "calls_with_another_result": wrong.len(), "kept_rate_other": rate(&wrong),
        "corrupted_controls": ctrl.len(), "kept_rate_corrupted": rate(&ctrl)}))
}

/// What an evaluation found: texts, correct answers and calls made, in all and per tool.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EvalSummary {
    pub texts: usize,
    pub correct: usize,
    pub calls: usize,
    /// Per tool of the texts: (texts, correct, calls).
    pub by_tool: std::collections::BTreeMap<String, (usize, usize, usize)>,
}

/// Continues each test text's prefix under `rule` (calls executed with the text's date for
/// `Calendar()`), and checks that the continuation (after the call, when there is one) states the
/// answer; returns the summary and one JSON row per text.
pub fn eval_texts(
    lm: &mut dyn toolformer::StepLm,
    api: &[u32],
    test: &[&Text],
    rule: toolformer::CallRule,
    max_tokens: usize,
    on_text: &mut dyn FnMut(usize, usize),
) -> Result<(EvalSummary, String)> {
    let tb = Toolbox::new(Default::default());
    let mut sum = EvalSummary::default();
    let mut rows = String::new();
    on_text(0, test.len());
    for (n, t) in test.iter().enumerate() {
        let today = t.today();
        let mut run = |tool: &str, args: &str| {
            // a tool's own error text already starts with "error"
            toolformer::run_call(tool, args, today, &tb, 2).unwrap_or_else(|e| {
                if e.starts_with("error") {
                    e
                } else {
                    format!("error: {e}")
                }
            })
        };
        let out = toolformer::decode_with_calls(lm, &t.prefix, api, rule, max_tokens, &mut run)?;
        // what the text states: after the call's closing bracket when there is a call
        let after = match out.text.rfind(']') {
            Some(i) if out.call.is_some() => &out.text[i + 1..],
            _ => out.text.as_str(),
        };
        let ok = t.states_answer(after);
        sum.texts += 1;
        sum.correct += usize::from(ok);
        sum.calls += usize::from(out.call.is_some());
        let e = sum.by_tool.entry(t.tool.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(ok);
        e.2 += usize::from(out.call.is_some());
        rows.push_str(
            &json!({"id": t.id, "tool": t.tool, "prefix": t.prefix, "answer": t.answer,
            "output": out.text, "call": out.call, "correct": ok})
            .to_string(),
        );
        rows.push('\n');
        on_text(n + 1, test.len());
    }
    Ok((sum, rows))
}

/// Settings of the sampling stage.
#[derive(Debug, Clone)]
pub struct SampleOpts {
    /// Texts sampled at most.
    pub limit: usize,
    /// τ_s: a position's least probability of `[`.
    pub tau_s: f64,
    /// Positions kept per text (top k).
    pub k: usize,
    /// Calls sampled per position.
    pub m: usize,
    pub temperature: f32,
    pub seed: u64,
}

/// Toolformer's sampling stage over the work folder: positions where the model would open a call
/// (`on_text` follows the texts), then `m` calls per position on the batched engine (`on_position`
/// follows the positions); writes `candidates.jsonl` and the stage counts, and returns them.
pub fn sample_stage(
    work: &Path,
    lm: LoadedLm,
    o: &SampleOpts,
    on_text: &mut dyn FnMut(usize, usize),
    on_position: &mut dyn FnMut(usize, usize),
) -> Result<StageCounts> {
    let texts = load_texts(work)?;
    let (n_texts, positions) = sample_positions(&lm, &texts, o.limit, o.tau_s, o.k, on_text)?;
    let mut before = serde_json::Map::new();
    for (tool, n) in &annotated_per_tool(&texts, o.limit) {
        let c = StageCounts {
            texts: *n,
            positions: positions
                .iter()
                .filter(|p| texts[p.0].tool == *tool)
                .count(),
            ..Default::default()
        };
        before.insert(tool.clone(), json!(c));
    }
    let engine = canon_infer::Engine::start(
        lm,
        canon_infer::EngineConfig {
            slots: o.m.clamp(1, 15),
            ..Default::default()
        },
    )
    .map_err(infer_err)?;
    let cands = sample_calls(
        &engine,
        &texts,
        &positions,
        o.m,
        o.temperature,
        o.seed,
        on_position,
    );
    engine.shutdown();
    let cands = cands?;
    write_text(&work.join("candidates.jsonl"), &to_jsonl(&cands))?;
    let counts = StageCounts {
        texts: n_texts,
        positions: positions.len(),
        sampled: cands.len(),
        parsed: cands.iter().filter(|c| c.tool.is_some()).count(),
        ..Default::default()
    };
    let by = by_tool(&texts, &cands, &serde_json::Value::Object(before));
    write_counts(
        work,
        &counts,
        &json!({"tau_s": o.tau_s, "k": o.k, "m": o.m, "by_tool": by}),
    )?;
    Ok(counts)
}

/// Toolformer's evaluation: the first `limit` test texts continued greedily by `lm` under `rule`
/// ([`toolformer::CallRule::Off`]: plain decoding; `Disabled`: `[` never generated; `TopK(k)`:
/// calls started by the top-k rule and executed); writes `out` (a file name in the work folder)
/// with one row per text and returns the summary.
pub fn eval_stage(
    work: &Path,
    lm: &LoadedLm,
    limit: usize,
    rule: toolformer::CallRule,
    max_tokens: usize,
    out: &str,
    on_text: &mut dyn FnMut(usize, usize),
) -> Result<EvalSummary> {
    let texts = load_texts(work)?;
    let test = test_texts(&texts, limit);
    if test.is_empty() {
        return Err(AgentError::Task(format!(
            "{}: expected test texts, found none",
            work.display()
        )));
    }
    let api = toolformer::api_tokens(&lm.tokenizer);
    let mut step = toolformer::LmStepper::new(lm.model.as_ref(), &lm.tokenizer);
    let (sum, rows) = eval_texts(&mut step, &api, &test, rule, max_tokens, on_text)?;
    write_text(&work.join(out), &rows)?;
    Ok(sum)
}

/// The first `limit` test texts, taking the tools in turn (so both kinds are evaluated).
pub fn test_texts(texts: &[Text], limit: usize) -> Vec<&Text> {
    let mut by: std::collections::BTreeMap<&str, std::collections::VecDeque<&Text>> =
        Default::default();
    for t in texts.iter().filter(|t| t.split == "test") {
        by.entry(t.tool.as_str()).or_default().push_back(t);
    }
    let mut out = Vec::new();
    while out.len() < limit && by.values().any(|q| !q.is_empty()) {
        for q in by.values_mut() {
            if out.len() < limit
                && let Some(t) = q.pop_front()
            {
                out.push(t);
            }
        }
    }
    out
}
