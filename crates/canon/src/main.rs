//! `canon`: the command-line program. The command table is `cli`, one module per subcommand in
//! `cmd`; library crates do the work.

mod cli;
mod cmd;
mod model_gen;
mod progress;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// Settings every subcommand sees.
pub struct Ctx {
    pub threads: usize,
    pub quiet: bool,
    /// `--f32`: dequantize GGUF weights at load.
    pub f32_weights: bool,
    /// `--lora DIR`: an adapter to attach to the loaded language model.
    pub lora: Option<std::path::PathBuf>,
    /// `--cache-type`: the language model's KV cache stores f16 (`Some(true)`) or f32
    /// (`Some(false)`); `None` when not given (f32, except `canon serve`: f16 where the model has it).
    pub kv_f16: Option<bool>,
}

impl Ctx {
    /// How models are loaded under the global flags.
    pub fn loader(&self) -> canon_runs::Loader {
        canon_runs::Loader {
            f32_weights: self.f32_weights,
            kv_f16: self.kv_f16 == Some(true),
            lora: self.lora.clone(),
            quiet: self.quiet,
        }
    }

    /// Where asset-fetch progress goes.
    pub fn progress(&self) -> &'static dyn canon_assets::FetchProgress {
        self.loader().progress()
    }
}

/// The command line as `Cli::parse` reads it; also names the subcommand for the progress lines.
fn parse() -> cli::Cli {
    let args = std::env::args_os().collect();
    let args = canon_runs::lora_opts::route_method(args, &cli::GLOBAL_VALUE_FLAGS);
    let mut m = cli::Cli::command().get_matches_from(args);
    let mut words = Vec::new();
    let mut sub = m.subcommand();
    while let Some((name, inner)) = sub {
        words.push(name.to_string());
        sub = inner.subcommand();
    }
    progress::set_command(words.join(" "));
    cli::Cli::from_arg_matches_mut(&mut m)
        .unwrap_or_else(|e| e.format(&mut cli::Cli::command()).exit())
}

fn main() -> ExitCode {
    let cli = parse();
    if let Err(msg) = cli::check_global_flags(&cli) {
        eprintln!("error: {msg}");
        return ExitCode::FAILURE;
    }
    if let cli::Command::Completions { shell } = &cli.command {
        use std::io::Write;
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut cli::Cli::command(), "canon", &mut script);
        // A closed pipe (`| head`) is the reader's choice, not an error.
        return match std::io::stdout().write_all(&script) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("error: cannot write the completion script: {e}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        };
    }
    let threads = cli
        .threads
        .unwrap_or_else(canon_runs::default_threads)
        .max(1);
    canon_fs::lines::set_max_line_bytes(cli.max_line_bytes);
    // candle's CPU kernels and rayon read these once, at first use: set them before any work.
    // SAFETY: no other thread exists yet.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        // candle's pool for element-wise ops spins 25,000 rounds after each op before it parks,
        // on cores the rayon pool needs for the next kernel (see canon_train::alloc's notes).
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
        }
    }
    // Every command frees and allocates the same large buffers again and again (a prompt's
    // activations, each decoded token's logits: 1 MB for a 262k vocabulary); keeping freed blocks
    // for reuse spares the page faults of a fresh mapping each time (see canon_train::alloc).
    canon_train::alloc::keep_freed_memory();
    let ctx = Ctx {
        threads,
        quiet: cli.quiet,
        f32_weights: cli.f32_weights,
        lora: cli.lora,
        kv_f16: cli.cache_type.as_deref().map(|t| t == "f16"),
    };
    let result = cli::dispatch(cli.command, &ctx);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", canon_runs::error_line(&*e));
            ExitCode::FAILURE
        }
    }
}
