//! DistilBERT (paper 7, `[model] family = "distilbert"`): a student with half the layers of
//! a BERT teacher run (same width and vocabulary, no token types, no pooler), initialised from the
//! teacher's embeddings, MLM head and one layer out of two, trained with the triple loss.
//!
//! ```toml
//! [model]
//! family = "distilbert"
//! teacher = "runs/bert"    # a BERT run folder with an MLM head (canon train --config configs/bert.toml)
//! n_layer = 2              # default: half the teacher's layers
//! layers = [0, 2]          # teacher layer of each student layer (default: one in two)
//! student_init = "teacher" # or "random" (the comparison the paper's ablation makes)
//! [distill]                # reference defaults
//! temperature = 2.0
//! alpha_ce = 5.0
//! alpha_mlm = 2.0
//! alpha_cos = 1.0
//! restrict_ce_to_mask = false
//! [data]                   # as for bert
//! [train]
//! ```

use std::path::Path;

use canon_models::VarStore;
use canon_models::bert_heads::{BertPretraining, bert_init_policy};
use canon_train::TrainConfig;
use canon_train::bert_data::{SentenceData, Specials};
use canon_train::bert_pretrain::{BertRunModel, open_pretrained};
use canon_train::distill::{
    Distill, DistillWeights, Frozen, init_student, layer_map, student_config,
};
use canon_train::engine::Engine;
use serde::{Deserialize, Serialize};

use crate::bert::{DataTable, load_corpus, sentence_data};
use crate::config::required_table;
use crate::{Context, FamilySetup, Report, Result, RunDir, bail, err, model_dir};

fn d_teacher_init() -> String {
    "teacher".into()
}

/// The `[model]` table of a DistilBERT run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistilModelTable {
    pub family: String,
    /// A BERT run folder with an MLM head, or `minilm`.
    pub teacher: String,
    pub n_layer: Option<usize>,
    pub layers: Option<Vec<usize>>,
    #[serde(default = "d_teacher_init")]
    pub student_init: String,
}

fn d_t() -> f64 {
    2.0
}
fn d_ce() -> f64 {
    5.0
}
fn d_mlm() -> f64 {
    2.0
}
fn d_cos() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DistillTable {
    #[serde(default = "d_t")]
    temperature: f64,
    #[serde(default = "d_ce")]
    alpha_ce: f64,
    #[serde(default = "d_mlm")]
    alpha_mlm: f64,
    #[serde(default = "d_cos")]
    alpha_cos: f64,
    #[serde(default)]
    restrict_ce_to_mask: bool,
}

/// The typed sections of a DistilBERT run.
#[derive(Debug, Clone)]
pub struct DistilRunConfig {
    pub model: DistilModelTable,
    pub data: DataTable,
    pub train: TrainConfig,
    /// `[distill]`, checked.
    pub distill: DistillWeights,
}

/// Types and checks a DistilBERT config.
pub fn parse(config: &toml::Value, config_path: &Path) -> Result<DistilRunConfig> {
    let f = config_path.display();
    let m: DistilModelTable = required_table(config, "model", config_path)?;
    let d: DataTable = required_table(config, "data", config_path)?;
    let train: TrainConfig = required_table(config, "train", config_path)?;
    train.validate().map_err(|e| err!("{f}: {e}"))?;
    let w: DistillTable = match config.get("distill") {
        Some(_) => required_table(config, "distill", config_path)?,
        None => toml::Value::Table(Default::default())
            .try_into()
            .context("[distill] defaults")?,
    };
    let weights = DistillWeights {
        temperature: w.temperature,
        alpha_ce: w.alpha_ce,
        alpha_mlm: w.alpha_mlm,
        alpha_cos: w.alpha_cos,
        restrict_ce_to_mask: w.restrict_ce_to_mask,
    };
    weights.validate().map_err(|e| err!("{f}: {e}"))?;
    Ok(DistilRunConfig {
        model: m,
        data: d,
        train,
        distill: weights,
    })
}

/// Builds everything `canon train` needs for a DistilBERT run (see the module header).
pub fn setup(
    cfg: DistilRunConfig,
    config_path: &Path,
    dir: &RunDir,
    resuming: bool,
    report: Report,
) -> Result<FamilySetup> {
    let say = |s: String| report.say(s);
    let f = config_path.display();
    let DistilRunConfig {
        model: m,
        data: d,
        train,
        distill: weights,
    } = cfg;
    let tdir = model_dir(&m.teacher, report.progress)?;
    let t =
        open_pretrained(&tdir).with_context(|| format!("{f}: model.teacher = '{}'", m.teacher))?;
    if !t.has_mlm_head {
        bail!(
            "{f}: the teacher {} has no MLM head (cls.predictions.*); give it one first, e.g. \
             canon train --config configs/minilm-mlm.toml --out runs/minilm-mlm",
            tdir.display()
        );
    }
    let tl = t.config.num_hidden_layers;
    let n = m.n_layer.unwrap_or(tl / 2).max(1);
    let map = match &m.layers {
        Some(l) => {
            if l.len() != n || l.iter().any(|&i| i >= tl) {
                bail!(
                    "{f}: model.layers must list {n} teacher layers, each below {tl}; found {l:?}"
                );
            }
            l.clone()
        }
        None => layer_map(tl, n).map_err(|e| err!("{f}: {e}"))?,
    };
    let scfg = student_config(&t.config, n);
    if train.block_size > scfg.max_position_embeddings {
        bail!(
            "{f}: train.block_size ({}) exceeds the teacher's {} positions",
            train.block_size,
            scfg.max_position_embeddings
        );
    }
    let teacher = BertPretraining::load(t.config.clone(), &Frozen(&*t.weights), false)?;
    let store = VarStore::new_random(train.seed, bert_init_policy(0.02));
    let student = BertPretraining::load(scfg.clone(), &store, false)?;
    if !resuming {
        match m.student_init.as_str() {
            "teacher" => {
                init_student(&*t.weights, &store, &map)?;
                say(format!(
                    "student: {n} of the teacher's {tl} layers (teacher layers {map:?}), its embeddings and MLM head"
                ));
            }
            "random" => say(format!("student: {n} layers, randomly initialised")),
            o => bail!("{f}: model.student_init must be \"teacher\" or \"random\", found \"{o}\""),
        }
        dir.write_tokenizer(&t.tokenizer)?;
    }
    let corpus = load_corpus(&d, config_path)?;
    say(format!(
        "corpus {}: {} documents, {:.1} MB",
        corpus.name,
        corpus.docs.len(),
        corpus.bytes() as f64 / 1e6
    ));
    let sp = Specials::of(&t.tokenizer)?;
    let data = sentence_data(&d, &t.tokenizer, &corpus, config_path)?;
    say(format!(
        "{} training documents ({} tokens), {} held out ({} tokens)",
        data.train.len(),
        SentenceData::tokens(&data.train),
        data.val.len(),
        SentenceData::tokens(&data.val)
    ));
    dir.write_model_json(&BertRunModel {
        family: "distilbert".into(),
        config: scfg,
        nsp: false,
    })?;
    let params = Engine::params_of(&store);
    say(format!(
        "student {} parameters; T = {}, α_ce {}, α_mlm {}, α_cos {}",
        params.iter().map(|p| p.var.elem_count()).sum::<usize>(),
        weights.temperature,
        weights.alpha_ce,
        weights.alpha_mlm,
        weights.alpha_cos
    ));
    let obj = Distill::new(
        student,
        store,
        teacher,
        data,
        sp,
        weights,
        train.block_size,
        train.batch_size,
        train.eval_batches,
        train.seed ^ 0xD157,
    )?;
    if !resuming {
        let e = obj.eval_metrics()?;
        say(format!(
            "held-out before training: {}",
            e.iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok((params, train, Box::new(obj)))
}
