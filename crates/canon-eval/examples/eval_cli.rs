//! A stand-alone build of `canon eval` (crates/canon/src/cmd/eval.rs) without models: scoring
//! completions files works, `--model` reports that this binary has no model loader. It compiles the
//! CLI module in isolation and serves the throughput comparison script.
//!
//! `cargo run --release -p canon-eval --example eval_cli -- eval humaneval --completions FILE.jsonl`

#[path = "../../canon/src/cmd/eval.rs"]
mod eval;

use clap::{Parser, Subcommand};

/// What `canon`'s main.rs provides to subcommands.
pub struct Ctx {
    pub threads: usize,
    pub quiet: bool,
}

impl Ctx {
    pub fn progress(&self) -> &'static dyn canon_assets::FetchProgress {
        if self.quiet {
            &canon_assets::Quiet
        } else {
            &canon_assets::Stderr
        }
    }
}

mod model_gen {
    pub fn load_generator(
        model: &str,
        _ctx: &crate::Ctx,
    ) -> anyhow::Result<Box<dyn canon_infer::TextGenerator>> {
        anyhow::bail!("this example binary loads no models (asked for '{model}'); use `canon eval`")
    }
}

#[derive(Parser)]
struct Cli {
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    Eval(eval::EvalArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let ctx = Ctx {
        threads,
        quiet: cli.quiet,
    };
    let Top::Eval(a) = cli.command;
    match eval::run(a, &ctx) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
