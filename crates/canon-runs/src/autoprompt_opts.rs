//! `canon autoprompt`'s settings (with the `cli` feature also its argument struct, the doc
//! comments being the `--help` text): the relation's facts and the experiment's
//! [`Opts`](canon_agent::autoprompt_run::Opts), and the text report.

use std::path::PathBuf;

use canon_agent::autoprompt::{self, Fact, SearchConfig};
use canon_agent::autoprompt_run::{Opts, Report};

use crate::{Result, bail, python_stdlib_dir};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon autoprompt --model smollm2 --relation stdlib-module --steps 30 --seed 0
  canon autoprompt --model runs/minilm-mlm --relation stdlib-module --triggers 5 --json
  canon autoprompt --model runs/minilm-mlm --relation man-section --manual \"[X] is documented in section [P] .\"

Facts: stdlib-module (which top-level module of the Python standard library on this machine
defines a public function: dumps -> json) or man-section (which section of the manual a page is
in: mount -> 8). Only facts whose object is one token of the model are kept (as LAMA does), at most
--per-object of each object, split by fact into train and test (--test-fraction, seeded).
A causal LM (an alias, .gguf or HF folder; weights dequantized to f32 for the gradient) predicts
[P] as the next token, so [P] ends its templates; a BERT run folder with an MLM head (e.g.
canon train --config configs/minilm-mlm.toml --out runs/minilm-mlm) fills a [MASK] at [P].
Reported: precision@1 on the held-out facts over the whole vocabulary and among the relation's
objects, for the hand-written prompt and for the triggers found.
The search follows the paper's reference protocol: each step averages the gradient over
--accumulation batches of --batch-size training facts, draws one trigger position, scores its
--candidates best HotFlip replacements on as many other facts, keeps the best if it beats the
current trigger, and after each change scores the triggers on the dev facts; the best there win.")
)]
pub struct AutopromptArgs {
    /// A causal LM (alias, .gguf, HF folder, run folder) or a BERT run folder with an MLM head.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: String,
    /// The facts: stdlib-module or man-section.
    #[cfg_attr(feature = "cli", arg(long, default_value = "stdlib-module"))]
    pub relation: String,
    /// AutoPrompt's template: [X] subject, [T] triggers, [P] slot (default: [X] and N triggers, then [P]).
    #[cfg_attr(feature = "cli", arg(long))]
    pub template: Option<String>,
    /// Trigger tokens of the default template.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub triggers: usize,
    /// The hand-written prompt it is compared with (default per relation).
    #[cfg_attr(feature = "cli", arg(long))]
    pub manual: Option<String>,
    /// Search iterations (each may change the trigger at one position drawn at random).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 100))]
    pub steps: usize,
    /// Facts per batch.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub batch_size: usize,
    /// Batches per step: the gradient averages over this many batches and the candidates are
    /// scored on as many others (at most one pass over the training facts each).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub accumulation: usize,
    /// HotFlip candidates scored per step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub candidates: usize,
    /// Initial trigger word (default: [MASK] for a masked LM, "the" for a causal LM).
    #[cfg_attr(feature = "cli", arg(long))]
    pub init: Option<String>,
    /// Start from these trigger token ids, one per [T], comma-separated (e.g. the trigger_ids of
    /// an earlier --json report); with --steps 0 this evaluates them on the test facts.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', value_name = "ID,ID,...")
    )]
    pub init_ids: Option<Vec<u32>>,
    /// At most this many facts of each object.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 12))]
    pub per_object: usize,
    /// Share of the facts held out for the test.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.3))]
    pub test_fraction: f64,
    /// Share of the remaining facts held out as the dev set: the search keeps the triggers with
    /// the best mean label log-likelihood there.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.2))]
    pub dev_fraction: f64,
    /// Let triggers be object tokens (excluded by default, so a trigger is not itself an answer).
    #[cfg_attr(feature = "cli", arg(long))]
    pub allow_label_triggers: bool,
    /// Also exclude candidates that start with a capital letter (the paper's filter against
    /// proper nouns).
    #[cfg_attr(feature = "cli", arg(long))]
    pub filter_capitalised: bool,
    /// Python standard library folder (stdlib-module; default: python3's).
    #[cfg_attr(feature = "cli", arg(long))]
    pub stdlib: Option<PathBuf>,
    /// Man page root with man1 … man8 (man-section).
    #[cfg_attr(feature = "cli", arg(long, default_value = "/usr/share/man"))]
    pub man_dir: PathBuf,
    /// Seed of the fact split and of the batch order.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// One JSON object: facts, both prompts' precision, triggers, and the search history.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

impl AutopromptArgs {
    /// The relation's facts (read from this machine) and the experiment's settings, checked.
    pub fn facts_and_opts(&self) -> Result<(Vec<Fact>, Opts)> {
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            bail!(
                "--test-fraction: expected a share in (0, 1), found {}",
                self.test_fraction
            );
        }
        if !(self.dev_fraction > 0.0 && self.dev_fraction < 1.0) {
            bail!(
                "--dev-fraction: expected a share in (0, 1), found {}",
                self.dev_fraction
            );
        }
        if self.batch_size == 0
            || self.accumulation == 0
            || self.candidates == 0
            || self.per_object == 0
        {
            bail!("--batch-size, --accumulation, --candidates and --per-object must be positive");
        }
        let (facts, manual_default) = match self.relation.as_str() {
            "stdlib-module" => {
                let dir = match &self.stdlib {
                    Some(d) => d.clone(),
                    None => python_stdlib_dir()?,
                };
                (
                    autoprompt::stdlib_function_facts(&dir)?,
                    "[X] is a function in the Python module [P]",
                )
            }
            "man-section" => (
                autoprompt::man_section_facts(&self.man_dir)?,
                "The manual page of [X] is in section [P]",
            ),
            o => bail!("--relation: expected stdlib-module or man-section, found {o:?}"),
        };
        if self.template.is_none() && self.triggers == 0 {
            bail!("--triggers: expected at least 1, found 0");
        }
        let o = Opts {
            relation: self.relation.clone(),
            manual: self.manual.clone().unwrap_or_else(|| manual_default.into()),
            template: (self.template.clone())
                .unwrap_or_else(|| format!("[X] {}[P]", "[T] ".repeat(self.triggers))),
            search: SearchConfig {
                steps: self.steps,
                batch_size: self.batch_size,
                accumulation: self.accumulation,
                candidates: self.candidates,
                seed: self.seed,
            },
            init: self.init.clone(),
            init_ids: self.init_ids.clone(),
            per_object: self.per_object,
            test_fraction: self.test_fraction,
            dev_fraction: self.dev_fraction,
            allow_label_triggers: self.allow_label_triggers,
            filter_capitalised: self.filter_capitalised,
        };
        o.check()?;
        Ok((facts, o))
    }
}

/// The text report: the run's line, then both prompts' precision@1 over the vocabulary and
/// among the relation's objects.
pub fn report_text(r: &Report, seed: u64) -> String {
    let mut s = format!(
        "{} on {} ({} train / {} dev / {} test facts, seed {}, {:.0} s):\n",
        r.model, r.relation, r.train, r.dev, r.test, seed, r.seconds
    );
    for (name, prompt, p) in [
        ("manual    ", &r.manual_prompt, &r.manual),
        ("autoprompt", &r.prompt, &r.auto),
    ] {
        s.push_str(&format!(
            "  {name} {prompt:<48} P@1 {:>5.1} % (vocabulary) {:>5.1} % (objects), log-lik {:.3}\n",
            100.0 * p.vocabulary,
            100.0 * p.objects,
            p.log_likelihood
        ));
    }
    s
}
