//! ERNIE (paper 6, `[model] family = "ernie"`).
//!
//! `[ernie] task = "pretrain"` (default): builds the standard-library knowledge graph and text
//! (`canon_train::ernie_data`), trains TransE on the graph (`[transe]`, written to
//! `transe.safetensors`; skipped for a plain BERT, `k_layers = 0`) as a run of its own in
//! `transe/` (metrics.jsonl, loss.png, checkpoint: Ctrl-C stops it with a checkpoint that
//! `canon train --resume` continues exactly), builds the word vocabulary (`vocab.json`), and
//! pre-trains with MLM + dEA.
//!
//! `[ernie] task = "typing"` with `init = "RUN_DIR"`: fine-tunes the pre-trained run in `RUN_DIR`
//! (its `model.json`, `vocab.json`, `transe.safetensors` and checkpoint) on mention typing
//! (module / class / function); held-out accuracy is logged as `eval_accuracy`. `[model]` then holds
//! only `family`: the model is the pre-trained one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use canon_models::VarStore;
use canon_models::ernie::{Ernie, ErnieConfig, init_policy};
use canon_models::family::{CHECKPOINT_PARAM_PREFIX, RUN_CHECKPOINT_FILE};
use canon_models::source::WeightSource;
use canon_nn::{Linear, Weight};
use canon_train::engine::Objective;
use canon_train::ernie_data::{KnowledgeGraph, Relation, Triple, stdlib_sources, text_units};
use canon_train::ernie_train::{
    DeaConfig, ErnieCorpus, PretrainObjective, TypingObjective, Vocab, held_out, sequences,
    typing_examples, zero_table,
};
use canon_train::trainer::RunFiles;
use canon_train::transe::{TransE, TransEConfig};
use canon_train::{Engine, Outcome, TrainConfig};
use serde::Deserialize;

use crate::{Context, FamilySetup, Report, Result, RunDir, bail, err, python_stdlib_dir};

pub const VOCAB_FILE: &str = "vocab.json";
pub const TRANSE_FILE: &str = "transe.safetensors";
/// The folder of the TransE run inside an ERNIE run.
pub const TRANSE_DIR: &str = "transe";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Pretrain,
    Typing,
}

fn d_vocab() -> usize {
    8000
}
fn d_test() -> usize {
    4000
}

/// The `[data]` table of an ERNIE run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataToml {
    /// Word vocabulary size (specials included).
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
}

/// The `[ernie]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErnieToml {
    #[serde(default)]
    pub task: Task,
    /// The pre-trained run folder a typing run starts from.
    #[serde(default)]
    pub init: Option<PathBuf>,
    #[serde(default)]
    pub dea: DeaConfig,
    /// Typing: at most this many held-out mentions are scored.
    #[serde(default = "d_test")]
    pub max_test: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunToml {
    model: toml::Value,
    data: DataToml,
    #[serde(default)]
    transe: TransEConfig,
    #[serde(default)]
    ernie: ErnieToml,
    train: TrainConfig,
}

/// The typed sections of an ERNIE run.
#[derive(Debug, Clone)]
pub struct ErnieRunConfig {
    /// `[model]` of a pre-training run; `None` for a typing run, whose model is the pre-trained
    /// run's (`ernie.init`).
    pub model: Option<ErnieConfig>,
    pub data: DataToml,
    pub transe: TransEConfig,
    pub ernie: ErnieToml,
    pub train: TrainConfig,
}

/// Types and checks an ERNIE config.
pub fn parse(config: &toml::Value, config_path: &Path) -> Result<ErnieRunConfig> {
    let file = config_path.display().to_string();
    let run: RunToml = config
        .clone()
        .try_into()
        .with_context(|| format!("invalid config {file}"))?;
    run.train.validate().map_err(|m| err!("{file}: {m}"))?;
    run.transe.validate().map_err(|m| err!("{file}: {m}"))?;
    let d = run.ernie.dea;
    if d.replace < 0.0 || d.mask < 0.0 || d.replace + d.mask > 1.0 {
        bail!("{file}: ernie.dea.replace and ernie.dea.mask must be ≥ 0 and sum to at most 1");
    }
    let model = match run.ernie.task {
        Task::Pretrain => Some(model_config(&run.model, &file)?),
        Task::Typing => {
            let init = run.ernie.init.as_ref().with_context(|| {
                format!("{file}: a typing run needs ernie.init = \"PRETRAINED_RUN_DIR\"")
            })?;
            if run
                .model
                .as_table()
                .is_some_and(|t| t.keys().any(|k| k != "family"))
            {
                bail!(
                    "{file}: a typing run takes its model from {}; [model] holds only family",
                    init.display()
                );
            }
            None
        }
    };
    Ok(ErnieRunConfig {
        model,
        data: run.data,
        transe: run.transe,
        ernie: run.ernie,
        train: run.train,
    })
}

fn model_config(model: &toml::Value, file: &str) -> Result<ErnieConfig> {
    let mut m = model
        .as_table()
        .with_context(|| format!("{file}: [model] must be a table"))?
        .clone();
    m.remove("family");
    let c: ErnieConfig = toml::Value::Table(m)
        .try_into()
        .with_context(|| format!("{file}: invalid [model] table"))?;
    Ok(c)
}

/// How the TransE table is made: trained as a run in `run_dir` (resumed from its checkpoint
/// when `resuming`), or reused from `path` when `reuse` and it exists.
struct TableRun<'a> {
    path: &'a Path,
    run_dir: &'a Path,
    reuse: bool,
    resuming: bool,
    stop: &'a dyn Fn() -> Result<Arc<AtomicBool>>,
}

/// Trains TransE (every 50th triple held out for the link-prediction report) or reuses the table.
fn entity_table(
    kg: &KnowledgeGraph,
    cfg: &TransEConfig,
    how: TableRun<'_>,
    seed: u64,
    say: &dyn Fn(String),
) -> Result<candle_core::Tensor> {
    let path = how.path;
    if how.reuse && path.exists() {
        return Ok(TransE::load_entities(path, kg.entities.len(), cfg.dim)?);
    }
    let files = RunFiles::in_dir(how.run_dir);
    if !how.resuming && files.checkpoint.exists() {
        bail!(
            "{} holds an interrupted TransE run; continue it with --resume or choose another --out",
            how.run_dir.display()
        );
    }
    std::fs::create_dir_all(how.run_dir)
        .with_context(|| format!("cannot create {}", how.run_dir.display()))?;
    let (mut train, mut test): (Vec<Triple>, Vec<Triple>) = (Vec::new(), Vec::new());
    for (i, t) in kg.triples.iter().enumerate() {
        let split = if i % 50 == 49 { &mut test } else { &mut train };
        split.push(*t);
    }
    let te = TransE::new(kg.entities.len(), Relation::ALL.len(), cfg, seed)?;
    test.truncate(500);
    let (mr0, h0) = te.link_prediction(&test)?;
    let stop = (how.stop)()?;
    let (rep, outcome) = te.train_run(&train, cfg, seed ^ 0x7A5E, &files, &stop, &mut |_, _| {})?;
    if outcome == Outcome::Interrupted {
        let run = path.parent().unwrap_or(how.run_dir);
        bail!(
            "interrupted: TransE checkpoint in {}; continue with canon train --resume {}",
            how.run_dir.display(),
            run.display()
        );
    }
    let (mr, h) = te.link_prediction(&test)?;
    say(format!(
        "TransE: {} steps in {:.1}s, loss {:.4} -> {:.4}; {} held-out triples: mean rank {:.0} -> {:.0} of {}, hits@10 {:.3} -> {:.3}",
        cfg.steps,
        rep.seconds,
        rep.first_loss,
        rep.last_loss,
        test.len(),
        mr0,
        mr,
        kg.entities.len(),
        h0,
        h
    ));
    te.save(path)?;
    Ok(te.entity_table())
}

/// Copies the parameters of a pre-trained run's checkpoint into `vs` (every name but `skip_prefix`).
pub fn load_pretrained(vs: &VarStore, ckpt: &Path, skip_prefix: &str) -> Result<()> {
    let m = candle_core::safetensors::load(ckpt, &candle_core::Device::Cpu)
        .with_context(|| format!("cannot read {}", ckpt.display()))?;
    for (name, var, _) in vs.vars() {
        if name.starts_with(skip_prefix) {
            continue;
        }
        let key = format!("{CHECKPOINT_PARAM_PREFIX}{name}");
        let t = m
            .get(&key)
            .with_context(|| format!("{}: missing tensor '{key}'", ckpt.display()))?;
        if t.dims() != var.dims() {
            bail!(
                "{}: tensor '{key}' has shape {:?}, the model expects {:?}",
                ckpt.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(t)?;
    }
    Ok(())
}

/// Builds everything `canon train` needs for an ERNIE run (see the module header).
pub fn setup(
    run: ErnieRunConfig,
    config_path: &Path,
    dir: &RunDir,
    resuming: bool,
    report: Report,
    stop: &dyn Fn() -> Result<Arc<AtomicBool>>,
) -> Result<FamilySetup> {
    let file = config_path.display().to_string();
    let say = move |s: String| report.say(s);
    let stdlib = python_stdlib_dir()?;
    let files = stdlib_sources(&stdlib)?;
    let kg = KnowledgeGraph::build(&files);
    let units = text_units(&files);
    say(format!(
        "knowledge graph from {} modules under {}: {}",
        files.len(),
        stdlib.display(),
        kg.summary()
    ));
    let block = run.train.block_size;
    let seed = run.train.seed;

    let (mut mc, vocab, table_src) = match run.ernie.task {
        Task::Pretrain => {
            let mc = run
                .model
                .clone()
                .with_context(|| format!("{file}: a pre-training run needs a [model] table"))?;
            let vpath = dir.join(VOCAB_FILE);
            let vocab = if resuming {
                Vocab::load(&vpath)?
            } else {
                let v = Vocab::build(
                    units
                        .iter()
                        .filter(|u| !held_out(&u.module))
                        .map(|u| u.text.as_str()),
                    run.data.vocab_size,
                )?;
                v.save(&vpath)?;
                v
            };
            (mc, vocab, dir.path().to_path_buf())
        }
        Task::Typing => {
            let init = run.ernie.init.clone().with_context(|| {
                format!("{file}: a typing run needs ernie.init = \"PRETRAINED_RUN_DIR\"")
            })?;
            let mc = RunDir::new(&init).read_model_json_untagged("an ERNIE model")?;
            let vocab = Vocab::load(&init.join(VOCAB_FILE))?;
            (mc, vocab, init)
        }
    };
    mc.vocab_size = vocab.len();
    mc.validate().map_err(|m| err!("{file}: [model] {m}"))?;
    if block > mc.max_position_embeddings {
        bail!(
            "{file}: train.block_size ({block}) exceeds model.max_position_embeddings ({})",
            mc.max_position_embeddings
        );
    }
    // A typing run reuses the pre-trained run's entity table, whose width is its entity_dim.
    let mut transe_cfg = run.transe.clone();
    if run.ernie.task == Task::Typing {
        transe_cfg.dim = mc.entity_dim;
    }
    if mc.k_layers > 0 && mc.entity_dim != transe_cfg.dim {
        bail!(
            "{file}: model.entity_dim ({}) must equal transe.dim ({})",
            mc.entity_dim,
            transe_cfg.dim
        );
    }
    let table = if mc.k_layers > 0 {
        let reuse = resuming || run.ernie.task == Task::Typing;
        let how = TableRun {
            path: &table_src.join(TRANSE_FILE),
            run_dir: &table_src.join(TRANSE_DIR),
            reuse,
            resuming,
            stop,
        };
        entity_table(&kg, &transe_cfg, how, seed, &say)?
    } else {
        zero_table(kg.entities.len(), mc.entity_dim)?
    };
    let (train, val) = sequences(&units, &kg, &vocab, block)?;
    let aligned = |s: &[canon_train::ernie_train::Sequence]| -> usize {
        s.iter()
            .map(|x| x.ents.iter().filter(|&&e| e >= 0).count())
            .sum()
    };
    let unk = train
        .iter()
        .flat_map(|s| &s.ids)
        .filter(|&&i| i == canon_train::ernie_train::UNK)
        .count() as f64
        / train.iter().map(|s| s.ids.len()).sum::<usize>().max(1) as f64;
    say(format!(
        "text: {} paragraphs; {} training sequences ({} aligned mentions), {} held-out ({} mentions); vocabulary {} words, {:.1}% [UNK]",
        units.len(),
        train.len(),
        aligned(&train),
        val.len(),
        aligned(&val),
        vocab.len(),
        unk * 100.0
    ));
    let corpus = Arc::new(ErnieCorpus {
        train,
        val,
        table,
        kinds: kg.entities.iter().map(|e| e.kind).collect(),
        vocab_size: vocab.len(),
    });
    dir.write_model_json_tagged("ernie", &mc)?;

    let vs = VarStore::new_random(seed, init_policy());
    let model = Ernie::load(mc.clone(), &vs)?;
    let b = run.train.batch_size;
    let obj: Box<dyn Objective> = match run.ernie.task {
        Task::Pretrain => Box::new(PretrainObjective::new(
            model,
            corpus,
            b,
            run.train.eval_batches,
            run.ernie.dea,
        )?),
        Task::Typing => {
            let classifier = Linear::new(
                Weight::Dense(vs.tensor("classifier.weight", &[3, mc.hidden_size])?),
                Some(vs.tensor("classifier.bias", &[3])?),
            );
            if !resuming {
                load_pretrained(&vs, &table_src.join(RUN_CHECKPOINT_FILE), "classifier.")?;
            }
            let train = typing_examples(&corpus.train, &corpus.kinds);
            let all_test = typing_examples(&corpus.val, &corpus.kinds);
            // An evenly spaced subset keeps evaluation short.
            let step = all_test.len().div_ceil(run.ernie.max_test.max(1)).max(1);
            let test: Vec<_> = all_test.into_iter().step_by(step).collect();
            if train.is_empty() || test.is_empty() {
                bail!("{file}: the text has no aligned mentions to type");
            }
            let mut counts = [0usize; 3];
            test.iter().for_each(|x| counts[x.label as usize] += 1);
            say(format!(
                "typing: {} training mentions, {} held-out (module/class/function: {:?})",
                train.len(),
                test.len(),
                counts
            ));
            Box::new(TypingObjective {
                model,
                classifier,
                data: corpus,
                train,
                test,
                batch_size: b,
            })
        }
    };
    Ok((Engine::params_of(&vs), run.train, obj))
}
