use super::*;
use crate::graph::{ExtractStats, Extraction, build_graph};

type Answer = dyn Fn(&Call) -> std::result::Result<String, String>;

/// Answers from a function of the prompt; counts calls and batches.
struct Scripted {
    f: Box<Answer>,
    calls: usize,
    batches: usize,
}

impl BatchLlm for Scripted {
    fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>> {
        self.batches += 1;
        self.calls += calls.len();
        calls.iter().map(|c| (self.f)(c)).collect()
    }
    fn id(&self) -> String {
        "scripted".into()
    }
}

fn graph() -> KnowledgeGraph {
    let ent = |n: &str, d: &str| (n.to_string(), "COMMAND".to_string(), d.to_string());
    let rel = |a: &str, b: &str, d: &str| (a.to_string(), b.to_string(), d.to_string(), 1.0);
    let mut units = Vec::new();
    // Two triangles joined by one edge; TAR is described in two units.
    for (u, (a, b, c)) in [("TAR", "GZIP", "XZ"), ("LS", "DIR", "STAT")]
        .iter()
        .enumerate()
    {
        units.push((
            u,
            Extraction {
                entities: vec![
                    ent(a, &format!("{a} in unit {u}")),
                    ent(b, &format!("{b} here")),
                    ent(c, &format!("{c} here")),
                ],
                relations: vec![
                    rel(a, b, &format!("{a} uses {b}")),
                    rel(b, c, &format!("{b} and {c}")),
                    rel(a, c, &format!("{a} with {c}")),
                ],
            },
        ));
    }
    units.push((
        2,
        Extraction {
            entities: vec![ent("TAR", "tar archives files"), ent("LS", "ls lists")],
            relations: vec![
                rel("TAR", "LS", "both are commands"),
                rel("TAR", "GZIP", "tar -z filters through gzip"),
            ],
        },
    ));
    build_graph("test", 3, &units, ExtractStats::default(), 3, 300, 1)
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

#[test]
fn summaries_fill_elements_with_two_or_more_descriptions_and_resume_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = graph();
    let multi = g
        .entities
        .iter()
        .filter(|e| e.descriptions.len() >= 2)
        .count()
        + g.relations
            .iter()
            .filter(|r| r.descriptions.len() >= 2)
            .count();
    assert!(multi >= 2, "fixture: {multi}");
    let mut m = Scripted {
        f: Box::new(|c| Ok(format!("Description: merged ({})", c.messages[0].1.len()))),
        calls: 0,
        batches: 0,
    };
    let stats = {
        let mut llm = CachedBatch::new(&mut m, dir.path()).unwrap();
        summarize_descriptions(&mut g, &mut llm, 2, None, 1000, &mut |_, _| {})
    };
    assert_eq!(stats.written, multi);
    assert_eq!(m.calls, multi);
    assert_eq!(m.batches, multi.div_ceil(2));
    let tar = g.entities.iter().find(|e| e.name == "TAR").unwrap();
    let s = tar.llm_summary.as_deref().unwrap();
    assert!(s.starts_with("merged ("), "{s}");
    assert_eq!(tar.summary(1000), s);
    // Elements with one description are left alone.
    assert!(
        g.entities
            .iter()
            .filter(|e| e.descriptions.len() < 2)
            .all(|e| e.llm_summary.is_none())
    );
    // A second graph from scratch: every answer comes from the cache.
    let mut g2 = graph();
    let mut m2 = Scripted {
        f: Box::new(|_| Err("must not be called".into())),
        calls: 0,
        batches: 0,
    };
    let mut llm = CachedBatch::new(&mut m2, dir.path()).unwrap();
    let st = summarize_descriptions(&mut g2, &mut llm, 8, None, 1000, &mut |_, _| {});
    assert_eq!((st.written, st.failed, llm.hits), (multi, 0, multi));
    assert_eq!(g2.entities, g.entities);
}

#[test]
fn reports_parse_validate_and_render() {
    let ok = r#"{"title": "Archivers", "summary": "tar and gzip", "rating": 7.5,
        "rating_explanation": "common", "findings": [{"summary": "tar", "explanation": "uses gzip"}]}"#;
    let r = parse_report(&format!("Report: {ok} trailing")).unwrap();
    assert_eq!(r.title, "Archivers");
    assert_eq!(r.rating, 7.5);
    let text = render(&r);
    assert!(text.starts_with("Archivers\ntar and gzip\nImpact 7.5/10: common\n- tar: uses gzip"));
    assert!(
        parse_report("no json here")
            .unwrap_err()
            .contains("JSON object")
    );
    let bad = ok.replace("7.5", "12");
    assert!(parse_report(&bad).unwrap_err().contains("0 to 10"));
    let none = ok.replace(r#"[{"summary": "tar", "explanation": "uses gzip"}]"#, "[]");
    assert!(parse_report(&none).unwrap_err().contains("finding"));
    // The schema names every field the parser needs.
    let s = report_schema();
    for f in [
        "title",
        "summary",
        "rating",
        "rating_explanation",
        "findings",
    ] {
        assert!(s["required"].as_array().unwrap().contains(&json!(f)));
    }
}

/// The fixture graph with a hand-made hierarchy: community 0 (level 0) holds every entity,
/// its children 1 and 2 (level 1) the two triangles.
fn hierarchy() -> KnowledgeGraph {
    use crate::leiden::Cluster;
    let mut g = graph();
    let n = g.entities.len();
    let idx = |name: &str| g.entities.iter().position(|e| e.name == name).unwrap();
    let mut a: Vec<usize> = ["TAR", "GZIP", "XZ"].iter().map(|s| idx(s)).collect();
    let mut b: Vec<usize> = ["LS", "DIR", "STAT"].iter().map(|s| idx(s)).collect();
    a.sort();
    b.sort();
    g.clusters = vec![
        Cluster {
            id: 0,
            level: 0,
            parent: None,
            nodes: (0..n).collect(),
            leaf: false,
        },
        Cluster {
            id: 1,
            level: 1,
            parent: Some(0),
            nodes: a,
            leaf: true,
        },
        Cluster {
            id: 2,
            level: 1,
            parent: Some(0),
            nodes: b,
            leaf: true,
        },
    ];
    g.reports = crate::graph::build_reports(
        &g.clusters,
        &g.entities,
        &g.relations,
        300,
        &crate::graph::approx_tokens,
    );
    g
}

#[test]
fn reports_are_written_bottom_up_and_parents_read_their_childrens_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = hierarchy();
    let prompts = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let seen = prompts.clone();
    let mut m = Scripted {
        f: Box::new(move |c| {
            assert!(c.schema.is_some());
            let mut v = seen.borrow_mut();
            v.push(c.messages[0].1.clone());
            Ok(
                json!({"title": format!("T{}", v.len()), "summary": "a summary", "rating": 5,
                "rating_explanation": "e", "findings": [{"summary": "f", "explanation": "x"}]})
                .to_string(),
            )
        }),
        calls: 0,
        batches: 0,
    };
    // 30 words hold a child's tables but not the parent's own.
    let stats = {
        let mut llm = CachedBatch::new(&mut m, dir.path()).unwrap();
        write_reports(&mut g, &mut llm, 4, None, 30, 300, &words, &mut |_, _| {})
    };
    assert_eq!((stats.calls, stats.written, stats.failed), (3, 3, 0));
    // The two children go first, in one batch; then the parent.
    assert_eq!(m.batches, 2);
    let p = prompts.borrow();
    assert!(!p[0].contains("-----Reports-----") && !p[1].contains("-----Reports-----"));
    assert!(
        p[2].contains("-----Reports-----\nid,title,summary\n1,T"),
        "{}",
        p[2]
    );
    for q in p.iter() {
        assert!(words(q) <= words(&report_prompt("")) + 30, "{q}");
    }
    for r in &g.reports {
        let l = r.llm.as_ref().unwrap();
        assert_eq!(r.title, l.title);
        assert!(r.text.contains("Impact 5.0/10: e"), "{}", r.text);
    }
}

#[test]
fn a_report_the_model_garbles_keeps_its_extractive_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = hierarchy();
    let before: Vec<String> = g.reports.iter().map(|r| r.text.clone()).collect();
    let mut m = Scripted {
        f: Box::new(|_| Ok("{\"title\": \"cut off".into())),
        calls: 0,
        batches: 0,
    };
    let mut llm = CachedBatch::new(&mut m, dir.path()).unwrap();
    let stats = write_reports(
        &mut g,
        &mut llm,
        8,
        Some(2),
        200,
        300,
        &words,
        &mut |_, _| {},
    );
    assert_eq!((stats.calls, stats.written, stats.failed), (2, 0, 2));
    assert!(!stats.errors.is_empty());
    assert!(g.reports.iter().all(|r| r.llm.is_none()));
    assert_eq!(
        g.reports.iter().map(|r| r.text.clone()).collect::<Vec<_>>(),
        before
    );
}
