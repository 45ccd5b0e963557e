//! `canon agent`: tools, ReAct (paper 23) and WebGPT's text browser (paper 17).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use canon_agent::react_data::{self, Question};
use canon_agent::react_run::{self, ModeRun, RunEvent, RunOpts};
use canon_agent::tools::{self, Limits, Toolbox};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde_json::json;

use super::write_atomic;
use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon agent tools --call calculator --args '{\"expression\": \"1/3 + 1/6\"}'
  canon agent questions --out data/react
  canon agent react --data data/react --mode all --shots 3 --limit 12
  canon agent browse --site data/browse-site --question 'What is 2024-02-28 plus two days?' --commands cmds.txt
  canon agent webgpt --model smollm2 --split test --limit 30 --out runs/webgpt")]
pub struct AgentArgs {
    #[command(subcommand)]
    pub cmd: AgentCmd,
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// List the built-in tools (OpenAI `tools` JSON) or call one.
    Tools(ToolsArgs),
    /// Build the multi-hop question set (pages + questions) from the package database.
    Questions(QuestionsArgs),
    /// ReAct, Act-only and CoT-only on the question set, by exact match.
    React(ReactArgs),
    /// WebGPT's text browser over a folder of HTML or text pages, driven by commands.
    Browse(super::browse::BrowseArgs),
    /// WebGPT's task on the encyclopedia: oracle demonstrations, or a model that browses and
    /// answers with citations (accuracy and support at best-of-n).
    Webgpt(super::webgpt::WebgptArgs),
}

pub fn run(a: AgentArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.cmd {
        AgentCmd::Tools(t) => run_tools(t),
        AgentCmd::Questions(q) => run_questions(q, ctx),
        AgentCmd::React(r) => run_react(r, ctx),
        AgentCmd::Browse(b) => super::browse::run(b, ctx),
        AgentCmd::Webgpt(w) => super::webgpt::run(w, ctx),
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon agent tools                                   # the tools as OpenAI `tools` JSON
  canon agent tools --call calculator --args '{\"expression\": \"(400 / 1400) * 3\"}'
  canon agent tools --call calendar --args '{\"op\": \"add_days\", \"date\": \"2024-02-28\", \"days\": 2}'
  canon agent tools --call python --args '{\"code\": \"print(sum(range(10)))\"}'
  canon agent tools --index runs/man-index --call search --args '{\"query\": \"list directory\"}'

A failing, slow or unknown tool prints an error observation (ok: false), never a crash.")]
pub struct ToolsArgs {
    /// Call this tool instead of listing.
    #[arg(long, value_name = "NAME")]
    pub call: Option<String>,
    /// The call's arguments as a JSON object.
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub args: String,
    /// A `canon index build` folder for the `search` tool.
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Per-call time limit in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Longest observation in characters.
    #[arg(long, default_value_t = 2000)]
    pub max_output: usize,
}

/// The built-in tools (`canon_agent::tools::builtin_toolbox`); what could not be set up is said
/// on stderr.
pub fn builtin_tools(index: Option<&Path>, limits: Limits, quiet: bool) -> anyhow::Result<Toolbox> {
    let (tb, notes) = tools::builtin_toolbox(index, limits, !quiet)
        .map_err(|e| anyhow::anyhow!("--index: {e}"))?;
    if !quiet {
        for n in notes {
            eprintln!("canon: {n}");
        }
    }
    Ok(tb)
}

fn limits(timeout: f64, max_output: usize) -> anyhow::Result<Limits> {
    if !(timeout > 0.0 && timeout <= 600.0) {
        bail!("--timeout: expected seconds in (0, 600], found {timeout}");
    }
    Ok(Limits {
        timeout: Duration::from_secs_f64(timeout),
        max_output_chars: max_output.max(1),
    })
}

fn run_tools(a: ToolsArgs) -> anyhow::Result<()> {
    let tb = builtin_tools(a.index.as_deref(), limits(a.timeout, a.max_output)?, false)?;
    match a.call {
        None => {
            let specs: Vec<_> = tb.specs().iter().map(|s| s.openai()).collect();
            println!("{}", serde_json::to_string_pretty(&specs)?);
        }
        Some(name) => {
            let o = tb.call_json(&name, &a.args);
            println!("{}", serde_json::to_string(&o)?);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon agent questions --out data/react
  canon agent questions --out /tmp/qs --test-every 3

Writes pages.jsonl ({title, text}: one page per installed package and per command with a man
page) and questions.jsonl ({id, split, kind, entity, question, answer, path, facts}). Kinds:
cmd_version and cmd_maintainer (command -> package -> field), dep_version (package -> lookup of
its dependencies -> first dependency's version). The split is by entity.")]
pub struct QuestionsArgs {
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")]
    pub status: PathBuf,
    #[arg(long, default_value = "/var/lib/dpkg/info", value_name = "DIR")]
    pub info_dir: PathBuf,
    #[arg(long, default_value = "/usr/share/man/man1", value_name = "DIR")]
    pub man_dir: PathBuf,
    /// One entity in N goes to the test split.
    #[arg(long, default_value_t = 4)]
    pub test_every: u64,
}

fn run_questions(a: QuestionsArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (pages, qs) = react_data::build(
        &react_data::Sources {
            status: &a.status,
            info_dir: &a.info_dir,
            man_dir: &a.man_dir,
        },
        a.test_every,
    )?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    write_atomic(&a.out.join("pages.jsonl"), &react_data::to_jsonl(&pages))?;
    write_atomic(&a.out.join("questions.jsonl"), &react_data::to_jsonl(&qs))?;
    let test = qs.iter().filter(|q| q.split == "test").count();
    if !ctx.quiet {
        eprintln!(
            "canon: {} pages, {} questions ({} train, {test} test) in {}",
            pages.len(),
            qs.len(),
            qs.len() - test,
            a.out.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon agent react --data data/react --mode react --limit 20 --out runs/react.jsonl
  canon agent react --data data/react --mode all --limit 30 --parallel 4 --json
  canon agent react --data data/react --mode act --no-constrain --shots 3
  canon agent react --data data/react --oracle --mode react --split train --out react-train.jsonl

Prompts: an instruction, --shots demonstrations (oracle trajectories of train questions, one kind
after another) and `Question: ...`. ReAct generates `Thought i:` and `Action i:`, stops at
`Observation i:`, runs the action (Search[entity], Lookup[keyword], Finish[answer]) and appends the
observation, for at most --max-steps steps. Act-only omits thoughts; CoT-only reasons without
actions and answers after `Answer:`. Actions are constrained to `Name[argument]` unless
--no-constrain. Greedy decoding. Score: exact match after SQuAD normalisation.
--oracle writes the oracle's trajectories (prompt/completion records for `canon finetune`).")]
pub struct ReactArgs {
    /// Folder with pages.jsonl and questions.jsonl (`canon agent questions`).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// react, act, cot or all.
    #[arg(long, default_value = "react")]
    pub mode: String,
    /// Demonstrations in the prompt (the paper: 6).
    #[arg(long, default_value_t = 6)]
    pub shots: usize,
    /// Steps before the episode ends without an answer (the paper: 7).
    #[arg(long, default_value_t = 7)]
    pub max_steps: usize,
    /// Tokens per generation call (the paper: 100).
    #[arg(long, default_value_t = 100)]
    pub max_tokens: usize,
    /// Generate actions freely (the paper's loop) instead of constraining their syntax.
    #[arg(long)]
    pub no_constrain: bool,
    /// Questions of the split to run (in the file's order).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Episodes run at once (sequences batched in the engine).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Transcripts, one JSON line per episode.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object with the scores.
    #[arg(long)]
    pub json: bool,
    /// Write the oracle's prompt/completion records to --out instead of running a model.
    #[arg(long)]
    pub oracle: bool,
}

fn run_react(a: ReactArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let modes = react_run::parse_modes(&a.mode)?;
    let o = RunOpts {
        shots: a.shots,
        max_steps: a.max_steps,
        max_tokens: a.max_tokens,
        constrained: !a.no_constrain,
        parallel: a.parallel,
    };
    o.check()?;
    let (wiki, qs, idx) = react_run::load_split(&a.data, &a.split, a.limit)?;
    let run: Vec<&Question> = idx.iter().map(|&i| &qs[i]).collect();
    if a.oracle {
        let out = a.out.as_ref().context("--oracle needs --out FILE")?;
        let text = react_run::oracle_records(&qs, &run, &wiki, &modes, a.shots);
        write_atomic(out, &text)?;
        eprintln!(
            "canon: {} oracle records in {}",
            run.len() * modes.len(),
            out.display()
        );
        return Ok(());
    }
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let name = lm.name.clone();
    let pb = std::sync::Mutex::new(ProgressBar::hidden());
    let on = |e: RunEvent<'_>| {
        let Ok(mut pb) = pb.lock() else { return };
        match e {
            RunEvent::Start(m, n) => *pb = crate::progress::items(ctx.quiet, n, &format!("{m:?}")),
            RunEvent::Episode => pb.inc(1),
            RunEvent::Done(r) => {
                pb.finish_and_clear();
                let (sc, m, secs) = (&r.score, r.mode, r.seconds);
                let (n, em) = (sc.questions, sc.correct);
                if !a.json {
                    println!(
                        "{name} {m:?} ({} shots, {n} {} questions): exact match {:.1} % ({em}/{n}), finished {}, {} steps, {} invalid actions, {secs:.0} s",
                        a.shots,
                        a.split,
                        100.0 * em as f64 / n as f64,
                        sc.finished,
                        sc.steps,
                        sc.invalid_actions
                    );
                }
            }
        }
    };
    let (all, runs) = react_run::run_modes(lm, &qs, &run, &wiki, &modes, &o, &on)?;
    if let Some(out) = &a.out {
        write_atomic(out, &react_data::to_jsonl(&all))?;
    }
    if a.json {
        let scores: Vec<serde_json::Value> = runs.iter().map(ModeRun::to_json).collect();
        println!(
            "{}",
            json!({"model": name, "shots": a.shots, "constrained": !a.no_constrain, "scores": scores})
        );
    }
    Ok(())
}
