//! AutoPrompt's model (paper 11, `canon autoprompt`): a BERT folder with an MLM head fills a
//! `[MASK]` slot, any other model is a causal LM loaded with dense f32 weights (the trigger
//! gradient runs through every layer).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use canon_agent::autoprompt::{CausalSlot, MaskedSlot};
use canon_agent::autoprompt_run::SlotModel;
use canon_models::bert_heads::BertPretraining;
use canon_models::source::Detached;

use crate::{Context, Loader, Result, bail};

/// Whether `dir` holds a BERT-family model: a run folder whose `model.json` names `bert` or
/// `distilbert`, or an HF folder whose `config.json` says `model_type: bert`.
pub fn is_bert_dir(dir: &Path) -> bool {
    let json = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    };
    if let Some(f) = json("model.json").and_then(|v| v["family"].as_str().map(str::to_string)) {
        return f == "bert" || f == "distilbert";
    }
    json("config.json").is_some_and(|v| v["model_type"].as_str() == Some("bert"))
}

/// The model `spec` names (`minilm`, a BERT folder, or anything `Loader::lm` reads), ready for
/// the trigger search. The model is leaked: it lives as long as the process, as the search's
/// slot borrows it.
pub fn slot_model(loader: &Loader, spec: &str) -> Result<SlotModel> {
    let dir = if spec == "minilm" {
        Some(crate::model_dir(spec, loader.progress())?)
    } else {
        Some(PathBuf::from(spec)).filter(|p| p.is_dir() && is_bert_dir(p))
    };
    match dir {
        Some(dir) => masked(&dir),
        None => causal(loader, spec),
    }
}

fn masked(dir: &Path) -> Result<SlotModel> {
    let p = canon_train::bert_pretrain::open_pretrained(dir)
        .with_context(|| format!("cannot load the BERT model {}", dir.display()))?;
    if !p.has_mlm_head {
        bail!(
            "{}: the model has no MLM head (cls.predictions.*); give it one first, e.g. canon \
             train --config configs/minilm-mlm.toml --out runs/minilm-mlm",
            dir.display()
        );
    }
    let model = BertPretraining::load(p.config.clone(), &Detached(&*p.weights), false)?;
    let tok = p.tokenizer;
    let id = |t: &str| -> Result<u32> {
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
    Ok(SlotModel {
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
                .map_err(|e| canon_agent::AgentError::Text(format!("tokenizer: {e}")))?
                .get_ids()
                .to_vec())
        }),
        token: Box::new(move |i| tok2.id_to_token(i).unwrap_or_default()),
        special,
        masked: true,
    })
}

fn causal(loader: &Loader, spec: &str) -> Result<SlotModel> {
    let lm = loader.dense().lm(spec)?;
    let model: &'static dyn canon_models::CausalLm = Box::leak(lm.model);
    // The model must expose its input embeddings.
    let probe = candle_core::Tensor::new(&[[0u32]], &candle_core::Device::Cpu)?;
    model
        .embed(&probe)
        .with_context(|| format!("{spec}: AutoPrompt needs the model's input embeddings"))?;
    let tok = lm.tokenizer;
    let special: BTreeSet<u32> = (0..model.vocab_size() as u32)
        .filter(|i| tok.is_special(*i))
        .collect();
    let tok2 = tok.clone();
    Ok(SlotModel {
        name: lm.name,
        slot: Box::new(CausalSlot(model)),
        encode: Box::new(move |s: &str| {
            tok.encode(s, false)
                .map_err(|e| canon_agent::AgentError::Text(e.to_string()))
        }),
        token: Box::new(move |i| tok2.decode(&[i], false).unwrap_or_default()),
        special,
        masked: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bert_folder_is_told_by_model_json_first_then_config_json() {
        let d = tempfile::tempdir().unwrap();
        assert!(!is_bert_dir(d.path()));
        std::fs::write(d.path().join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
        assert!(is_bert_dir(d.path()));
        std::fs::write(d.path().join("model.json"), r#"{"family": "gpt"}"#).unwrap();
        assert!(!is_bert_dir(d.path()));
        std::fs::write(d.path().join("model.json"), r#"{"family": "distilbert"}"#).unwrap();
        assert!(is_bert_dir(d.path()));
    }

    #[test]
    fn a_missing_model_is_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing.gguf");
        let loader = Loader {
            quiet: true,
            ..Loader::default()
        };
        let e = slot_model(&loader, missing.to_str().unwrap())
            .err()
            .unwrap();
        assert!(
            crate::chain(&e).contains("missing.gguf"),
            "{}",
            crate::chain(&e)
        );
    }
}
