//! `RunConfig` parsing for every family (the shipped configs), bad sections, and `RunDir` round
//! trips.

use std::path::{Path, PathBuf};

use crate::{RunConfig, RunDir};

fn config_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
}

fn parse_file(name: &str) -> crate::Result<RunConfig> {
    let path = config_file(name);
    RunConfig::parse(&RunConfig::read_value(&path)?, &path)
}

/// A valid `[train]` table.
const TRAIN: &str = "[train]\nbatch_size = 2\nblock_size = 16\nmax_steps = 3\nlr = 1e-3\n";

/// Parses `text`, with every `[train]` line replaced by a valid `[train]` table.
fn parse_str(text: &str) -> crate::Result<RunConfig> {
    let text = text.replace("[train]\n", TRAIN);
    let value: toml::Value = toml::from_str(&text).expect("test TOML");
    RunConfig::parse(&value, Path::new("test.toml"))
}

fn message(r: crate::Result<RunConfig>) -> String {
    match r {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => crate::chain(&e),
    }
}

#[test]
fn every_shipped_config_parses_to_its_family() {
    let expect = [
        ("gpt2.toml", "gpt"),
        ("llama.toml", "llama"),
        ("transformer-xl.toml", "transformer_xl"),
        ("transformer-mt.toml", "transformer"),
        ("t5.toml", "t5"),
        ("t5-multitask.toml", "t5"),
        ("bert.toml", "bert"),
        ("minilm-mlm.toml", "bert"),
        ("distilbert.toml", "distilbert"),
        ("ernie.toml", "ernie"),
        ("ernie-typing.toml", "ernie"),
    ];
    for (file, family) in expect {
        let cfg = parse_file(file).unwrap_or_else(|e| panic!("{file}: {}", crate::chain(&e)));
        assert_eq!(cfg.family(), family, "{file}");
        assert!(cfg.train().max_steps > 0, "{file}");
    }
}

#[test]
fn typed_sections_hold_the_values_of_the_file() {
    let RunConfig::Transformer(mt) = parse_file("transformer-mt.toml").expect("parses") else {
        panic!("not a transformer config")
    };
    assert_eq!(mt.data.language, "de");
    assert!(mt.translation.label_smoothing > 0.0);
    let RunConfig::Ernie(typing) = parse_file("ernie-typing.toml").expect("parses") else {
        panic!("not an ernie config")
    };
    assert!(
        typing.model.is_none(),
        "a typing run takes the pre-trained model"
    );
    assert!(typing.ernie.init.is_some());
    let RunConfig::T5(t5) = parse_file("t5-multitask.toml").expect("parses") else {
        panic!("not a t5 config")
    };
    assert!(!t5.t5.tasks.is_empty());
    let RunConfig::DistilBert(d) = parse_file("distilbert.toml").expect("parses") else {
        panic!("not a distilbert config")
    };
    assert!(d.distill.temperature > 0.0);
}

#[test]
fn unknown_or_missing_family_is_one_clear_error() {
    let e = message(parse_str("[model]\nfamily = \"rnn\"\n"));
    assert!(e.contains("unknown model family 'rnn'"), "{e}");
    assert!(e.contains("gpt") && e.contains("t5"), "{e}");
    let e = message(parse_str("[data]\ncorpus = \"x\"\n"));
    assert!(e.contains("expected a [model] table with family"), "{e}");
}

#[test]
fn a_bad_section_names_the_file_and_the_table() {
    // An unknown key in BERT's [data].
    let e = message(parse_str(
        "[model]\nfamily = \"bert\"\nn_layer = 2\n[data]\ncorpus = \"x\"\nvocab = 3\n[train]\n",
    ));
    assert!(e.contains("test.toml: invalid [data] table"), "{e}");
    // A missing required table.
    let e = message(parse_str("[model]\nfamily = \"bert\"\n[train]\n"));
    assert!(e.contains("test.toml: missing [data] table"), "{e}");
    // An out-of-range value.
    let e = message(parse_str(
        "[model]\nfamily = \"bert\"\n[data]\ncorpus = \"x\"\nshort_seq_prob = 2.0\n[train]\n",
    ));
    assert!(e.contains("data.short_seq_prob must be in [0, 1]"), "{e}");
    // T5: init_from is for the multitask stage only.
    let e = message(parse_str(
        "[model]\nfamily = \"t5\"\n[t5]\nstage = \"span_corruption\"\ninit_from = \"runs/t5\"\n[train]\n",
    ));
    assert!(e.contains("init_from is for stage = \"multitask\""), "{e}");
    // ERNIE: a typing run without its pre-trained run.
    let e = message(parse_str(
        "[model]\nfamily = \"ernie\"\n[data]\n[ernie]\ntask = \"typing\"\n[train]\n",
    ));
    assert!(e.contains("a typing run needs ernie.init"), "{e}");
    // DistilBERT: weights checked.
    let e = message(parse_str(
        "[model]\nfamily = \"distilbert\"\nteacher = \"x\"\n[data]\ncorpus = \"x\"\n[train]\n[distill]\ntemperature = 0.0\n",
    ));
    assert!(e.starts_with("test.toml: "), "{e}");
    // A causal family with a misspelt key.
    let e = message(parse_str(
        "[model]\nfamily = \"gpt\"\nn_layers = 2\n[data]\ncorpus = \"x\"\ntokenizer = \"byte\"\n[train]\n",
    ));
    assert!(e.contains("invalid config test.toml"), "{e}");
}

#[test]
fn overrides_set_train_keys() {
    let mut v: toml::Value = toml::from_str("[model]\nfamily = \"gpt\"\n").expect("toml");
    RunConfig::set_train_key(&mut v, "max_steps", toml::Value::Integer(7)).expect("set");
    assert_eq!(
        v.get("train")
            .and_then(|t| t.get("max_steps"))
            .and_then(|s| s.as_integer()),
        Some(7)
    );
}

#[test]
fn run_dir_round_trips_config_model_json_and_tokenizer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = RunDir::new(tmp.path().join("run"));
    dir.create().expect("create");
    assert!(!dir.has_checkpoint());

    let value = RunConfig::read_value(&config_file("t5.toml")).expect("read");
    dir.write_config(&value).expect("write config");
    assert_eq!(dir.read_config_value().expect("read back"), value);

    let RunConfig::T5(t5) = RunConfig::parse(&value, &dir.config_path()).expect("parse") else {
        panic!("not t5")
    };
    let model = t5.model.expect("a [model] table");
    dir.write_model_json_tagged("t5", &model)
        .expect("model.json");
    let back: canon_models::t5::T5Config = dir
        .read_model_json_tagged("t5", "T5")
        .expect("read model.json");
    assert_eq!(
        serde_json::to_value(&back).expect("json"),
        serde_json::to_value(&model).expect("json")
    );
    assert_eq!(
        dir.read_model_value()
            .expect("value")
            .get("family")
            .and_then(|f| f.as_str()),
        Some("t5")
    );
    let e = dir
        .read_model_json_tagged::<canon_models::t5::T5Config>("ernie", "ERNIE")
        .expect_err("wrong family");
    assert!(crate::chain(&e).contains("expected family \"ernie\""));

    let docs: Vec<String> = (0..50)
        .map(|i| format!("def f{i}(x):\n    return x + {i}\n"))
        .collect();
    let tok =
        canon_train::data::train_tokenizer(canon_train::data::TokenizerKind::ByteBpe, &docs, 300)
            .expect("tokenizer");
    dir.write_tokenizer(&tok).expect("write tokenizer");
    let back = dir.read_tokenizer().expect("read tokenizer");
    let ids = |t: &tokenizers::Tokenizer| {
        t.encode("def g(y): return y", false)
            .expect("encode")
            .get_ids()
            .to_vec()
    };
    assert_eq!(ids(&back), ids(&tok));
    // Nothing but the files themselves is left behind (no temporaries).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["config.toml", "model.json", "tokenizer.json"]);
}

#[test]
fn a_folder_without_model_json_is_not_a_run_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = crate::seq2seq::load_run(tmp.path())
        .err()
        .expect("an empty folder is no run");
    assert!(
        crate::chain(&e).contains("is not a run folder"),
        "{}",
        crate::chain(&e)
    );
}

#[derive(Debug)]
struct Repeats(std::io::Error);
impl std::fmt::Display for Repeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "x.gguf is not a GGUF file: {}", self.0)
    }
}
impl std::error::Error for Repeats {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn a_cause_already_in_the_error_line_is_said_once() {
    let io = std::io::Error::other("bad magic\nbytes");
    let e = crate::RunError::Context {
        msg: "cannot load model 'x.gguf'".into(),
        source: Box::new(Repeats(io)),
    };
    assert_eq!(
        crate::error_line(&e),
        "cannot load model 'x.gguf': x.gguf is not a GGUF file: bad magic bytes"
    );
    let plain = crate::RunError::Context {
        msg: "outer".into(),
        source: Box::new(std::io::Error::other("inner")),
    };
    assert_eq!(crate::error_line(&plain), "outer: inner");
}
