//! T5 (paper 8, `[model] family = "t5"`): `[t5] stage = "span_corruption"` pre-trains on a corpus with
//! span corruption; `stage = "multitask"` trains text-to-text tasks with prefixes, from a
//! pre-trained run folder (`init_from`) or from scratch.
//!
//! Config tables: `[model]` (`family = "t5"` and `canon_models::t5::T5Config`; with `init_from`
//! only `family`, the rest comes from the pre-trained run), `[data]` (span corruption: `corpus`,
//! `vocab_size`, `extra_ids`, `max_bytes`, `val_fraction`), `[t5]` (`stage`, `noise_density`,
//! `mean_span`, `init_from`, `tasks`, `mixing_cap`, `groups`, `snippet_bytes`) and `[train]`
//! (`block_size` = the longest source or target in tokens).

use std::path::{Path, PathBuf};

use canon_eval::bleu::corpus_bleu;
use canon_infer::seq2seq::DecodeOptions;
use canon_models::VarStore;
use canon_models::family::{CHECKPOINT_PARAM_PREFIX, RUN_CHECKPOINT_FILE};
use canon_models::source::Detached;
use canon_models::t5::{T5, T5Config};
use canon_nn::SplitMix64;
use canon_train::TrainError;
use canon_train::engine::{BatchLoss, Engine, Objective};
use canon_train::span_corruption::SpanConfig;
use canon_train::t5_train::tasks::{self, TextRecord};
use canon_train::t5_train::{
    Mixture, Source, SpecialIds, Stage, T5Objective, encode_records, spread, t5_tokenizer,
};
use canon_train::translation::TranslationDataConfig;
use canon_train::{TokenData, TrainConfig};
use serde::Deserialize;

use crate::config::{model_table, optional_table};
use crate::transformer::translate_encoded;
use crate::{
    Context, FamilySetup, Report, Result, RunDir, bail, chain, err, load_text_corpus,
    python_stdlib_dir,
};

fn d_vocab() -> usize {
    4096
}
fn d_extra() -> usize {
    100
}
fn d_max_bytes() -> usize {
    4_000_000
}
fn d_val() -> f64 {
    0.05
}
fn d_density() -> f64 {
    0.15
}
fn d_span() -> f64 {
    3.0
}
fn d_groups() -> Vec<String> {
    vec!["email".into(), "http".into()]
}
fn d_snippet() -> usize {
    300
}
fn d_locale() -> String {
    "/usr/share/locale".into()
}
fn d_generate() -> usize {
    64
}

/// The `[data]` table of a T5 run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `python-docs`, `python-stdlib`, or a text file or folder (span corruption; for the multitask
    /// stage from scratch, the tokenizer is trained on the task texts instead).
    #[serde(default)]
    pub corpus: Option<String>,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_extra")]
    pub extra_ids: usize,
    #[serde(default = "d_max_bytes")]
    pub max_bytes: usize,
    #[serde(default = "d_val")]
    pub val_fraction: f64,
}

/// The `[t5]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T5Section {
    pub stage: Stage,
    #[serde(default = "d_density")]
    pub noise_density: f64,
    #[serde(default = "d_span")]
    pub mean_span: f64,
    /// A pre-trained run folder (multitask stage).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// `function_name`, `stdlib_group`, `translate_en_de`, `jsonl:PATH` (multitask stage).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// T5's `K` of examples-proportional mixing (0 = no limit).
    #[serde(default)]
    pub mixing_cap: usize,
    /// Packages of the `stdlib_group` task.
    #[serde(default = "d_groups")]
    pub groups: Vec<String>,
    #[serde(default = "d_snippet")]
    pub snippet_bytes: usize,
    /// The locale root of the `translate_en_de` task's catalogs.
    #[serde(default = "d_locale")]
    pub locale_dir: String,
    /// Held-out examples per task decoded greedily at each evaluation (exact match, and BLEU for
    /// `translate_en_de`); 0 = none.
    #[serde(default = "d_generate")]
    pub generate_eval: usize,
}

/// A task's name and its (train, test) records.
type TaskSplit = (String, Vec<TextRecord>, Vec<TextRecord>);

/// The catalogs and split of `translate_en_de`: German, without the ISO name lists, 5 % validation
/// and 5 % test by the hash of the English sentence, as in `configs/transformer-mt.toml`, so the
/// two models share their test split.
pub fn en_de_data(t: &T5Section) -> TranslationDataConfig {
    en_de_catalogs(&t.locale_dir)
}

pub fn en_de_catalogs(locale_dir: &str) -> TranslationDataConfig {
    TranslationDataConfig {
        locale_dir: locale_dir.to_string(),
        language: "de".into(),
        exclude: vec!["iso_".into()],
        vocab_size: 8000,
        valid_fraction: 0.05,
        test_fraction: 0.05,
    }
}

/// Builds the (train, test) records of each task named in `[t5] tasks`.
fn task_records(t: &T5Section, file: &Path) -> Result<Vec<TaskSplit>> {
    if t.tasks.is_empty() {
        bail!(
            "{}: [t5] tasks is empty; name at least one of function_name, stdlib_group, translate_en_de, jsonl:PATH",
            file.display()
        );
    }
    let mut out = Vec::new();
    for name in &t.tasks {
        let (train, test) = match name.as_str() {
            "function_name" => tasks::function_name_task(&python_stdlib_dir()?)?,
            "translate_en_de" => tasks::translation_task(&en_de_data(t))?,
            "stdlib_group" => {
                let g: Vec<&str> = t.groups.iter().map(String::as_str).collect();
                tasks::stdlib_group_task(&python_stdlib_dir()?, &g, t.snippet_bytes)?
            }
            other => match other.strip_prefix("jsonl:") {
                Some(p) => tasks::split_every_fourth(tasks::jsonl_records(Path::new(p), other)?),
                None => bail!(
                    "{}: unknown task '{other}' in [t5] tasks; expected function_name, stdlib_group, translate_en_de or jsonl:PATH",
                    file.display()
                ),
            },
        };
        out.push((name.clone(), train, test));
    }
    Ok(out)
}

/// The typed sections of a T5 run.
#[derive(Debug, Clone)]
pub struct T5RunConfig {
    /// `[model]` without `family`: `None` when the run starts from `[t5] init_from` (the
    /// architecture is the pre-trained run's).
    pub model: Option<T5Config>,
    pub data: DataSection,
    pub t5: T5Section,
    pub train: TrainConfig,
    /// `noise_density` and `mean_span` of `[t5]`, checked.
    pub span: SpanConfig,
}

/// Types and checks a T5 config.
pub fn parse(config: &toml::Value, config_path: &Path) -> Result<T5RunConfig> {
    let f = config_path.display();
    let train: TrainConfig = optional_table(config, "train", config_path)?;
    train.validate().map_err(|m| err!("{f}: {m}"))?;
    let data: DataSection = optional_table(config, "data", config_path)?;
    let t5: T5Section = optional_table(config, "t5", config_path)?;
    let span = SpanConfig {
        noise_density: t5.noise_density,
        mean_span: t5.mean_span,
    };
    span.validate().map_err(|m| err!("{f}: [t5] {m}"))?;
    let model = match &t5.init_from {
        Some(from) => {
            if t5.stage != Stage::Multitask {
                bail!("{f}: [t5] init_from is for stage = \"multitask\"");
            }
            let extra: Vec<String> = model_table(config).keys().cloned().collect();
            if !extra.is_empty() {
                bail!(
                    "{f}: with [t5] init_from, [model] takes only `family` (the architecture comes from {}); found {}",
                    from.display(),
                    extra.join(", ")
                );
            }
            None
        }
        None => Some(
            toml::Value::Table(model_table(config))
                .try_into()
                .with_context(|| format!("{f}: invalid [model] table for family t5"))?,
        ),
    };
    Ok(T5RunConfig {
        model,
        data,
        t5,
        train,
        span,
    })
}

/// `model.json` of a T5 run folder.
pub fn read_model_json(dir: &Path) -> Result<T5Config> {
    RunDir::new(dir).read_model_json_tagged("t5", "T5")
}

/// Builds everything `canon train` needs for a T5 run (see the module header).
pub fn setup(
    run: T5RunConfig,
    config_path: &Path,
    dir: &RunDir,
    resuming: bool,
    report: Report,
) -> Result<FamilySetup> {
    let f = config_path.display();
    let say = |s: String| report.say(s);
    let T5RunConfig {
        model,
        data: data_cfg,
        t5,
        train,
        span,
    } = run;
    let block = train.block_size;

    // The model config, tokenizer and initial weights.
    let (tok, cfg, store) = match (&t5.init_from, resuming) {
        (_, true) => {
            // The checkpoint holds every weight; build the same shapes, then the engine loads it.
            let tok = dir.read_tokenizer()?;
            let cfg = read_model_json(dir.path())?;
            let store = VarStore::new_random(train.seed, cfg.init_policy());
            (tok, cfg, store)
        }
        (Some(from), false) => {
            let tok = RunDir::new(from).read_tokenizer()?;
            let cfg = read_model_json(from)?;
            let ckpt = from.join(RUN_CHECKPOINT_FILE);
            let store =
                VarStore::from_safetensors(&ckpt, CHECKPOINT_PARAM_PREFIX, cfg.init_policy())
                    .with_context(|| format!("[t5] init_from = {}", from.display()))?;
            say(format!("initialised from {}", from.display()));
            (tok, cfg, store)
        }
        (None, false) => {
            let mut cfg: T5Config = model
                .clone()
                .with_context(|| format!("{f}: invalid [model] table for family t5"))?;
            let docs: Vec<String> = match t5.stage {
                Stage::SpanCorruption => {
                    let spec = data_cfg.corpus.as_deref().with_context(|| {
                        format!("{f}: [data] corpus is required for span corruption")
                    })?;
                    load_text_corpus(spec, data_cfg.max_bytes)?.docs
                }
                Stage::Multitask => task_records(&t5, config_path)?
                    .into_iter()
                    .flat_map(|(_, tr, _)| tr)
                    .map(|r| format!("{}{}\n{}\n", r.prefix, r.input, r.target))
                    .collect(),
            };
            let tok = t5_tokenizer(&docs, data_cfg.vocab_size, data_cfg.extra_ids)?;
            let ids = SpecialIds::of(&tok)?;
            cfg.vocab_size = tok.get_vocab_size(true);
            cfg.pad_id = ids.pad;
            cfg.eos_id = ids.eos;
            let store = VarStore::new_random(train.seed, cfg.init_policy());
            (tok, cfg, store)
        }
    };
    let ids = SpecialIds::of(&tok)?;
    if cfg.vocab_size != tok.get_vocab_size(true) {
        bail!(
            "model vocab_size {} differs from the tokenizer's {}",
            cfg.vocab_size,
            tok.get_vocab_size(true)
        );
    }
    cfg.validate().map_err(|m| err!("{f}: {m}"))?;
    if block > cfg.max_seq_len {
        bail!(
            "{f}: train.block_size ({block}) exceeds model.max_seq_len ({})",
            cfg.max_seq_len
        );
    }
    if !resuming {
        dir.write_tokenizer(&tok)?;
        dir.write_model_json_tagged("t5", &cfg)?;
    }
    let model = T5::load(cfg.clone(), &store)?;

    let (source, probes) = match t5.stage {
        Stage::SpanCorruption => {
            let spec = data_cfg
                .corpus
                .as_deref()
                .with_context(|| format!("{f}: [data] corpus is required for span corruption"))?;
            let corpus = load_text_corpus(spec, data_cfg.max_bytes)?;
            say(format!(
                "corpus {}: {} documents, {:.1} MB",
                corpus.name,
                corpus.docs.len(),
                corpus.bytes() as f64 / 1e6
            ));
            let data = TokenData::encode(&tok, &corpus.docs, data_cfg.val_fraction)?;
            let raw_len = span.raw_length_for(block).with_context(|| {
                format!("{f}: train.block_size ({block}) is too small for span corruption")
            })?;
            let (noise, spans) = span.counts(raw_len);
            if spans + 1 > ids.n_sentinels {
                bail!(
                    "{f}: {spans} spans per sequence need {} sentinels; data.extra_ids gives {}",
                    spans + 1,
                    ids.n_sentinels
                );
            }
            say(format!(
                "tokens: {} train, {} held out; windows of {raw_len} tokens, {noise} noise in {spans} spans",
                data.train.len(),
                data.val.len()
            ));
            (
                Source::Spans {
                    data,
                    raw_len,
                    cfg: span,
                },
                Vec::new(),
            )
        }
        Stage::Multitask => {
            let recs = task_records(&t5, config_path)?;
            let (mut train_ex, mut test_ex, mut names) = (Vec::new(), Vec::new(), Vec::new());
            let mut probes = Vec::new();
            for (name, tr, te) in recs {
                if tr.is_empty() || te.is_empty() {
                    bail!(
                        "task {name}: {} training and {} test records; both must be non-empty",
                        tr.len(),
                        te.len()
                    );
                }
                say(format!(
                    "task {name}: {} train, {} test (e.g. \"{}{}\" → \"{}\")",
                    tr.len(),
                    te.len(),
                    tr[0].prefix,
                    tr[0].input.chars().take(60).collect::<String>(),
                    tr[0].target
                ));
                let test = encode_records(&tok, &te, ids.eos, block)?;
                let short = name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
                // Probes spread over the test split (its records come grouped by file and class).
                let k = t5.generate_eval;
                probes.push(GenerationProbe {
                    name: short.clone(),
                    srcs: spread(&test, k).take(k).map(|e| e.src.clone()).collect(),
                    refs: spread(&te, k).take(k).map(|r| r.target.clone()).collect(),
                    bleu: name.starts_with("translate_"),
                });
                train_ex.push(encode_records(&tok, &tr, ids.eos, block)?);
                test_ex.push(test);
                names.push(short);
            }
            let sizes: Vec<usize> = train_ex.iter().map(Vec::len).collect();
            let mixture = Mixture::new(&sizes, t5.mixing_cap)?;
            say(format!(
                "mixing rates {:?}",
                mixture
                    .rates()
                    .iter()
                    .map(|r| (r * 1000.0).round() / 1000.0)
                    .collect::<Vec<_>>()
            ));
            (
                Source::Tasks {
                    train: train_ex,
                    test: test_ex,
                    names,
                    mixture,
                },
                probes,
            )
        }
    };
    let obj = T5Objective::new(model, source, ids, train.batch_size, train.eval_batches)?;
    let params = Engine::params_of(&store);
    let probes: Vec<GenerationProbe> = probes.into_iter().filter(|p| !p.srcs.is_empty()).collect();
    let obj: Box<dyn Objective> = if probes.is_empty() {
        Box::new(obj)
    } else {
        Box::new(GenerativeEval {
            inner: obj,
            store,
            cfg,
            tok,
            probes,
            max_tokens: block,
        })
    };
    Ok((params, train, obj))
}

/// Held-out examples of one task, decoded at each evaluation.
struct GenerationProbe {
    name: String,
    srcs: Vec<Vec<u32>>,
    refs: Vec<String>,
    /// Also score corpus BLEU (translation tasks).
    bleu: bool,
}

/// T5's multitask objective plus generation-based evaluation: each task's probe examples are
/// decoded greedily and scored by exact match (whitespace-normalised), as T5 scores its
/// classification-as-text tasks, and translation tasks also by corpus BLEU.
struct GenerativeEval {
    inner: T5Objective,
    /// The trained variables, for a detached inference copy of the model at each evaluation.
    store: VarStore,
    cfg: T5Config,
    tok: tokenizers::Tokenizer,
    probes: Vec<GenerationProbe>,
    max_tokens: usize,
}

/// Whitespace runs squashed to one space, ends trimmed.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl GenerativeEval {
    /// Greedy outputs of the current weights, through a detached copy of the model (decoding the
    /// training model would record an autograd graph over every step).
    fn decode(&self, srcs: &[Vec<u32>]) -> canon_train::Result<Vec<String>> {
        let opts = DecodeOptions {
            beam_size: 1,
            max_tokens: Some(self.max_tokens),
            ..DecodeOptions::default()
        };
        let model = T5::load(self.cfg.clone(), &Detached(&self.store))?;
        let pad = self.inner.ids.pad;
        let mut out = Vec::with_capacity(srcs.len());
        for chunk in srcs.chunks(32) {
            let texts = translate_encoded(&model, pad, &self.tok, chunk, &opts).map_err(|e| {
                TrainError::Data(format!("decoding held-out examples: {}", chain(&e)))
            })?;
            out.extend(texts.iter().map(|t| squash(t)));
        }
        Ok(out)
    }
}

impl Objective for GenerativeEval {
    fn train_batch(&mut self, rng: &mut SplitMix64, index: u64) -> canon_train::Result<BatchLoss> {
        self.inner.train_batch(rng, index)
    }

    fn evaluate(&mut self) -> canon_train::Result<Vec<(String, f64)>> {
        let mut out = self.inner.evaluate()?;
        let (mut hit, mut n) = (0usize, 0usize);
        for p in &self.probes {
            let hyps = self.decode(&p.srcs)?;
            let h = hyps
                .iter()
                .zip(&p.refs)
                .filter(|(h, r)| **h == squash(r))
                .count();
            hit += h;
            n += hyps.len();
            out.push((
                format!("eval_exact_{}", p.name),
                h as f64 / hyps.len() as f64,
            ));
            if p.bleu {
                let b = corpus_bleu(&hyps, &p.refs).map_err(TrainError::Data)?;
                out.push((format!("eval_bleu_{}", p.name), b.score));
            }
        }
        out.push(("eval_exact_match".into(), hit as f64 / n.max(1) as f64));
        Ok(out)
    }
}
