//! `canon data`'s settings (with the `cli` feature also its argument structs, the doc comments
//! being the `--help` text): the options of the filter and synthesis runs they give, and the
//! comparison's configuration.

use std::path::PathBuf;

use crate::data::experiment::CompareConfig;
use crate::data::pipeline::FilterOpts;
use crate::data::synth::SynthOpts;
use crate::{Result, ScaleError};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct DataArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub command: DataCommand,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
pub enum DataCommand {
    /// Corpus (stdlib + site-packages, dedup, licence manifest), quality labels, a classifier on
    /// MiniLM embeddings, decontamination against HumanEval, and the filtered set.
    Filter(FilterArgs),
    /// Synthetic textbook passages and exercises from a generating model, decontaminated.
    Synth(SynthArgs),
    /// Train one small model per data set for the same number of tokens; compare held-out loss.
    Compare(CompareArgs),
    /// A held-out exercise set with unit tests for `canon eval humaneval --problems`: functions
    /// of the held-out files whose docstrings carry doctest examples.
    Exercises(ExercisesArgs),
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon data filter --out runs/phi1
  canon data filter --out runs/phi1 --max-snippets 2000 --label-sample 800 --threshold 0.6
  canon data filter --out runs/phi1-judge --label-sample 200 --judge smollm2

Writes manifest.jsonl (one line per kept file: path, origin, distribution, licence, sha256),
snippets.jsonl (id, pool, heuristic label, classifier probability, kept), contaminated.jsonl,
classifier.json, labelled-embeddings.json and filter-report.json into --out.")
)]
pub struct FilterArgs {
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: PathBuf,
    /// Snippets sampled from the corpus (seeded) for labelling, embedding and filtering.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3000))]
    pub max_snippets: usize,
    /// Labelled snippets the classifier learns from (80 % train, 20 % held out).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1200))]
    pub label_sample: usize,
    /// Keep snippets whose probability of being educational is at least this.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.5))]
    pub threshold: f64,
    /// Characters of each snippet the embedding model sees (its head, cut at a character
    /// boundary); MiniLM truncates at 256 tokens anyway, and shorter inputs embed much faster.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 400))]
    pub embed_chars: usize,
    /// Sentence-embedding model.
    #[cfg_attr(feature = "cli", arg(long, default_value = "minilm"))]
    pub embed_model: String,
    /// The classifier that filters: the paper's random forest or logistic regression (both are
    /// fitted on the same embeddings and their held-out accuracies printed). Default logistic:
    /// on the heuristic labels it is more accurate held out (0.650 against the forest's 0.567,
    /// the majority rate; see README).
    #[cfg_attr(feature = "cli", arg(long, default_value = "logistic", value_parser = ["forest", "logistic"]))]
    pub classifier: String,
    /// Label the sample with an LLM judge instead of the heuristics: any generating model
    /// `--model` accepts (smollm2, gemma3, a .gguf). It answers "does this code have educational
    /// value for learning to code?"; the label is P(Yes) against P(No) at the next token.
    #[cfg_attr(feature = "cli", arg(long))]
    pub judge: Option<String>,
    /// Characters of each snippet (its head) the judge sees.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1000))]
    pub judge_chars: usize,
    /// The judge's label is educational when P(Yes) ≥ this.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.5))]
    pub judge_threshold: f64,
    /// Site-packages folder (default: what python3 reports).
    #[cfg_attr(feature = "cli", arg(long))]
    pub site_packages: Option<PathBuf>,
    /// Skip decontamination against HumanEval (when the asset cannot be fetched).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_decontaminate: bool,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 28))]
    pub seed: u64,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon data synth --out runs/phi1 --model smollm2 --n 24 --max-tokens 200
  canon data synth --out runs/phi1 --n 400 --topics my-topics.txt --timeout 5

Items go through the topics (24 basic-coding topics built in, or --topics FILE) once as textbook
passages, then once as exercises (a function with a docstring and asserts), and so on. Each
exercise's code (its fenced blocks, or the whole reply) runs in the sandbox, standard library
only; it is kept when it defines a function, an assert calls it, the asserts pass, and a
function that returns None fails them (--no-verify keeps exercises unrun).
Writes synthetic.jsonl (kept items: index, kind, topic, text), synth-exercises.jsonl (every
exercise's verdict and the exception it raised) and synth-report.json (counts of duplicates,
empty outputs, generations that matched a HumanEval problem, and exercise verdicts) into --out;
`canon data compare` then adds a filtered+synthetic arm.")
)]
pub struct SynthArgs {
    /// The folder of `canon data filter` (the synthetic set is written beside it).
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: PathBuf,
    /// The generating model (a chat model: its template wraps each prompt).
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Items to generate (topics and kinds rotate).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 24))]
    pub n: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub max_tokens: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 28))]
    pub seed: u64,
    /// A file of topics, one a line (`#` comments and blank lines skipped), instead of the 24
    /// built-in basic-coding topics; items go once through the topics as textbook passages, then
    /// once as exercises, and so on.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub topics: Option<PathBuf>,
    /// Keep exercises without running their tests (by default each exercise's asserts run in
    /// the sandbox, and only exercises whose tests pass and fail a do-nothing body are kept).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_verify: bool,
    /// Python interpreter the sandbox runs the exercises with.
    #[cfg_attr(feature = "cli", arg(long, default_value = "python3"))]
    pub python: PathBuf,
    /// Seconds each exercise's program may run.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3.0))]
    pub timeout: f64,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon data compare --data runs/phi1 --config configs/phi1.toml --out runs/phi1/compare
  canon data compare --data runs/phi1 --config configs/phi1.toml --out runs/phi1/compare --seeds 3

Arms: unfiltered (every training-pool snippet) and filtered (the classifier's kept snippets),
each trained for train.max_steps steps of the same batch; evaluation sets: held-out files'
snippets labelled educational (eval-textbook) and all held-out snippets (eval-all).")
)]
pub struct CompareArgs {
    /// The folder `canon data filter` wrote.
    #[cfg_attr(feature = "cli", arg(long))]
    pub data: PathBuf,
    /// [model] and [train] of the small model.
    #[cfg_attr(feature = "cli", arg(long))]
    pub config: PathBuf,
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: PathBuf,
    /// Train every arm with this many seeds (train.seed, train.seed + 1, ...): the table then
    /// gives each loss as mean ± standard deviation and each arm's difference from the
    /// unfiltered arm of the same seed. Finished runs are reused, so a one-seed comparison
    /// extends to more.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub seeds: usize,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon data exercises --data runs/phi1
  canon data exercises --data runs/phi1 --max 100
  canon eval humaneval --problems runs/phi1/exercises.jsonl --model runs/phi1/code/filtered

Every top-level function of the corpus files (manifest.jsonl; --held-out-only: only the
held-out tenth) whose docstring has doctest examples becomes a candidate: prompt = its imports,
signature and docstring; canonical solution = its body; test = the docstring's examples run by
Python's doctest against the completion. A candidate is kept when the function is not in any
arm's training text (exact, shared 13-gram or near duplicate), its body passes its test twice in
the sandbox (standard library only, as `canon eval humaneval` runs it), and a body that returns
None fails it. Writes exercises.jsonl (HumanEval's format), exercises-candidates.jsonl (every candidate's
verdict) and exercises-report.json into --data.")
)]
pub struct ExercisesArgs {
    /// The folder `canon data filter` wrote (manifest.jsonl, snippets.jsonl).
    #[cfg_attr(feature = "cli", arg(long))]
    pub data: PathBuf,
    /// Only the held-out files (every tenth file of the manifest, whose snippets no arm samples);
    /// by default every file, each exercise checked against the arms' training text instead.
    #[cfg_attr(feature = "cli", arg(long))]
    pub held_out_only: bool,
    /// Longest prompt kept, in characters: 1,360 is HumanEval's longest, so a model whose context
    /// holds HumanEval's prompts holds these.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1360))]
    pub max_prompt_chars: usize,
    /// Keep at most this many exercises, a seeded sample (0: every one that qualifies).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub max: usize,
    /// Site-packages folder the filter read (default: what python3 reports).
    #[cfg_attr(feature = "cli", arg(long))]
    pub site_packages: Option<PathBuf>,
    /// Python interpreter the sandbox runs the programs with.
    #[cfg_attr(feature = "cli", arg(long, default_value = "python3"))]
    pub python: PathBuf,
    /// Seconds each program may run.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3.0))]
    pub timeout: f64,
    /// Programs run at once (default: the CPU count).
    #[cfg_attr(feature = "cli", arg(long))]
    pub jobs: Option<usize>,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 28))]
    pub seed: u64,
}

impl ExercisesArgs {
    /// The settings are in range.
    pub fn check(&self) -> Result<()> {
        check_timeout(self.timeout)?;
        if self.max_prompt_chars == 0 {
            return Err(ScaleError::Msg(
                "--max-prompt-chars must be at least 1, found 0".into(),
            ));
        }
        if self.jobs == Some(0) {
            return Err(ScaleError::Msg("--jobs must be at least 1, found 0".into()));
        }
        Ok(())
    }
}

/// A sandbox time limit is in (0, 600] seconds.
fn check_timeout(t: f64) -> Result<()> {
    if !(t > 0.0 && t <= 600.0) {
        return Err(ScaleError::Msg(format!(
            "--timeout must be in (0, 600] seconds, found {t}"
        )));
    }
    Ok(())
}

impl FilterArgs {
    /// The filter run's checked options.
    pub fn opts(&self) -> Result<FilterOpts> {
        let o = FilterOpts {
            out: self.out.clone(),
            max_snippets: self.max_snippets,
            label_sample: self.label_sample,
            threshold: self.threshold,
            embed_chars: self.embed_chars,
            embed_model: self.embed_model.clone(),
            classifier: self.classifier.parse()?,
            judge_threshold: self.judge_threshold,
            seed: self.seed,
        };
        o.check()?;
        Ok(o)
    }
}

impl SynthArgs {
    /// The synthesis run's checked options; creates --out.
    pub fn opts(&self) -> Result<SynthOpts> {
        let o = SynthOpts {
            out: self.out.clone(),
            model: self.model.clone(),
            n: self.n,
            max_tokens: self.max_tokens,
            seed: self.seed,
            verify: !self.no_verify,
            topics: match &self.topics {
                Some(p) => crate::data::synth::read_topics(p)?,
                None => crate::data::synth::TOPICS
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
            },
        };
        o.check()?;
        check_timeout(self.timeout)?;
        std::fs::create_dir_all(&self.out)
            .map_err(|e| ScaleError::Msg(format!("cannot create {}: {e}", self.out.display())))?;
        Ok(o)
    }
}

impl CompareArgs {
    /// The comparison's configuration read from --config.
    pub fn config(&self) -> Result<CompareConfig> {
        if !(1..=100).contains(&self.seeds) {
            return Err(ScaleError::Msg(format!(
                "--seeds must be between 1 and 100, found {}",
                self.seeds
            )));
        }
        let text = std::fs::read_to_string(&self.config).map_err(|e| {
            ScaleError::Msg(format!("cannot read config {}: {e}", self.config.display()))
        })?;
        CompareConfig::parse(&text, &self.config.display().to_string())
    }
}
