//! `canon autoprompt`: AutoPrompt's gradient-guided trigger search (paper 11) for fact retrieval,
//! against a hand-written prompt: the model loads in `canon_runs::autoprompt`, the experiment is
//! `canon_agent::autoprompt_run`.

use std::path::PathBuf;

use anyhow::bail;
use canon_agent::autoprompt::{self, SearchConfig};
use canon_agent::autoprompt_run::{self, Event, Opts};
use clap::Args;
use indicatif::ProgressBar;

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
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
objects, for the hand-written prompt and for the triggers found.")]
pub struct AutopromptArgs {
    /// A causal LM (alias, .gguf, HF folder, run folder) or a BERT run folder with an MLM head.
    #[arg(long)]
    pub model: String,
    /// The facts: stdlib-module or man-section.
    #[arg(long, default_value = "stdlib-module")]
    pub relation: String,
    /// AutoPrompt's template: [X] subject, [T] triggers, [P] slot (default: [X] and N triggers, then [P]).
    #[arg(long)]
    pub template: Option<String>,
    /// Trigger tokens of the default template.
    #[arg(long, default_value_t = 5)]
    pub triggers: usize,
    /// The hand-written prompt it is compared with (default per relation).
    #[arg(long)]
    pub manual: Option<String>,
    /// Trigger updates (each updates one trigger position, in turn).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Facts per step's batch (gradient and candidate scoring).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// HotFlip candidates scored per step.
    #[arg(long, default_value_t = 10)]
    pub candidates: usize,
    /// Initial trigger word (default: [MASK] for a masked LM, "the" for a causal LM).
    #[arg(long)]
    pub init: Option<String>,
    /// At most this many facts of each object.
    #[arg(long, default_value_t = 12)]
    pub per_object: usize,
    /// Share of the facts held out for the test.
    #[arg(long, default_value_t = 0.3)]
    pub test_fraction: f64,
    /// Let triggers be object tokens (excluded by default, so a trigger is not itself an answer).
    #[arg(long)]
    pub allow_label_triggers: bool,
    /// Also exclude candidates that start with a capital letter (the paper's filter against
    /// proper nouns).
    #[arg(long)]
    pub filter_capitalised: bool,
    /// Python standard library folder (stdlib-module; default: python3's).
    #[arg(long)]
    pub stdlib: Option<PathBuf>,
    /// Man page root with man1 … man8 (man-section).
    #[arg(long, default_value = "/usr/share/man")]
    pub man_dir: PathBuf,
    /// Seed of the fact split and of the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object: facts, both prompts' precision, triggers, and the search history.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: AutopromptArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if !(a.test_fraction > 0.0 && a.test_fraction < 1.0) {
        bail!(
            "--test-fraction: expected a share in (0, 1), found {}",
            a.test_fraction
        );
    }
    if a.batch_size == 0 || a.candidates == 0 || a.per_object == 0 {
        bail!("--batch-size, --candidates and --per-object must be positive");
    }
    let (facts, manual_default) = match a.relation.as_str() {
        "stdlib-module" => {
            let dir = match &a.stdlib {
                Some(d) => d.clone(),
                None => super::train::python_stdlib_dir()?,
            };
            (
                autoprompt::stdlib_function_facts(&dir)?,
                "[X] is a function in the Python module [P]",
            )
        }
        "man-section" => (
            autoprompt::man_section_facts(&a.man_dir)?,
            "The manual page of [X] is in section [P]",
        ),
        o => bail!("--relation: expected stdlib-module or man-section, found {o:?}"),
    };
    if a.template.is_none() && a.triggers == 0 {
        bail!("--triggers: expected at least 1, found 0");
    }
    let o = Opts {
        relation: a.relation.clone(),
        manual: a.manual.clone().unwrap_or_else(|| manual_default.into()),
        template: (a.template.clone())
            .unwrap_or_else(|| format!("[X] {}[P]", "[T] ".repeat(a.triggers))),
        search: SearchConfig {
            steps: a.steps,
            batch_size: a.batch_size,
            candidates: a.candidates,
            seed: a.seed,
        },
        init: a.init.clone(),
        per_object: a.per_object,
        test_fraction: a.test_fraction,
        allow_label_triggers: a.allow_label_triggers,
        filter_capitalised: a.filter_capitalised,
    };
    o.check()?;
    let m = canon_runs::autoprompt::slot_model(&ctx.loader(), &a.model)?;
    let mut pb = ProgressBar::hidden();
    let r = autoprompt_run::run(&m, facts, &o, &mut |e| match e {
        Event::Note(s) if !ctx.quiet => eprintln!("canon: {s}"),
        Event::Note(_) => {}
        Event::Phase(what, len) => {
            pb = crate::progress::bar(
                ctx.quiet,
                len as u64,
                &format!("{what} [{{bar:40}}] {{pos}}/{{len}} {{msg}} ({{eta}} left)"),
            )
        }
        Event::Pos(i) => pb.set_position(i as u64),
        Event::Done => pb.finish_and_clear(),
        Event::Step(s) => {
            pb.set_position(s.step as u64 + 1);
            pb.set_message(format!("batch log-lik {:.3}", s.after));
            // Without a terminal (a log file), one line a step.
            if pb.is_hidden() && !ctx.quiet {
                eprintln!(
                    "canon: step {}/{}: trigger {} {:?} -> {:?}, batch log-likelihood {:.3} -> {:.3}",
                    s.step + 1,
                    a.steps,
                    s.position,
                    (m.token)(s.from),
                    (m.token)(s.to),
                    s.before,
                    s.after
                );
            }
        }
    })?;
    if a.json {
        println!("{}", r.to_json());
        return Ok(());
    }
    println!(
        "{} on {} ({} train / {} test facts, seed {}, {:.0} s):",
        r.model, r.relation, r.train, r.test, a.seed, r.seconds
    );
    for (name, prompt, p) in [
        ("manual    ", &r.manual_prompt, &r.manual),
        ("autoprompt", &r.prompt, &r.auto),
    ] {
        println!(
            "  {name} {prompt:<48} P@1 {:>5.1} % (vocabulary) {:>5.1} % (objects)",
            100.0 * p.vocabulary,
            100.0 * p.objects
        );
    }
    Ok(())
}
