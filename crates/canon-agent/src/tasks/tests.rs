use super::*;

/// A `.mo` catalog of `pairs` in the given byte order (as msgfmt lays it out: header, the two
/// tables, then the strings).
fn mo(pairs: &[(&str, &str)], le: bool) -> Vec<u8> {
    let w = |v: usize| -> [u8; 4] {
        if le {
            (v as u32).to_le_bytes()
        } else {
            (v as u32).to_be_bytes()
        }
    };
    let n = pairs.len();
    let (orig, trans) = (28, 28 + 8 * n);
    let mut data = Vec::new();
    let mut tables = [Vec::new(), Vec::new()];
    let base = 28 + 16 * n;
    for (t, table) in tables.iter_mut().enumerate() {
        for p in pairs {
            let s = if t == 0 { p.0 } else { p.1 };
            table.extend(w(s.len()));
            table.extend(w(base + data.len()));
            data.extend(s.as_bytes());
            data.push(0);
        }
    }
    let mut out = Vec::new();
    out.extend(w(0x9504_12de));
    out.extend(w(0));
    out.extend(w(n));
    out.extend(w(orig));
    out.extend(w(trans));
    out.extend(w(0));
    out.extend(w(0));
    out.extend(tables[0].iter());
    out.extend(tables[1].iter());
    out.extend(data);
    out
}

#[test]
fn mo_catalogs_parse_in_both_byte_orders() {
    let pairs = [
        ("", "Content-Type: text/plain; charset=UTF-8\n"),
        ("Open file", "Datei öffnen"),
        ("menu\u{4}Save", "Speichern"),
        ("%d file\0%d files", "%d Datei\0%d Dateien"),
        ("Quit", "Beenden"),
    ];
    for le in [true, false] {
        let got = parse_mo(&mo(&pairs, le), "x.mo").unwrap();
        assert_eq!(
            got,
            vec![
                ("Open file".to_string(), "Datei öffnen".to_string()),
                ("Quit".to_string(), "Beenden".to_string())
            ],
            "little-endian {le}"
        );
    }
    let e = parse_mo(b"not a catalog at all", "x.mo")
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.mo") && e.contains("magic"), "{e}");
    let mut cut = mo(&pairs, true);
    cut.truncate(40);
    let e = parse_mo(&cut, "x.mo").unwrap_err().to_string();
    assert!(e.starts_with("x.mo: expected a gettext .mo catalog"), "{e}");
}

#[test]
fn gettext_task_keeps_clean_unambiguous_pairs() {
    let dir = std::env::temp_dir().join(format!("canon-gettext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut a: Vec<(String, String)> = (0..300)
        .map(|i| (format!("Item number {i}"), format!("Eintrag Nummer {i}")))
        .collect();
    a.push(("Save".into(), "Speichern".into()));
    a.push(("Print %s".into(), "%s drucken".into()));
    a.push(("_Open".into(), "_Öffnen".into()));
    let b = [("Save", "Sichern"), ("Close", "Schließen")];
    let a_ref: Vec<(&str, &str)> = a.iter().map(|(x, y)| (x.as_str(), y.as_str())).collect();
    std::fs::write(dir.join("a.mo"), mo(&a_ref, true)).unwrap();
    std::fs::write(dir.join("b.mo"), mo(&b, false)).unwrap();
    std::fs::write(dir.join("broken.mo"), b"junk").unwrap();
    let t = gettext_de(&dir, 200, 3).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let all: Vec<&Item> = t.train.iter().chain(&t.test).collect();
    // 300 numbered items and Close; Save (two translations) and the marked strings dropped.
    assert_eq!(all.len(), 301);
    assert!(
        all.iter()
            .any(|i| i.question == "What is the German for \"Close\"?")
    );
    for i in &all {
        assert!(!i.question.contains("Save") && !i.question.contains('%'));
        assert!(!i.question.contains('_'), "{}", i.question);
        assert_eq!(i.options.len(), 4);
        assert!(i.options.contains(&i.answer));
    }
    let e = gettext_de(Path::new("/no/such/dir"), 200, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/dir"), "{e}");
}

#[test]
fn choice_items_have_four_distinct_options_with_the_answer() {
    let pairs: Vec<(String, String)> = (0..12)
        .map(|i| (format!("f{i}"), format!("mod{}", i % 5)))
        .collect();
    let items = choice_items(&pairs, &|f| format!("Where is {f}?"), 2);
    assert_eq!(items.len(), 12);
    for (it, (f, m)) in items.iter().zip(&pairs) {
        assert_eq!(it.question, format!("Where is {f}?"));
        assert_eq!(&it.answer, m);
        let set: HashSet<_> = it.options.iter().collect();
        assert_eq!(set.len(), 4);
        assert!(it.options.contains(m));
    }
    assert!(choice_items(&pairs[..3], &|f| f.to_string(), 0).is_empty());
}

#[test]
fn icl_tasks_follow_one_mapping_per_seed() {
    let t = icl_task(40, 100, 1).unwrap();
    assert_eq!((t.train.len(), t.test.len()), (40, 100));
    let mut key_answer = std::collections::HashMap::new();
    let mut questions = HashSet::new();
    for it in t.train.iter().chain(&t.test) {
        assert!(questions.insert(it.question.clone()), "distinct questions");
        assert_eq!(it.question.len(), 3);
        let k = it.question.as_bytes()[0];
        assert!(ICL_KEYS.contains(&k));
        assert_eq!(key_answer.entry(k).or_insert(it.answer.clone()), &it.answer);
    }
    let again = icl_task(40, 100, 1).unwrap();
    assert_eq!(t.test, again.test, "reproducible");
    let other = icl_task(40, 100, 2).unwrap();
    assert_ne!(
        t.test.iter().map(|i| &i.answer).collect::<Vec<_>>(),
        other.test.iter().map(|i| &i.answer).collect::<Vec<_>>()
    );
    assert!(icl_task(3000, 10, 0).is_err());
}

#[test]
fn icl_training_blocks_each_follow_their_own_mapping() {
    let text = icl_training_text(50, 20, 8..=8, 9);
    let blocks: Vec<&str> = text.split("===\n\n").filter(|b| !b.is_empty()).collect();
    assert_eq!(blocks.len(), 50);
    let mut mappings = HashSet::new();
    for b in blocks {
        let mut m = std::collections::BTreeMap::new();
        let demos: Vec<&str> = b.split("\n\n").filter(|d| !d.is_empty()).collect();
        assert_eq!(demos.len(), 20);
        for d in demos {
            let (q, a) = d.split_once('\n').unwrap();
            let (q, a) = (
                q.strip_prefix("Q: ").unwrap(),
                a.strip_prefix("A: ").unwrap(),
            );
            assert_eq!(
                m.entry(q.as_bytes()[0]).or_insert(a),
                &a,
                "one mapping per block"
            );
        }
        mappings.insert(format!("{m:?}"));
    }
    assert!(mappings.len() > 45, "blocks draw their own mappings");
}

#[test]
fn bursty_icl_blocks_use_a_subset_of_the_keys() {
    let text = icl_training_text(200, 20, 2..=3, 5);
    let mut sizes = HashSet::new();
    for b in text.split("===\n\n").filter(|b| !b.is_empty()) {
        let keys: HashSet<u8> = b
            .split("\n\n")
            .filter(|d| !d.is_empty())
            .map(|d| d.as_bytes()[3])
            .collect();
        assert!((1..=3).contains(&keys.len()), "{keys:?}");
        assert!(keys.iter().all(|k| ICL_KEYS.contains(k)));
        sizes.insert(keys.len());
    }
    assert!(sizes.contains(&3), "{sizes:?}");
}

#[test]
fn jsonl_errors_name_the_line() {
    let ok = r#"{"split":"train","question":"a","answer":"x","options":["x","y"]}"#;
    let text = format!("{ok}\n\n{{not json\n");
    let e = parse_jsonl("t", "t.jsonl", &text).unwrap_err().to_string();
    assert!(e.starts_with("t.jsonl:3:"), "{e}");
    let text = format!(
        "{ok}\n{}\n",
        r#"{"split":"test","question":"b","answer":"z","options":["x","y"]}"#
    );
    let e = parse_jsonl("t", "t.jsonl", &text).unwrap_err().to_string();
    assert!(
        e.starts_with("t.jsonl:2:") && e.contains("not one of"),
        "{e}"
    );
    let text = r#"{"split":"dev","question":"b","answer":"z"}"#;
    let e = parse_jsonl("t", "t.jsonl", text).unwrap_err().to_string();
    assert!(e.contains("\"dev\""), "{e}");
    let e = parse_jsonl("t", "t.jsonl", ok).unwrap_err().to_string();
    assert!(e.contains("no"), "{e}");
    let text = format!(
        "{ok}\n{}\n",
        r#"{"split":"test","question":"b","answer":"free"}"#
    );
    let t = parse_jsonl("t", "t.jsonl", &text).unwrap();
    assert_eq!((t.train.len(), t.test.len()), (1, 1));
    assert!(t.test[0].options.is_empty());
}

#[test]
fn the_input_options_label_shape_and_two_files_are_read() {
    let text = concat!(
        r#"{"split":"train","input":"2+2","options":["3","4"],"label":1}"#,
        "\n",
        r#"{"split":"test","input":"capital of France","target":"Paris"}"#,
        "\n"
    );
    let t = parse_jsonl("t", "t.jsonl", text).unwrap();
    assert_eq!(t.train[0].answer, "4");
    assert_eq!(t.train[0].options, ["3", "4"]);
    assert_eq!(t.test[0].answer, "Paris");
    assert!(t.test[0].options.is_empty());
    for (line, want) in [
        (
            r#"{"split":"test","input":"x","options":["a","b"],"label":2}"#,
            "0 to 1",
        ),
        (
            r#"{"split":"test","input":"x","options":["a","b"],"label":-1}"#,
            "found -1",
        ),
        (r#"{"split":"test","input":"x","label":0}"#, "no options"),
        (
            r#"{"split":"test","input":"x","target":"a","label":0,"options":["a","b"]}"#,
            "several",
        ),
        (
            r#"{"split":"test","input":"x","question":"y","target":"a"}"#,
            "both",
        ),
        (r#"{"input":"x","target":"a"}"#, "two files"),
        (
            r#"{"split":"test","prompt":"x","target":"a"}"#,
            "unknown field",
        ),
    ] {
        let e = parse_jsonl("t", "t.jsonl", line).unwrap_err().to_string();
        assert!(
            e.starts_with("t.jsonl:1:") && e.contains(want),
            "{line}: {e}"
        );
    }
    let d = tempfile::tempdir().unwrap();
    let (tr, te) = (d.path().join("train.jsonl"), d.path().join("test.jsonl"));
    std::fs::write(
        &tr,
        "{\"input\":\"a\",\"target\":\"b\"}\n{\"input\":\"c\",\"target\":\"d\"}\n",
    )
    .unwrap();
    std::fs::write(&te, "{\"input\":\"e\",\"target\":\"f\"}\n").unwrap();
    let t = load_jsonl_pair(&tr, &te).unwrap();
    assert_eq!(
        (t.train.len(), t.test.len(), t.name.as_str()),
        (2, 1, "test")
    );
}

#[test]
fn too_many_options_name_the_limit_and_its_flag() {
    let opts: Vec<String> = (0..=DEFAULT_MAX_OPTIONS)
        .map(|i| format!("\"o{i}\""))
        .collect();
    let line = format!(
        r#"{{"split":"test","input":"x","options":[{}],"label":0}}"#,
        opts.join(",")
    );
    let e = parse_jsonl("t", "t.jsonl", &line).unwrap_err().to_string();
    assert!(
        e.contains("--max-options") && e.contains(&format!("at most {DEFAULT_MAX_OPTIONS}")),
        "{e}"
    );
}

#[test]
fn man_name_lines_are_parsed_from_roff() {
    let roff = ".TH LS 1\n.SH NAME\nls \\- list directory contents\n.SH SYNOPSIS\n.B ls\n";
    assert_eq!(
        man_name_line(roff),
        Some(("ls".into(), "list directory contents".into()))
    );
    let several = ".SH NAME\nbzip2, bunzip2 \\- a block-sorting file compressor\n.SH X\n";
    assert_eq!(man_name_line(several), None);
    assert_eq!(man_name_line(".SH SYNOPSIS\nfoo\n"), None);
}

#[test]
fn man_items_have_four_distinct_options_including_the_answer() {
    let pairs: Vec<(String, String)> = (0..10)
        .map(|i| (format!("cmd{i}"), format!("does thing number {i}")))
        .collect();
    let items = man_items(&pairs, 1);
    assert_eq!(items.len(), 10);
    for it in &items {
        assert_eq!(it.options.len(), 4);
        assert!(it.options.contains(&it.answer));
        let set: HashSet<_> = it.options.iter().collect();
        assert_eq!(set.len(), 4);
    }
}
