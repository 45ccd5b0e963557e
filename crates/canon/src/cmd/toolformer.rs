//! `canon toolformer`: the Toolformer pipeline (paper 24), one rerunnable stage per subcommand over
//! a work folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use canon_agent::react_data::{from_jsonl, to_jsonl};
use canon_agent::toolformer::{
    self, Candidate, LmScorer, Scorer, StageCounts, Text, top_positions,
};
use canon_agent::tools::Toolbox;
use clap::{Args, Subcommand};
use serde_json::json;

use super::write_atomic;
use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon toolformer data --work runs/tf                     # arithmetic texts from the package database
  canon toolformer sample --work runs/tf --limit 40        # stages 1-2: positions by p([), sampled calls
  canon toolformer execute --work runs/tf                  # stage 3: run the calls
  canon toolformer filter --work runs/tf --tau-f 1.0       # stage 4: L- - L+ >= tau_f; writes augmented.jsonl
  canon toolformer run --work runs/tf --limit 40           # all stages
  canon toolformer eval --work runs/tf --limit 40 --tools  # held-out texts, calls executed on ->
  canon finetune --method lora --data runs/tf/augmented.jsonl --out runs/tf-lora   # stage 5

Files in the work folder: texts.jsonl, candidates.jsonl (every call with its position, p, result,
losses and decision), augmented.jsonl ({prompt: \"\", completion: text with the kept call}),
counts.json (how many texts, positions, sampled, parsed, executed and kept calls).")]
pub struct ToolformerArgs {
    #[command(subcommand)]
    pub stage: Stage,
}

#[derive(Subcommand, Debug)]
pub enum Stage {
    /// Build texts.jsonl: sums, differences, ratios and means of packages' installed sizes.
    Data(DataArgs),
    /// Stages 1 and 2: top-k positions by p(`[`), then m sampled calls at each.
    Sample(SampleArgs),
    /// Stage 3: execute the sampled calls.
    Execute(WorkArgs),
    /// Stage 4: the weighted-loss filter; writes augmented.jsonl and counts.json.
    Filter(FilterArgs),
    /// Every stage in a row.
    Run(RunArgs),
    /// Held-out texts: does the model complete the computed number? (--tools: Toolformer inference)
    Eval(EvalArgs),
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Test texts to score.
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    /// Run calls the model writes (`[Calculator(...) ->`) and insert their results.
    #[arg(long)]
    pub tools: bool,
    /// Tokens generated per text.
    #[arg(long, default_value_t = 24)]
    pub max_tokens: usize,
}

#[derive(Args, Debug)]
pub struct WorkArgs {
    /// The work folder.
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")]
    pub status: PathBuf,
    /// Texts to generate.
    #[arg(long, default_value_t = 400)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Train texts to annotate (in file order).
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    /// Positions kept per text (k).
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Position threshold tau_s.
    #[arg(long, default_value_t = 0.05)]
    pub tau_s: f64,
    /// Calls sampled per position (m).
    #[arg(long, default_value_t = 5)]
    pub m: usize,
    /// Sampling temperature of the calls.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct FilterArgs {
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Filter threshold tau_f.
    #[arg(long, default_value_t = 1.0)]
    pub tau_f: f64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub sample: SampleArgs,
    #[arg(long, default_value_t = 1.0)]
    pub tau_f: f64,
    #[arg(long, default_value_t = 400)]
    pub n: usize,
    #[arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")]
    pub status: PathBuf,
}

pub fn run(a: ToolformerArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.stage {
        Stage::Data(d) => data(&d.work, &d.status, d.n, d.seed),
        Stage::Sample(s) => sample(&s, ctx),
        Stage::Execute(w) => execute(&w.work),
        Stage::Filter(f) => filter(&f.work, &f.model, f.tau_f, ctx),
        Stage::Eval(e) => eval(&e, ctx),
        Stage::Run(r) => {
            data(&r.sample.work, &r.status, r.n, r.sample.seed)?;
            sample(&r.sample, ctx)?;
            execute(&r.sample.work)?;
            filter(&r.sample.work, &r.sample.model, r.tau_f, ctx)
        }
    }
}

fn data(work: &Path, status: &Path, n: usize, seed: u64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(status)
        .with_context(|| format!("cannot read the package database {}", status.display()))?;
    let texts = toolformer::arithmetic_texts(&text, n, seed, 4);
    if texts.is_empty() {
        bail!(
            "{}: expected packages with Installed-Size fields, found too few",
            status.display()
        );
    }
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    write_atomic(&work.join("texts.jsonl"), &to_jsonl(&texts))?;
    let test = texts.iter().filter(|t| t.split == "test").count();
    eprintln!(
        "canon: {} texts ({} train, {test} test) in {}",
        texts.len(),
        texts.len() - test,
        work.join("texts.jsonl").display()
    );
    Ok(())
}

fn load_texts(work: &Path) -> anyhow::Result<Vec<Text>> {
    let p = work.join("texts.jsonl");
    if !p.exists() {
        bail!(
            "expected {} (run `canon toolformer data --work {}` first), found no file",
            p.display(),
            work.display()
        );
    }
    Ok(from_jsonl(&p)?)
}

fn load_cands(work: &Path) -> anyhow::Result<Vec<Candidate>> {
    let p = work.join("candidates.jsonl");
    if !p.exists() {
        bail!(
            "expected {} (run `canon toolformer sample` first), found no file",
            p.display()
        );
    }
    Ok(from_jsonl(&p)?)
}

fn sample(a: &SampleArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let texts = load_texts(&a.work)?;
    let train: Vec<&Text> = texts.iter().filter(|t| t.split == "train").collect();
    if train.len() < 4 {
        bail!("expected at least 4 train texts, found {}", train.len());
    }
    let demos: Vec<&Text> = train[..3].to_vec();
    let todo: Vec<(usize, &Text)> = texts
        .iter()
        .enumerate()
        .filter(|(_, t)| t.split == "train")
        .skip(3)
        .take(a.limit)
        .collect();
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let api: Vec<u32> = ["[", " ["]
        .iter()
        .filter_map(|s| lm.tokenizer.encode(s, false).ok())
        .filter(|ids| ids.len() == 1)
        .map(|ids| ids[0])
        .collect();
    if api.is_empty() {
        bail!("the tokenizer has no single token for '[': cannot score API positions");
    }
    let mut positions = Vec::new();
    {
        let mut sc = LmScorer {
            lm: lm.model.as_ref(),
            tok: &lm.tokenizer,
        };
        let pb = super::agent::progress(ctx, todo.len(), "positions");
        for (id, t) in &todo {
            let p = toolformer::calculator_prompt(&demos, &t.text);
            let c = sc.encode(&p)?;
            let x = sc.encode(&t.text)?;
            let probs = sc.next_probs(&c, &x, &api)?;
            for pos in top_positions(&probs, a.tau_s, a.k) {
                let offset = toolformer::token_offset(&sc, &x, pos.token)?;
                positions.push((*id, pos, offset, p.clone()));
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
    }
    // Stage 2: m calls per position through the batched engine.
    let engine = canon_infer::Engine::start(
        lm,
        canon_infer::EngineConfig {
            slots: a.m.clamp(1, 15),
            ..Default::default()
        },
    )?;
    let mut cands = Vec::new();
    let pb = super::agent::progress(ctx, positions.len(), "calls");
    for (id, pos, offset, prompt) in &positions {
        let head = texts[*id].text[..*offset].trim_end();
        let p = format!("{prompt}{head} [");
        let ids = engine.tokenizer().encode(&p, false)?;
        let reqs = (0..a.m)
            .map(|j| {
                let mut r = canon_infer::Request::new(ids.clone(), 24);
                r.sampling = canon_infer::SamplingConfig {
                    temperature: a.temperature,
                    seed: a.seed.wrapping_add(j as u64),
                    ..Default::default()
                };
                r.stop = vec!["]".into(), "->".into(), "\n".into()];
                r
            })
            .collect();
        let outs = engine.generate_batch(reqs)?;
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
        pb.inc(1);
    }
    pb.finish_and_clear();
    engine.shutdown();
    write_atomic(&a.work.join("candidates.jsonl"), &to_jsonl(&cands))?;
    let counts = StageCounts {
        texts: todo.len(),
        positions: positions.len(),
        sampled: cands.len(),
        parsed: cands.iter().filter(|c| c.tool.is_some()).count(),
        ..Default::default()
    };
    write_counts(
        &a.work,
        &counts,
        &json!({"tau_s": a.tau_s, "k": a.k, "m": a.m}),
    )?;
    eprintln!(
        "canon: {} texts, {} positions, {} distinct sampled calls, {} parsed",
        counts.texts, counts.positions, counts.sampled, counts.parsed
    );
    Ok(())
}

fn write_counts(work: &Path, c: &StageCounts, settings: &serde_json::Value) -> anyhow::Result<()> {
    let v = json!({"counts": c, "settings": settings});
    write_atomic(
        &work.join("counts.json"),
        &serde_json::to_string_pretty(&v)?,
    )
}

fn read_counts(work: &Path) -> (StageCounts, serde_json::Value) {
    let v: serde_json::Value = std::fs::read_to_string(work.join("counts.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let c = serde_json::from_value(v["counts"].clone()).unwrap_or_default();
    (c, v["settings"].clone())
}

fn execute(work: &Path) -> anyhow::Result<()> {
    let mut cands = load_cands(work)?;
    let tb =
        Toolbox::new(Default::default()).with(std::sync::Arc::new(canon_agent::tools::Calculator));
    toolformer::execute(&mut cands, &tb, 2);
    write_atomic(&work.join("candidates.jsonl"), &to_jsonl(&cands))?;
    let (mut c, s) = read_counts(work);
    c.executed = cands.iter().filter(|c| c.result.is_some()).count();
    write_counts(work, &c, &s)?;
    eprintln!("canon: {} of {} calls executed", c.executed, cands.len());
    Ok(())
}

fn filter(work: &Path, model: &str, tau_f: f64, ctx: &Ctx) -> anyhow::Result<()> {
    let texts = load_texts(work)?;
    let mut cands = load_cands(work)?;
    if let Some(c) = cands.iter().find(|c| c.text_id >= texts.len()) {
        bail!(
            "candidates.jsonl names text {} but texts.jsonl has {}",
            c.text_id,
            texts.len()
        );
    }
    let lm = model_gen::load_lm(model, ctx)?;
    let mut sc = LmScorer {
        lm: lm.model.as_ref(),
        tok: &lm.tokenizer,
    };
    let strings: Vec<String> = texts.iter().map(|t| t.text.clone()).collect();
    cands.retain(|c| !c.control);
    let controls: Vec<Candidate> = cands.iter().filter_map(toolformer::corrupted).collect();
    cands.extend(controls);
    toolformer::filter(&mut sc, &strings, &mut cands, tau_f)?;
    write_atomic(&work.join("candidates.jsonl"), &to_jsonl(&cands))?;
    let mut recs = String::new();
    let mut with_call = 0;
    for (i, t) in texts.iter().enumerate() {
        let mine: Vec<&Candidate> = cands.iter().filter(|c| c.text_id == i).collect();
        if let Some(aug) = toolformer::augment(&t.text, &mine) {
            with_call += 1;
            recs.push_str(&serde_json::to_string(
                &json!({"prompt": "", "completion": aug}),
            )?);
            recs.push('\n');
        }
    }
    write_atomic(&work.join("augmented.jsonl"), &recs)?;
    let (mut c, mut s) = read_counts(work);
    c.kept = cands.iter().filter(|c| c.kept && !c.control).count();
    c.texts_with_a_kept_call = with_call;
    s["tau_f"] = json!(tau_f);
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
    println!(
        "{}",
        json!({"counts": c, "tau_f": tau_f,
            "calls_with_the_right_result": right.len(), "kept_rate_right": rate(&right),
            "calls_with_another_result": wrong.len(), "kept_rate_other": rate(&wrong),
            "corrupted_controls": ctrl.len(), "kept_rate_corrupted": rate(&ctrl)})
    );
    Ok(())
}

fn eval(a: &EvalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let texts = load_texts(&a.work)?;
    let test: Vec<&Text> = texts
        .iter()
        .filter(|t| t.split == "test")
        .take(a.limit)
        .collect();
    if test.is_empty() {
        bail!("{}: expected test texts, found none", a.work.display());
    }
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let name = lm.name.clone();
    let texts_tab = std::sync::Arc::new(canon_agent::react::TokenTexts(Vec::new()));
    let engine = canon_infer::Engine::start(lm, canon_infer::EngineConfig::default())?;
    let mut elm = canon_agent::react::EngineLm {
        engine: engine.clone(),
        texts: texts_tab,
    };
    let tb = Toolbox::new(Default::default());
    let pb = super::agent::progress(ctx, test.len(), "eval");
    let (mut right, mut calls) = (0, 0);
    let mut rows = String::new();
    for t in &test {
        let out = if a.tools {
            toolformer::infer(&mut elm, &t.prefix, &tb, a.max_tokens)?
        } else {
            use canon_agent::react::AgentLm;
            toolformer::Inference {
                text: elm.complete(&t.prefix, &["\n".to_string()], a.max_tokens, None)?,
                call: None,
            }
        };
        // the number the text states: after the call's closing bracket when there is a call
        let after = match out.text.rfind(']') {
            Some(i) if out.call.is_some() => &out.text[i + 1..],
            _ => out.text.as_str(),
        };
        let got = toolformer::first_number(after);
        let ok = got.as_deref() == Some(t.answer.as_str());
        right += usize::from(ok);
        calls += usize::from(out.call.is_some());
        rows.push_str(&serde_json::to_string(
            &json!({"id": t.id, "prefix": t.prefix, "answer": t.answer,
            "output": out.text, "call": out.call, "number": got, "correct": ok}),
        )?);
        rows.push('\n');
        pb.inc(1);
    }
    pb.finish_and_clear();
    engine.shutdown();
    let file = a.work.join(if a.tools {
        "eval-tools.jsonl"
    } else {
        "eval.jsonl"
    });
    write_atomic(&file, &rows)?;
    println!(
        "{}",
        json!({"model": name, "lora": ctx.lora, "tools": a.tools, "texts": test.len(),
            "correct": right, "accuracy": right as f64 / test.len() as f64, "calls": calls})
    );
    Ok(())
}
