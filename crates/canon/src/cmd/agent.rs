//! `canon agent`: tools, ReAct (paper 23) and WebGPT's text browser (paper 17). The settings,
//! checks and printed text are `canon_agent::opts::agent`.

use std::path::Path;

pub use canon_agent::opts::agent::{AgentArgs, AgentCmd};
use canon_agent::opts::agent::{QuestionsArgs, ReactArgs, ToolsArgs};
use canon_agent::react_data::{self, Question};
use canon_agent::react_run::{self, RunEvent};
use canon_agent::tools::{self, Limits, Toolbox};
use indicatif::ProgressBar;

use super::write_atomic;
use crate::{Ctx, model_gen};

pub fn run(a: AgentArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.cmd {
        AgentCmd::Tools(t) => run_tools(t),
        AgentCmd::Questions(q) => run_questions(q, ctx),
        AgentCmd::React(r) => run_react(r, ctx),
        AgentCmd::Browse(b) => super::browse::run(b, ctx),
        AgentCmd::Webgpt(w) => super::webgpt::run(w, ctx),
    }
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

fn run_tools(a: ToolsArgs) -> anyhow::Result<()> {
    let tb = builtin_tools(a.index.as_deref(), a.limits()?, false)?;
    println!("{}", a.output(&tb));
    Ok(())
}

fn run_questions(a: QuestionsArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let line = a.write()?;
    if !ctx.quiet {
        eprintln!("{line}");
    }
    Ok(())
}

fn run_react(a: ReactArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (modes, o) = a.opts()?;
    let (wiki, qs, idx) = react_run::load_split(&a.data, &a.split, a.limit)?;
    let run: Vec<&Question> = idx.iter().map(|&i| &qs[i]).collect();
    if a.oracle {
        eprintln!("{}", a.write_oracle(&qs, &run, &wiki, &modes)?);
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
                if !a.json {
                    println!("{}", a.mode_line(&name, r));
                }
            }
        }
    };
    let (all, runs) = react_run::run_modes(lm, &qs, &run, &wiki, &modes, &o, &on)?;
    if let Some(out) = &a.out {
        write_atomic(out, &react_data::to_jsonl(&all))?;
    }
    if a.json {
        println!("{}", a.scores_json(&name, &runs));
    }
    Ok(())
}
