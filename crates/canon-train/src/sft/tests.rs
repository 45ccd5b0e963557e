//! SFT records: completion and chat shapes, their masks, collation, and bad records.

use std::path::Path;

use canon_models::{LoadedLm, WeightMode};
use canon_nn::IGNORE_INDEX;
use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

use super::*;

pub(super) fn tiny_lm(dir: &Path) -> LoadedLm {
    let p = dir.join("tiny.gguf");
    write_tiny_llama(&p, &TinyLlama::default()).unwrap();
    canon_models::load::load_gguf_lm(&p, WeightMode::DequantizeF32).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_records_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "{\"prompt\": \"a\", \"completion\": \"b\"}\n{oops",
            ":2: malformed JSON",
        ),
        (
            "\n{\"prompt\": \"a\"}",
            ":2: the record has a \"prompt\" but no \"completion\"",
        ),
        ("{\"messages\": []}", ":1: \"messages\" is empty"),
        (
            "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}",
            ":1: message 0 has unknown role \"robot\"",
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
            "no assistant turn",
        ),
        ("{\"text\": \"x\"}", "found neither"),
        (
            "{\"prompt\": \"a\", \"completion\": \"\"}",
            "\"completion\" is empty",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("bad{i}.jsonl"), text);
        let e = read_jsonl(&p).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains(want),
            "{e}"
        );
    }
    let p = write(dir.path(), "empty.jsonl", "\n\n");
    assert!(
        read_jsonl(&p)
            .unwrap_err()
            .to_string()
            .contains("no records")
    );
}

#[test]
fn completion_records_predict_only_the_completion_and_eos() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny_lm(dir.path());
    let tok = &lm.tokenizer;
    let rec = Record::Completion {
        prompt: "Q: ab".into(),
        completion: " cd".into(),
    };
    let ex = encode_record(&rec, tok, None, 64).unwrap().unwrap();
    let p = tok.encode("Q: ab", false).unwrap();
    let c = tok.encode(" cd", false).unwrap();
    let eos = tok.eos_id.unwrap();
    let mut want_ids = p.clone();
    want_ids.extend(&c);
    want_ids.push(eos);
    assert_eq!(ex.ids, want_ids);
    // Position p predicts token p + 1: the last prompt position predicts the first completion
    // token; the EOS position predicts nothing.
    let n = p.len();
    for (i, &l) in ex.labels.iter().enumerate() {
        if i + 1 >= n && i + 1 < want_ids.len() {
            assert_eq!(l, want_ids[i + 1] as i64, "position {i}");
        } else {
            assert_eq!(l, IGNORE_INDEX, "position {i}");
        }
    }
    assert_eq!(ex.targets(), c.len() + 1);
    // Truncation keeps the first tokens; a record whose targets are all cut is dropped.
    assert!(encode_record(&rec, tok, None, n).unwrap().is_none());
    let cut = encode_record(&rec, tok, None, n + 1).unwrap().unwrap();
    assert_eq!(cut.targets(), 1);
}

#[test]
fn chat_records_predict_only_assistant_turns() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny_lm(dir.path());
    let tok = &lm.tokenizer;
    let tmpl = lm.chat_template.as_ref().unwrap();
    let msgs = vec![
        Message::new("system", "Be kind."),
        Message::new("user", "hi"),
        Message::new("assistant", "hello"),
        Message::new("user", "and?"),
        Message::new("assistant", "bye"),
    ];
    let rec = Record::Chat(msgs.clone());
    let ex = encode_record(&rec, tok, Some(tmpl), 256).unwrap().unwrap();
    // The targets, read back in order, are the two assistant turns with their end markers.
    let targets: Vec<u32> = ex
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    let text = tok.decode(&targets, false).unwrap();
    assert_eq!(text, "hello<|im_end|>\nbye<|im_end|>\n");
    // Without a template, a chat record is an error.
    assert!(encode_record(&rec, tok, None, 256).is_err());
    // Through a file: errors carry the line.
    let p = write(
        dir.path(),
        "chat.jsonl",
        &format!(
            "{}\n{{\"prompt\": \"x\", \"completion\": \"y\"}}\n",
            serde_json::json!({ "messages": msgs })
        ),
    );
    let (exs, dropped) = load_examples(&p, tok, Some(tmpl), 256).unwrap();
    assert_eq!((exs.len(), dropped), (2, 0));
    let (train, val) = split_held_out(exs, 0.5).unwrap();
    assert_eq!((train.len(), val.len()), (1, 1));
}

#[test]
fn collate_pads_on_the_right_and_ignores_padding() {
    let a = SftExample {
        ids: vec![5, 6, 7],
        labels: vec![IGNORE_INDEX, 7, IGNORE_INDEX],
    };
    let b = SftExample {
        ids: vec![8],
        labels: vec![IGNORE_INDEX],
    };
    let (ids, labels, t, real) = collate(&[&a, &b], 0);
    assert_eq!((t, real), (3, 4));
    assert_eq!(ids, vec![5, 6, 7, 8, 0, 0]);
    assert_eq!(labels[1], 7);
    assert_eq!(labels.iter().filter(|&&l| l != IGNORE_INDEX).count(), 1);
}
