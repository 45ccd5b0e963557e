//! `canon agent`'s settings (with the `cli` feature also its argument structs, the doc comments
//! being the `--help` text): the tools' limits and output, the question set it writes, and
//! ReAct's run options, oracle records and printed scores.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::{create_dir, write};
use crate::react::{Mode, Wiki};
use crate::react_data::{self, Page, Question};
use crate::react_run::{self, ModeRun, RunOpts};
use crate::tools::{Limits, Toolbox};
use crate::{AgentError, Result};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon agent tools --call calculator --args '{\"expression\": \"1/3 + 1/6\"}'
  canon agent questions --out data/react
  canon agent react --data data/react --mode all --shots 3 --limit 12
  canon agent browse --site data/browse-site --question 'What is 2024-02-28 plus two days?' --commands cmds.txt
  canon agent webgpt --model smollm2 --split test --limit 30 --out runs/webgpt")
)]
pub struct AgentArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub cmd: AgentCmd,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
pub enum AgentCmd {
    /// List the built-in tools (OpenAI `tools` JSON) or call one.
    Tools(ToolsArgs),
    /// Build the multi-hop question set (pages + questions) from the package database.
    Questions(QuestionsArgs),
    /// ReAct, Act-only and CoT-only on the question set, by exact match.
    React(ReactArgs),
    /// WebGPT's text browser over a folder of HTML or text pages, driven by commands.
    Browse(crate::browse_opts::BrowseArgs),
    /// WebGPT's task on the encyclopedia: oracle demonstrations, or a model that browses and
    /// answers with citations (accuracy and support at best-of-n).
    Webgpt(super::webgpt::WebgptArgs),
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon agent tools                                   # the tools as OpenAI `tools` JSON
  canon agent tools --call calculator --args '{\"expression\": \"(400 / 1400) * 3\"}'
  canon agent tools --call calendar --args '{\"op\": \"add_days\", \"date\": \"2024-02-28\", \"days\": 2}'
  canon agent tools --call python --args '{\"code\": \"print(sum(range(10)))\"}'
  canon agent tools --index runs/man-index --call search --args '{\"query\": \"list directory\"}'

A failing, slow or unknown tool prints an error observation (ok: false), never a crash.")
)]
pub struct ToolsArgs {
    /// Call this tool instead of listing.
    #[cfg_attr(feature = "cli", arg(long, value_name = "NAME"))]
    pub call: Option<String>,
    /// The call's arguments as a JSON object.
    #[cfg_attr(feature = "cli", arg(long, default_value = "{}", value_name = "JSON"))]
    pub args: String,
    /// A `canon index build` folder for the `search` tool.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub index: Option<PathBuf>,
    /// Per-call time limit in seconds.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5.0))]
    pub timeout: f64,
    /// Longest observation in characters.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2000))]
    pub max_output: usize,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon agent questions --out data/react
  canon agent questions --out /tmp/qs --test-every 3

Writes pages.jsonl ({title, text}: one page per installed package and per command with a man
page) and questions.jsonl ({id, split, kind, entity, question, answer, path, facts}). Kinds:
cmd_version and cmd_maintainer (command -> package -> field), dep_version (package -> lookup of
its dependencies -> first dependency's version). The split is by entity.")
)]
pub struct QuestionsArgs {
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub out: PathBuf,
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "/var/lib/dpkg/status", value_name = "FILE")
    )]
    pub status: PathBuf,
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "/var/lib/dpkg/info", value_name = "DIR")
    )]
    pub info_dir: PathBuf,
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "/usr/share/man/man1", value_name = "DIR")
    )]
    pub man_dir: PathBuf,
    /// One entity in N goes to the test split.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub test_every: u64,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
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
--oracle writes the oracle's trajectories (prompt/completion records for `canon finetune`).")
)]
pub struct ReactArgs {
    /// Folder with pages.jsonl and questions.jsonl (`canon agent questions`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub data: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// react, act, cot or all.
    #[cfg_attr(feature = "cli", arg(long, default_value = "react"))]
    pub mode: String,
    /// Demonstrations in the prompt (the paper: 6).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 6))]
    pub shots: usize,
    /// Steps before the episode ends without an answer (the paper: 7).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 7))]
    pub max_steps: usize,
    /// Tokens per generation call (the paper: 100).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 100))]
    pub max_tokens: usize,
    /// Generate actions freely (the paper's loop) instead of constraining their syntax.
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_constrain: bool,
    /// Questions of the split to run (in the file's order).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub limit: Option<usize>,
    #[cfg_attr(feature = "cli", arg(long, default_value = "test"))]
    pub split: String,
    /// Episodes run at once (sequences batched in the engine).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub parallel: usize,
    /// Transcripts, one JSON line per episode.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub out: Option<PathBuf>,
    /// Print one JSON object with the scores.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
    /// Write the oracle's prompt/completion records to --out instead of running a model.
    #[cfg_attr(feature = "cli", arg(long))]
    pub oracle: bool,
}

impl ToolsArgs {
    /// The per-call limits (`--timeout` in (0, 600] seconds, `--max-output` at least 1).
    pub fn limits(&self) -> Result<Limits> {
        if !(self.timeout > 0.0 && self.timeout <= 600.0) {
            return Err(AgentError::Task(format!(
                "--timeout: expected seconds in (0, 600], found {}",
                self.timeout
            )));
        }
        Ok(Limits {
            timeout: Duration::from_secs_f64(self.timeout),
            max_output_chars: self.max_output.max(1),
        })
    }

    /// What the command prints: the tools as OpenAI `tools` JSON, or the observation of `--call`.
    pub fn output(&self, tb: &Toolbox) -> String {
        match &self.call {
            None => {
                let specs: Vec<_> = tb.specs().iter().map(|s| s.openai()).collect();
                serde_json::to_string_pretty(&specs).unwrap_or_default()
            }
            Some(name) => {
                let o = tb.call_json(name, &self.args);
                serde_json::to_string(&o).unwrap_or_default()
            }
        }
    }
}

impl QuestionsArgs {
    /// Builds the question set and writes OUT/pages.jsonl and OUT/questions.jsonl; gives the line
    /// that says what was written.
    pub fn write(&self) -> Result<String> {
        let a = self;
        let (pages, qs): (Vec<Page>, Vec<Question>) = react_data::build(
            &react_data::Sources {
                status: &a.status,
                info_dir: &a.info_dir,
                man_dir: &a.man_dir,
            },
            a.test_every,
        )?;
        create_dir(&a.out)?;
        write(&a.out.join("pages.jsonl"), &react_data::to_jsonl(&pages))?;
        write(&a.out.join("questions.jsonl"), &react_data::to_jsonl(&qs))?;
        let test = qs.iter().filter(|q| q.split == "test").count();
        Ok(format!(
            "canon: {} pages, {} questions ({} train, {test} test) in {}",
            pages.len(),
            qs.len(),
            qs.len() - test,
            a.out.display()
        ))
    }
}

impl ReactArgs {
    /// The modes of `--mode` and the checked run options.
    pub fn opts(&self) -> Result<(Vec<Mode>, RunOpts)> {
        let modes = react_run::parse_modes(&self.mode)?;
        let o = RunOpts {
            shots: self.shots,
            max_steps: self.max_steps,
            max_tokens: self.max_tokens,
            constrained: !self.no_constrain,
            parallel: self.parallel,
        };
        o.check()?;
        Ok((modes, o))
    }

    /// `--oracle`: writes the oracle's prompt/completion records of `run` to --out; gives the
    /// line that says what was written.
    pub fn write_oracle(
        &self,
        qs: &[Question],
        run: &[&Question],
        wiki: &std::sync::Arc<Wiki>,
        modes: &[Mode],
    ) -> Result<String> {
        let out = self
            .out
            .as_ref()
            .ok_or_else(|| AgentError::Task("--oracle needs --out FILE".into()))?;
        let text = react_run::oracle_records(qs, run, wiki, modes, self.shots);
        write(out, &text)?;
        Ok(format!(
            "canon: {} oracle records in {}",
            run.len() * modes.len(),
            out.display()
        ))
    }

    /// The line printed when one mode's run ends.
    pub fn mode_line(&self, model: &str, r: &ModeRun) -> String {
        let (sc, m, secs) = (&r.score, r.mode, r.seconds);
        let (n, em) = (sc.questions, sc.correct);
        format!(
            "{model} {m:?} ({} shots, {n} {} questions): exact match {:.1} % ({em}/{n}), finished {}, {} steps, {} invalid actions, {secs:.0} s",
            self.shots,
            self.split,
            100.0 * em as f64 / n as f64,
            sc.finished,
            sc.steps,
            sc.invalid_actions
        )
    }

    /// The `--json` object: the model, settings and each mode's scores.
    pub fn scores_json(&self, model: &str, runs: &[ModeRun]) -> serde_json::Value {
        let scores: Vec<serde_json::Value> = runs.iter().map(ModeRun::to_json).collect();
        json!({"model": model, "shots": self.shots, "constrained": !self.no_constrain, "scores": scores})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_limits_are_checked() {
        let a = ToolsArgs {
            call: None,
            args: "{}".into(),
            index: None,
            timeout: 0.0,
            max_output: 0,
        };
        let e = a.limits().unwrap_err().to_string();
        assert_eq!(e, "--timeout: expected seconds in (0, 600], found 0");
        let a = ToolsArgs { timeout: 2.5, ..a };
        let l = a.limits().unwrap();
        assert_eq!(
            (l.timeout, l.max_output_chars),
            (Duration::from_millis(2500), 1)
        );
    }
}
