//! The causal families (`gpt`, `llama`, `transformer_xl`): corpus, tokenizer and `model.json` of a
//! run; the binary then builds `canon_train::Trainer` and `LmObjective` over the returned data.

use std::path::Path;

use canon_train::data;
use canon_train::{RunConfig, TokenData};

use crate::{Report, Result, RunDir, bail, err, load_text_corpus};

/// Checks the sections against each other (`file` names the config in errors).
pub fn validate(cfg: &RunConfig, file: &Path) -> Result<()> {
    let f = file.display();
    cfg.data.validate().map_err(|m| err!("{f}: {m}"))?;
    cfg.train.validate().map_err(|m| err!("{f}: {m}"))?;
    if cfg.train.block_size > cfg.model.max_seq_len() {
        bail!(
            "{f}: train.block_size ({}) exceeds model.max_seq_len ({})",
            cfg.train.block_size,
            cfg.model.max_seq_len()
        );
    }
    Ok(())
}

/// Validates `cfg`, creates the run folder, reads the corpus, trains the tokenizer (or reads the
/// run's when resuming), encodes the corpus, sets the model's vocabulary size and writes
/// `config.toml` and `model.json`.
pub fn prepare(
    cfg: &mut RunConfig,
    dir: &RunDir,
    resuming: bool,
    report: Report,
) -> Result<TokenData> {
    validate(cfg, &dir.config_path())?;
    dir.create()?;
    let corpus = load_text_corpus(&cfg.data.corpus, cfg.data.max_bytes)?;
    report.say(format!(
        "corpus {}: {} documents, {:.1} MB",
        corpus.name,
        corpus.docs.len(),
        corpus.bytes() as f64 / 1e6
    ));
    let tok = if resuming {
        dir.read_tokenizer()?
    } else {
        let t = data::train_tokenizer(cfg.data.tokenizer, &corpus.docs, cfg.data.vocab_size)?;
        dir.write_tokenizer(&t)?;
        t
    };
    let data = TokenData::encode(&tok, &corpus.docs, cfg.data.val_fraction)?;
    report.say(format!(
        "tokens: {} train, {} held out, vocabulary {}",
        data.train.len(),
        data.val.len(),
        data.vocab_size
    ));
    cfg.model.set_vocab_size(data.vocab_size);
    dir.write_config(cfg)?;
    dir.write_model_json(&cfg.model)?;
    Ok(data)
}
