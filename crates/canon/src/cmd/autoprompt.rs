//! `canon autoprompt`: AutoPrompt's gradient-guided trigger search (paper 11) for fact retrieval,
//! against a hand-written prompt, with `canon_agent::autoprompt`.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use canon_agent::autoprompt::{
    self, CausalSlot, EncodedFact, Fact, MaskedSlot, SearchConfig, SlotLm, Template,
};
use canon_models::bert_heads::BertPretraining;
use canon_models::source::Detached;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

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

/// Text to token ids (no special tokens added).
type Encode = Box<dyn Fn(&str) -> anyhow::Result<Vec<u32>>>;

/// The model and how its tokenizer encodes text.
struct Loaded {
    name: String,
    slot: Box<dyn SlotLm>,
    encode: Encode,
    token: Box<dyn Fn(u32) -> String>,
    special: BTreeSet<u32>,
    masked: bool,
}

fn is_bert_dir(dir: &Path) -> bool {
    let family = std::fs::read_to_string(dir.join("model.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["family"].as_str().map(str::to_string));
    if let Some(f) = family {
        return f == "bert" || f == "distilbert";
    }
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["model_type"].as_str() == Some("bert"))
}

fn load(spec: &str, ctx: &Ctx) -> anyhow::Result<Loaded> {
    let dir = if spec == "minilm" {
        Some(super::train_bert::model_dir(spec, ctx)?)
    } else {
        Some(PathBuf::from(spec)).filter(|p| p.is_dir() && is_bert_dir(p))
    };
    if let Some(dir) = dir {
        let p = canon_train::bert_pretrain::open_pretrained(&dir)
            .with_context(|| format!("cannot load the BERT model {}", dir.display()))?;
        if !p.has_mlm_head {
            bail!(
                "{}: the model has no MLM head (cls.predictions.*); give it one first, e.g. \
                 canon train --config configs/minilm-mlm.toml --out runs/minilm-mlm",
                dir.display()
            );
        }
        let model = BertPretraining::load(p.config.clone(), &Detached(&*p.weights), false)?;
        let tok = p.tokenizer;
        let id = |t: &str| -> anyhow::Result<u32> {
            tok.token_to_id(t)
                .with_context(|| format!("{}: the tokenizer has no {t} token", dir.display()))
        };
        let (cls, sep, mask) = (id("[CLS]")?, id("[SEP]")?, id("[MASK]")?);
        let special: BTreeSet<u32> = (0..tok.get_vocab_size(true) as u32)
            .filter(|i| {
                tok.id_to_token(*i)
                    .is_some_and(|t| t.starts_with('[') && t.ends_with(']'))
            })
            .collect();
        let model: &'static BertPretraining = Box::leak(Box::new(model));
        let tok2 = tok.clone();
        return Ok(Loaded {
            name: dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            slot: Box::new(MaskedSlot {
                model,
                cls,
                sep,
                mask,
            }),
            encode: Box::new(move |s: &str| {
                Ok(tok
                    .encode(s.trim_start(), false)
                    .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
                    .get_ids()
                    .to_vec())
            }),
            token: Box::new(move |i| tok2.id_to_token(i).unwrap_or_default()),
            special,
            masked: true,
        });
    }
    // A causal LM with dense f32 weights: the gradient runs through every layer.
    let f32_ctx = Ctx {
        threads: ctx.threads,
        quiet: ctx.quiet,
        f32_weights: true,
        lora: ctx.lora.clone(),
        kv_f16: ctx.kv_f16,
    };
    let lm = crate::model_gen::load_lm(spec, &f32_ctx)?;
    let model: &'static dyn canon_models::CausalLm = Box::leak(lm.model);
    // The model must expose its input embeddings.
    model
        .embed(&candle_core::Tensor::new(
            &[[0u32]],
            &candle_core::Device::Cpu,
        )?)
        .with_context(|| format!("{spec}: AutoPrompt needs the model's input embeddings"))?;
    let tok = lm.tokenizer;
    let special: BTreeSet<u32> = (0..model.vocab_size() as u32)
        .filter(|i| tok.is_special(*i))
        .collect();
    let tok2 = tok.clone();
    Ok(Loaded {
        name: lm.name,
        slot: Box::new(CausalSlot(model)),
        encode: Box::new(move |s: &str| Ok(tok.encode(s, false)?)),
        token: Box::new(move |i| tok2.decode(&[i], false).unwrap_or_default()),
        special,
        masked: false,
    })
}

fn bar(ctx: &Ctx, len: usize, what: &str) -> ProgressBar {
    if ctx.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    if let Ok(s) = ProgressStyle::with_template(&format!(
        "{what} [{{bar:40}}] {{pos}}/{{len}} {{msg}} ({{eta}} left)"
    )) {
        pb.set_style(s.progress_chars("=> "));
    }
    pb
}

pub fn run(a: AutopromptArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("canon: {s}");
        }
    };
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
    let manual = Template::parse(a.manual.as_deref().unwrap_or(manual_default))?;
    let trig_text = match &a.template {
        Some(t) => t.clone(),
        None => {
            if a.triggers == 0 {
                bail!("--triggers: expected at least 1, found 0");
            }
            format!("[X] {}[P]", "[T] ".repeat(a.triggers))
        }
    };
    let trig = Template::parse(&trig_text)?;
    if trig.triggers() == 0 {
        bail!("--template: expected at least one [T], found none in {trig_text:?}");
    }
    let m = load(&a.model, ctx)?;
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
    let (train, test) =
        autoprompt::balance_and_split(&labelled, |f| f.1, a.per_object, a.test_fraction, a.seed);
    let objects: Vec<u32> = labelled
        .iter()
        .map(|f| f.1)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if train.is_empty() || test.is_empty() {
        bail!(
            "{}: expected facts whose object is one token of the model, found {} ({} dropped)",
            a.relation,
            labelled.len(),
            dropped
        );
    }
    say(format!(
        "{}: {} facts with a one-token object ({} objects; {dropped} dropped), {} train / {} test after at most {} per object",
        a.relation,
        labelled.len(),
        objects.len(),
        train.len(),
        test.len(),
        a.per_object
    ));
    let encode_piece = |s: &str, after_space: bool| -> canon_agent::Result<Vec<u32>> {
        let text = if after_space {
            format!(" {s}")
        } else {
            s.to_string()
        };
        (m.encode)(&text).map_err(|e| canon_agent::AgentError::Text(e.to_string()))
    };
    let encode_facts = |t: &Template, v: &[(Fact, u32)]| -> anyhow::Result<Vec<EncodedFact>> {
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
    let pb = bar(ctx, test.len(), "manual prompt");
    let manual_test = autoprompt::precision_at_1(
        lm,
        &manual_c,
        &encode_facts(&manual, &test)?,
        &[],
        &objects,
        &mut |i| pb.set_position(i as u64),
    )?;
    pb.finish_and_clear();
    say(format!(
        "manual prompt {:?}: precision@1 {:.1} % (vocabulary), {:.1} % (objects) on {} test facts",
        manual.render(&[]),
        100.0 * manual_test.vocabulary,
        100.0 * manual_test.objects,
        test.len()
    ));
    // AutoPrompt.
    let trig_c = autoprompt::compile(&trig, lm, &encode_piece)?;
    let init_id = match (&a.init, lm.mask_id()) {
        (Some(w), _) => {
            let ids = encode_piece(w, true)?;
            match ids.as_slice() {
                [id] => *id,
                _ => bail!("--init: expected one token, found {} for {w:?}", ids.len()),
            }
        }
        (None, Some(mask)) => mask,
        (None, None) => encode_piece("the", true)?
            .first()
            .copied()
            .context("the tokenizer encodes \"the\" as nothing")?,
    };
    let init = vec![init_id; trig_c.n_triggers()];
    let mut exclude = m.special.clone();
    if !a.allow_label_triggers {
        exclude.extend(objects.iter().copied());
    }
    if a.filter_capitalised {
        exclude.extend(
            (0..lm.vocab_size() as u32).filter(|i| autoprompt::is_capitalised(&(m.token)(*i))),
        );
    }
    let train_enc = encode_facts(&trig, &train)?;
    let test_enc = encode_facts(&trig, &test)?;
    let cfg = SearchConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        candidates: a.candidates,
        seed: a.seed,
    };
    let pb = bar(ctx, a.steps, "autoprompt");
    let names = |ids: &[u32]| -> Vec<String> {
        ids.iter()
            .map(|i| (m.token)(*i).trim().to_string())
            .collect()
    };
    let result = autoprompt::search(lm, &trig_c, &train_enc, &init, &exclude, &cfg, &mut |s| {
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
    })?;
    pb.finish_and_clear();
    let found = names(&result.triggers);
    say(format!(
        "triggers after {} steps: {}",
        a.steps,
        trig.render(&found)
    ));
    let pb = bar(ctx, test.len(), "autoprompt test");
    let auto_test = autoprompt::precision_at_1(
        lm,
        &trig_c,
        &test_enc,
        &result.triggers,
        &objects,
        &mut |i| pb.set_position(i as u64),
    )?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let v = json!({
            "model": m.name,
            "masked_lm": m.masked,
            "relation": a.relation,
            "seed": a.seed,
            "facts": labelled.len(),
            "objects": objects.len(),
            "train": train.len(),
            "test": test.len(),
            "manual": {"prompt": manual.render(&[]), "precision_at_1": manual_test.vocabulary, "precision_among_objects": manual_test.objects},
            "autoprompt": {"template": trig_text, "prompt": trig.render(&found), "triggers": found, "trigger_ids": result.triggers,
                            "precision_at_1": auto_test.vocabulary, "precision_among_objects": auto_test.objects},
            "config": cfg,
            "history": result.history,
            "seconds": secs,
        });
        println!("{v}");
    } else {
        println!(
            "{} on {} ({} train / {} test facts, seed {}, {:.0} s):",
            m.name,
            a.relation,
            train.len(),
            test.len(),
            a.seed,
            secs
        );
        println!(
            "  manual     {:<48} P@1 {:>5.1} % (vocabulary) {:>5.1} % (objects)",
            manual.render(&[]),
            100.0 * manual_test.vocabulary,
            100.0 * manual_test.objects
        );
        println!(
            "  autoprompt {:<48} P@1 {:>5.1} % (vocabulary) {:>5.1} % (objects)",
            trig.render(&found),
            100.0 * auto_test.vocabulary,
            100.0 * auto_test.objects
        );
    }
    Ok(())
}
