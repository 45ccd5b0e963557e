//! Fixtures of the training tests that the library's tests (canon-runs) and the command line's
//! (canon) share: the shipped configs with patches, short-run settings, and a synthetic gettext
//! catalog for translation runs.

use std::path::{Path, PathBuf};

/// The shipped config `name` with `patches` (`"table.key"` → value) applied, written to `dir`.
pub fn config(name: &str, dir: &Path, patches: &[(&str, toml::Value)]) -> PathBuf {
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

pub fn int(n: i64) -> toml::Value {
    toml::Value::Integer(n)
}
pub fn s(x: &str) -> toml::Value {
    toml::Value::String(x.to_string())
}

pub fn short_run(steps: i64) -> Vec<(&'static str, toml::Value)> {
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
pub fn catalogs(root: &Path) -> PathBuf {
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
    std::fs::write(dir.join("app.mo"), crate::write_mo(&refs, true)).unwrap();
    std::fs::write(dir.join("iso_3166.mo"), b"skipped: not a catalog").unwrap();
    root.join("locale")
}
