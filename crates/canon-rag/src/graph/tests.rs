use super::*;

fn chunk(page: &str, section: &str, text: &str) -> Chunk {
    Chunk {
        path: format!("/m/{page}"),
        page: page.into(),
        section: section.into(),
        line_start: 1,
        line_end: text.lines().count(),
        text: text.into(),
    }
}

#[test]
fn fast_extractor_finds_structure() {
    let c = chunk(
        "tar(1)",
        "OPTIONS",
        "-C, --directory=DIR\nchange to directory DIR before extracting\nReads /etc/tar.conf and $TAR_OPTIONS.\nSee also gzip(1) and cpio(1).",
    );
    let ex = fast_extract(&c);
    let names: Vec<&str> = ex.entities.iter().map(|e| e.0.as_str()).collect();
    assert!(names.contains(&"TAR"), "{names:?}");
    assert!(names.contains(&"TAR --DIRECTORY"), "{names:?}");
    assert!(names.contains(&"/ETC/TAR.CONF"), "{names:?}");
    assert!(names.contains(&"TAR_OPTIONS"), "{names:?}");
    assert!(
        names.contains(&"GZIP") && names.contains(&"CPIO"),
        "{names:?}"
    );
    let opt = ex
        .entities
        .iter()
        .find(|e| e.0 == "TAR --DIRECTORY")
        .unwrap();
    assert!(opt.2.contains("change to directory DIR"), "{opt:?}");
    assert!(ex.relations.iter().any(|r| r.0 == "TAR" && r.1 == "GZIP"));
    assert!(
        ex.entities
            .iter()
            .filter(|e| e.1 == "CONCEPT")
            .all(|e| e.0.contains(' ')),
        "noun phrases have 2-3 words: {names:?}"
    );
}

#[test]
fn parser_handles_golden_output_with_bad_records() {
    let out = "(\"entity\"<|>cp<|>command<|>copies files)##\n\
(\"entity\"<|>-r<|>option<|>recursive copy)##\n\
(\"relationship\"<|>cp<|>-r<|>-r makes cp recursive<|>high)##\n\
garbage without parentheses##\n\
(\"relationship\"<|>cp<|>ls<|>both list things<|>3)<|COMPLETE|>\n(\"entity\"<|>AFTER<|>X<|>ignored)";
    let (ex, bad) = parse_records(out);
    assert_eq!(bad, 1);
    assert_eq!(
        ex.entities,
        vec![
            ("CP".into(), "COMMAND".into(), "copies files".into()),
            ("-R".into(), "OPTION".into(), "recursive copy".into())
        ]
    );
    assert_eq!(
        ex.relations[0],
        (
            "CP".into(),
            "-R".into(),
            "-r makes cp recursive".into(),
            1.0
        )
    );
    assert_eq!(ex.relations[1].3, 3.0);
}

struct Scripted {
    replies: Vec<String>,
    calls: usize,
}
impl Llm for Scripted {
    fn chat(&mut self, _m: &[(String, String)], _t: usize) -> std::result::Result<String, String> {
        let r = self
            .replies
            .get(self.calls)
            .cloned()
            .ok_or("no more replies")?;
        self.calls += 1;
        Ok(r)
    }
    fn id(&self) -> String {
        "scripted".into()
    }
}

#[test]
fn gleaning_loop_call_counts_and_cache() {
    let rec = "(\"entity\"<|>A<|>X<|>a)<|COMPLETE|>".to_string();
    let dir = tempfile::tempdir().unwrap();
    // 2 gleanings, the Y/N check says Y: 1 + 2 gleanings + 1 check = 4 calls.
    let mut s = Scripted {
        replies: vec![rec.clone(), rec.clone(), "Y".into(), rec.clone()],
        calls: 0,
    };
    {
        let mut c = CachedLlm::new(&mut s, dir.path()).unwrap();
        let mut st = ExtractStats::default();
        let ex = extract_with_gleanings(&mut c, "text", 2, 100, &mut st);
        assert_eq!(st.calls, 4);
        assert_eq!(ex.entities.len(), 3);
    }
    assert_eq!(s.calls, 4);
    // An N stops early: 1 + 1 gleaning + 1 check = 3 calls.
    let mut s2 = Scripted {
        replies: vec![rec.clone(), rec.clone(), "N".into(), rec.clone()],
        calls: 0,
    };
    let d2 = tempfile::tempdir().unwrap();
    let mut c2 = CachedLlm::new(&mut s2, d2.path()).unwrap();
    let mut st = ExtractStats::default();
    extract_with_gleanings(&mut c2, "text", 3, 100, &mut st);
    assert_eq!(st.calls, 3);
    drop(c2);
    // Rerun over the first cache: every call is a hit, the model is not asked.
    let mut s3 = Scripted {
        replies: vec![],
        calls: 0,
    };
    let mut c3 = CachedLlm::new(&mut s3, dir.path()).unwrap();
    let mut st = ExtractStats::default();
    let ex = extract_with_gleanings(&mut c3, "text", 2, 100, &mut st);
    assert_eq!((c3.hits, c3.misses), (4, 0));
    assert_eq!(ex.entities.len(), 3);
    // A model that breaks the format: a counted failure, no panic.
    let mut s4 = Scripted {
        replies: vec!["I cannot do that".into()],
        calls: 0,
    };
    let d4 = tempfile::tempdir().unwrap();
    let mut c4 = CachedLlm::new(&mut s4, d4.path()).unwrap();
    let mut st = ExtractStats::default();
    let ex = extract_with_gleanings(&mut c4, "text", 1, 100, &mut st);
    assert!(ex.entities.is_empty());
    assert_eq!((st.failed_units, st.malformed_records), (1, 1));
}

#[test]
fn merge_unites_names_and_adds_weights() {
    let a = Extraction {
        entities: vec![
            ("X".into(), "T".into(), "first".into()),
            ("Y".into(), "T".into(), "y".into()),
        ],
        relations: vec![("X".into(), "Y".into(), "r1".into(), 2.0)],
    };
    let b = Extraction {
        entities: vec![
            ("X".into(), "T".into(), "second".into()),
            ("Y".into(), "T".into(), "y".into()),
        ],
        relations: vec![("Y".into(), "X".into(), "r2".into(), 3.0)],
    };
    let (e, r) = merge(&[(0, a), (5, b)], 1);
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].descriptions, ["first", "second"]);
    assert_eq!(e[0].text_units, [0, 5]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].weight, 5.0);
    assert_eq!(r[0].descriptions, ["r1", "r2"]);
}

#[test]
fn report_orders_by_prominence_within_budget() {
    let ex = Extraction {
        entities: ["HUB", "A", "B", "C"]
            .iter()
            .map(|n| (n.to_string(), "T".into(), format!("{n} thing")))
            .collect(),
        relations: vec![
            ("A".into(), "B".into(), "a-b".into(), 1.0),
            ("HUB".into(), "A".into(), "hub-a".into(), 1.0),
            ("HUB".into(), "B".into(), "hub-b".into(), 1.0),
            ("HUB".into(), "C".into(), "hub-c".into(), 1.0),
        ],
    };
    let (e, r) = merge(&[(0, ex)], 1);
    let cl = Cluster {
        id: 0,
        level: 0,
        parent: None,
        nodes: vec![0, 1, 2, 3],
        leaf: true,
    };
    let full = build_report(&cl, &e, &r, 10_000, &approx_tokens);
    let pos = |s: &str| full.text.find(s).unwrap();
    // Combined degrees: HUB-A 3+2, HUB-B 3+2, A-B 2+2, HUB-C 3+1 → HUB-A, HUB-B before A-B.
    assert!(
        pos("hub-a") < pos("a-b") && pos("hub-b") < pos("a-b"),
        "{}",
        full.text
    );
    assert!(full.title.starts_with("HUB"));
    for budget in [5, 12, 20, 40] {
        let rep = build_report(&cl, &e, &r, budget, &approx_tokens);
        assert!(
            approx_tokens(&rep.text)
                <= budget.max(approx_tokens(&format!("Community 0: {}\n", rep.title))),
            "{budget}: {}",
            rep.text
        );
    }
}

#[test]
fn global_reduce_orders_and_drops_zero() {
    let pts: Vec<KeyPoint> = [0u32, 40, 90, 10]
        .iter()
        .enumerate()
        .map(|(i, &s)| KeyPoint {
            score: s,
            text: format!("p{i}"),
            report: i,
        })
        .collect();
    let (ctx, kept) = reduce_context(&pts, 1000, &approx_tokens).unwrap();
    assert_eq!(
        kept.iter().map(|p| p.score).collect::<Vec<_>>(),
        [90, 40, 10]
    );
    assert!(!ctx.contains("p0"));
    let zeros: Vec<KeyPoint> = pts
        .iter()
        .map(|p| KeyPoint {
            score: 0,
            ..p.clone()
        })
        .collect();
    assert!(reduce_context(&zeros, 1000, &approx_tokens).is_none());
    assert_eq!(
        parse_map("- 80: uses -C\n0: none\nnot a point\n150: big", 3)
            .iter()
            .map(|p| p.score)
            .collect::<Vec<_>>(),
        [80, 0, 100]
    );
    let packs = pack(
        &[(0, "a b c".into()), (1, "d e f".into()), (2, "g".into())],
        8,
        &approx_tokens,
    );
    assert_eq!(packs, vec![vec![0, 1], vec![2]]);
}
