//! The AutoPrompt experiment of `canon autoprompt` (paper 11): a relation's facts labelled by the
//! model's tokenizer, balanced and split, the hand-written prompt's precision@1 on the held-out
//! facts, the trigger search on the training facts, and the triggers' precision@1.

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::{Value, json};

use crate::autoprompt::{
    self, EncodedFact, Fact, Precision, SearchConfig, SearchResult, SlotLm, StepLog, Template,
};
use crate::{AgentError, Result};

/// Text to token ids (no special tokens added).
pub type Encode = Box<dyn Fn(&str) -> Result<Vec<u32>>>;

/// A model with a slot to fill and how its tokenizer reads and writes text.
pub struct SlotModel {
    pub name: String,
    pub slot: Box<dyn SlotLm>,
    pub encode: Encode,
    /// One token's text.
    pub token: Box<dyn Fn(u32) -> String>,
    /// Special tokens (never triggers).
    pub special: BTreeSet<u32>,
    /// A masked LM (BERT) rather than a causal one.
    pub masked: bool,
}

/// The experiment's settings (the relation's facts already read).
pub struct Opts {
    /// The relation's name, as reported.
    pub relation: String,
    /// The hand-written prompt.
    pub manual: String,
    /// AutoPrompt's template, with `[T]` trigger positions.
    pub template: String,
    pub search: SearchConfig,
    /// Initial trigger word (default: the mask token, else "the").
    pub init: Option<String>,
    /// Initial trigger ids, one per `[T]` (instead of `init`).
    pub init_ids: Option<Vec<u32>>,
    pub per_object: usize,
    pub test_fraction: f64,
    /// Share of the training facts held out as the dev set that picks the best triggers.
    pub dev_fraction: f64,
    /// Let triggers be object tokens.
    pub allow_label_triggers: bool,
    /// Exclude candidates that start with a capital letter.
    pub filter_capitalised: bool,
}

/// What the experiment reports along the way.
pub enum Event<'a> {
    /// A line for the log.
    Note(String),
    /// A phase of `len` units begins (`manual prompt`, `autoprompt`, `autoprompt test`).
    Phase(&'static str, usize),
    /// Position within the phase.
    Pos(usize),
    /// One trigger-search step.
    Step(&'a StepLog),
    /// The phase is over.
    Done,
}

/// The outcome: both prompts' precision@1 on the same held-out facts.
pub struct Report {
    pub model: String,
    pub masked_lm: bool,
    pub relation: String,
    pub facts: usize,
    pub objects: usize,
    pub train: usize,
    pub dev: usize,
    pub test: usize,
    pub manual_prompt: String,
    pub manual: Precision,
    /// The hand-written prompt's mean label log-likelihood on the dev facts.
    pub manual_dev_log_likelihood: f64,
    pub template: String,
    pub prompt: String,
    pub triggers: Vec<String>,
    pub result: SearchResult,
    pub auto: Precision,
    pub config: SearchConfig,
    pub seconds: f64,
}

impl Report {
    /// The `--json` object.
    pub fn to_json(&self) -> Value {
        json!({
            "model": self.model,
            "masked_lm": self.masked_lm,
            "relation": self.relation,
            "seed": self.config.seed,
            "facts": self.facts,
            "objects": self.objects,
            "train": self.train,
            "dev": self.dev,
            "test": self.test,
            "manual": {"prompt": self.manual_prompt, "precision_at_1": self.manual.vocabulary,
                       "precision_among_objects": self.manual.objects,
                       "log_likelihood": self.manual.log_likelihood,
                       "dev_log_likelihood": self.manual_dev_log_likelihood},
            "autoprompt": {"template": self.template, "prompt": self.prompt,
                           "triggers": self.triggers, "trigger_ids": self.result.triggers,
                           "last_trigger_ids": self.result.last,
                           "dev_log_likelihood": self.result.dev,
                           "precision_at_1": self.auto.vocabulary,
                           "precision_among_objects": self.auto.objects,
                           "log_likelihood": self.auto.log_likelihood},
            "config": self.config,
            "history": self.result.history,
            "seconds": self.seconds,
        })
    }
}

impl Opts {
    /// Both templates parse and AutoPrompt's has a trigger (checked before a model loads).
    pub fn check(&self) -> Result<(Template, Template)> {
        let manual = Template::parse(&self.manual)?;
        let trig = Template::parse(&self.template)?;
        if trig.triggers() == 0 {
            return Err(task(format!(
                "--template: expected at least one [T], found none in {:?}",
                self.template
            )));
        }
        if let Some(ids) = &self.init_ids
            && ids.len() != trig.triggers()
        {
            return Err(task(format!(
                "--init-ids: expected {} ids (one per [T]), found {}",
                trig.triggers(),
                ids.len()
            )));
        }
        Ok((manual, trig))
    }
}

fn task(msg: String) -> AgentError {
    AgentError::Task(msg)
}

/// Runs the experiment on `facts` with model `m`.
pub fn run(
    m: &SlotModel,
    facts: Vec<Fact>,
    o: &Opts,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<Report> {
    let (manual, trig) = o.check()?;
    let lm = m.slot.as_ref();
    // Labels: the object as one token (after a space, as it follows the prompt's text).
    let mut labelled: Vec<(Fact, u32)> = Vec::new();
    let mut dropped = 0;
    for f in facts {
        let ids = (m.encode)(&format!(" {}", f.object))?;
        match ids.as_slice() {
            [id] => labelled.push((f, *id)),
            _ => dropped += 1,
        }
    }
    let (train, test) = autoprompt::balance_and_split(
        &labelled,
        |f| f.1,
        o.per_object,
        o.test_fraction,
        o.search.seed,
    );
    // The dev facts come out of the training split (the paper's 80/20 train/dev split of its
    // training facts); the test facts are never seen by the search.
    let (train, dev) = autoprompt::balance_and_split(
        &train,
        |f| f.1,
        usize::MAX,
        o.dev_fraction,
        o.search.seed ^ 0x5eed,
    );
    let objects: Vec<u32> = labelled
        .iter()
        .map(|f| f.1)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if train.is_empty() || dev.is_empty() || test.is_empty() {
        return Err(task(format!(
            "{}: expected facts whose object is one token of the model, found {} ({} dropped)",
            o.relation,
            labelled.len(),
            dropped
        )));
    }
    on(Event::Note(format!(
        "{}: {} facts with a one-token object ({} objects; {dropped} dropped), {} train / {} dev / {} test after at most {} per object",
        o.relation,
        labelled.len(),
        objects.len(),
        train.len(),
        dev.len(),
        test.len(),
        o.per_object
    )));
    let encode_piece = |s: &str, after_space: bool| -> Result<Vec<u32>> {
        let text = if after_space {
            format!(" {s}")
        } else {
            s.to_string()
        };
        (m.encode)(&text)
    };
    let encode_facts = |t: &Template, v: &[(Fact, u32)]| -> Result<Vec<EncodedFact>> {
        let after_space = t.parts.first() != Some(&autoprompt::Part::Subject);
        v.iter()
            .map(|(f, l)| {
                Ok(EncodedFact {
                    subject: encode_piece(&f.subject, after_space)?,
                    label: *l,
                })
            })
            .collect()
    };
    let start = Instant::now();
    // The hand-written prompt.
    let manual_c = autoprompt::compile(&manual, lm, &encode_piece)?;
    on(Event::Phase("manual prompt", test.len()));
    let manual_test = autoprompt::precision_at_1(
        lm,
        &manual_c,
        &encode_facts(&manual, &test)?,
        &[],
        &objects,
        &mut |i| on(Event::Pos(i)),
    )?;
    on(Event::Done);
    let manual_dev =
        autoprompt::mean_log_likelihood(lm, &manual_c, &encode_facts(&manual, &dev)?, &[])?;
    on(Event::Note(format!(
        "manual prompt {:?}: precision@1 {:.1} % (vocabulary), {:.1} % (objects), mean label log-likelihood {:.3} on {} test facts ({:.3} on the dev facts)",
        manual.render(&[]),
        100.0 * manual_test.vocabulary,
        100.0 * manual_test.objects,
        manual_test.log_likelihood,
        test.len(),
        manual_dev
    )));
    // AutoPrompt.
    let trig_c = autoprompt::compile(&trig, lm, &encode_piece)?;
    let init_id = match (&o.init, lm.mask_id()) {
        (Some(w), _) => {
            let ids = encode_piece(w, true)?;
            match ids.as_slice() {
                [id] => *id,
                _ => {
                    return Err(task(format!(
                        "--init: expected one token, found {} for {w:?}",
                        ids.len()
                    )));
                }
            }
        }
        (None, Some(mask)) => mask,
        (None, None) => encode_piece("the", true)?
            .first()
            .copied()
            .ok_or_else(|| task("the tokenizer encodes \"the\" as nothing".into()))?,
    };
    let init = match &o.init_ids {
        None => vec![init_id; trig_c.n_triggers()],
        Some(ids) => {
            if let Some(bad) = ids.iter().find(|i| **i as usize >= lm.vocab_size()) {
                return Err(task(format!(
                    "--init-ids: expected ids below the vocabulary size {}, found {bad}",
                    lm.vocab_size()
                )));
            }
            ids.clone()
        }
    };
    let mut exclude = m.special.clone();
    if !o.allow_label_triggers {
        exclude.extend(objects.iter().copied());
    }
    if o.filter_capitalised {
        exclude.extend(
            (0..lm.vocab_size() as u32).filter(|i| autoprompt::is_capitalised(&(m.token)(*i))),
        );
    }
    let train_enc = encode_facts(&trig, &train)?;
    let dev_enc = encode_facts(&trig, &dev)?;
    let test_enc = encode_facts(&trig, &test)?;
    on(Event::Phase("autoprompt", o.search.steps));
    let result = autoprompt::search(
        lm,
        &trig_c,
        &train_enc,
        &dev_enc,
        &init,
        &exclude,
        &o.search,
        &mut |s| on(Event::Step(s)),
    )?;
    on(Event::Done);
    let found: Vec<String> = result
        .triggers
        .iter()
        .map(|i| (m.token)(*i).trim().to_string())
        .collect();
    let last: Vec<String> = result
        .last
        .iter()
        .map(|i| (m.token)(*i).trim().to_string())
        .collect();
    on(Event::Note(match result.dev {
        Some(d) => format!(
            "triggers after {} steps, best on the {} dev facts (mean label log-likelihood {d:.3}): {}; last: {}",
            o.search.steps,
            dev.len(),
            trig.render(&found),
            trig.render(&last)
        ),
        None => format!(
            "triggers after {} steps (no step changed a trigger): {}",
            o.search.steps,
            trig.render(&found)
        ),
    }));
    on(Event::Phase("autoprompt test", test.len()));
    let auto_test = autoprompt::precision_at_1(
        lm,
        &trig_c,
        &test_enc,
        &result.triggers,
        &objects,
        &mut |i| on(Event::Pos(i)),
    )?;
    on(Event::Done);
    Ok(Report {
        model: m.name.clone(),
        masked_lm: m.masked,
        relation: o.relation.clone(),
        facts: labelled.len(),
        objects: objects.len(),
        train: train.len(),
        dev: dev.len(),
        test: test.len(),
        manual_prompt: manual.render(&[]),
        manual: manual_test,
        manual_dev_log_likelihood: manual_dev,
        template: o.template.clone(),
        prompt: trig.render(&found),
        triggers: found,
        result,
        auto: auto_test,
        config: o.search.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
