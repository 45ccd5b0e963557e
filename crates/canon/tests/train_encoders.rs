//! Tier 2: every shipped encoder and sequence-to-sequence config (papers 1, 3, 6, 7, 8) trains
//! through `canon train` with its architecture shrunk (the rest of the config as shipped), writes
//! `metrics.jsonl` with a falling loss, and its run folder serves the commands that read it
//! (`canon translate`, `canon finetune-bert`, the fine-tuning configs). The translation data is a
//! synthetic gettext catalog, so the test does not depend on the locales installed; the other
//! corpora are the Python standard library's, as the configs say.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn canon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(["-q", "--threads", "2"])
        .args(args)
        .output()
        .expect("run canon")
}

fn ok(args: &[&str]) -> String {
    let o = canon(args);
    assert!(
        o.status.success(),
        "canon {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The shipped config `name` with `patches` (`"table.key"` → value) applied, written to `dir`.
fn config(name: &str, dir: &Path, patches: &[(&str, toml::Value)]) -> PathBuf {
    let path = format!("{}/../../configs/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let mut v: toml::Value = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (key, value) in patches {
        let mut t = &mut v;
        let parts: Vec<&str> = key.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            t = t
                .as_table_mut()
                .unwrap()
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
        let leaf = parts[parts.len() - 1].to_string();
        t.as_table_mut().unwrap().insert(leaf, value.clone());
    }
    let out = dir.join(format!("{name}.toml"));
    std::fs::write(&out, toml::to_string(&v).unwrap()).unwrap();
    out
}

fn int(n: i64) -> toml::Value {
    toml::Value::Integer(n)
}
fn s(x: &str) -> toml::Value {
    toml::Value::String(x.to_string())
}

/// Trains `cfg` into `dir/run_name` and returns (first training loss, last held-out loss, the
/// metrics).
fn train(cfg: &Path, out: &Path) -> (f64, f64, Vec<serde_json::Value>) {
    ok(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let m = metrics(out);
    let first = m[0]["loss"].as_f64().unwrap();
    let eval = m.last().unwrap()["eval_loss"].as_f64().unwrap();
    (first, eval, m)
}

fn short_run(steps: i64) -> Vec<(&'static str, toml::Value)> {
    vec![
        ("train.max_steps", int(steps)),
        ("train.eval_every", int(steps)),
        ("train.eval_batches", int(2)),
        ("train.log_every", int(5)),
        ("train.checkpoint_every", int(steps)),
        ("train.schedule.warmup", int(5)),
    ]
}

/// A locale folder with one German catalog of 600 templated messages (and an ISO list to skip).
fn catalogs(root: &Path) -> PathBuf {
    let dir = root.join("locale/de/LC_MESSAGES");
    std::fs::create_dir_all(&dir).unwrap();
    let words = [
        ("file", "Datei"),
        ("folder", "Ordner"),
        ("device", "Gerät"),
        ("printer", "Drucker"),
        ("window", "Fenster"),
        ("user", "Benutzer"),
    ];
    let verbs = [
        ("Cannot open", "kann nicht geöffnet werden"),
        ("Cannot delete", "kann nicht gelöscht werden"),
        ("Cannot find", "kann nicht gefunden werden"),
        ("Cannot rename", "kann nicht umbenannt werden"),
        ("Cannot copy", "kann nicht kopiert werden"),
    ];
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = vec![(
        Vec::new(),
        b"Content-Type: text/plain; charset=UTF-8\n".to_vec(),
    )];
    for i in 0..20 {
        for (en_w, de_w) in words {
            for (en_v, de_v) in verbs {
                entries.push((
                    format!("{en_v} {en_w} {i}").into_bytes(),
                    format!("{de_w} {i} {de_v}").into_bytes(),
                ));
            }
        }
    }
    let refs: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    std::fs::write(dir.join("app.mo"), canon_testkit::write_mo(&refs, true)).unwrap();
    std::fs::write(dir.join("iso_3166.mo"), b"skipped: not a catalog").unwrap();
    root.join("locale")
}

#[test]
fn transformer_mt_trains_translates_and_scores_bleu() {
    let tmp = tempfile::tempdir().unwrap();
    let locale = catalogs(tmp.path());
    let mut p = short_run(40);
    p.extend([
        ("model.n_encoder_layers", int(1)),
        ("model.n_decoder_layers", int(1)),
        ("model.d_model", int(32)),
        ("model.n_head", int(2)),
        ("model.d_ff", int(64)),
        ("data.locale_dir", s(locale.to_str().unwrap())),
        ("data.vocab_size", int(300)),
        ("train.batch_size", int(16)),
        ("train.lr", toml::Value::Float(3e-3)),
        ("translation.eval_bleu_sentences", int(8)),
    ]);
    let cfg = config("transformer-mt", tmp.path(), &p);
    let run = tmp.path().join("mt");
    let (first, eval, m) = train(&cfg, &run);
    assert!(eval < first - 1.0, "held-out loss {eval} vs first {first}");
    assert!(m.last().unwrap()["eval_bleu"].as_f64().is_some());
    let out = ok(&[
        "translate",
        "--model",
        run.to_str().unwrap(),
        "--text",
        "Cannot open file 3",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    ok(&[
        "translate",
        "--model",
        run.to_str().unwrap(),
        "--test-bleu",
        "--limit",
        "5",
        "--beam",
        "2",
    ]);
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("test_bleu.json")).unwrap())
            .unwrap();
    assert_eq!(b["sentences"], 5);
    assert!(b["bleu"].as_f64().unwrap() >= 0.0);
    // A Transformer takes no task prefix.
    let o = canon(&[
        "translate",
        "--model",
        run.to_str().unwrap(),
        "--prefix",
        "x: ",
        "--text",
        "a",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--prefix is for T5 runs"));
    // A catalog that cannot be parsed is named in one clear error.
    std::fs::write(locale.join("de/LC_MESSAGES/broken.mo"), b"\xde\x12\x04").unwrap();
    let o = canon(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("mt2").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("broken.mo"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bert_pretrains_distils_and_fine_tunes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = short_run(40);
    p.extend([
        ("model.n_layer", int(2)),
        ("model.n_head", int(2)),
        ("model.d_model", int(32)),
        ("model.d_ff", int(64)),
        ("model.max_seq_len", int(64)),
        ("data.vocab_size", int(600)),
        ("data.max_bytes", int(200_000)),
        ("train.batch_size", int(8)),
        ("train.block_size", int(64)),
        ("train.lr", toml::Value::Float(2e-3)),
    ]);
    let bert = tmp.path().join("bert");
    let (first, eval, m) = train(&config("bert", tmp.path(), &p), &bert);
    assert!(eval < first - 0.2, "held-out loss {eval} vs first {first}");
    let last = m.last().unwrap();
    assert!(last["eval_mlm_loss"].as_f64().is_some() && last["eval_nsp_loss"].as_f64().is_some());

    let mut d = short_run(20);
    d.extend([
        ("model.teacher", s(bert.to_str().unwrap())),
        ("model.n_layer", int(1)),
        ("data.max_bytes", int(200_000)),
        ("train.batch_size", int(8)),
        ("train.block_size", int(64)),
    ]);
    let student = tmp.path().join("student");
    let (first, eval, m) = train(&config("distilbert", tmp.path(), &d), &student);
    assert!(
        eval < first,
        "student held-out loss {eval} vs first {first}"
    );
    let last = m.last().unwrap();
    for k in [
        "eval_mlm_accuracy",
        "eval_teacher_mlm_accuracy",
        "eval_cos_loss",
    ] {
        assert!(last[k].as_f64().is_some(), "{k} missing: {last}");
    }

    let ft = tmp.path().join("ft");
    ok(&[
        "finetune-bert",
        "--model",
        bert.to_str().unwrap(),
        "--out",
        ft.to_str().unwrap(),
        "--max-steps",
        "8",
        "--batch-size",
        "4",
        "--max-len",
        "32",
        "--eval-every",
        "8",
        "--eval-max",
        "16",
    ]);
    let m = metrics(&ft);
    assert!(
        m.iter().any(|l| l["eval_accuracy"].as_f64().is_some()),
        "{m:?}"
    );
}

#[test]
fn t5_span_corruption_then_multitask_with_translation() {
    let tmp = tempfile::tempdir().unwrap();
    let locale = catalogs(tmp.path());
    let mut p = short_run(30);
    p.extend([
        ("model.d_model", int(32)),
        ("model.d_kv", int(16)),
        ("model.n_heads", int(2)),
        ("model.d_ff", int(64)),
        ("model.n_layers", int(1)),
        ("model.n_decoder_layers", int(1)),
        ("data.vocab_size", int(600)),
        ("data.max_bytes", int(200_000)),
        ("train.batch_size", int(4)),
        ("train.lr", toml::Value::Float(3e-3)),
    ]);
    let t5 = tmp.path().join("t5");
    let (first, eval, _) = train(&config("t5", tmp.path(), &p), &t5);
    assert!(eval < first, "held-out loss {eval} vs first {first}");

    let tasks = tmp.path().join("tasks.jsonl");
    let lines: String = (0..40)
        .map(|i| {
            format!(
                "{{\"prefix\": \"parity: \", \"input\": \"{i}\", \"target\": \"{}\"}}\n",
                ["even", "odd"][i % 2]
            )
        })
        .collect();
    std::fs::write(&tasks, lines).unwrap();
    let mut q = short_run(20);
    q.extend([
        ("t5.init_from", s(t5.to_str().unwrap())),
        (
            "t5.tasks",
            toml::Value::Array(vec![
                s(&format!("jsonl:{}", tasks.display())),
                s("translate_en_de"),
            ]),
        ),
        ("t5.locale_dir", s(locale.to_str().unwrap())),
        ("t5.mixing_cap", int(64)),
        ("t5.generate_eval", int(4)),
        ("train.batch_size", int(4)),
        ("train.block_size", int(32)),
    ]);
    let mt = tmp.path().join("t5-mt");
    let (first, eval, m) = train(&config("t5-multitask", tmp.path(), &q), &mt);
    assert!(eval < first, "held-out loss {eval} vs first {first}");
    let last = m.last().unwrap();
    for k in [
        "eval_exact_match",
        "eval_bleu_translate_en_de",
        "eval_exact_translate_en_de",
    ] {
        let v = last[k].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&v), "{k} = {v}: {last}");
    }
    let out = ok(&[
        "translate",
        "--model",
        mt.to_str().unwrap(),
        "--text",
        "Cannot find printer 4",
        "--beam",
        "1",
        "--max-tokens",
        "8",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    ok(&[
        "translate",
        "--model",
        mt.to_str().unwrap(),
        "--prefix",
        "parity: ",
        "--text",
        "7",
        "--max-tokens",
        "4",
    ]);
}

#[test]
fn ernie_pretrains_and_fine_tunes_typing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = short_run(20);
    p.extend([
        ("model.hidden_size", int(32)),
        ("model.intermediate_size", int(64)),
        ("model.t_layers", int(1)),
        ("model.k_layers", int(1)),
        ("model.entity_dim", int(16)),
        ("data.vocab_size", int(1000)),
        ("transe.dim", int(16)),
        ("transe.steps", int(50)),
        ("train.batch_size", int(8)),
    ]);
    let ernie = tmp.path().join("ernie");
    let (first, eval, m) = train(&config("ernie", tmp.path(), &p), &ernie);
    assert!(eval < first, "held-out loss {eval} vs first {first}");
    assert!(m.last().unwrap()["eval_dea_accuracy"].as_f64().is_some());

    let mut t = short_run(10);
    t.extend([
        ("ernie.init", s(ernie.to_str().unwrap())),
        ("ernie.max_test", int(64)),
        ("data.vocab_size", int(1000)),
        ("train.batch_size", int(8)),
    ]);
    let typing = tmp.path().join("typing");
    let (_, _, m) = train(&config("ernie-typing", tmp.path(), &t), &typing);
    let last = m.last().unwrap();
    assert!(
        last.as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("accuracy")),
        "{last}"
    );
}

#[test]
fn bad_data_is_one_clear_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let fails = |cfg: &Path, needles: &[&str]| {
        let o = canon(&[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            tmp.path().join("run").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "'{n}' not in: {err}");
        }
    };
    // An empty corpus, for the BERT and T5 pre-training configs.
    for name in ["bert", "t5"] {
        let cfg = config(
            name,
            tmp.path(),
            &[("data.corpus", s(empty.to_str().unwrap()))],
        );
        fails(&cfg, &["empty.txt"]);
    }
    // A text-to-text record without a target: file and line.
    let t5 = tmp.path().join("t5");
    let mut p = short_run(2);
    p.extend([
        ("model.d_model", int(32)),
        ("model.d_kv", int(16)),
        ("model.n_heads", int(2)),
        ("model.d_ff", int(64)),
        ("model.n_layers", int(1)),
        ("model.n_decoder_layers", int(1)),
        ("data.vocab_size", int(400)),
        ("data.max_bytes", int(100_000)),
        ("train.batch_size", int(2)),
    ]);
    train(&config("t5", tmp.path(), &p), &t5);
    let tasks = tmp.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"input\": \"a\", \"target\": \"b\"}\n{\"input\": \"no target here\"}\n",
    )
    .unwrap();
    let q = [
        ("t5.init_from", s(t5.to_str().unwrap())),
        (
            "t5.tasks",
            toml::Value::Array(vec![s(&format!("jsonl:{}", tasks.display()))]),
        ),
    ];
    fails(
        &config("t5-multitask", tmp.path(), &q),
        &["tasks.jsonl:2", "target"],
    );
    // A Transformer's catalog folder without catalogs.
    let bare = tmp.path().join("bare/de/LC_MESSAGES");
    std::fs::create_dir_all(&bare).unwrap();
    let cfg = config(
        "transformer-mt",
        tmp.path(),
        &[(
            "data.locale_dir",
            s(tmp.path().join("bare").to_str().unwrap()),
        )],
    );
    fails(&cfg, &["LC_MESSAGES", "no .mo catalogs"]);
}
