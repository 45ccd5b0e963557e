use super::*;

fn prose() -> Vec<String> {
    let words = [
        "the", "module", "returns", "a", "list", "of", "values", "when", "called", "with", "an",
        "argument", "function", "object", "string", "file", "name", "path", "error", "raised",
    ];
    let mut rng = SplitMix64::new(11);
    (0..12)
        .map(|d| {
            (0..6 + d % 4)
                .map(|s| {
                    let n = 4 + rng.below(8);
                    let w: Vec<&str> = (0..n).map(|_| words[rng.below(words.len())]).collect();
                    format!("Doc{d} sentence{s} {}.", w.join(" "))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn setup() -> (Tokenizer, Specials, SentenceData) {
    let docs = prose();
    let tok = train_wordpiece(&docs, 200).unwrap();
    let sp = Specials::of(&tok).unwrap();
    let corpus = Corpus {
        name: "test".into(),
        docs,
    };
    let data = SentenceData::encode(&tok, &corpus, 0.2).unwrap();
    (tok, sp, data)
}

#[test]
fn wordpiece_vocabulary_has_the_specials_first_and_continuation_pieces() {
    let (tok, sp, _) = setup();
    assert_eq!((sp.pad, sp.unk, sp.cls, sp.sep, sp.mask), (0, 1, 2, 3, 4));
    assert_eq!(sp.random_from, 5);
    let enc = tok
        .encode("The Module RETURNS doc11sentence5", true)
        .unwrap();
    let toks = enc.get_tokens();
    assert_eq!(toks.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(toks.last().map(String::as_str), Some("[SEP]"));
    // Uncased, and an unseen word is split into pieces with ## continuations.
    assert!(toks.iter().any(|t| t == "module"), "{toks:?}");
    assert!(toks.iter().any(|t| t.starts_with("##")), "{toks:?}");
    assert!(train_wordpiece(&prose(), 10).is_err());
}

#[test]
fn sentences_split_at_terminal_punctuation_and_paragraphs() {
    let s = sentences("First one. Second?  Third!\n\nNew para e.g.x stays\nhere.");
    assert_eq!(
        s,
        vec![
            "First one.",
            "Second?",
            "Third!",
            "New para e.g.x stays here."
        ]
    );
}

#[test]
fn docstrings_keep_prose_and_drop_code_literals() {
    let src = "def f():\n    \"\"\"Return the list of values that the module holds for a name.\"\"\"\n    x = '''{{%s}}[1, 2, 3] = (4 + 5) * 6 / 7 - 8 ; 9 & 10 | 11 ^ 12 ~'''\n";
    let c = docstrings(&Corpus {
        name: "x".into(),
        docs: vec![src.into()],
    });
    assert_eq!(c.docs.len(), 1);
    assert!(c.docs[0].starts_with("Return the list"));
    assert!(!c.docs[0].contains("[1, 2"));
}

#[test]
fn nsp_pairs_are_balanced_and_is_next_pairs_follow_in_their_document() {
    let (_, sp, data) = setup();
    let cfg = PairConfig {
        max_len: 40,
        short_seq_prob: 0.1,
        pairs: true,
    };
    let mut rng = SplitMix64::new(3);
    let n = 4000;
    let mut random = 0;
    // Sentences of every document, joined, to locate A and B.
    let joined: Vec<Vec<u32>> = data.train.iter().map(|d| d.concat()).collect();
    let find = |hay: &[u32], needle: &[u32]| -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    };
    for _ in 0..n {
        let e = draw_example(&data.train, &sp, &cfg, &mut rng).unwrap();
        assert!(e.ids.len() <= 40);
        assert_eq!(e.ids[0], sp.cls);
        assert_eq!(*e.ids.last().unwrap(), sp.sep);
        let seps: Vec<usize> = (0..e.ids.len()).filter(|&i| e.ids[i] == sp.sep).collect();
        assert_eq!(seps.len(), 2, "[CLS] A [SEP] B [SEP]");
        let (a, b) = (&e.ids[1..seps[0]], &e.ids[seps[0] + 1..seps[1]]);
        assert!(!a.is_empty());
        // Segment ids: 0 up to and including the first [SEP], then 1.
        assert!((0..e.ids.len()).all(|i| e.types[i] == u32::from(i > seps[0])));
        if e.random_next {
            random += 1;
        } else {
            // B comes after A in A's document (A's end may have been cut to fit).
            assert!(!b.is_empty());
            assert!(
                joined.iter().any(|d| match (find(d, a), find(d, b)) {
                    (Some(i), Some(j)) => j >= i + a.len(),
                    _ => false,
                }),
                "IsNext B does not follow A"
            );
        }
    }
    let frac = random as f64 / n as f64;
    assert!((frac - 0.5).abs() < 0.03, "NotNext fraction {frac}");
    // Single segments for DistilBERT.
    let single = PairConfig {
        pairs: false,
        ..cfg
    };
    let e = draw_example(&data.train, &sp, &single, &mut rng).unwrap();
    assert_eq!(e.ids.iter().filter(|&&i| i == sp.sep).count(), 1);
    assert!(e.types.iter().all(|&t| t == 0));
    assert!(draw_example(&[vec![vec![7u32]]], &sp, &cfg, &mut rng).is_err());
}

#[test]
fn collate_pads_masks_and_never_selects_specials() {
    let (tok, sp, data) = setup();
    let cfg = PairConfig {
        max_len: 32,
        short_seq_prob: 0.5,
        pairs: true,
    };
    let mut rng = SplitMix64::new(5);
    let ex: Vec<PairExample> = (0..8)
        .map(|_| draw_example(&data.train, &sp, &cfg, &mut rng).unwrap())
        .collect();
    let vocab = tok.get_vocab_size(true);
    let b = collate(&ex, &sp, vocab, &MlmConfig::default(), &mut rng);
    assert_eq!(b.b, 8);
    assert_eq!(b.t, ex.iter().map(|e| e.ids.len()).max().unwrap());
    assert_eq!(b.tokens, ex.iter().map(|e| e.ids.len()).sum::<usize>());
    assert_eq!(b.rows.len(), b.labels.len());
    for (&r, &l) in b.rows.iter().zip(&b.labels) {
        let r = r as usize;
        assert_eq!(b.mask[r], 1.0);
        assert!(sp.maskable(b.original[r]));
        assert_eq!(l, b.original[r] as i64);
    }
    for i in 0..b.b * b.t {
        if b.mask[i] == 0.0 {
            assert_eq!(b.input[i], sp.pad);
        }
        if !sp.maskable(b.original[i]) {
            assert_eq!(b.input[i], b.original[i], "specials are never corrupted");
        }
    }
    assert_eq!(
        b.nsp,
        ex.iter()
            .map(|e| u32::from(e.random_next))
            .collect::<Vec<_>>()
    );
}

#[test]
fn too_few_documents_is_an_error_naming_the_corpus() {
    let docs = prose();
    let tok = train_wordpiece(&docs, 200).unwrap();
    let c = Corpus {
        name: "tiny.txt".into(),
        docs: docs[..3].to_vec(),
    };
    let e = SentenceData::encode(&tok, &c, 0.2).unwrap_err().to_string();
    assert!(e.contains("tiny.txt") && e.contains("documents"), "{e}");
}

#[test]
fn the_python_stdlib_corpus_is_the_code_under_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("json")).unwrap();
    std::fs::write(
        dir.path().join("json/__init__.py"),
        "def dumps(obj):\n    return str(obj)\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not code").unwrap();
    let c = load_corpus("python-stdlib", || Ok(dir.path().to_path_buf()), 1 << 20).unwrap();
    assert_eq!(c.docs.len(), 1, "only the .py file: {:?}", c.docs);
    assert!(c.docs[0].contains("def dumps(obj):"));
    let err = load_corpus("python-stdlib", || Ok(dir.path().join("none")), 1 << 20);
    assert!(err.is_err());
}
